"""Benchmark: how the cost of annotation grows with the number of teachers T and the number of cases N.

    .venv/bin/python bench/annotation_scaling.py --quick              # T 1 3, N 48 96, 32x32: 8-11 min here
    .venv/bin/python bench/annotation_scaling.py                      # T 1 3 6 12, N 600 2400 9600, 64x64: ~2 h
    .venv/bin/python bench/annotation_scaling.py --reuse              # resume: skip the grid points already in --out
    .venv/bin/python bench/annotation_scaling.py --teachers 1 12 --cases 600 --layouts shared --plain-max-cases 0

Cost on 2 quiet CPU cores (2026-12-07, night): the grid at 64x64 with the inline and shared layouts up to 9,600
cases, one pool per teacher and the plain loop up to 2,400 took ~70 min in five invocations (40 points) (the points
from ~6 s to ~450 s; the slowest, shared at T = 12 and N = 9,600). ``--quick``: 8-11 min, nearly all fixed cost.
Peak memory: ~2.2-2.6 GB for the inline and shared layouts at any N and T; one pool per teacher ~2.4 GB + ~0.33 GB
per teacher (6.5 GB at T = 12). Every finished grid point is written to ``--out`` at once, so an interrupted grid
goes on with ``--reuse`` (which also adds points: other ``--layouts`` or ``--cases`` into the same file); a point
that failed is recorded with its error and run again by ``--reuse``. Results: ``docs/benchmarks.md``.

The grid is every T in ``--teachers`` x every N in ``--cases`` x every pool layout in ``--layouts``
(``annotate.pools``: ``inline``, one actor per CPU that decodes, runs all teachers and fuses; ``shared``, one pool
of actors that each host all teachers between decode and fuse tasks; ``per_teacher``, one actor pool per teacher),
with the plain single-process loop of ``bench/annotate.py`` beside it for N <= ``--plain-max-cases``.
The T teachers are the first T of a fixed cycle of small 2D zoo architectures (unet, segresnet, attention_unet,
basic_unet, at a quarter to a half of their default widths; random weights: throughput does not depend on them), so
the 3-teacher set is part of the 6-teacher one. The N cases are the HC18 images (``../shared/data/hc18/images``, 600)
repeated through symbolic links as in ``bench/annotate.py``, or synthetic PNGs where that folder is absent. The
decoding, inference, fusion (mean), Parquet schema and measurements are ``bench/annotate.py``'s: each pipeline run
starts a fresh local Ray instance and runs ``annotate.annotate``.

Per run (JSON ``runs``): wall time, images/s, CPU-seconds of the process tree (Ray's processes included) and the
machine's busy cores, peak memory (PSS of the process tree, sampled every 0.5 s), the bytes the run wrote (all
files of its output folder, and its Parquet files alone), the rows written, Parquet bytes per row, and Ray's start
time. After the grid (JSON ``growth``, printed): for each path and T the exponent of wall time in N (the slope of
log wall on log N; 1 = linear; the pipeline's fixed cost pulls it below 1 at small N) with the straight-line fit
wall = fixed + per-case x N; for each path and N the exponents of wall time and of bytes written in T; and peak
memory against N (flat = the pipeline streams). The plot (``--plot``, PNG): wall time against N on log-log axes, one
line per T, and peak memory against N, one column of panels per layout, the plain loop dashed in each.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from annotate import HC18, PeakMemory, image_folder, pipeline, plain_loop, run_config, usage

# The teachers' cycle: (arch, arch_args), small widths so that 12 teachers stay cheap on 2 cores.
ARCHS = (
    ("unet", {"channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1}),
    ("segresnet", {"init_filters": 8}),
    ("attention_unet", {"channels": [8, 16, 32, 64], "strides": [2, 2, 2]}),
    ("basic_unet", {"features": [8, 8, 16, 32, 64, 8]}),
)
PLAIN = "plain"  # the plain loop's entry in the "layout" field
SETTINGS = ("size", "batch", "decode_batch", "images_folder")  # a stored run is reused only if these match


def mixed_teachers(folder: Path, size: int, count: int) -> list[tuple[str, str]]:
    """``count`` teachers cycling through :data:`ARCHS` (random weights, seed = index), as ``bench/annotate.py``'s
    ``make_teachers`` writes them: (name, model file)."""
    import torch

    from nakt_ray.config import PreprocessConfig
    from nakt_ray.models.model_file import ModelSpec, save_model

    out = []
    for i in range(count):
        arch, arch_args = ARCHS[i % len(ARCHS)]
        name = f"t{i:02d}_{arch}"
        torch.manual_seed(i)
        spec = ModelSpec(name=name, arch=arch, arch_args=dict(arch_args), labels=("background", "head"),
                         preprocess=PreprocessConfig(size=(size, size)))
        out.append((name, str(save_model(folder / f"{name}.pt", spec.build(), spec))))
    return out


def synthetic_images(folder: Path, count: int = 64, shape: tuple[int, int] = (270, 400)) -> Path:
    """``count`` grey PNGs (an ellipse on speckle noise, HC18-like at half its size) for a machine without HC18."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for i in range(count):
        cy, cx = rng.uniform(0.35, 0.65) * shape[0], rng.uniform(0.35, 0.65) * shape[1]
        ry, rx = rng.uniform(0.15, 0.3) * shape[0], rng.uniform(0.15, 0.3) * shape[1]
        ring = np.abs(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 - 1) < 0.08
        img = rng.gamma(2.0, 20.0, shape) + 120 * ring
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}_synthetic.png")
    return folder


def case_folder(src: Path, dst: Path, n: int) -> Path:
    """``n`` cases: ``bench/annotate.py``'s ``image_folder`` (links to ``src``'s images, repeated under distinct
    names), topped up with the first images of one more repeat where ``n`` is not a multiple of their count."""
    count = sum(1 for p in src.iterdir() if p.is_file())
    full, rest = divmod(n, count)
    if not full:
        return image_folder(src, dst, rest, 1)
    image_folder(src, dst, None, full)
    for p in sorted(p for p in src.iterdir() if p.is_file())[:rest]:
        (dst / f"r{full}_{p.name}").symlink_to(p.resolve())
    return dst


def output_bytes(folder: Path) -> dict:
    """Bytes of every file under ``folder``, of its Parquet files alone, and the rows those hold."""
    import pyarrow.parquet as pq

    files = [p for p in Path(folder).rglob("*") if p.is_file()]
    parquet = [p for p in files if p.suffix == ".parquet"]
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parquet)
    stored = sum(p.stat().st_size for p in parquet)
    return {"bytes_written": sum(p.stat().st_size for p in files), "parquet_bytes": stored, "rows": rows,
            "bytes_per_row": stored / rows if rows else None}


def run_point(layout: str, teachers: list[tuple[str, str]], images: Path, work: Path, args) -> dict:
    """One grid point: the plain loop (``layout == PLAIN``) or the pipeline in ``layout``; its output is measured,
    then deleted (the full grid would otherwise keep several GB)."""
    run_dir = work / f"run_{layout}_T{len(teachers)}"
    cfg = run_config(run_dir, images, teachers, args.size, args.batch, 1, args.decode_batch,
                     "per_teacher" if layout == PLAIN else layout)
    out_dir = run_dir / "plain_out" if layout == PLAIN else Path(cfg.annotations_dir)
    try:
        with PeakMemory() as mem:
            if layout == PLAIN:
                result = plain_loop(cfg, out_dir)
            else:
                try:
                    result = pipeline(cfg)
                finally:
                    import ray

                    if ray.is_initialized():  # a failed run leaves its instance up: stop it for the next point
                        ray.shutdown()
        result.update(usage(mem))
        result.update(output_bytes(out_dir))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result


def fit_loglog(xs, ys) -> float | None:
    """Slope of log y on log x (the growth exponent); None with fewer than two distinct x."""
    pts = [(x, y) for x, y in zip(xs, ys) if x and y]
    if len({x for x, _ in pts}) < 2:
        return None
    return float(np.polyfit(np.log([x for x, _ in pts]), np.log([y for _, y in pts]), 1)[0])


def fit_line(xs, ys) -> tuple[float, float] | None:
    """(intercept, slope) of y on x; None with fewer than two distinct x."""
    if len(set(xs)) < 2:
        return None
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(intercept), float(slope)


def growth(runs: list[dict]) -> dict:
    """Exponents and fits over the finished runs: wall in N per (layout, T); wall and bytes in T per (layout, N);
    peak memory in N per (layout, T)."""
    ok = [r for r in runs if "error" not in r]
    layouts = sorted({r["layout"] for r in ok})
    out: dict = {"wall_in_cases": [], "in_teachers": [], "memory_in_cases": []}
    for layout in layouts:
        for t in sorted({r["teachers"] for r in ok if r["layout"] == layout}):
            rs = sorted((r for r in ok if r["layout"] == layout and r["teachers"] == t), key=lambda r: r["cases"])
            ns = [r["cases"] for r in rs]
            walls = [r["wall_s"] for r in rs]
            line = fit_line(ns, walls)
            out["wall_in_cases"].append({
                "layout": layout, "teachers": t, "cases": ns, "exponent": fit_loglog(ns, walls),
                "fixed_s": line[0] if line else None, "ms_per_case": 1000 * line[1] if line else None})
            mem = [r["peak_memory_mb"] for r in rs]
            out["memory_in_cases"].append({
                "layout": layout, "teachers": t, "cases": ns, "peak_memory_mb": mem,
                "exponent": fit_loglog(ns, mem), "largest_over_smallest": mem[-1] / mem[0] if mem[0] else None})
        for n in sorted({r["cases"] for r in ok if r["layout"] == layout}):
            rs = sorted((r for r in ok if r["layout"] == layout and r["cases"] == n), key=lambda r: r["teachers"])
            ts = [r["teachers"] for r in rs]
            out["in_teachers"].append({
                "layout": layout, "cases": n, "teachers": ts,
                "wall_exponent": fit_loglog(ts, [r["wall_s"] for r in rs]),
                "bytes_exponent": fit_loglog(ts, [r["parquet_bytes"] for r in rs]),
                "bytes_per_row": [r["bytes_per_row"] for r in rs]})
    return out


def fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_report(result: dict) -> None:
    runs = sorted(result["runs"], key=lambda r: (r["layout"], r["teachers"], r["cases"]))
    s = result["settings"]
    print(f"\nannotation scaling: {s['size']}x{s['size']}, batch {s['batch']}, decode batch {s['decode_batch']}, "
          f"{result['cpus']} CPUs, images {s['images_folder']}")
    print(f"{'path':12s} {'T':>3s} {'N':>6s} {'wall s':>8s} {'img/s':>7s} {'CPU s':>7s} {'cores':>5s} "
          f"{'peak MB':>8s} {'MB out':>8s} {'B/row':>8s} {'rows':>6s} {'Ray s':>6s}")
    for r in runs:
        if "error" in r:
            print(f"{r['layout']:12s} {r['teachers']:3d} {r['cases']:6d}  failed: {r['error'][:80]}")
            continue
        print(f"{r['layout']:12s} {r['teachers']:3d} {r['cases']:6d} {r['wall_s']:8.1f} {r['images_per_s']:7.1f} "
              f"{r['cpu_s']:7.0f} {r['busy_cores']:5.2f} {r['peak_memory_mb']:8.0f} "
              f"{r['bytes_written'] / 2**20:8.1f} {fmt(r['bytes_per_row'], '8.0f'):>8s} {r['rows']:6d} "
              f"{fmt(r.get('ray_init_s'), '6.1f'):>6s}")
    g = result["growth"]
    print("\nwall time in N (per path and T): exponent of log wall on log N; straight line wall = fixed + per case x N")
    for e in g["wall_in_cases"]:
        print(f"  {e['layout']:12s} T={e['teachers']:<3d} exponent {fmt(e['exponent'])}  "
              f"fixed {fmt(e['fixed_s'], '.1f')} s  {fmt(e['ms_per_case'], '.1f')} ms/case  (N {e['cases']})")
    print("wall time and Parquet bytes in T (per path and N): exponents")
    for e in g["in_teachers"]:
        rows = ", ".join(fmt(b, ".0f") for b in e["bytes_per_row"])
        print(f"  {e['layout']:12s} N={e['cases']:<6d} wall {fmt(e['wall_exponent'])}  bytes "
              f"{fmt(e['bytes_exponent'])}  (T {e['teachers']}; bytes/row {rows})")
    print("peak memory in N (flat = streams)")
    for e in g["memory_in_cases"]:
        mem = ", ".join(f"{m:.0f}" for m in e["peak_memory_mb"])
        print(f"  {e['layout']:12s} T={e['teachers']:<3d} {mem} MB at N {e['cases']}  largest / smallest "
              f"{fmt(e['largest_over_smallest'])}  exponent {fmt(e['exponent'])}")


def plot(result: dict, path: Path, layouts: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    ok = [r for r in result["runs"] if "error" not in r]
    teachers = sorted({r["teachers"] for r in ok})
    cases = sorted({r["cases"] for r in ok})
    colors = {t: plt.get_cmap("viridis")(i / max(1, len(teachers) - 1)) for i, t in enumerate(teachers)}
    fig, axes = plt.subplots(2, len(layouts), figsize=(5.5 * len(layouts), 8), squeeze=False)

    def series(layout: str, t: int, key: str):
        rs = sorted((r for r in ok if r["layout"] == layout and r["teachers"] == t), key=lambda r: r["cases"])
        return [r["cases"] for r in rs], [r[key] for r in rs]

    for col, layout in enumerate(layouts):
        for row, (key, label) in enumerate((("wall_s", "wall time (s)"), ("peak_memory_mb", "peak memory, PSS (MB)"))):
            ax = axes[row][col]
            for t in teachers:
                for lay, style, tag in ((layout, "-o", "pipeline"), (PLAIN, "--s", "plain loop")):
                    ns, ys = series(lay, t, key)
                    if ns:
                        ax.plot(ns, ys, style, color=colors[t], label=f"T={t} {tag}", alpha=1 if lay == layout else .6)
            ax.set_xscale("log")
            if row == 0:
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
                ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
                ax.yaxis.set_minor_formatter(ticker.NullFormatter())
            ax.set_xticks(cases, [str(n) for n in cases])  # the grid's N, not powers of ten
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            ax.set_xlabel("cases N")
            ax.set_ylabel(label)
            ax.set_title(f"{layout}: {label.split(' (')[0].split(',')[0]}")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][col].legend(fontsize=7)
    s = result["settings"]
    fig.suptitle(f"annotation cost against cases and teachers ({s['size']}x{s['size']}, {result['cpus']} CPUs)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teachers", type=int, nargs="+", default=[1, 3, 6, 12], help="numbers of teachers T")
    p.add_argument("--cases", type=int, nargs="+", default=[600, 2400, 9600], help="numbers of cases N")
    p.add_argument("--layouts", nargs="+", default=["inline", "shared", "per_teacher"],
                   choices=["inline", "shared", "per_teacher"], help="annotate.pools of the pipeline runs")
    p.add_argument("--size", type=int, default=64, help="teachers' input size (square; a multiple of 16, >= 32)")
    p.add_argument("--batch", type=int, default=8, help="batch size of every teacher (and of the plain loop)")
    p.add_argument("--decode-batch", type=int, default=16, help="rows per decode and fusion task of the pipeline")
    p.add_argument("--plain-max-cases", type=int, default=2400,
                   help="run the plain loop only for N up to this (0: never)")
    p.add_argument("--images", type=Path, default=HC18,
                   help="folder of images (default: ../shared/data/hc18; synthetic PNGs where it is absent)")
    p.add_argument("--quick", action="store_true",
                   help="a fast check: T 1 3, N 48 96, size 32 (default files: annotation_scaling_quick.*)")
    p.add_argument("--reuse", action="store_true",
                   help="keep the finished grid points of --out (same settings) and run only the others")
    p.add_argument("--out", type=Path, default=Path("bench/results/annotation_scaling.json"))
    p.add_argument("--plot", type=Path, default=Path("bench/results/annotation_scaling.png"))
    args = p.parse_args()
    if args.quick:  # its own default files, so that a quick check leaves a grid's JSON alone
        args.teachers, args.cases, args.size = [1, 3], [48, 96], 32
        for key in ("out", "plot"):
            path = getattr(args, key)
            if path == p.get_default(key):
                setattr(args, key, path.with_name(f"{path.stem}_quick{path.suffix}"))
    if args.size < 32 or args.size % 16:
        p.error(f"--size must be a multiple of 16 and at least 32 (basic_unet's size rule), got {args.size}")
    if min(args.teachers) < 1 or min(args.cases) < 1:
        p.error("--teachers and --cases take positive numbers")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("NAKT_PROGRESS", "0")

    work = Path(tempfile.mkdtemp(prefix="nakt-bench-scaling-"))
    source = args.images if args.images.is_dir() else synthetic_images(work / "synthetic")
    settings = {"size": args.size, "batch": args.batch, "decode_batch": args.decode_batch,
                "images_folder": str(args.images) if args.images.is_dir() else "synthetic"}
    runs: list[dict] = []
    if args.reuse and args.out.exists():
        runs = [r for r in json.loads(args.out.read_text()).get("runs", [])
                if "error" not in r and all(r.get(k) == settings[k] for k in SETTINGS)]
        print(f"reusing {len(runs)} finished grid points of {args.out}")
    done = {(r["layout"], r["teachers"], r["cases"]) for r in runs}
    result = {"host": platform.node(), "cpus": os.cpu_count(), "settings": settings,
              "archs": [a for a, _ in ARCHS], "runs": runs}

    def save() -> None:
        result["growth"] = growth(runs)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))

    grid = [(n, t, layout) for n in sorted(args.cases) for t in sorted(args.teachers)
            for layout in ([PLAIN] if n <= args.plain_max_cases else []) + list(args.layouts)]
    todo = [g for g in grid if (g[2], g[1], g[0]) not in done]
    t_start = time.perf_counter()
    try:
        all_teachers = mixed_teachers(work / "teachers", args.size, max(args.teachers)) if todo else []
        folders: dict[int, Path] = {}
        for i, (n, t, layout) in enumerate(todo, 1):
            if n not in folders:
                folders[n] = case_folder(source, work / f"images_{n}", n)
            print(f"[{i}/{len(todo)}] {layout}, T={t}, N={n} ({time.perf_counter() - t_start:.0f} s so far)",
                  flush=True)
            record = {"layout": layout, "teachers": t, "cases": n, **settings,
                      "archs": [name for name, _ in all_teachers[:t]], "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            try:
                record.update(run_point(layout, all_teachers[:t], folders[n], work, args))
            except Exception as err:  # noqa: BLE001 (recorded and left for --reuse to retry; the grid goes on)
                record["error"] = f"{type(err).__name__}: {err}"
                print(f"  failed: {record['error'][:200]}", flush=True)
            runs.append(record)
            save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["grid_wall_s"] = time.perf_counter() - t_start  # this invocation's (a --reuse run adds to a grid)
    save()
    print_report(result)
    # every pipeline layout of the grid, including those of earlier --reuse runs
    plot(result, args.plot, [lay for lay in ("inline", "shared", "per_teacher")
                             if any(r["layout"] == lay for r in runs)] or list(args.layouts))
    print(f"\ngrid: {len(todo)} runs in {result['grid_wall_s']:.0f} s; written: {args.out}, {args.plot}")


if __name__ == "__main__":
    main()

"""Benchmark: the nakt Ray annotation pipeline against a plain single-process PyTorch loop, side by side.

    .venv/bin/python bench/annotate.py                         # 600 HC18 images, 3 teachers, 128x128, CPU
    .venv/bin/python bench/annotate.py --size 512 --batch 16   # e.g. on a GPU machine
    .venv/bin/python bench/annotate.py --images DIR --limit 100 --repeat 0   # any folder, no 4x memory run

Cost on 2 CPU cores: ~6-9 min with defaults (plain loop and both pipeline layouts at 1x, the pipeline at 4x).

Both paths run the same three teachers of different architectures (unet, segresnet, attention_unet; random
weights: throughput does not depend on them) over the same images with the same code for decoding and
preprocessing (``data.datasets.decode_batch``), inference (``annotation.pools.TeacherPredictor``),
fusion (``annotation.pipeline.fuse_batch``, mean) and the same Parquet schema. The plain loop runs them one after
another in this process with all cores for torch; the pipeline runs ``annotate.annotate`` on a fresh local Ray
instance, in the layout ``--pools`` (default ``auto``: one shared pool of all-teacher actors on a machine without
GPUs) and, side by side, again with one actor pool per teacher.

Printed and written as JSON (``--out``): images/s of each path, the ratio pipeline / plain, peak memory of each
(PSS summed over the process and all its descendants, i.e. Ray's processes too, sampled every 0.5 s from
/proc; Linux only), the CPU-seconds each path's process tree used and the machine's busy cores during it, the
pipeline's fixed cost (the same run on one batch of images) with the highest ratio it leaves reachable, and the
pipeline's peak memory at 1x and at ``--repeat`` x the input (images repeated through symbolic links), which
shows whether the pipeline streams.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HC18 = Path(__file__).resolve().parents[2] / "shared" / "data" / "hc18" / "images"
TEACHERS = (("unet_t", "unet"), ("segresnet_t", "segresnet"), ("attention_unet_t", "attention_unet"))


# ---------------------------------------------------------------------------------------------------------------
# Memory and CPU of a process tree, from /proc (PSS splits shared pages, e.g. Ray's object store, fairly).

def tree_cpu_ticks(root: int) -> dict[int, int]:
    """User + system clock ticks of every process in the tree under ``root`` (itself included), by pid: one read
    of each process's ``/proc/<pid>/stat`` gives both its parent and its ticks."""
    parent, ticks = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                parent[int(entry)], ticks[int(entry)] = int(fields[1]), int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                continue
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    tree, stack = {}, [root]
    while stack:
        pid = stack.pop()
        if pid in ticks:
            tree[pid] = ticks[pid]
            stack.extend(children.get(pid, []))
    return tree


def pss_bytes(pids) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values) - values[3] - values[4], sum(values)  # idle and iowait are not busy


class PeakMemory:
    """Samples the PSS of this process tree in a background thread; ``peak`` in bytes. Also measures the CPU the
    tree used (``cpu_s``: each process's last sampled ticks, so a process that ends between samples loses at most
    its last 0.5 s) and how many of the machine's cores were busy on average (``busy_cores``, every process)."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ticks: dict[int, int] = {}
        self.cpu_s = self.busy_cores = 0.0

    def _sample(self) -> None:
        ticks = tree_cpu_ticks(os.getpid())
        self.peak = max(self.peak, pss_bytes(ticks))
        self._ticks.update(ticks)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._start_ticks = tree_cpu_ticks(os.getpid())
        self._busy0 = machine_busy_ticks()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        busy1 = machine_busy_ticks()
        hz = os.sysconf("SC_CLK_TCK")
        self.cpu_s = sum(t - self._start_ticks.get(pid, 0) for pid, t in self._ticks.items()) / hz
        self.busy_cores = (busy1[0] - self._busy0[0]) / max(1, busy1[1] - self._busy0[1]) * (os.cpu_count() or 1)


def usage(mem: PeakMemory) -> dict:
    return {"peak_memory_mb": mem.peak / 2**20, "cpu_s": round(mem.cpu_s, 1), "busy_cores": round(mem.busy_cores, 2)}


# ---------------------------------------------------------------------------------------------------------------


def make_teachers(folder: Path, size: int) -> list[tuple[str, str]]:
    import torch

    from nakt_ray.config import PreprocessConfig
    from nakt_ray.models.model_file import ModelSpec, save_model

    out = []
    for i, (name, arch) in enumerate(TEACHERS):
        torch.manual_seed(i)
        spec = ModelSpec(name=name, arch=arch, arch_args={}, labels=("background", "head"),
                         preprocess=PreprocessConfig(size=(size, size)))
        out.append((name, str(save_model(folder / f"{name}.pt", spec.build(), spec))))
    return out


def image_folder(src: Path, dst: Path, limit: int | None, repeat: int) -> Path:
    """A folder of symbolic links to ``src``'s images, each repeated ``repeat`` times under distinct names."""
    files = sorted(p for p in src.iterdir() if p.is_file())[:limit]
    dst.mkdir(parents=True)
    for r in range(repeat):
        for p in files:
            (dst / f"r{r}_{p.name}").symlink_to(p.resolve())
    return dst


def run_config(run_dir: Path, images: Path, teachers: list[tuple[str, str]], size: int, batch: int, actors: int,
               decode_batch: int | None = None, pools: str = "auto", shared_actors: int | None = None,
               keep_teachers_s: float = 0.0):
    from nakt_ray import config

    return config.from_dict({
        "run_dir": str(run_dir),
        "data": {"labels": ["background", "head"], "transferal": str(images)},
        "preprocess": {"size": [size, size]},
        "teachers": [{"name": n, "checkpoint": p, "batch_size": batch, "actors": actors} for n, p in teachers],
        "annotate": {"decode_batch_size": decode_batch or batch, "pools": pools, "shared_actors": shared_actors,
                     "keep_teachers_s": keep_teachers_s},
    })


def plain_loop(cfg, out_dir: Path) -> dict:
    """The same work without Ray: decode -> each teacher -> fuse -> Parquet, batch by batch, in this process."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from nakt_ray.annotation import parquet as ann
    from nakt_ray.annotation.pipeline import fuse_batch
    from nakt_ray.annotation.pools import TeacherPredictor
    from nakt_ray.data.datasets import decode_batch
    from nakt_ray.data.readers import list_cases

    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    names = [t.name for t in cfg.teachers]
    predictors = [TeacherPredictor(str(cfg.teacher_checkpoint(t)), t.name, cfg.preprocess.in_channels,
                                   num_threads=os.cpu_count() or 1)
                  for t in cfg.teachers]
    cases = list_cases(cfg.data.transferal)
    schema = ann.arrow_schema(names, {"benchmark": "plain loop"})
    out_dir.mkdir(parents=True)
    writer = pq.ParquetWriter(out_dir / "part-0.parquet", schema)
    bs = cfg.teachers[0].batch_size  # batch by batch: the teachers' batch size throughout
    for i in range(0, len(cases), bs):
        chunk = cases[i:i + bs]
        batch = decode_batch({"case_id": np.array([c.case_id for c in chunk], object),
                              "image_path": np.array([c.image_path for c in chunk], object),
                              "mask_path": np.array(["" for _ in chunk], object)},
                             preprocess=cfg.preprocess, num_classes=cfg.data.num_classes)
        for predictor in predictors:
            batch = predictor(batch)
        rows = fuse_batch(batch, teachers=names, rule=cfg.fusion.rule, weights=None)
        writer.write_table(pa.Table.from_pydict({k: list(v) for k, v in rows.items()}, schema=schema))
    writer.close()
    wall = time.perf_counter() - t0
    return {"images": len(cases), "wall_s": wall, "images_per_s": len(cases) / wall}


def pipeline(cfg) -> dict:
    import ray

    from nakt_ray.annotation.pipeline import annotate
    from nakt_ray.runtime.cluster import init_ray

    t0 = time.perf_counter()
    init_ray(cfg.ray)
    t_ray = time.perf_counter() - t0
    summary = annotate(cfg)
    wall = time.perf_counter() - t0
    ray.shutdown()
    return {"images": summary["cases_read"], "failed": summary["failed"], "pools": summary["pools"],
            "wall_s": wall, "ray_init_s": t_ray, "phases_s": summary["phases_s"],
            "images_per_s": summary["cases_read"] / wall,
            "images_per_s_excluding_ray_init": summary["cases_read"] / (wall - t_ray)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, default=HC18, help="folder of images (default: ../shared/data/hc18)")
    p.add_argument("--limit", type=int, default=None, help="use the first N images")
    p.add_argument("--size", type=int, default=128, help="teachers' input size (square)")
    p.add_argument("--batch", type=int, default=8, help="batch size of decoding and of every teacher")
    p.add_argument("--decode-batch", type=int, default=16,
                   help="rows per decode and fusion task of the pipeline (the plain loop works in --batch)")
    p.add_argument("--actors", type=int, default=1, help="actors per teacher pool (per_teacher layout)")
    p.add_argument("--pools", default="auto", choices=["auto", "per_teacher", "shared", "inline"],
                   help="annotate.pools of the pipeline runs (auto: per_teacher with GPUs; without, inline from "
                        "256 images, else shared)")
    p.add_argument("--shared-actors", type=int, default=None,
                   help="annotate.shared_actors (default: one per 4 CPUs, each with that many torch threads)")
    p.add_argument("--no-per-teacher", action="store_true",
                   help="skip the extra 1x pipeline run with one pool per teacher (run when --pools is not it)")
    p.add_argument("--no-fixed-cost", action="store_true",
                   help="skip the pipeline run on one batch that measures its fixed cost")
    p.add_argument("--repeat", type=int, default=4, help="pipeline memory run at this multiple of the input; 0: skip")
    p.add_argument("--keep-teachers-s", type=float, default=0.0,
                   help="annotate.keep_teachers_s of every pipeline run: the teachers in hosts reached from fused "
                        "tasks (decision 75; on the fresh instance each run starts, so no host outlives its run)")
    p.add_argument("--out", type=Path, default=Path("bench/results/annotate.json"))
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("NAKT_PROGRESS", "0")
    if not args.images.is_dir():
        raise SystemExit(f"image folder {args.images} not found; pass --images")

    work = Path(tempfile.mkdtemp(prefix="nakt-bench-annotate-"))
    try:
        teachers = make_teachers(work / "teachers", args.size)
        one = image_folder(args.images, work / "images_1x", args.limit, 1)
        cfg = run_config(work / "ray_1x", one, teachers, args.size, args.batch, args.actors, args.decode_batch,
                         args.pools, args.shared_actors, args.keep_teachers_s)

        with PeakMemory() as mem_plain:
            plain = plain_loop(cfg, work / "plain_out")
        plain.update(usage(mem_plain))
        with PeakMemory() as mem_ray:
            ray_1x = pipeline(cfg)
        ray_1x.update(usage(mem_ray))
        result = {
            "host": platform.node(), "cpus": os.cpu_count(), "images_folder": str(args.images),
            "teachers": [a for _, a in TEACHERS], "size": args.size, "batch": args.batch, "actors": args.actors,
            "plain_loop": plain, "ray_pipeline": ray_1x,
            "ratio_pipeline_over_plain": ray_1x["images_per_s"] / plain["images_per_s"],
        }
        if not args.no_fixed_cost:
            # The pipeline's fixed cost: the same run on one batch of images (Ray start, actors importing torch and
            # MONAI and loading the teachers, the stream's fill and drain). With the plain loop's rate it bounds
            # the ratio any input size can reach: plain_wall / (plain_wall + fixed), if the pipeline's
            # steady state matched the plain loop exactly.
            few = image_folder(args.images, work / "images_one_batch", args.batch, 1)
            fixed = pipeline(run_config(work / "ray_one_batch", few, teachers, args.size, args.batch, args.actors,
                                        args.decode_batch, args.pools, args.shared_actors, args.keep_teachers_s))
            fixed["fixed_s"] = fixed["wall_s"] - fixed["images"] / plain["images_per_s"]
            result["ray_pipeline_one_batch"] = fixed
            result["ratio_ceiling"] = plain["wall_s"] / (plain["wall_s"] + fixed["fixed_s"])
            result["ratio_ceiling_running_cluster"] = plain["wall_s"] / (plain["wall_s"] + fixed["fixed_s"]
                                                                          - fixed["ray_init_s"])
        if not args.no_per_teacher and ray_1x["pools"] != "per_teacher":  # the other layout, side by side
            with PeakMemory() as mem_pt:
                per_teacher = pipeline(run_config(work / "ray_1x_per_teacher", one, teachers, args.size, args.batch,
                                                  args.actors, args.decode_batch, "per_teacher"))
            per_teacher.update(usage(mem_pt))
            result["ray_pipeline_per_teacher"] = per_teacher
            result["ratio_per_teacher_pipeline_over_plain"] = per_teacher["images_per_s"] / plain["images_per_s"]
        if args.repeat:
            many = image_folder(args.images, work / f"images_{args.repeat}x", args.limit, args.repeat)
            with PeakMemory() as mem_many:
                ray_nx = pipeline(run_config(work / f"ray_{args.repeat}x", many, teachers, args.size, args.batch,
                                             args.actors, args.decode_batch, args.pools, args.shared_actors,
                                             args.keep_teachers_s))
            ray_nx.update(usage(mem_many))
            result[f"ray_pipeline_{args.repeat}x"] = ray_nx
            result["memory_ratio_nx_over_1x"] = ray_nx["peak_memory_mb"] / ray_1x["peak_memory_mb"]
            # the pipeline on the larger input against the plain loop's (steady) rate on the 1x input
            result["ratio_nx_pipeline_over_plain"] = ray_nx["images_per_s"] / plain["images_per_s"]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nannotation benchmark: {plain['images']} images, teachers {', '.join(result['teachers'])}, "
          f"{args.size}x{args.size}, batch {args.batch}, {os.cpu_count()} CPUs")
    print(f"  plain PyTorch loop : {plain['images_per_s']:7.2f} images/s  peak {plain['peak_memory_mb']:7.0f} MB  "
          f"CPU {plain['cpu_s']:.0f} s, {plain['busy_cores']:.2f} cores busy")
    runs = [("ray_pipeline", "ratio_pipeline_over_plain"),
            ("ray_pipeline_per_teacher", "ratio_per_teacher_pipeline_over_plain")]
    for key, ratio in runs:
        if key in result:
            r = result[key]
            print(f"  nakt Ray pipeline, {r['pools']:11s}: {r['images_per_s']:7.2f} images/s  peak "
                  f"{r['peak_memory_mb']:7.0f} MB  ({r['images_per_s_excluding_ray_init']:.2f} images/s without "
                  f"Ray start-up)  ratio / plain {result[ratio]:.3f}  CPU {r['cpu_s']:.0f} s, "
                  f"{r['busy_cores']:.2f} cores busy")
    if "ratio_ceiling" in result:
        f = result["ray_pipeline_one_batch"]
        print(f"  pipeline fixed cost (one batch of {f['images']} images): {f['fixed_s']:.1f} s, of which Ray start "
              f"{f['ray_init_s']:.1f} s -> highest ratio reachable at {plain['images']} images: "
              f"{result['ratio_ceiling']:.3f} ({result['ratio_ceiling_running_cluster']:.3f} on a running cluster)")
    if args.repeat:
        nx = result[f"ray_pipeline_{args.repeat}x"]
        print(f"  pipeline at {args.repeat}x input ({nx['images']} images): {nx['images_per_s']:.2f} images/s "
              f"({nx['images_per_s_excluding_ray_init']:.2f} without Ray start-up; ratio / plain "
              f"{result['ratio_nx_pipeline_over_plain']:.3f}, CPU {nx['cpu_s']:.0f} s), "
              f"peak {nx['peak_memory_mb']:.0f} MB "
              f"-> memory {args.repeat}x / 1x = {result['memory_ratio_nx_over_1x']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"  written: {args.out}")


if __name__ == "__main__":
    main()

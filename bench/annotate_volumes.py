"""Benchmark: annotation of volumes, the nakt Ray pipeline against a plain single-process loop, side by side.

    .venv/bin/python bench/annotate_volumes.py                                  # 40 volumes 96x96x64, 2-core sized
    .venv/bin/python bench/annotate_volumes.py --shape 120,160,160 --input-spacing 1  # 1-mm scans, annotated at 2 mm
    .venv/bin/python bench/annotate_volumes.py --shape 120,160,160 --patch 64  # that size at 2 mm (a bigger machine)

Cost on 2 CPU cores with the defaults: ~15-25 min (plain loop, pipeline at 1x, pipeline at 4x the volumes).

Both paths run the same three 3D teachers of different architectures (MONAI UNet, SegResNet, Attention U-Net with
``spatial_dims: 3``; random weights: throughput does not depend on them) over the same synthetic volumes (a body
with a few ellipsoids and noise, written as NIfTI), with the same code: reading and preprocessing
(``annotation.volumes.prepare_case``: orientation, 2 mm spacing, MRI z-score, crop, the image into the case's zarr
store), 3D sliding-window inference (``VolumeTeacherPredictor``: window = the patch, overlap 0.25, gaussian),
slab-wise fusion (``fuse_cases``, mean) and the same Parquet schema (version 2). The plain loop runs them one after
another in this process with every core for torch; the pipeline runs ``annotate`` on a fresh local Ray instance.

Printed and written as JSON (``--out``): volumes/s of each path and the ratio pipeline / plain; peak memory (PSS of
the process tree, Ray's processes included) of the plain loop, of the pipeline at 1x and at ``--repeat`` x the
volumes (symbolic links), and their ratio (does the pipeline stream?); bytes stored per volume (the stores on disk)
against the raw uint8 maps (teachers + soft label + hard label, uncompressed) and against float32 maps. With
``--running-cluster``, the pipeline also runs as jobs joining a ``ray start --head`` cluster: with the run's own
actor pools, and with the teachers kept between runs (``annotate.keep_teachers_s``) twice, the second finding them
loaded.
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
from annotate import PeakMemory, usage  # noqa: E402  (the 2D benchmark's process-tree meters)

TEACHERS = (("unet3d", "unet", {"channels": [8, 16, 32, 64], "strides": [2, 2, 2]}),
            ("segresnet3d", "segresnet", {"init_filters": 8}),
            ("attention3d", "attention_unet", {"channels": [8, 16, 32, 64], "strides": [2, 2, 2]}))
LABELS = ["background", "organ_a", "organ_b", "lesion"]


def make_volumes(folder: Path, n: int, shape: tuple[int, int, int], spacing: float, seed: int = 0) -> Path:
    """``n`` NIfTI volumes of ``shape`` (D, H, W) at ``spacing`` mm: a body with three ellipsoids, noise."""
    from nakt_ray.data.volumes import VolumeGeometry, write_volume

    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    for i in range(n):
        body = sum(g ** 2 for g in grid) < 0.8
        img = np.where(body, 100.0, 0.0)
        for value in (200.0, 300.0, 400.0):
            c, r = rng.uniform(-0.3, 0.3, 3), rng.uniform(0.1, 0.3, 3)
            img[sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, r)) < 1] = value
        img = (img + body * rng.normal(0, 10, shape)).astype(np.float32)
        write_volume(folder / "images" / f"vol{i:03d}.nii.gz", img,
                     VolumeGeometry.create(shape, (spacing,) * 3, (0.0, 0.0, 0.0)))
    return folder


def repeated(src: Path, dst: Path, repeat: int) -> Path:
    (dst / "images").mkdir(parents=True)
    for r in range(repeat):
        for p in sorted((src / "images").iterdir()):
            (dst / "images" / f"r{r}_{p.name}").symlink_to(p.resolve())
    return dst


def make_teachers(folder: Path, patch: int, spacing: float, teachers: int = len(TEACHERS)) -> list[tuple[str, str]]:
    """The first ``teachers`` of :data:`TEACHERS` as nakt model files (random weights, seeded) under ``folder``."""
    import torch

    from nakt_ray import config
    from nakt_ray.models.model_file import ModelSpec, save_model

    volume = config.build(config.VolumePreprocessConfig, volume_section(patch, spacing), "volume")
    out = []
    for i, (name, arch, args) in enumerate(TEACHERS[:teachers]):
        torch.manual_seed(i)
        spec = ModelSpec(name=name, arch=arch, arch_args={**args, "spatial_dims": 3}, labels=tuple(LABELS),
                         preprocess=config.PreprocessConfig(), volume=volume)
        out.append((name, str(save_model(folder / f"{name}.pt", spec.build(), spec))))
    return out


def volume_section(patch: int, spacing: float) -> dict:
    return {"spacing": [spacing] * 3, "orientation": "RAS", "modality": "mri", "crop_nonzero": True,
            "patch_size": [patch] * 3}


def run_config(run_dir: Path, volumes: Path, teachers: list[tuple[str, str]], patch: int, spacing: float,
               address: str | None = None, keep_teachers_s: float = 0.0, shared_actors: int | None = None):
    from nakt_ray import config

    return config.from_dict({
        "run_dir": str(run_dir),
        "data": {"labels": LABELS, "transferal": str(volumes)},
        "volume": volume_section(patch, spacing),
        "teachers": [{"name": n, "checkpoint": p, "sliding_window": True, "overlap": 0.25} for n, p in teachers],
        "student": {"arch": "unet", "arch_args": {"spatial_dims": 3}},
        "annotate": {"keep_teachers_s": keep_teachers_s, "shared_actors": shared_actors},
        "ray": {"address": address},
    })


def running_cluster(work: Path, one: Path, teachers: list[tuple[str, str]], args: argparse.Namespace) -> dict:
    """The pipeline as jobs on a running cluster (``ray start --head``, this process joining it as a driver for
    each run): with the run's own actor pools, then with the teachers kept (decision 75) twice: the first run
    starts the hosts, the second finds them loaded."""
    import subprocess

    from remote_teacher import free_port

    port = free_port()
    ray_cli = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen([ray_cli, "start", "--head", "--block", "--port", str(port), "--num-cpus",
                             str(os.cpu_count()), "--num-gpus", "0", "--include-dashboard", "false",
                             "--disable-usage-stats"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    out = {}
    try:
        time.sleep(10)  # the head's GCS, raylet and first idle workers
        for name, keep in (("pools", 0.0), ("kept_first", 600.0), ("kept", 600.0)):
            cfg = run_config(work / f"run_cluster_{name}", one, teachers, args.patch, args.spacing, address, keep,
                             args.shared_actors)
            out[name] = pipeline(cfg, work / f"ray_out_cluster_{name}")
            print(f"  running cluster, {name}: {out[name]['wall_s']:.1f} s", flush=True)
    finally:
        head.terminate()
        head.wait(timeout=60)
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if current.exists() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()
    return out


def plain_loop(cfg, out_dir: Path) -> dict:
    """The same work without Ray: prepare -> each teacher -> fuse -> Parquet, volume by volume, in this process."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from nakt_ray.annotation import parquet as ann
    from nakt_ray.annotation.pools import teacher_ref
    from nakt_ray.annotation.volumes import VOLUME_IN_CHANNELS, VolumeTeacherPredictor, fuse_cases, prepare_case
    from nakt_ray.data.volume_cases import list_volume_cases
    from nakt_ray.data.volumes import MAX_VOXELS

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True)
    store_root = str(out_dir)
    predictors = []
    for t in cfg.teachers:
        ref = teacher_ref(cfg, t)
        predictors.append(VolumeTeacherPredictor(out_dir=store_root, checkpoint=ref.checkpoint, name=ref.name,
                                                 in_channels=VOLUME_IN_CHANNELS,
                                                 num_threads=threads, options=ref.options, spatial_dims=3))
    names = [t.name for t in cfg.teachers]
    schema = ann.arrow_schema_volumes({"benchmark": "plain loop"})
    writer = pq.ParquetWriter(out_dir / "part-0.parquet", schema)
    cases = list_volume_cases(cfg.data.transferal)
    for c in cases:
        row = prepare_case({"case_id": c.case_id, "image_path": c.image_path, "mask_path": "", "original_id": ""},
                           out_dir=store_root, volume=cfg.volume, max_voxels=MAX_VOXELS)
        batch = {k: np.array([v], dtype=object) for k, v in row.items()}
        for predictor in predictors:
            batch = predictor(batch)
        rows = fuse_cases(batch, out_dir=store_root, teachers=names, rule="mean", weights=None)
        writer.write_table(pa.Table.from_pydict({k: list(v) for k, v in rows.items()}, schema=schema))
    writer.close()
    wall = time.perf_counter() - t0
    return {"volumes": len(cases), "wall_s": wall, "volumes_per_s": len(cases) / wall}


def pipeline(cfg, out_dir: Path) -> dict:
    import ray

    from nakt_ray.annotation.pipeline import annotate
    from nakt_ray.runtime.cluster import init_ray

    t0 = time.perf_counter()
    init_ray(cfg.ray)
    t_ray = time.perf_counter() - t0
    summary = annotate(cfg, output=str(out_dir))
    wall = time.perf_counter() - t0
    ray.shutdown()
    return {"volumes": summary["cases_read"], "failed": summary["failed"], "pools": summary["pools"],
            "wall_s": wall, "ray_init_s": t_ray, "volumes_per_s": summary["cases_read"] / wall,
            "volumes_per_s_excluding_ray_init": summary["cases_read"] / (wall - t_ray)}


def stored_bytes(out_dir: Path) -> int:
    return sum(p.stat().st_size for p in (out_dir / "stores").rglob("*") if p.is_file())


def raw_map_bytes(out_dir: Path, n_teachers: int, n_classes: int) -> tuple[int, int]:
    """Uncompressed bytes of the maps of every ok case: uint8 (teachers + soft label, C each; hard label) and the
    same as float32 probabilities."""
    from nakt_ray.annotation import parquet as ann

    table = ann.read_table(out_dir, columns=["status", "shape"]).to_pydict()
    voxels = sum(int(np.prod(json.loads(s))) for st, s in zip(table["status"], table["shape"]) if st == "ok")
    uint8 = voxels * ((n_teachers + 1) * n_classes + 1)
    return uint8, voxels * (n_teachers + 1) * n_classes * 4


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--volumes", type=int, default=40, help="synthetic volumes (>= 40 for the issue's figure)")
    p.add_argument("--shape", default="64,96,96", help="D,H,W voxels of each volume (at --spacing mm)")
    p.add_argument("--spacing", type=float, default=2.0, help="voxel spacing of the models (the run's grid), mm")
    p.add_argument("--input-spacing", type=float, default=None,
                   help="voxel spacing of the volumes as written, mm (default --spacing): e.g. 1 with --shape "
                        "120,160,160 for volumes of a scanner's size, resampled to --spacing by the pipeline")
    p.add_argument("--patch", type=int, default=48, help="the teachers' sliding window (a cube)")
    p.add_argument("--repeat", type=int, default=4, help="pipeline memory run at this multiple of the volumes; 0: skip")
    p.add_argument("--running-cluster", action="store_true",
                   help="also run the pipeline as jobs on a running cluster (`ray start --head`): with its own "
                        "pools, and with the teachers kept between runs (annotate.keep_teachers_s), twice")
    p.add_argument("--shared-actors", type=int, default=None,
                   help="annotate.shared_actors of the pipeline runs (default: one per 4 CPUs, with that many torch "
                        "threads)")
    p.add_argument("--out", type=Path, default=Path("bench/results/annotate_volumes.json"))
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("NAKT_PROGRESS", "0")
    shape = tuple(int(s) for s in args.shape.split(","))

    work = Path(tempfile.mkdtemp(prefix="nakt-bench-volumes-"))
    try:
        t0 = time.perf_counter()
        one = make_volumes(work / "volumes_1x", args.volumes, shape, args.input_spacing or args.spacing)
        t_make = time.perf_counter() - t0
        teachers = make_teachers(work / "teachers", args.patch, args.spacing)
        cfg = run_config(work / "run", one, teachers, args.patch, args.spacing, shared_actors=args.shared_actors)
        with PeakMemory() as mem_plain:
            plain = plain_loop(cfg, work / "plain_out")
        plain.update(usage(mem_plain))
        with PeakMemory() as mem_ray:
            ray_1x = pipeline(cfg, work / "ray_out_1x")
        ray_1x.update(usage(mem_ray))
        stored = stored_bytes(work / "ray_out_1x")
        raw_u8, raw_f32 = raw_map_bytes(work / "ray_out_1x", len(TEACHERS), len(LABELS))
        result = {
            "host": platform.node(), "cpus": os.cpu_count(), "volumes": args.volumes, "shape_dhw": list(shape),
            "spacing_mm": args.spacing, "input_spacing_mm": args.input_spacing or args.spacing,
            "patch": args.patch, "shared_actors": args.shared_actors, "teachers": [a for _, a, _ in TEACHERS],
            "classes": len(LABELS), "make_volumes_s": round(t_make, 1), "plain_loop": plain, "ray_pipeline": ray_1x,
            "ratio_pipeline_over_plain": ray_1x["volumes_per_s"] / plain["volumes_per_s"],
            "stored_bytes_per_volume": stored / args.volumes,
            "raw_uint8_map_bytes_per_volume": raw_u8 / args.volumes,
            "raw_float32_map_bytes_per_volume": raw_f32 / args.volumes,
            "stored_over_raw_uint8": stored / raw_u8,
        }
        if args.running_cluster:
            cluster = running_cluster(work, one, teachers, args)
            result["running_cluster"] = cluster
            result["ratio_running_cluster_over_plain"] = {k: r["volumes_per_s"] / plain["volumes_per_s"]
                                                          for k, r in cluster.items()}
        if args.repeat:
            many = repeated(one, work / f"volumes_{args.repeat}x", args.repeat)
            with PeakMemory() as mem_many:
                ray_nx = pipeline(run_config(work / "run_nx", many, teachers, args.patch, args.spacing,
                                             shared_actors=args.shared_actors),
                                  work / f"ray_out_{args.repeat}x")
            ray_nx.update(usage(mem_many))
            result[f"ray_pipeline_{args.repeat}x"] = ray_nx
            result["memory_ratio_nx_over_1x"] = ray_nx["peak_memory_mb"] / ray_1x["peak_memory_mb"]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nvolume annotation benchmark: {args.volumes} volumes {'x'.join(map(str, shape))} at "
          f"{args.input_spacing or args.spacing} mm, annotated at {args.spacing} mm, "
          f"teachers {', '.join(result['teachers'])} (3D, window {args.patch}^3), {os.cpu_count()} CPUs")
    print(f"  plain loop        : {plain['volumes_per_s']:.3f} volumes/s  peak {plain['peak_memory_mb']:6.0f} MB  "
          f"CPU {plain['cpu_s']:.0f} s, {plain['busy_cores']:.2f} cores busy")
    print(f"  nakt Ray pipeline : {ray_1x['volumes_per_s']:.3f} volumes/s  peak {ray_1x['peak_memory_mb']:6.0f} MB  "
          f"({ray_1x['volumes_per_s_excluding_ray_init']:.3f} without Ray start-up)  ratio / plain "
          f"{result['ratio_pipeline_over_plain']:.3f}")
    if args.running_cluster:
        for k, r in result["running_cluster"].items():
            print(f"  on a running cluster, {k:10s}: {r['volumes_per_s']:.3f} volumes/s  ratio / plain "
                  f"{result['ratio_running_cluster_over_plain'][k]:.3f}")
    if args.repeat:
        nx = result[f"ray_pipeline_{args.repeat}x"]
        print(f"  pipeline at {args.repeat}x volumes: {nx['volumes_per_s']:.3f} volumes/s, peak "
              f"{nx['peak_memory_mb']:.0f} MB -> memory {args.repeat}x / 1x = {result['memory_ratio_nx_over_1x']:.3f}")
    print(f"  stored per volume : {result['stored_bytes_per_volume'] / 2**20:.2f} MiB against "
          f"{result['raw_uint8_map_bytes_per_volume'] / 2**20:.2f} MiB raw uint8 maps "
          f"({result['stored_over_raw_uint8']:.3f}) and {result['raw_float32_map_bytes_per_volume'] / 2**20:.2f} MiB "
          "as float32")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"  written: {args.out}")


if __name__ == "__main__":
    main()

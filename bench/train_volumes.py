"""Benchmark: 3D student training on patches, Ray Train streaming patches against a plain PyTorch loop, side by side.

    .venv/bin/python bench/train_volumes.py                 # 24 volumes 64x96x96 at 2 mm, 48^3 patches, unet 3D
    .venv/bin/python bench/train_volumes.py --rounds 3      # alternate (b) and (a) three times; median ratio
    .venv/bin/python bench/train_volumes.py --volumes 4 --shape 32,48,48 --patch 32 --epochs 2   # smoke

Cost on 2 CPU cores: the smoke line above took 2 min wall (annotating its 4 volumes 16 s of it; Ray Train start-up
21 s for 1 worker, 36 s for 2), measured once while another training job shared the 2 cores. The defaults' cost is
an estimate scaled from that run, not measured: a steady plain epoch there took 0.13 s a 32^3 patch, so ~0.45 s a
48^3 patch, ~45 s for the 96 patches of an epoch, ~3-4 min per path for 4 epochs; with the Ray start-ups and the
annotation set (24 volumes, ~5 min the first time, cached in runs/bench/volume-annotations-*) ~15-20 min in all,
and ~7 min for every extra ``--rounds``.

The annotation set is made once: ``--volumes`` synthetic volumes (``bench/annotate_volumes.py``'s
``make_volumes``) annotated by ``annotation.pipeline.annotate`` with two small random 3D teachers (U-Net and
SegResNet, that benchmark's ``make_teachers``), mean fusion, schema version 2. All paths then train the same student
(``--arch`` with ``spatial_dims: 3``, seed 0; its spec built like ``train_student``'s, ``models.model_file.model_spec``)
on the same patches per case per epoch (``--patches-per-case`` of every ``ok`` case, a third centred on foreground),
drawn by the same code (``training.volume_data.annotation_patches``: one case's store opened once, only the patch
boxes read), with the same step (``training.loop.train_step``: ``data.augment3d.VolumeAugmenter``, loss, AdamW),
batch size and epochs:
  (a) ``training.loop.fit`` with 1 worker over ``training.volume_data.annotation_patch_dataset`` (what
      ``train_student`` builds for a 3D student): a Ray Train V2 ``TorchTrainer``, patches streamed from Ray Data
      tasks, torch on all cores;
  (b) a plain PyTorch loop in this process: a ``torch.utils.data.DataLoader`` with one worker process that draws
      the patches (case order and draws new every epoch, rows through a 4-batch shuffle buffer as the Ray loop's
      ``local_shuffle_buffer_size``), torch on all cores;
  (c) ``training.loop.fit`` with 2 workers (DDP over gloo, each with half the cores).
Steady-state patches/s over epochs 2..N (epoch 1 carries warm-up); start-up (everything in the wall time that is not
an epoch: for Ray, trainer and workers starting, per-epoch checkpoints and reports) apart. Per-epoch figures of the
Ray runs come from the training loop's own MLflow metrics (``epoch_s``, ``data_wait_s``). With ``--rounds N``, (b)
and (a) alternate N times and the ratio is the median of the rounds (the host's speed drifts over minutes).
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
from typing import Any

import numpy as np
import torch.utils.data

sys.path.insert(0, str(Path(__file__).resolve().parent))
import annotate_volumes as volumes_bench  # the volume annotation benchmark: volumes, teachers, config
from train import summarise, torch_seed  # the 2D training benchmark: the same figures

ROOT = Path(__file__).resolve().parents[1]
SMALL_UNET = {"channels": [16, 32, 64, 128], "strides": [2, 2, 2]}  # --arch unet without --arch-args
TEACHERS = 2  # the first two of annotate_volumes.TEACHERS (3D U-Net, SegResNet)


def volume_annotations(args) -> Path:
    """The annotation set of ``args.volumes`` synthetic volumes, annotated once by two small 3D teachers (cached)."""
    from nakt_ray.annotation.pipeline import annotate

    key = f"{args.volumes}-{'x'.join(map(str, args.shape))}-{args.spacing:g}mm-w{args.patch}"
    base = ROOT / "runs" / "bench"
    out = base / f"volume-annotations-{key}"
    if (out / "manifest.json").exists():
        return out
    for stale in (out, base / f"volume-images-{key}", base / f"volume-annotate-{key}"):
        shutil.rmtree(stale, ignore_errors=True)  # a run interrupted before its manifest: start again
    images = volumes_bench.make_volumes(base / f"volume-images-{key}", args.volumes, args.shape, args.spacing)
    teachers = volumes_bench.make_teachers(base / f"volume-teachers-w{args.patch}", args.patch, args.spacing, TEACHERS)
    annotate(run_config(args, base / f"volume-annotate-{key}", images, teachers), output=str(out))
    return out


def run_config(args, run_dir: Path, images: Path, teachers: list[tuple[str, str]]):
    """The annotation benchmark's run config (labels, volume preprocessing, the window = the patch)."""
    return volumes_bench.run_config(run_dir, images, teachers, args.patch, args.spacing)


def student_spec(args, annotations: Path):
    """The student's spec, as ``train_student`` builds it: a 3D architecture gets the run's volume preprocessing
    (the annotation run's config, with the set's teachers)."""
    from nakt_ray.annotation import parquet as ann
    from nakt_ray.models.model_file import model_spec

    manifest = ann.read_manifest(annotations)
    cfg = run_config(args, ROOT / "runs" / "bench" / "unused", Path(manifest["transferal"]),
                     [(t["name"], t["source"]) for t in manifest["teachers"]])
    return model_spec(cfg, "bench", args.arch, {**args.arch_args, "spatial_dims": 3}, "student", {})


def training_config(args, num_workers: int, threads: int):
    from nakt_ray.config import TrainingConfig

    return TrainingConfig(epochs=args.epochs, batch_size=args.batch, lr=1e-3, num_workers=num_workers,
                          cpus_per_worker=0.5, torch_threads=threads, augment=True, max_failures=0,
                          patches_per_case=args.patches_per_case)


def ok_cases(annotations: Path) -> list[dict[str, Any]]:
    """The ``ok`` cases of the set, sorted by id, as ``annotation_patch_dataset`` lists them."""
    from nakt_ray.annotation import parquet as ann

    rows = ann.read_table(annotations, columns=["case_id", "status", "store", "agreement"]).to_pylist()
    return sorted(({"case_id": r["case_id"], "store": r["store"],
                    "agreement": float("nan") if r["agreement"] is None else float(r["agreement"])}
                   for r in rows if r["status"] == "ok"), key=lambda r: r["case_id"])


def patch_kwargs(args, annotations: Path, tc) -> dict[str, Any]:
    """``annotation_patches``' arguments, as ``annotation_patch_dataset`` passes them (stored soft label, no
    agreement weighting: ``train_student``'s defaults)."""
    from nakt_ray.annotation import parquet as ann

    manifest = ann.read_manifest(annotations)
    return {"annotations_dir": str(annotations), "teachers": [t["name"] for t in manifest["teachers"]],
            "rule": None, "weights": None, "agreement": tc.agreement_weighting, "patch_size": (args.patch,) * 3,
            "patches_per_case": tc.patches_per_case, "foreground_share": tc.foreground_share, "seed": tc.seed}


def ray_fit(args, annotations: Path, num_workers: int, work: Path) -> dict:
    """(a) / (c): training.fit over the streamed patch dataset; per-epoch times from its MLflow metrics."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from nakt_ray.tracking import RunLogger
    from nakt_ray.training.loop import fit
    from nakt_ray.training.volume_data import annotation_patch_dataset, patch_options

    cpus = os.cpu_count() or 1
    tc = training_config(args, num_workers, max(1, cpus // num_workers))
    work.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{work / f'mlflow-{num_workers}.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment(f"bench-volumes-{num_workers}"))
    t0 = time.perf_counter()
    ds = annotation_patch_dataset(str(annotations), patch_size=(args.patch,) * 3, agreement=tc.agreement_weighting,
                                  seed=tc.seed, **patch_options(tc))
    torch_seed()
    fit(student_spec(args, annotations), ds, tc, out_path=work / f"model-{num_workers}.pt", storage=work / "ray_train",
        name=f"bench-volumes-{num_workers}w", logger=RunLogger(uri, run.info.run_id))
    wall = time.perf_counter() - t0

    def history(key: str) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]

    patches = len(ok_cases(annotations)) * args.patches_per_case
    return {**summarise(history("epoch_s"), wall, patches, args),
            "data_wait_s": [round(v, 2) for v in history("data_wait_s")]}


class PatchStream(torch.utils.data.IterableDataset):
    """The patches of one epoch, drawn in the DataLoader's worker as the Ray path's patch tasks draw them: cases in
    a new order every epoch, each with a new draw, ``annotation_patches`` per case, rows through a shuffle buffer.

    With ``persistent_workers`` the worker keeps this object, so ``__iter__`` (called there once an epoch) counts
    the epochs itself.
    """

    def __init__(self, cases: list[dict[str, Any]], kwargs: dict[str, Any], buffer_rows: int):
        super().__init__()
        self.cases, self.kwargs, self.buffer_rows, self.epoch = cases, kwargs, buffer_rows, 0

    def __iter__(self):
        from nakt_ray.training.volume_data import DRAW, annotation_patches

        rng = np.random.default_rng([self.kwargs["seed"], self.epoch])
        self.epoch += 1
        draws = rng.random(len(self.cases))
        buffer: list[dict[str, np.ndarray]] = []
        for i in rng.permutation(len(self.cases)):
            c = self.cases[i]
            rows = annotation_patches({"store": np.array([c["store"]], dtype=object),
                                       "agreement": np.array([c["agreement"]]), DRAW: np.array([draws[i]])},
                                      **self.kwargs)
            buffer.extend({k: v[j] for k, v in rows.items()} for j in range(len(rows["image"])))
            while len(buffer) >= self.buffer_rows:
                yield _pop_random(buffer, rng)
        while buffer:
            yield _pop_random(buffer, rng)


def _pop_random(buffer: list, rng: np.random.Generator) -> Any:
    j = int(rng.integers(len(buffer)))
    buffer[j], buffer[-1] = buffer[-1], buffer[j]
    return buffer.pop()


def plain_loop(args, annotations: Path) -> dict:
    """(b): the same steps in this process, a one-worker DataLoader drawing the same patches."""
    from nakt_ray.data.augment3d import VolumeAugmenter
    from nakt_ray.losses import LOG_PARTS_EVERY
    from nakt_ray.training.loop import train_step

    cpus = os.cpu_count() or 1
    torch.set_num_threads(cpus)
    t0 = time.perf_counter()
    tc = training_config(args, 1, cpus)
    cases = ok_cases(annotations)
    stream = PatchStream(cases, patch_kwargs(args, annotations, tc), buffer_rows=4 * args.batch)
    loader = torch.utils.data.DataLoader(stream, batch_size=args.batch, num_workers=1, persistent_workers=True)
    torch_seed()
    model = student_spec(args, annotations).build()
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=tc.epochs, eta_min=tc.lr * 0.05)  # as fit's loop
    augmenter = VolumeAugmenter(tc.augment_strength, seed=tc.seed)
    epochs, waits = [], []
    for _ in range(args.epochs):
        e0, wait = time.perf_counter(), 0.0
        model.train()
        batches, steps = iter(loader), 0
        while True:
            tw = time.perf_counter()
            batch = next(batches, None)
            wait += time.perf_counter() - tw
            if batch is None:
                break
            train_step(model, opt, batch, tc, augmenter, log_parts=steps % LOG_PARTS_EVERY == 0)  # as fit's loop
            steps += 1
        sched.step()
        epochs.append(time.perf_counter() - e0)
        waits.append(round(wait, 2))
    return {**summarise(epochs, time.perf_counter() - t0, len(cases) * args.patches_per_case, args),
            "data_wait_s": waits}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--volumes", type=int, default=24, help="synthetic volumes in the annotation set")
    p.add_argument("--shape", default="64,96,96", help="D,H,W voxels of each volume (at --spacing mm)")
    p.add_argument("--spacing", type=float, default=2.0, help="voxel spacing of the volumes and the models, mm")
    p.add_argument("--patch", type=int, default=48, help="training patch (a cube; also the teachers' window)")
    p.add_argument("--arch", default="unet", help="student architecture (zoo name; spatial_dims 3 is added)")
    p.add_argument("--arch-args", type=json.loads, default=None,
                   help=f"JSON arch_args of the student (default for unet: {json.dumps(SMALL_UNET)}, else {{}})")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--patches-per-case", type=int, default=4, help="patches of every case per epoch")
    p.add_argument("--no-two-workers", action="store_true", help="skip (c)")
    p.add_argument("--rounds", type=int, default=1,
                   help="alternate (b) and (a) this many times; the ratio is the median over rounds")
    p.add_argument("--out", type=Path, default=Path("bench/results/train_volumes.json"))
    args = p.parse_args()
    args.shape = tuple(int(s) for s in args.shape.split(","))
    if args.arch_args is None:
        args.arch_args = dict(SMALL_UNET) if args.arch == "unet" else {}
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("NAKT_PROGRESS", "0")

    from nakt_ray.config import RayConfig
    from nakt_ray.runtime.cluster import init_ray

    init_ray(RayConfig())
    t0 = time.perf_counter()
    annotations = volume_annotations(args)
    t_annotate = time.perf_counter() - t0
    work = Path(tempfile.mkdtemp(prefix="nakt-bench-train-volumes-"))
    result: dict[str, Any] = {
        "host": platform.node(), "cpus": os.cpu_count(), "annotations": str(annotations),
        "annotate_s": round(t_annotate, 1), "cases": len(ok_cases(annotations)), "shape_dhw": list(args.shape),
        "spacing_mm": args.spacing, "patch": args.patch, "arch": args.arch, "arch_args": args.arch_args,
        "batch": args.batch, "epochs": args.epochs, "patches_per_case": args.patches_per_case}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every phase, so a failure later keeps what was measured
        args.out.write_text(json.dumps(result, indent=2))

    # --rounds: the plain loop and the 1-worker Ray run alternate, so that a host whose speed drifts over minutes
    # shifts both paths alike (bench/train.py, docs/benchmarks.md); the ratio is per round, its median the figure.
    rounds = []
    for r in range(args.rounds):
        one = {"plain_loop": plain_loop(args, annotations),
               "ray_1_worker": ray_fit(args, annotations, 1, work / f"round{r}")}
        one["ratio_ray_over_plain"] = (one["ray_1_worker"]["steady_samples_per_s"]
                                       / one["plain_loop"]["steady_samples_per_s"])
        rounds.append(one)
        result.update({k: v for k, v in one.items() if not k.startswith("ratio")})  # the last round's runs
        result["rounds"] = rounds
        result["ratio_ray_over_plain"] = float(np.median([x["ratio_ray_over_plain"] for x in rounds]))
        result["ratio_ray_over_plain_per_round"] = [round(x["ratio_ray_over_plain"], 3) for x in rounds]
        save()
    if not args.no_two_workers:
        result["ray_2_workers"] = ray_fit(args, annotations, 2, work / "two")
        result["ratio_2_over_1_workers"] = (result["ray_2_workers"]["steady_samples_per_s"]
                                            / result["ray_1_worker"]["steady_samples_per_s"])
        save()
    shutil.rmtree(work, ignore_errors=True)

    n = result["plain_loop"]["samples_per_epoch"]
    print(f"\n3D training benchmark: {result['cases']} cases x {args.patches_per_case} patches = {n} patches/epoch of "
          f"{args.patch}^3, {args.arch} {json.dumps(args.arch_args)} 3D, batch {args.batch}, {args.epochs} epochs, "
          f"{os.cpu_count()} CPUs (annotation set: {t_annotate:.0f} s)")
    for key, label in (("plain_loop", "plain PyTorch + DataLoader"), ("ray_1_worker", "Ray Train, 1 worker"),
                       ("ray_2_workers", "Ray Train, 2 workers")):
        if key in result:
            r = result[key]
            print(f"  {label:28s}: {r['steady_samples_per_s']:7.2f} patches/s steady, start-up {r['startup_s']:.1f} s,"
                  f" epochs {r['epoch_s']}, data wait {r['data_wait_s']}")
    print(f"  ratio Ray 1 worker / plain (steady state, median of {args.rounds} rounds): "
          f"{result['ratio_ray_over_plain']:.3f} {result['ratio_ray_over_plain_per_round']}")
    if "ratio_2_over_1_workers" in result:
        print(f"  ratio 2 workers / 1 worker: {result['ratio_2_over_1_workers']:.3f}")
    print(f"  written: {args.out}")


if __name__ == "__main__":
    main()

"""Benchmark: student training with Ray Train streaming from Parquet against a plain PyTorch loop, side by side.

    .venv/bin/python bench/train.py                      # HC18 annotations (made on first use), unet, 128x128
    .venv/bin/python bench/train.py --annotations DIR    # any annotation set written by `nakt annotate`
    .venv/bin/python bench/train.py --kill-worker        # also: 2-worker run on HC18, one worker killed mid-run

Cost on 2 CPU cores: ~8-10 min with defaults (annotating HC18 the first time adds ~2 min; cached in
runs/bench/hc18-annotations-<size>).

Same model (``--arch``, seed 0), same data (every ``ok`` row of the annotation set), same batch size, same number
of epochs and steps, same step function (``training.train_step``: MONAI augmentation, loss, AdamW):
  (a) ``training.fit``: a Ray Train V2 ``TorchTrainer`` with 1 worker reading its shard of the Parquet set as a
      streaming Ray Dataset (``datasets.annotation_dataset``), torch on all cores;
  (a') the same with the dataset materialised in Ray's object store first (what ``train_student`` does for a set
      under ``training.cache_mb``, 1 GiB decoded by default: HC18's 600 cases at 128x128 are 118 MiB), so each
      epoch is a full reshuffle of held blocks;
  (b) a plain PyTorch loop: a ``torch.utils.data.DataLoader`` over the same Parquet rows (decoded by the same
      ``datasets.annotation_batch``, one loader worker process), torch on all cores, in this process;
  (c) ``training.fit`` with 2 workers (DDP over gloo, each with half the cores).
With ``--rounds N`` (b), (a) and (a') alternate N times and the ratios are medians over the rounds (the
host's speed drifts over minutes). Steady-state samples/s is measured over epochs 2..N (epoch 1 carries warm-up);
start-up (for Ray: trainer and worker start, dataset set-up; everything in the wall time that is not an epoch) is
reported separately.
Per-epoch figures of the Ray runs come from the training loop's own MLflow metrics (``epoch_s``).

``--kill-worker``: a 2-worker ``train_student`` run on the same annotations with 40 labeled HC18 images as
validation set; once the first checkpoint is written one Train worker process is killed (SIGKILL); the run must
recover from the checkpoint (``FailureConfig``), finish and register the student. Reports the time lost.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HC18 = ROOT.parent / "shared" / "data" / "hc18"


def hc18_annotations(size: int) -> Path:
    """The HC18 images annotated by three random teachers of different architectures (cached)."""
    out = ROOT / "runs" / "bench" / f"hc18-annotations-{size}"
    if (out / "manifest.json").exists():
        return out
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    from annotate import make_teachers, run_config  # bench/annotate.py

    from nakt_ray.annotation.pipeline import annotate

    teachers = make_teachers(out.parent / f"teachers-{size}", size)
    cfg = run_config(out.parent / f"annotate-{size}", HC18 / "images", teachers, size, 8, 1)
    annotate(cfg, output=str(out))
    return out


def training_config(args, num_workers: int, threads: int):
    from nakt_ray.config import TrainingConfig

    return TrainingConfig(epochs=args.epochs, batch_size=args.batch, lr=1e-3, num_workers=num_workers,
                          cpus_per_worker=0.5, torch_threads=threads, augment=True, max_failures=0)


def spec_for(manifest: dict, arch: str):
    from nakt_ray.config import PreprocessConfig
    from nakt_ray.models.model_file import ModelSpec

    return ModelSpec(name="bench", arch=arch, arch_args={}, labels=tuple(manifest["labels"]),
                     preprocess=PreprocessConfig(**{**manifest["preprocess"],
                                                    "size": tuple(manifest["preprocess"]["size"])}))


def ray_fit(args, annotations: Path, num_workers: int, work: Path, held: bool = False) -> dict:
    """(a) / (c): training.fit on the streaming Parquet dataset (``held``: materialised first, as ``train_student``
    does for sets under ``training.cache_mb``); per-epoch times from its MLflow metrics."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from nakt_ray.annotation import parquet as ann
    from nakt_ray.tracking import RunLogger
    from nakt_ray.training.loop import fit
    from nakt_ray.training.student_data import annotation_dataset

    cpus = os.cpu_count() or 1
    tc = training_config(args, num_workers, max(1, cpus // num_workers))
    work.mkdir(parents=True, exist_ok=True)
    tag = f"{num_workers}{'-held' if held else ''}"
    uri = f"sqlite:///{work / f'mlflow-{tag}.db'}"
    mlflow.set_tracking_uri(uri)
    run = MlflowClient(uri).create_run(MlflowClient(uri).create_experiment(f"bench-{tag}"))
    manifest = ann.read_manifest(annotations)
    ds = annotation_dataset(str(annotations), batch_size=args.batch, shuffle=True, seed=0)
    t_held = time.perf_counter()
    if held:
        ds = ds.materialize()
    t_held = time.perf_counter() - t_held
    torch_seed()
    t0 = time.perf_counter()
    fit(spec_for(manifest, args.arch), ds, tc, out_path=work / f"model-{tag}.pt",
                 storage=work / "ray_train", name=f"bench-{tag}w", logger=RunLogger(uri, run.info.run_id))
    wall = time.perf_counter() - t0 + t_held  # materialising is start-up
    def history(key: str) -> list[float]:
        return [m.value for m in sorted(MlflowClient(uri).get_metric_history(run.info.run_id, key),
                                        key=lambda m: m.step)]

    # data_wait_s: per epoch, the time rank 0 waited for its next batch (the rest is the training step).
    return {**summarise(history("epoch_s"), wall, rows(annotations), args), "input": "held" if held else "streaming",
            "data_wait_s": [round(v, 2) for v in history("data_wait_s")]}


def rows(annotations: Path) -> int:
    from nakt_ray.annotation import parquet as ann

    status = ann.read_table(annotations, columns=["status"]).column("status").to_pylist()
    return sum(s == "ok" for s in status)


def summarise(epoch_s: list[float], wall: float, n: int, args) -> dict:
    steady = epoch_s[1:] or epoch_s
    return {"samples_per_epoch": n, "epochs": len(epoch_s), "epoch_s": [round(e, 2) for e in epoch_s],
            "wall_s": round(wall, 2), "startup_s": round(wall - sum(epoch_s), 2),
            "steady_samples_per_s": n * len(steady) / sum(steady)}


def torch_seed() -> None:
    import torch

    torch.manual_seed(0)


class ParquetRows:
    """A map-style torch Dataset over the ``ok`` rows of an annotation set, decoded like the Ray path."""

    def __init__(self, annotations: Path):
        from nakt_ray.annotation import parquet as ann

        self.manifest = ann.read_manifest(annotations)
        table = ann.read_table(annotations, columns=["status", "image", "soft_label"])
        keep = np.array(table.column("status").to_pylist()) == "ok"
        self.image = [b for b, k in zip(table.column("image").to_pylist(), keep) if k]
        self.label = [b for b, k in zip(table.column("soft_label").to_pylist(), keep) if k]

    def __len__(self) -> int:
        return len(self.image)

    def __getitem__(self, i: int) -> dict:
        from nakt_ray.training.student_data import annotation_batch

        m = self.manifest
        out = annotation_batch({"image": [self.image[i]], "soft_label": [self.label[i]]},
                               image_shape=tuple(m["image_shape"]), label_shape=tuple(m["label_shape"]),
                               prob_dtype=m["prob_dtype"])
        return {k: v[0] for k, v in out.items()}


def plain_loop(args, annotations: Path) -> dict:
    """(b): the same steps in this process with a DataLoader over the same Parquet rows."""
    import torch

    from nakt_ray.data.augment import Augmenter
    from nakt_ray.losses import LOG_PARTS_EVERY
    from nakt_ray.training.loop import train_step

    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    data = ParquetRows(annotations)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch, shuffle=True, num_workers=1,
                                         persistent_workers=True)
    torch_seed()
    tc = training_config(args, 1, os.cpu_count() or 1)
    model = spec_for(data.manifest, args.arch).build()
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    augmenter = Augmenter(tc.augment_strength, seed=0)
    epochs = []
    for _ in range(args.epochs):
        e0 = time.perf_counter()
        model.train()
        for step, batch in enumerate(loader):
            train_step(model, opt, batch, tc, augmenter, log_parts=step % LOG_PARTS_EVERY == 0)  # as fit's loop
        epochs.append(time.perf_counter() - e0)
    return summarise(epochs, time.perf_counter() - t0, len(data), args)


def kill_worker_check(args, annotations: Path, work: Path) -> dict:
    """A 2-worker student run on HC18 annotations; one Train worker SIGKILLed after the first checkpoint."""
    from nakt_ray import config
    from nakt_ray.training.student import train_student

    val = work / "hc18_val"
    for sub in ("images", "masks"):
        (val / sub).mkdir(parents=True)
        for p in sorted((HC18 / sub).iterdir())[-40:]:
            (val / sub / p.name).symlink_to(p.resolve())
    manifest = json.loads((annotations / "manifest.json").read_text())
    cfg = config.from_dict({
        "run_dir": str(work / "fault_run"), "data": {"labels": manifest["labels"], "val": str(val)},
        "preprocess": {**manifest["preprocess"]},
        "teachers": [{"name": t["name"], "checkpoint": t["source"]} for t in manifest["teachers"]],
        "student": {"name": "hc18-fault", "arch": args.arch, "annotations": str(annotations)},
        "training": {"epochs": 4, "batch_size": args.batch, "num_workers": 2, "cpus_per_worker": 0.5,
                     "torch_threads": 1, "max_failures": 2, "min_steps": 0},  # (its own budget: 4 epochs)
        "tracking": {"experiment": "bench-fault", "registered_model": "bench-fault-student"},
    })
    storage = Path(cfg.run_dir) / "ray_train"
    killed: list[tuple[int, float]] = []
    t0 = time.perf_counter()

    def watch() -> None:
        while not killed:
            if storage.exists() and any(storage.glob("*/checkpoint_*")):
                pids = train_worker_pids()
                if pids:
                    os.kill(pids[-1], signal.SIGKILL)
                    killed.append((pids[-1], time.perf_counter() - t0))
                    return
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()
    result = train_student(cfg)
    return {"killed_worker_pid": killed[0][0] if killed else None,
            "killed_at_s": round(killed[0][1], 1) if killed else None,
            "wall_s": round(time.perf_counter() - t0, 1), "final_epoch": result["metrics"].get("epoch"),
            "val_dice": result["metrics"].get("val_dice"), "model_uri": result["model_uri"],
            "registered_version": result["version"]}


def train_worker_pids() -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::RayTrainWorker"):
                    out.append(int(entry.name))
            except OSError:
                pass
    return sorted(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--annotations", type=Path, help="annotation set (default: HC18, annotated on first use)")
    p.add_argument("--size", type=int, default=128, help="image size when annotating HC18")
    p.add_argument("--arch", default="unet", help="student architecture (zoo name, default arguments)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--no-two-workers", action="store_true", help="skip (c)")
    p.add_argument("--no-held", action="store_true", help="skip (a'), the 1-worker run on the materialised set")
    p.add_argument("--rounds", type=int, default=1,
                   help="alternate (b), (a) and (a') this many times; the ratios are the medians over rounds")
    p.add_argument("--kill-worker", action="store_true", help="also run the worker-kill check")
    p.add_argument("--out", type=Path, default=Path("bench/results/train.json"))
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("NAKT_PROGRESS", "0")

    from nakt_ray.config import RayConfig
    from nakt_ray.runtime.cluster import init_ray

    init_ray(RayConfig())
    annotations = args.annotations or hc18_annotations(args.size)
    work = Path(tempfile.mkdtemp(prefix="nakt-bench-train-"))
    result = {"host": platform.node(), "cpus": os.cpu_count(), "annotations": str(annotations), "arch": args.arch,
              "batch": args.batch, "epochs": args.epochs}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every phase, so a failure later keeps what was measured
        args.out.write_text(json.dumps(result, indent=2))

    # --rounds: the plain loop and the 1-worker Ray runs alternate, so that a host whose speed drifts over minutes
    # (seen here: 1.5x) shifts both paths alike; the ratios are per round and their median is the figure.
    rounds = []
    for r in range(args.rounds):
        one = {"plain_loop": plain_loop(args, annotations),
               "ray_1_worker": ray_fit(args, annotations, 1, work / f"round{r}")}
        one["ratio_ray_over_plain"] = (one["ray_1_worker"]["steady_samples_per_s"]
                                       / one["plain_loop"]["steady_samples_per_s"])
        if not args.no_held:
            one["ray_1_worker_held"] = ray_fit(args, annotations, 1, work / f"round{r}", held=True)
            one["ratio_ray_held_over_plain"] = (one["ray_1_worker_held"]["steady_samples_per_s"]
                                                / one["plain_loop"]["steady_samples_per_s"])
        rounds.append(one)
        result.update({k: v for k, v in one.items() if not k.startswith("ratio")})  # the last round's runs
        result["rounds"] = rounds  # every round's runs and ratios
        for key in [k for k in one if k.startswith("ratio")]:
            result[key] = float(np.median([x[key] for x in rounds]))
            result[f"{key}_per_round"] = [round(x[key], 3) for x in rounds]
        save()
    if not args.no_two_workers:
        result["ray_2_workers"] = ray_fit(args, annotations, 2, work)
        result["ratio_2_over_1_workers"] = (result["ray_2_workers"]["steady_samples_per_s"]
                                            / result["ray_1_worker"]["steady_samples_per_s"])
        save()
    if args.kill_worker:
        result["kill_worker"] = kill_worker_check(args, annotations, work)
        save()

    n = result["plain_loop"]["samples_per_epoch"]
    print(f"\ntraining benchmark: {n} samples/epoch, {args.arch}, batch {args.batch}, {args.epochs} epochs, "
          f"{os.cpu_count()} CPUs")
    for key, label in (("plain_loop", "plain PyTorch + DataLoader"), ("ray_1_worker", "Ray Train, 1 worker"),
                       ("ray_1_worker_held", "Ray Train, 1 worker, held"), ("ray_2_workers", "Ray Train, 2 workers")):
        if key in result:
            r = result[key]
            print(f"  {label:28s}: {r['steady_samples_per_s']:7.2f} samples/s steady, start-up {r['startup_s']:.1f} s,"
                  f" epochs {r['epoch_s']}")
    print(f"  ratio Ray 1 worker / plain (steady state, median of {args.rounds} rounds): "
          f"{result['ratio_ray_over_plain']:.3f} streaming {result['ratio_ray_over_plain_per_round']}"
          + (f", {result['ratio_ray_held_over_plain']:.3f} held {result['ratio_ray_held_over_plain_per_round']}"
             if "ratio_ray_held_over_plain" in result else ""))
    if "ratio_2_over_1_workers" in result:
        print(f"  ratio 2 workers / 1 worker: {result['ratio_2_over_1_workers']:.3f}")
    if "kill_worker" in result:
        print(f"  worker killed: {json.dumps(result['kill_worker'])}")
    print(f"  written: {args.out}")


if __name__ == "__main__":
    main()

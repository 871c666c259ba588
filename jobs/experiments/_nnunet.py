"""An nnU-Net v2 2D teacher made by nnU-Net's own code from a labeled folder (E8's site_a), and the resampling of a
labeled folder to a run's grid that it shares with the other sites.

    .venv/bin/python jobs/experiments/_nnunet.py --data runs/e8/splits/site_a --root runs/e8/nnunet --size 96 \
        --epochs 12 --iterations 50

nnU-Net reads its folders from environment variables when it is imported (``nnunetv2/paths.py``), and its trainer
prints, seeds and may spawn processes, so this runs as a process of its own (:func:`make_teacher` starts it with
nnU-Net's variables set). Steps, all nnU-Net's except the first and third:

1. the labeled folder written as nnU-Net's raw 2D dataset (``imagesTr/<case>_0000.png``, ``labelsTr/<case>.png``,
   ``dataset.json``), every image resized to the run's grid as nakt resizes it (:func:`on_grid`: bilinear with
   anti-aliasing, masks nearest), so nnU-Net plans at that grid and its spacing (1 x 1) is the run's;
2. ``nnUNetv2_plan_and_preprocess -c 2d`` (the command);
3. the plan's network narrowed (``--max-features`` per stage at most; the stages, kernels, strides, normalisation
   and patch size nnU-Net planned are kept), so that it trains in minutes on 2 CPU cores;
4. ``nnUNetTrainer`` on fold ``all`` (every case of the site: nakt's teachers also train on their whole site),
   ``--epochs`` x ``--iterations`` with its own augmentation, loss (Dice + CE, deep supervision) and poly schedule;
   ``run_training`` writes ``fold_all/checkpoint_final.pth``.

Prints one JSON line last: the results folder, the plan's patch size, features and batch size, and the seconds of
each step.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

CONFIGURATION = "2d"


def on_grid(folder: Path, size: tuple[int, int], labels: list[str]) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Each labeled case of a folder source on the run's grid: ``(case_id, image [H, W] uint8, mask [H, W] uint8)``
    at ``size`` (H, W), resized as nakt's preprocessing resizes (``preprocess_image`` with ``normalize: none``,
    bilinear with anti-aliasing when shrinking; ``preprocess_mask``, nearest), the image rounded back to 8 bits."""
    from nakt_ray.config import PreprocessConfig
    from nakt_ray.data.preprocess import preprocess_image, preprocess_mask
    from nakt_ray.data.readers import list_cases, read_image, read_mask

    pre = PreprocessConfig(size=tuple(size), normalize="none", in_channels=1)
    for case in list_cases(folder, require_masks=True):
        image, geom = preprocess_image(read_image(case.image_path), pre)
        mask = preprocess_mask(read_mask(case.mask_path, len(labels)), geom)
        yield case.case_id.replace("/", "__"), np.clip(np.rint(image[0]), 0, 255).astype(np.uint8), mask


def _write_pngs(folder: Path, images: Path, masks: Path, image_suffix: str, size: tuple[int, int],
                labels: list[str]) -> int:
    """Each case of ``folder`` on the run's grid as ``images/<id><image_suffix>.png`` and ``masks/<id>.png``."""
    from PIL import Image

    for sub in (images, masks):
        sub.mkdir(parents=True, exist_ok=True)
    n = 0
    for case_id, image, mask in on_grid(folder, size, labels):
        Image.fromarray(image).save(images / f"{case_id}{image_suffix}.png")
        Image.fromarray(mask).save(masks / f"{case_id}.png")
        n += 1
    return n


def write_folder(folder: Path, out: Path, size: tuple[int, int], labels: list[str]) -> int:
    """``folder`` on the run's grid as a folder source (``out/images``, ``out/masks``, PNG); returns the cases."""
    return _write_pngs(folder, out / "images", out / "masks", "", size, labels)


def write_raw(folder: Path, raw: Path, size: tuple[int, int], labels: list[str]) -> int:
    """``folder`` as nnU-Net's raw 2D PNG dataset at ``raw`` (one grey channel, labels = class indices)."""
    n = _write_pngs(folder, raw / "imagesTr", raw / "labelsTr", "_0000", size, labels)
    if n < 5:  # nnU-Net's planning and its 5-fold split want at least 5 cases
        raise SystemExit(f"{folder}: {n} labeled cases; an nnU-Net dataset needs at least 5")
    dataset = {"channel_names": {"0": "ultrasound"},  # not CT: nnU-Net z-scores each image, as nakt's teachers do
               "labels": {name: i for i, name in enumerate(labels)}, "numTraining": n, "file_ending": ".png"}
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return n


def narrow_plans(plans_file: Path, max_features: int) -> dict:
    """At most ``max_features`` features per stage in the 2D configuration's network; the rest as planned."""
    plans = json.loads(plans_file.read_text())
    cfg = plans["configurations"][CONFIGURATION]
    kwargs = cfg["architecture"]["arch_kwargs"]
    kwargs["features_per_stage"] = [min(f, max_features) for f in kwargs["features_per_stage"]]
    plans_file.write_text(json.dumps(plans, indent=2))
    return {"patch_size": cfg["patch_size"], "batch_size": cfg["batch_size"], "n_stages": kwargs["n_stages"],
            "features_per_stage": kwargs["features_per_stage"], "spacing": cfg["spacing"],
            "normalization": cfg["normalization_schemes"]}


def train(pre: Path, epochs: int, iterations: int) -> None:
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    plans = load_json(str(pre / "nnUNetPlans.json"))
    plans["continue_training"] = False  # nnunetv2 2.7.0 pops this key in the trainer's __init__
    trainer = nnUNetTrainer(plans, CONFIGURATION, "all", load_json(str(pre / "dataset.json")), torch.device("cpu"))
    trainer.num_epochs = epochs
    trainer.num_iterations_per_epoch = iterations
    trainer.num_val_iterations_per_epoch = 2  # fold all validates on its training cases: only a progress figure
    trainer.run_training()


def env_for(root: Path) -> dict[str, str]:
    """nnU-Net's folders and its single-process settings (read when nnunetv2 is imported)."""
    return {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
            "nnUNet_results": str(root / "results"), "nnUNet_n_proc_DA": "0", "nnUNet_compile": "false",
            "nnUNet_def_n_proc": "1"}


def make_teacher(data: Path, root: Path, *, size: int, labels: list[str], epochs: int, iterations: int,
                 max_features: int, dataset_id: int, log: Path) -> dict:
    """Run this module as a process with nnU-Net's variables; returns what it printed last (the results folder
    and the plan). Its output goes to ``log``; a failure names it."""
    root = root.resolve()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--data", str(Path(data).resolve()), "--root", str(root),
           "--size", str(size), "--labels", ",".join(labels), "--epochs", str(epochs), "--iterations",
           str(iterations), "--max-features", str(max_features), "--dataset-id", str(dataset_id)]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **env_for(root)})
    lines = log.read_text().strip().splitlines()
    if proc.returncode != 0 or not lines or not lines[-1].startswith("{"):
        raise RuntimeError(f"the nnU-Net teacher failed (exit {proc.returncode}); see {log}:\n"
                           + "\n".join(lines[-15:]))
    return json.loads(lines[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="labeled folder source (images/, masks/)")
    p.add_argument("--root", type=Path, required=True, help="nnU-Net's raw, preprocessed and results folders")
    p.add_argument("--size", type=int, default=96, help="the run's grid (size x size)")
    p.add_argument("--labels", default="background,head", help="class names, background first")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--iterations", type=int, default=50, help="training iterations per epoch")
    p.add_argument("--max-features", type=int, default=64, help="features per stage at most")
    p.add_argument("--dataset-id", type=int, default=808)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on 2 shared cores more threads made training several times slower)")
    args = p.parse_args()
    root = args.root.resolve()
    os.environ.update(env_for(root))  # before nnunetv2 is imported
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    labels = [x for x in args.labels.split(",") if x]
    name = f"Dataset{args.dataset_id:03d}_NaktSite"
    timings = {}
    t = time.perf_counter()
    cases = write_raw(args.data, root / "raw" / name, (args.size, args.size), labels)
    timings["raw_s"] = time.perf_counter() - t
    t = time.perf_counter()
    command = Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"
    subprocess.run([str(command), "-d", str(args.dataset_id), "-c", CONFIGURATION, "-npfp", "1", "-np", "1",
                    "--verify_dataset_integrity"], check=True, env={**os.environ, "nnUNet_n_proc_DA": "1"})
    timings["plan_preprocess_s"] = time.perf_counter() - t
    plan = narrow_plans(root / "preprocessed" / name / "nnUNetPlans.json", args.max_features)
    t = time.perf_counter()
    train(root / "preprocessed" / name, args.epochs, args.iterations)
    timings["train_s"] = time.perf_counter() - t
    folder = root / "results" / name / f"nnUNetTrainer__nnUNetPlans__{CONFIGURATION}"
    print(json.dumps({"folder": str(folder), "cases": cases, "plan": plan, "epochs": args.epochs,
                      "iterations": args.iterations, "timings": timings}))


if __name__ == "__main__":  # nnU-Net's data loaders may spawn processes that import this file again
    main()

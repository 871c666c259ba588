"""Make a real nnU-Net v2 results folder with nnU-Net's own code, for tests/test_nnunet_teacher.py.

Run as a script (``python tests/_nnunet_folder.py ROOT --dims 2 --folds 0 1``): nnU-Net reads its folders from
environment variables when it is imported (``nnunetv2/paths.py``), and its trainer prints, seeds and spawns, so it
runs in a process of its own. Steps, all nnU-Net's:

1. a tiny synthetic dataset in nnU-Net's raw layout (``imagesTr/case_000_0000.png`` and ``labelsTr``, or ``.nii.gz``
   volumes for 3D) with its ``dataset.json``;
2. ``nnUNetv2_plan_and_preprocess`` (the command), one configuration (``2d`` or ``3d_fullres``);
3. the plan's network narrowed (fewer features per stage, same stages, kernels and strides: the plan nnU-Net made,
   smaller), so that training and prediction take seconds on CPU;
4. ``nnUNetTrainer`` per fold, one epoch of ``--iterations`` (120 in the tests: ~4 s, enough to find the objects;
   ``run_training`` writes ``checkpoint_final.pth``).

Prints the results folder (``<ROOT>/results/Dataset.../nnUNetTrainer__nnUNetPlans__<configuration>``). The images of
the transferal set are also written to ``<ROOT>/transferal/images`` (the same cases, as nakt reads them).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

DATASET_ID = {2: 501, 3: 502}
LABELS = {2: {"background": 0, "head": 1, "ventricle": 2}, 3: {"background": 0, "ball": 1}}
SHAPE = {2: (40, 56), 3: (22, 28, 16)}   # (H, W) and (D, H, W): not square, so swapped axes would show
SPACING_3D = (1.25, 1.0, 2.0)           # (d, h, w) mm: the coarsest axis last, so nnU-Net transposes it first
CASES = 6                               # nnU-Net's 5-fold split needs at least 5


def _case_2d(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = SHAPE[2]
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(12, h - 12), rng.uniform(14, w - 14)
    r = rng.uniform(7, 11)
    head = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    vent = (np.abs(yy - cy) <= 2) & (np.abs(xx - cx) <= 3)
    label = np.where(vent, 2, np.where(head, 1, 0)).astype(np.uint8)
    image = 40 + 90 * head + 80 * vent + rng.normal(0, 12, (h, w))
    return np.clip(image, 0, 255).astype(np.uint8), label


def _case_3d(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    d, h, w = SHAPE[3]
    zz, yy, xx = np.mgrid[:d, :h, :w]
    c = rng.uniform([8, 9, 5], [d - 8, h - 9, w - 5])
    mm = ((zz - c[0]) * SPACING_3D[0]) ** 2 + ((yy - c[1]) * SPACING_3D[1]) ** 2 + ((xx - c[2]) * SPACING_3D[2]) ** 2
    ball = mm <= rng.uniform(6, 9) ** 2
    image = 100 + 300 * ball + rng.normal(0, 40, (d, h, w))
    return image.astype(np.float32), ball.astype(np.uint8)


def write_raw(root: Path, dims: int) -> str:
    """The raw dataset (nnU-Net's layout) and the same images as a nakt transferal folder; returns its name."""
    from nakt_ray.data.volumes import VolumeGeometry, write_volume

    name = f"Dataset{DATASET_ID[dims]}_Tiny{dims}D"
    raw = root / "raw" / name
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True, exist_ok=True)
    (root / "transferal" / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(dims)
    ending = ".png" if dims == 2 else ".nii.gz"
    for i in range(CASES):
        if dims == 2:
            from PIL import Image

            image, label = _case_2d(rng)
            Image.fromarray(image).save(raw / "imagesTr" / f"case_{i:03d}_0000.png")
            Image.fromarray(label).save(raw / "labelsTr" / f"case_{i:03d}.png")
            Image.fromarray(image).save(root / "transferal" / "images" / f"case_{i:03d}.png")
        else:
            image, label = _case_3d(rng)
            geom = VolumeGeometry.create(SHAPE[3], SPACING_3D, (0.0, 0.0, 0.0), None)
            write_volume(raw / "imagesTr" / f"case_{i:03d}_0000.nii.gz", image, geom)
            write_volume(raw / "labelsTr" / f"case_{i:03d}.nii.gz", label, geom)
            write_volume(root / "transferal" / "images" / f"case_{i:03d}.nii.gz", image, geom)
    dataset = {"channel_names": {"0": "scan"}, "labels": LABELS[dims], "numTraining": CASES,
               "file_ending": ending}
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return name


def narrow_plans(plans_file: Path, configuration: str) -> None:
    """Fewer features per stage in the plan's network (same topology), batch size 2."""
    plans = json.loads(plans_file.read_text())
    cfg = plans["configurations"][configuration]
    kwargs = cfg["architecture"]["arch_kwargs"]
    kwargs["features_per_stage"] = [min(4 * 2 ** i, 16) for i in range(kwargs["n_stages"])]
    cfg["batch_size"] = 2
    plans_file.write_text(json.dumps(plans, indent=2))


def train(root: Path, name: str, configuration: str, fold: int, iterations: int) -> None:
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    pre = root / "preprocessed" / name
    plans = load_json(str(pre / "nnUNetPlans.json"))
    plans["continue_training"] = False  # nnunetv2 2.7.0 pops this key in the trainer's __init__
    trainer = nnUNetTrainer(plans, configuration, fold, load_json(str(pre / "dataset.json")), torch.device("cpu"))
    trainer.num_epochs = 1
    trainer.num_iterations_per_epoch = iterations
    trainer.num_val_iterations_per_epoch = 2
    trainer.run_training()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--dims", type=int, choices=(2, 3), required=True)
    parser.add_argument("--folds", type=int, nargs="+", default=[0])
    parser.add_argument("--iterations", type=int, default=40, help="training iterations (one epoch)")
    args = parser.parse_args()
    root = args.root.resolve()
    # nnU-Net's folders and its quiet single-process settings, before nnunetv2 is imported
    env = {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
           "nnUNet_results": str(root / "results"), "nnUNet_n_proc_DA": "0", "nnUNet_compile": "false",
           "nnUNet_def_n_proc": "1"}
    os.environ.update(env)
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    name = write_raw(root, args.dims)
    configuration = "2d" if args.dims == 2 else "3d_fullres"
    command = Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"
    subprocess.run([str(command), "-d", str(DATASET_ID[args.dims]), "-c", configuration, "-npfp", "1", "-np", "1",
                    "--verify_dataset_integrity"], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "nnUNet_n_proc_DA": "1"})  # the planner sets its threads to this number
    narrow_plans(root / "preprocessed" / name / "nnUNetPlans.json", configuration)
    for fold in args.folds:
        train(root, name, configuration, fold, args.iterations)
    print(root / "results" / name / f"nnUNetTrainer__nnUNetPlans__{configuration}")


if __name__ == "__main__":  # nnU-Net's data loaders may spawn processes that import this file again
    main()

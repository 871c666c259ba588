"""``nakt demo --3d``: the whole knowledge-transfer flow on synthetic 3D volumes, on a local Ray instance.

1. generate three labeled teacher sites that differ in contrast, noise, spacing and slice thickness (an MR T1-like
   site, an MR T2-like site with thick oblique slices, a CT-like site), an unlabeled transferal set drawn from the
   three and from a fourth site none of the teachers saw (MR PD-like), and labeled val and test sets
   (``demo/synthetic/volumes.py``);
2. train three 3D teachers of different architectures, one per site, on patches (Ray Train);
3. annotate the transferal volumes with all three (Ray Data actor pools, 3D sliding window), fuse by the mean,
   store the maps in zarr stores referenced from Parquet;
4. distil a 3D student of a fourth architecture from the annotations on patches (Ray Train), register it in MLflow;
5. evaluate every teacher, the teachers' ensemble and the student on the test volumes (Dice, IoU, HD95, NSD in mm
   on each volume's original grid, with CIs); load the registered student back from the Model Registry and
   segment a test volume into a NIfTI mask on its original grid.

Full: see ``DEMO3D_TIME``; ``--smoke``: the same path with tiny volumes and few steps. The run directory is handled
as ``nakt demo``'s (``demo/run.py``: ``prepare_run_dir``).
"""
from __future__ import annotations

import time
from pathlib import Path

from nakt_ray import config
from nakt_ray.demo.run import _Progress, prepare_run_dir, say_results, transfer
from nakt_ray.runtime import console
from nakt_ray.runtime.console import say

# Wall time of the whole demo on 2 cores (process start to exit), measured 2026-12-06 on an otherwise idle machine:
# `nakt demo --3d` 9:05 (545 s), `--smoke` 66 s. README.md and `nakt demo --help` quote the same figures.
DEMO3D_TIME = {False: "about 9 min on 2 CPU cores", True: "about 1 min on 2 CPU cores"}

SMALL = {"channels": [8, 16, 32, 64], "strides": [2, 2, 2], "spatial_dims": 3}
TEACHERS = (  # (name, architecture, arch_args, site): three families on three sites
    ("unet_t1", "unet", {**SMALL, "num_res_units": 0}, "mr_t1"),
    ("segresnet_t2", "segresnet", {"init_filters": 8, "blocks_down": [1, 1, 1], "blocks_up": [1, 1],
                                   "spatial_dims": 3}, "mr_t2"),
    ("dynunet_ct", "dynunet", {"filters": [8, 16, 32, 64], "spatial_dims": 3}, "ct"),
)
STUDENT = ("attention_unet", dict(SMALL))
TRANSFER_WORDS_3D = {
    "teachers": "training {n} 3D teachers on patches with Ray Train",
    "annotate": "annotating the transferal volumes with Ray Data (3D sliding window), fusing by the mean",
    "cases": "volumes",
    "student": "distilling a 3D {arch} student on patches with Ray Train and registering it in MLflow",
    "evaluate": "evaluating teachers, their ensemble and the student on the test volumes (mm, original grids)",
}


def demo3d_config(run_dir: str, smoke: bool) -> tuple[config.RunConfig, dict[str, int]]:
    """The 3D demo's run config and data sizes."""
    from nakt_ray.demo.synthetic.phantom import PHANTOM_LABELS  # (the CLI imports this module to build its help)

    sizes = (dict(site=4, transferal=8, val=2, test=4, shape=40, patch=32, epochs=2, patches=4) if smoke else
             dict(site=8, transferal=16, val=4, test=12, shape=56, patch=32, epochs=12, patches=8))
    data = Path(run_dir) / "data"
    train = {"epochs": sizes["epochs"], "batch_size": 2, "lr": 3e-3, "patches_per_case": sizes["patches"],
             "num_workers": 0 if smoke else 1, "torch_threads": 2}
    raw = {
        "run_dir": run_dir,
        "data": {"labels": list(PHANTOM_LABELS), "transferal": str(data / "transferal"), "val": str(data / "val"),
                 "test": str(data / "test")},
        # One grid for every site (2.5 mm: the generator's reference spacing); each volume z-scored on its own, so
        # MR-like and CT-like sites feed the models alike.
        "volume": {"spacing": [2.5, 2.5, 2.5], "orientation": "RAS", "modality": "mri", "crop_nonzero": False,
                   "patch_size": [sizes["patch"]] * 3},
        "teachers": [{"name": n, "arch": a, "arch_args": args, "train_data": str(data / site),
                      "val_data": str(data / "val"), "sliding_window": True, "overlap": 0.25}
                     for n, a, args, site in TEACHERS],
        "fusion": {"rule": "mean"},
        "student": {"name": "student", "arch": STUDENT[0], "arch_args": STUDENT[1]},
        "teacher_training": train,
        # (the full demo's student takes 768 steps, above the default floor of 550; the smoke one pass an epoch)
        "training": {**train, **({"min_steps": 0} if smoke else {})},
        "tracking": {"experiment": "nakt-demo-3d", "registered_model": "nakt-demo-3d-student", "alias": "candidate"},
        "ray": {"num_cpus": 2},
    }
    return config.from_dict(raw), sizes


def run_demo_3d(run_dir: str | None = None, smoke: bool = False) -> dict:
    """Run the 3D demo end to end; returns the evaluation report plus paths. Prints progress and the table."""
    run_dir = run_dir or ("runs/smoke3d" if smoke else "runs/demo3d")
    replaced = (Path(run_dir) / ".nakt-demo").is_file()
    prepare_run_dir(run_dir, smoke)
    console.divert(Path(run_dir) / "logs")
    cfg, sizes = demo3d_config(run_dir, smoke)
    say(f"nakt demo --3d{' --smoke' if smoke else ''}: the whole flow on synthetic volumes, {DEMO3D_TIME[smoke]} "
        f"(measured); everything goes to {run_dir}" + (" (the earlier demo's output there was replaced)"
                                                       if replaced else ""))
    progress = _Progress(6)
    t0 = time.perf_counter()

    progress("generating synthetic MR/CT-like volumes (3 teacher sites, transferal with an unseen site, val, test)")
    from nakt_ray.demo.synthetic.volumes import make_volume_folders

    data = Path(run_dir) / "data"
    s = sizes["shape"]
    summary = make_volume_folders(data, cases_per_site=sizes["site"], seed=0, shape=(s, s, s),
                                  transferal_cases=sizes["transferal"], val_cases=sizes["val"],
                                  test_cases=sizes["test"])
    config.dump(cfg, Path(run_dir) / "run.yaml")
    say(f"  data in {data} (held-out site: {summary['held_out']}); run config written to {Path(run_dir) / 'run.yaml'}")


    annotated, student, report = transfer(cfg, run_dir, progress, TRANSFER_WORDS_3D)

    progress("loading the registered student from the MLflow Model Registry and segmenting a test volume")
    prediction = segment_with_registered(cfg, student["model_uri"], Path(run_dir) / "prediction")

    wall = time.perf_counter() - t0
    say_results(cfg, report, wall, DEMO3D_TIME[smoke],
                f"Annotations:         {annotated['output']} (Parquet rows + zarr stores)", student,
                f"{prediction['mask']} (NIfTI on the input's grid), {prediction['overlay']}")
    return {**report, "wall_s": wall, "student": student, "annotations": annotated, "prediction": prediction}


def segment_with_registered(cfg: config.RunConfig, model_uri: str, out_dir: Path) -> dict:
    """Load ``model_uri`` from the Model Registry (nakt's flavor, no unpickling) and segment the first test volume
    into a NIfTI mask on its original grid; returns the case's entry of ``predictions.json``."""
    from nakt_ray import tracking
    from nakt_ray.data.volume_cases import list_volume_cases
    from nakt_ray.inference.predict import predict_folder

    tracking.setup(cfg)
    case = list_volume_cases(cfg.data.test)[0]
    one = out_dir / "input" / "images"
    one.mkdir(parents=True, exist_ok=True)
    link = one / Path(case.image_path).name
    if not link.exists():
        link.symlink_to(Path(case.image_path).resolve())
    result = predict_folder(model_uri, one.parent, out_dir)
    return result["cases"][0]

"""``nakt demo``: the whole knowledge-transfer flow on synthetic ultrasound-like data, on a local Ray instance.

1. generate three labeled teacher sites, an unlabeled transferal set drawn from all four sites (one of which no
   teacher saw) and a labeled test set;
2. train three teachers of different architectures, one per site (Ray Train);
3. annotate the transferal set with all three (Ray Data, one actor pool per teacher), fuse by the mean;
4. distil a student of a fourth architecture from the annotations (Ray Train), register it in MLflow;
5. evaluate every teacher, the teachers' ensemble and the student on the test set; load the registered
   student back from the Model Registry and segment a test image with it.

Full: ~8 min on 2 CPU cores (96x96 model input, 8 epochs per model). ``--smoke``: the same path with tiny data and one epoch (< 2 min).
"""
from __future__ import annotations

import time
from pathlib import Path

from nakt_ray import config

TEACHERS = (  # (name, architecture, site): different families on different sites
    ("unet_a", "unet", "site_a"),
    ("segresnet_b", "segresnet", "site_b"),
    ("attention_unet_c", "attention_unet", "site_c"),
)
STUDENT_ARCH = "timm_unet"


def demo_config(run_dir: str, smoke: bool) -> tuple[config.RunConfig, dict[str, int]]:
    """The demo's run config and data sizes (cases per teacher site, transferal, test)."""
    sizes = dict(site=12, transferal=16, test=8) if smoke else dict(site=64, transferal=160, test=60)
    data = Path(run_dir) / "data"
    raw = {
        "run_dir": run_dir,
        "data": {"labels": ["background", "head"], "transferal": str(data / "transferal"),
                 "test": str(data / "test")},
        "preprocess": {"size": [64, 64] if smoke else [96, 96], "mode": "resize", "normalize": "zscore"},
        "teachers": [{"name": n, "arch": a, "train_data": str(data / site), "batch_size": 8}
                     for n, a, site in TEACHERS],
        "fusion": {"rule": "mean"},
        "student": {"name": "student", "arch": STUDENT_ARCH, "arch_args": {"encoder": "resnet18"}},
        # Smoke: the training loop runs in the driver (num_workers=0: same TorchTrainer, same loop and dataset
        # shards, without ~20 s of worker start-up per run); the full demo uses a real Ray Train worker.
        "teacher_training": {"epochs": 1 if smoke else 8, "batch_size": 8, "lr": 2e-3,
                             "num_workers": 0 if smoke else 1},
        "training": {"epochs": 1 if smoke else 8, "batch_size": 8, "lr": 1e-3, "num_workers": 0 if smoke else 1},
        "tracking": {"experiment": "nakt-demo", "registered_model": "nakt-demo-student", "alias": "candidate"},
        "ray": {"num_cpus": 2},
    }
    return config.from_dict(raw), sizes


class _Progress:
    def __init__(self, total: int):
        self.t0, self.total, self.step = time.perf_counter(), total, 0

    def __call__(self, message: str) -> None:
        self.step += 1
        print(f"\n[nakt demo {self.step}/{self.total} | {time.perf_counter() - self.t0:6.1f} s] {message}", flush=True)


def run_demo(run_dir: str | None = None, smoke: bool = False) -> dict:
    """Run the demo end to end; returns the evaluation report plus paths. Prints progress and the table."""
    run_dir = run_dir or ("runs/smoke" if smoke else "runs/demo")
    if Path(run_dir).exists() and any(Path(run_dir).iterdir()):
        raise FileExistsError(f"demo run directory {run_dir!r} is not empty; remove it or pass --run-dir")
    cfg, sizes = demo_config(run_dir, smoke)
    progress = _Progress(6)
    t0 = time.perf_counter()

    progress("generating synthetic ultrasound-like data (3 teacher sites, transferal, test)")
    from nakt_ray.demo import synthetic

    data = Path(run_dir) / "data"
    for i, (_, _, site) in enumerate(TEACHERS):
        synthetic.write_folder(data / site, sizes["site"], site, seed=100 + i)
    synthetic.write_folder(data / "transferal", sizes["transferal"], "mixed", seed=200)
    # The transferal set is unlabeled: nothing downstream may read its masks, so none are kept.
    import shutil

    shutil.rmtree(data / "transferal" / "masks", ignore_errors=True)
    synthetic.write_folder(data / "test", sizes["test"], "mixed", seed=300)
    config.dump(cfg, Path(run_dir) / "run.yaml")
    print(f"  data in {data}; run config written to {Path(run_dir) / 'run.yaml'}")

    from nakt_ray import tracking
    from nakt_ray.annotation.pipeline import annotate
    from nakt_ray.evaluation.evaluate import evaluate
    from nakt_ray.runtime.cluster import init_ray
    from nakt_ray.training.student import train_student
    from nakt_ray.training.teacher import train_teacher

    init_ray(cfg.ray)
    progress(f"training {len(cfg.teachers)} teachers with Ray Train: "
             + ", ".join(f"{t.name} ({t.arch})" for t in cfg.teachers))
    for t in cfg.teachers:
        ts = time.perf_counter()
        path = train_teacher(cfg, t)
        print(f"  teacher {t.name}: {path} ({time.perf_counter() - ts:.1f} s)", flush=True)

    progress("annotating the transferal set with Ray Data (one actor pool per teacher), fusing by the mean")
    with tracking.stage_run(cfg, "annotate"):
        import mlflow

        summary = annotate(cfg)
        mlflow.log_metrics({k: summary[k] for k in ("cases_read", "annotated", "failed", "wall_s")})
    print(f"  {summary['cases_read']} cases read, {summary['annotated']} annotated, {summary['failed']} failed "
          f"-> {summary['output']}")

    progress(f"distilling a {cfg.student.arch} student with Ray Train and registering it in MLflow")
    student = train_student(cfg)
    print(f"  student: {student['model_path']} -> {student['model_uri']} (version {student['version']})")

    progress("evaluating teachers, their ensemble and the student on the held-out test set")
    models = {t.name: str(cfg.teacher_checkpoint(t)) for t in cfg.teachers}
    ensemble = list(models)
    models[cfg.student.name] = student["model_path"]
    with tracking.stage_run(cfg, "evaluate"):
        import mlflow

        report = evaluate(cfg, models, cfg.data.test, Path(run_dir) / "evaluation", ensemble=ensemble)
        for name, r in report["models"].items():
            mlflow.log_metrics({f"dice.{name}": r["dice"], f"iou.{name}": r["iou"]})
        mlflow.log_artifacts(str(Path(run_dir) / "evaluation"), artifact_path="evaluation")

    progress("loading the registered student from the MLflow Model Registry and segmenting a test image")
    overlay = segment_with_registered(cfg, student["model_uri"], Path(run_dir) / "evaluation")

    wall = time.perf_counter() - t0
    print("\n" + report["table"])
    print(f"\nDemo finished in {wall:.1f} s.")
    print(f"  MLflow store:        {tracking.tracking_uri(cfg)}  (mlflow ui --backend-store-uri <that>)")
    print(f"  Parquet annotations: {summary['output']}")
    print(f"  Registered student:  {student['model_uri']} (version {student['version']})")
    print(f"  Segmentation:        {overlay}")
    return {**report, "wall_s": wall, "student": student, "annotations": summary, "overlay": str(overlay)}


def segment_with_registered(cfg: config.RunConfig, model_uri: str, out_dir: Path) -> Path:
    """Load ``model_uri`` with ``mlflow.pytorch.load_model``, segment the first test image, write an overlay."""
    import mlflow
    import torch
    from PIL import Image

    from nakt_ray import tracking
    from nakt_ray.data.preprocess import preprocess_image, restore
    from nakt_ray.data.readers import list_cases, read_image
    from nakt_ray.inference.predict import overlay

    tracking.setup(cfg)
    model = mlflow.pytorch.load_model(model_uri, map_location="cpu").eval()
    case = list_cases(cfg.data.test, require_masks=True)[0]
    image = read_image(case.image_path, case.slice_index)
    x, geom = preprocess_image(image, cfg.preprocess)
    with torch.no_grad():
        probs = model(torch.from_numpy(x)[None]).softmax(1)[0].numpy()
    label = restore(probs, geom).argmax(0)
    out = out_dir / f"registered_student_{case.case_id.replace('/', '_')}.png"
    Image.fromarray(overlay(image, label)).save(out)
    return out

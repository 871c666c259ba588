"""``nakt demo``: the whole knowledge-transfer flow on synthetic ultrasound-like data, on a local Ray instance.

1. generate three labeled teacher sites, an unlabeled transferal set drawn from all four sites (one of which no
   teacher saw) and a labeled test set;
2. train three teachers of different architectures, one per site (Ray Train);
3. annotate the transferal set with all three (Ray Data, one actor pool per teacher), fuse by the mean;
4. distil a student of a fourth architecture from the annotations (Ray Train), register it in MLflow;
5. evaluate every teacher, the teachers' ensemble and the student on the test set; load the registered
   student back from the Model Registry and segment a test image with it.

Full: see ``DEMO_TIME`` (96x96 model input, 8 epochs per model); ``--smoke``: the same path with tiny data and
one epoch. A run directory is the demo's own: it writes ``MARKER`` there first, and a later demo on the same
directory replaces what an earlier one wrote (a folder without the marker is never touched).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from nakt_ray import config
from nakt_ray.runtime import console
from nakt_ray.runtime.console import say

# Wall time of the whole demo on 2 otherwise idle cores, measured 2026-12-06 (process start to exit): `nakt demo`
# 228 s, `nakt demo --smoke` 37 s. A machine busy with other work takes longer: 577 s and 85 s at a load of 6-9
# and ~2. README.md quotes the same figures and `nakt demo --help` shows them (tests/test_cli.py checks that).
DEMO_TIME = {False: "about 6 min on 2 idle CPU cores", True: "about 40 s on 2 idle CPU cores"}
MARKER = ".nakt-demo"  # "this folder is a demo's run directory": a rerun may replace its contents

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
        # The student keeps the default floor of 550 steps (decision 74: 160 transferal images give 160 steps in 8
        # epochs, so each epoch goes over them 4 times); the smoke checks the path, not the budget: one pass.
        "training": {"epochs": 1 if smoke else 8, "batch_size": 8, "lr": 1e-3, "num_workers": 0 if smoke else 1,
                     **({"min_steps": 0} if smoke else {})},
        "tracking": {"experiment": "nakt-demo", "registered_model": "nakt-demo-student", "alias": "candidate"},
        "ray": {"num_cpus": 2},
    }
    return config.from_dict(raw), sizes


class _Progress:
    def __init__(self, total: int):
        self.t0, self.total, self.step = time.perf_counter(), total, 0

    def __call__(self, message: str) -> None:
        self.step += 1
        say(f"\n[nakt demo {self.step}/{self.total} | {time.perf_counter() - self.t0:6.1f} s] {message}")


def prepare_run_dir(run_dir: str | Path, smoke: bool) -> Path:
    """Make ``run_dir`` the demo's: new, empty, or an earlier demo's (it holds ``MARKER``), whose contents are
    removed. Any other non-empty folder is refused, untouched. Writes the marker first, so that even an
    interrupted demo's folder is replaced by the next one."""
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"demo run directory {str(path)!r} is a file; pass another --run-dir")
    if path.is_dir() and any(path.iterdir()):
        if not (path / MARKER).is_file():
            raise FileExistsError(f"demo run directory {str(path)!r} is not empty and was not written by nakt demo "
                                  f"(no {MARKER} file); remove it or pass another --run-dir")
        for entry in path.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text(json.dumps({"written_by": "nakt demo", "smoke": smoke,
                                           "started": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
    return path


def run_demo(run_dir: str | None = None, smoke: bool = False) -> dict:
    """Run the demo end to end; returns the evaluation report plus paths. Prints progress and the table.

    ``run_dir`` (default ``runs/demo``, ``runs/smoke`` with ``smoke``) is replaced if an earlier demo wrote it
    (:func:`prepare_run_dir`). Under ``nakt demo`` Ray's output goes to ``<run_dir>/logs/ray.log`` unless
    ``--verbose``."""
    run_dir = run_dir or ("runs/smoke" if smoke else "runs/demo")
    replaced = (Path(run_dir) / MARKER).is_file()
    prepare_run_dir(run_dir, smoke)
    console.divert(Path(run_dir) / "logs")
    cfg, sizes = demo_config(run_dir, smoke)
    say(f"nakt demo{' --smoke' if smoke else ''}: the whole flow on synthetic data, {DEMO_TIME[smoke]} (measured); "
        f"everything goes to {run_dir}" + (" (the earlier demo's output there was replaced)" if replaced else ""))
    progress = _Progress(6)
    t0 = time.perf_counter()

    progress("generating synthetic ultrasound-like data (3 teacher sites, transferal, test)")
    from nakt_ray.demo import synthetic

    data = Path(run_dir) / "data"
    for i, (_, _, site) in enumerate(TEACHERS):
        synthetic.write_folder(data / site, sizes["site"], site, seed=100 + i)
    synthetic.write_folder(data / "transferal", sizes["transferal"], "mixed", seed=200)
    # The transferal set is unlabeled: nothing downstream may read its masks, so none are kept.
    shutil.rmtree(data / "transferal" / "masks", ignore_errors=True)
    synthetic.write_folder(data / "test", sizes["test"], "mixed", seed=300)
    config.dump(cfg, Path(run_dir) / "run.yaml")
    say(f"  data in {data}; run config written to {Path(run_dir) / 'run.yaml'}")


    summary, student, report = transfer(cfg, run_dir, progress, TRANSFER_WORDS)

    progress("loading the registered student from the MLflow Model Registry and segmenting a test image")
    overlay = segment_with_registered(cfg, student["model_uri"], Path(run_dir) / "evaluation")

    wall = time.perf_counter() - t0
    say_results(cfg, report, wall, DEMO_TIME[smoke], f"Parquet annotations: {summary['output']}", student,
                str(overlay))
    return {**report, "wall_s": wall, "student": student, "annotations": summary, "overlay": str(overlay)}


def say_results(cfg: config.RunConfig, report: dict, wall: float, expected: str, annotations: str, student: dict,
                segmentation: str) -> None:
    """A demo's closing lines: the table, the time against the expected one, and where everything went
    (``annotations``: that line's text)."""
    from nakt_ray import tracking

    say("\n" + report["table"])
    say(f"\nDemo finished in {wall:.1f} s ({wall / 60:.1f} min; expected {expected}).")
    say(f"  MLflow store:        {tracking.tracking_uri(cfg)}  (mlflow ui --backend-store-uri <that>)")
    say(f"  {annotations}")
    say(f"  Registered student:  {student['model_uri']} (version {student['version']})")
    say(f"  Segmentation:        {segmentation}")
    if console.diverted():
        say(f"  Ray's own output:    {console.log_path()}")


# How each demo announces the steps of :func:`transfer`.
TRANSFER_WORDS = {
    "teachers": "training {n} teachers with Ray Train",
    "annotate": "annotating the transferal set with Ray Data (one actor pool per teacher), fusing by the mean",
    "cases": "cases",
    "student": "distilling a {arch} student with Ray Train and registering it in MLflow",
    "evaluate": "evaluating teachers, their ensemble and the student on the held-out test set",
}


def transfer(cfg: config.RunConfig, run_dir: str, progress: _Progress,
             words: dict[str, str]) -> tuple[dict, dict, dict]:
    """The steps both demos share, each announced with ``words``: train every teacher, annotate the transferal set
    (logged to MLflow), distil and register the student, evaluate the teachers, their ensemble and the student on
    the test set. Returns the annotation summary, the student's result and the evaluation report."""
    from nakt_ray import tracking
    from nakt_ray.annotation.pipeline import annotate
    from nakt_ray.evaluation.evaluate import evaluate
    from nakt_ray.runtime.cluster import init_ray
    from nakt_ray.training.student import train_student
    from nakt_ray.training.teacher import train_teacher

    init_ray(cfg.ray)
    progress(words["teachers"].format(n=len(cfg.teachers)) + ": "
             + ", ".join(f"{t.name} ({t.arch})" for t in cfg.teachers))
    for t in cfg.teachers:
        ts = time.perf_counter()
        path = train_teacher(cfg, t)
        say(f"  teacher {t.name}: {path} ({time.perf_counter() - ts:.1f} s)")

    progress(words["annotate"])
    with tracking.stage_run(cfg, "annotate"):
        import mlflow

        summary = annotate(cfg)
        mlflow.log_metrics({k: summary[k] for k in ("cases_read", "annotated", "failed", "wall_s")})
    say(f"  {summary['cases_read']} {words['cases']} read, {summary['annotated']} annotated, {summary['failed']} "
        f"failed -> {summary['output']}")

    progress(words["student"].format(arch=cfg.student.arch))
    student = train_student(cfg)
    say(f"  student: {student['model_path']} -> {student['model_uri']} (version {student['version']})")

    progress(words["evaluate"])
    models = {t.name: str(cfg.teacher_checkpoint(t)) for t in cfg.teachers}
    ensemble = list(models)
    models[cfg.student.name] = student["model_path"]
    with tracking.stage_run(cfg, "evaluate"):
        import mlflow

        report = evaluate(cfg, models, cfg.data.test, Path(run_dir) / "evaluation", ensemble=ensemble)
        for name, r in report["models"].items():
            mlflow.log_metrics({f"dice.{name}": r["dice"], f"iou.{name}": r["iou"]})
        mlflow.log_artifacts(str(Path(run_dir) / "evaluation"), artifact_path="evaluation")
    return summary, student, report


def segment_with_registered(cfg: config.RunConfig, model_uri: str, out_dir: Path) -> Path:
    """Load ``model_uri`` (nakt's MLflow flavor, no unpickling), segment the first test image, write an overlay."""
    import torch
    from PIL import Image

    from nakt_ray import tracking
    from nakt_ray.data.preprocess import preprocess_image, restore
    from nakt_ray.data.privacy import cases_for
    from nakt_ray.data.readers import list_cases, read_image
    from nakt_ray.inference.predict import overlay
    from nakt_ray.models.mlflow_format import load_registered

    tracking.setup(cfg)
    model, _ = load_registered(model_uri)
    model.eval()
    case = cases_for(list_cases(cfg.data.test, require_masks=True), cfg.data.pseudonymize)[0]
    image = read_image(case.image_path, case.slice_index)
    x, geom = preprocess_image(image, cfg.preprocess)
    with torch.no_grad():
        probs = model(torch.from_numpy(x)[None]).softmax(1)[0].numpy()
    label = restore(probs, geom).argmax(0)
    out = out_dir / f"registered_student_{case.case_id.replace('/', '_')}.png"
    Image.fromarray(overlay(image, label)).save(out)
    return out

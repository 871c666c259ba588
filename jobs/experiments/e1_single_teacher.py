"""E1 — one teacher, one student, across architectures (the paper's first study), on HC18 or any labeled folder.

    .venv/bin/python jobs/experiments/e1_single_teacher.py            # full: 17.5 min on 2 CPU cores (96x96)
    .venv/bin/python jobs/experiments/e1_single_teacher.py --smoke    # same path, tiny: ~5 min (quiet machine)

Full-run cost, measured 2026-12-01 on 2 cores (the host's speed drifts by up to ~2x; allow 35 min): teachers
46 + 71 + 113 s (40 epochs), annotation 38 s, the nine students 27-112 s each (20 epochs; a UNet ~1.5-2.5 s an
epoch on 178 cases, a SegResNet or timm student ~4-5.5 s), test evaluation of the 12 models 124 s.

Protocol (``jobs/experiments/protocol.py``, seed 0, split by subject): three teachers of different families, all trained
on ``site_a`` only so that they differ by architecture alone:
  unet        MONAI UNet (strided convolutions, residual units, instance norm);
  segresnet   MONAI SegResNet (ResNet blocks, group norm, asymmetric encoder-decoder);
  timm_unet   a timm ResNet-18 encoder (batch norm, random init) under a U-Net decoder.
One annotation run with the three teachers over the ``transferal`` split (whose masks are never read) stores
every teacher's map. A student of each architecture is then trained on each teacher's maps alone: ``fusion:
weighted_mean`` with one-hot weights, re-fused from the stored maps at training time (no teacher runs again).
That is the 3x3 teacher x student matrix. Every model picks its best epoch on ``val``; all are scored on ``test``
(foreground Dice at the original resolution, 95% bootstrap CI over cases; student minus teacher with a paired
bootstrap CI over the same cases). Target: students within 0.01 Dice of their teacher on average (met when the
mean of student minus teacher over the nine cells is >= -0.01; the cells within +-0.01 are counted too).
Results: ``results/e1/`` (``e1.md``, ``e1.json``, ``e1.png``: the matrix as heatmaps) and the run's MLflow store
(``<run_dir>/mlflow.db``, experiment ``e1``: one run per training, students logged but not registered, plus a
summary run). ``--smoke`` writes to ``runs/e1-smoke`` and ``results/e1-smoke`` unless told otherwise.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

from _common import (
    add_common_args,  # (the script's folder is on sys.path)
    dataset_name,
)
from _common import main as common_main


def teacher_key(arch: str) -> str:
    return f"teacher_{arch}"


def student_key(student: str, teacher: str) -> str:
    return f"{student}_from_{teacher}"


def run(args: argparse.Namespace) -> dict:
    import protocol

    from nakt_ray import config
    from nakt_ray.annotation.pipeline import annotate
    from nakt_ray.evaluation.evaluate import evaluate
    from nakt_ray.runtime.cluster import init_ray
    from nakt_ray.training.student import train_student
    from nakt_ray.training.teacher import train_teacher

    run_dir, archs = Path(args.run_dir), list(args.archs)
    splits = protocol.materialise(args.data, run_dir / "splits", seed=args.seed)
    if args.smoke:  # the same splits, cut to a few cases each
        splits = {**splits, **{k: protocol.subset(splits[k], n, run_dir / f"{k}_small")
                               for k, n in (("site_a", 16), ("transferal", 16), ("val", 8), ("test", 12))}}
    epochs = dict(teacher=2, student=2) if args.smoke else dict(teacher=args.teacher_epochs,
                                                                student=args.student_epochs)
    train_common = {"batch_size": 8, "num_workers": 0, "lr": 2e-3}
    # the smoke checks the path: one pass an epoch, not the student's default floor of 550 steps
    one_pass = {"min_steps": 0} if args.smoke else {}
    raw = {
        "run_dir": str(run_dir),
        "data": {"labels": list(args.labels), "transferal": str(splits["transferal"]),
                 "val": str(splits["val"]), "test": str(splits["test"])},
        "preprocess": {"size": [args.size, args.size]},
        "teachers": [{"name": teacher_key(a), "arch": a, "train_data": str(splits["site_a"]),
                      "val_data": str(splits["val"])} for a in archs],
        "teacher_training": {**train_common, "epochs": epochs["teacher"]},
        "training": {**train_common, "epochs": epochs["student"], "lr": 1e-3, **one_pass},
        "tracking": {"experiment": "e1", "registered_model": "e1-student"},
        "ray": {"num_cpus": os.cpu_count()},
    }
    cfg = config.from_dict(raw)
    init_ray(cfg.ray)
    timings, models, per_epoch = {}, {}, {}
    for teacher in cfg.teachers:
        t = time.perf_counter()
        models[teacher.name] = str(train_teacher(cfg, teacher))
        timings[f"{teacher.name}_s"] = time.perf_counter() - t
    t = time.perf_counter()
    annotate(cfg)  # once, all three teachers; each teacher's map is stored
    timings["annotate_s"] = time.perf_counter() - t

    for i, t_arch in enumerate(archs):
        one_hot = [1.0 if j == i else 0.0 for j in range(len(archs))]
        for s_arch in archs:
            name = student_key(s_arch, t_arch)
            scfg = config.from_dict({**raw, "fusion": {"rule": "weighted_mean", "weights": one_hot},
                                     "student": {"name": name, "arch": s_arch}})
            t = time.perf_counter()
            result = train_student(scfg, register=False)
            timings[f"{name}_s"] = time.perf_counter() - t
            models[name] = result["model_path"]
            per_epoch[name] = {k: result["metrics"].get(k) for k in ("epoch_s", "samples_per_s", "best_val_dice")}

    t = time.perf_counter()
    report = evaluate(cfg, models, str(splits["test"]), run_dir / "evaluation")
    timings["evaluate_s"] = time.perf_counter() - t
    deltas = paired_deltas(run_dir / "evaluation" / "evaluation_cases.csv",
                           {student_key(s, t): teacher_key(t) for t in archs for s in archs})
    return {"archs": archs, "models": report["models"], "deltas": deltas, "table": report["table"],
            "timings": timings, "per_epoch": per_epoch, "image_size": args.size, "epochs": epochs,
            "cases": {k: len(list((Path(splits[k]) / "images").iterdir())) for k in ("site_a", "transferal", "test")},
            "smoke": args.smoke}


def paired_deltas(cases_csv: Path, pairs: dict[str, str]) -> dict[str, dict]:
    """Per-case Dice of model minus reference over the same test cases: mean and 95% paired bootstrap CI."""
    import numpy as np

    from nakt_ray.metrics import bootstrap_ci

    with open(cases_csv) as f:
        rows = list(csv.DictReader(f))
    out = {}
    for model, ref in pairs.items():
        diff = np.array([float(r[f"dice__{model}"]) - float(r[f"dice__{ref}"]) for r in rows])
        mean, lo, hi = bootstrap_ci(diff)
        out[model] = {"vs": ref, "delta": mean, "delta_ci": [lo, hi]}
    return out


def write_results(result: dict, out: Path, run_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    m, d, archs = result["models"], result["deltas"], result["archs"]

    def dice(name: str) -> str:
        r = m[name]
        return f"{r['dice']:.3f} ({r['dice_ci'][0]:.3f}-{r['dice_ci'][1]:.3f})"

    cells = [student_key(s, t) for t in archs for s in archs]
    mean_delta = float(np.mean([d[c]["delta"] for c in cells]))
    within = sum(abs(d[c]["delta"]) <= 0.01 for c in cells)
    lines = [f"# E1: single teacher x student across architectures ({'smoke' if result['smoke'] else 'full'})", "",
             f"{dataset_name(result)}, split by subject (seed 0), {result['image_size']}x{result['image_size']}, "
             f"classes {', '.join(result.get('labels', ['background', 'head'])[1:])}; teachers on site_a "
             f"({result['cases']['site_a']} cases), students on the transferal split ({result['cases']['transferal']} "
             f"cases, one teacher's maps each); epochs: teachers {result['epochs']['teacher']}, students "
             f"{result['epochs']['student']}. Dice on the test split ({result['cases']['test']} cases), 95% bootstrap "
             "CI.", "",
             "Student test Dice (rows: teacher; columns: student architecture):", "",
             "| teacher (its own Dice) | " + " | ".join(f"student {s}" for s in archs) + " |",
             "|---|" + "---|" * len(archs)]
    for t in archs:
        lines.append(f"| {t}: {dice(teacher_key(t))} | "
                     + " | ".join(dice(student_key(s, t)) for s in archs) + " |")
    lines += ["", "Student minus its teacher (paired over the test cases, 95% bootstrap CI):", "",
              "| teacher | " + " | ".join(f"student {s}" for s in archs) + " |", "|---|" + "---|" * len(archs)]
    for t in archs:
        lines.append(f"| {t} | " + " | ".join(
            f"{d[c]['delta']:+.3f} ({d[c]['delta_ci'][0]:+.3f} to {d[c]['delta_ci'][1]:+.3f})"
            for c in (student_key(s, t) for s in archs)) + " |")
    verdict = "met" if mean_delta >= -0.01 else "not met"
    lines += ["", f"Mean student minus teacher over the {len(cells)} cells: {mean_delta:+.4f} Dice; "
              f"{within} of {len(cells)} cells within 0.01 of their teacher. Target (students on average no more "
              f"than 0.01 below their teacher): **{verdict}**.", "",
              "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result["timings"].items()), "",
              "All models:", "", result["table"]]
    (out / "e1.md").write_text("\n".join(lines) + "\n")
    (out / "e1.json").write_text(json.dumps({**result, "mean_delta": mean_delta, "within_0.01": within}, indent=2))

    student = np.array([[m[student_key(s, t)]["dice"] for s in archs] for t in archs])
    delta = np.array([[d[student_key(s, t)]["delta"] for s in archs] for t in archs])
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8))
    span = max(0.02, float(np.abs(delta).max()))
    for ax, values, title, kw in ((axes[0], student, "student test Dice", dict(cmap="viridis", vmin=0, vmax=1)),
                                  (axes[1], delta, "student minus teacher", dict(cmap="RdBu", vmin=-span,
                                                                                  vmax=span))):
        im = ax.imshow(values, **kw)
        for (i, j), v in np.ndenumerate(values):
            dark = abs(v) > 0.6 * span if values is delta else v < 0.5
            ax.text(j, i, f"{v:+.3f}" if values is delta else f"{v:.3f}", ha="center", va="center", fontsize=9,
                    color="white" if dark else "black")
        ax.set(xticks=range(len(archs)), xticklabels=archs, yticks=range(len(archs)),
               yticklabels=[f"{t}\n({m[teacher_key(t)]['dice']:.3f})" for t in archs], xlabel="student",
               ylabel="teacher (its Dice)", title=title)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"E1 on {dataset_name(result)}: teacher x student")
    fig.tight_layout()
    fig.savefig(out / "e1.png", dpi=120)

    mlflow.set_tracking_uri(f"sqlite:///{run_dir.resolve() / 'mlflow.db'}")
    mlflow.set_experiment("e1")
    with mlflow.start_run(run_name="e1-summary"):
        mlflow.log_metrics({f"dice.{name}": r["dice"] for name, r in m.items()})
        mlflow.log_metrics({f"delta.{name}": r["delta"] for name, r in d.items()})
        mlflow.log_metrics({"mean_delta": mean_delta, "cells_within_0.01": within, "wall_s": result["wall_s"]})
        mlflow.log_artifacts(str(out), artifact_path="results")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, "e1", size=96)
    p.add_argument("--archs", nargs="+", default=["unet", "segresnet", "timm_unet"],
                   help="zoo architectures, each both a teacher and a student (default arch_args)")
    p.add_argument("--teacher-epochs", type=int, default=40)
    p.add_argument("--student-epochs", type=int, default=20)
    common_main(p.parse_args(), "e1", run, write_results, "e1.md, e1.json, e1.png")


if __name__ == "__main__":
    main()

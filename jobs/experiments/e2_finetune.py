"""E2 — knowledge transfer plus fine-tuning against fine-tuning alone (the paper's second study), on HC18 or any
labeled folder (--data, --dataset-name, --labels).

    .venv/bin/python jobs/experiments/e2_finetune.py            # full: ~15 min on 2 CPU cores (96x96)
    .venv/bin/python jobs/experiments/e2_finetune.py --smoke    # same path, tiny: ~4 min

Protocol (``jobs/experiments/protocol.py``, seed 0, split by subject): a UNet teacher is trained on ``site_a`` only; it
annotates the ``transferal`` split (whose masks are never read); a student (AttentionUnet, another architecture) is
distilled from those annotations. Then, for each labeled-set size n (5, 10, 20 cases of the ``labeled`` split):
  scratch        the student architecture trained from random weights on the n labeled cases only;
  distilled      the distilled student as is (no labels of the target used);
  distil + ft    the distilled student fine-tuned on the same n cases.
Every model picks its best epoch on ``val``; all are scored on ``test`` (foreground Dice at the original
resolution, 95% bootstrap CI over cases). Results: ``results/e2/`` (``e2.md``, ``e2.json``, ``e2.png``) and the
run's MLflow store (``<run_dir>/mlflow.db``, experiment ``e2``, one run per training plus a summary run).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

from _common import HC18, add_dataset_args, dataset_name, resolve_dataset  # (the script's folder is on sys.path)


def run(args: argparse.Namespace) -> dict:
    import protocol

    from nakt_ray import config
    from nakt_ray.annotation.pipeline import annotate
    from nakt_ray.evaluation.evaluate import evaluate
    from nakt_ray.runtime.cluster import init_ray
    from nakt_ray.training.student import finetune_student, train_student
    from nakt_ray.training.teacher import train_teacher

    run_dir = Path(args.run_dir)
    splits = protocol.materialise(args.data, run_dir / "splits", seed=args.seed)
    sizes = (4,) if args.smoke else tuple(args.sizes)
    epochs = dict(teacher=2, student=2, finetune=2) if args.smoke else dict(teacher=args.teacher_epochs,
                                                                            student=args.student_epochs,
                                                                            finetune=args.finetune_epochs)
    test = splits["test"] if not args.smoke else protocol.subset(splits["test"], 12, run_dir / "test_small")
    train_common = {"batch_size": 8, "num_workers": 0, "lr": 2e-3}
    # the smoke checks the path: one pass an epoch, not the student's default floor of 550 steps
    one_pass = {"min_steps": 0} if args.smoke else {}
    raw = {
        "run_dir": str(run_dir),
        "data": {"labels": list(args.labels), "transferal": str(splits["transferal"]),
                 "val": str(splits["val"]), "test": str(test)},
        "preprocess": {"size": [args.size, args.size]},
        "teachers": [{"name": "teacher_unet", "arch": "unet", "train_data": str(splits["site_a"]),
                      "val_data": str(splits["val"])}],
        "student": {"name": "student", "arch": args.student_arch},
        "teacher_training": {**train_common, "epochs": epochs["teacher"]},
        "training": {**train_common, "epochs": epochs["student"], "lr": 1e-3, **one_pass},
        "finetune": {**train_common, "epochs": epochs["finetune"], "lr": 5e-4},
        "tracking": {"experiment": "e2", "registered_model": "e2-student"},
        "ray": {"num_cpus": os.cpu_count()},
    }
    cfg = config.from_dict(raw)
    init_ray(cfg.ray)
    timings = {}
    t = time.perf_counter()
    teacher_path = train_teacher(cfg, cfg.teachers[0])
    timings["teacher_s"] = time.perf_counter() - t
    t = time.perf_counter()
    annotate(cfg)
    timings["annotate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    distilled = train_student(cfg)["model_path"]
    timings["distil_s"] = time.perf_counter() - t

    models = {"teacher (site_a)": str(teacher_path), "distilled": distilled}
    for n in sizes:
        few = protocol.subset(splits["labeled"], n, run_dir / f"labeled_{n}")
        ncfg = config.from_dict({**raw, "data": {**raw["data"], "finetune": str(few)},
                                 "student": {**raw["student"], "name": f"student_n{n}", "init": distilled}})
        t = time.perf_counter()
        models[f"scratch n={n}"] = finetune_student(ncfg, "scratch")["model_path"]
        models[f"distil+ft n={n}"] = finetune_student(ncfg, "distilled")["model_path"]
        timings[f"finetune_pair_n{n}_s"] = time.perf_counter() - t

    report = evaluate(cfg, models, str(test), run_dir / "evaluation")
    return {"sizes": list(sizes), "models": report["models"], "table": report["table"], "timings": timings,
            "split": json.loads((run_dir / "splits" / "split.json").read_text())["fractions"],
            "image_size": args.size, "epochs": epochs, "student_arch": args.student_arch, "smoke": args.smoke,
            "dataset": args.dataset_name, "labels": list(args.labels)}


def write_results(result: dict, out: Path, run_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    out.mkdir(parents=True, exist_ok=True)
    m = result["models"]
    lines = [f"# E2: transfer + fine-tuning vs fine-tuning alone ({'smoke' if result['smoke'] else 'full'})", "",
             f"{dataset_name(result)}, split by subject (seed 0), {result['image_size']}x{result['image_size']}, "
             f"classes {', '.join(result.get('labels', ['background', 'head'])[1:])}, student "
             f"{result['student_arch']}, epochs {result['epochs']}. Dice on the test split, 95% bootstrap CI.", "",
             "| labeled cases n | scratch | distilled (no labels) | distil + fine-tune | gain over scratch |",
             "|---|---|---|---|---|"]
    d = m["distilled"]
    for n in result["sizes"]:
        s, f = m[f"scratch n={n}"], m[f"distil+ft n={n}"]
        lines.append(f"| {n} | {s['dice']:.3f} ({s['dice_ci'][0]:.3f}-{s['dice_ci'][1]:.3f}) | "
                     f"{d['dice']:.3f} | {f['dice']:.3f} ({f['dice_ci'][0]:.3f}-{f['dice_ci'][1]:.3f}) | "
                     f"{f['dice'] - s['dice']:+.3f} |")
    t = m["teacher (site_a)"]
    lines += ["", f"Teacher (UNet, site_a): {t['dice']:.3f} ({t['dice_ci'][0]:.3f}-{t['dice_ci'][1]:.3f}).", "",
              "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result["timings"].items()), "",
              "All models:", "", result["table"]]
    (out / "e2.md").write_text("\n".join(lines) + "\n")
    (out / "e2.json").write_text(json.dumps(result, indent=2))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ns = result["sizes"]
    ax.plot(ns, [m[f"scratch n={n}"]["dice"] for n in ns], "o-", label="scratch (labeled only)")
    ax.plot(ns, [m[f"distil+ft n={n}"]["dice"] for n in ns], "o-", label="distil + fine-tune")
    ax.axhline(d["dice"], color="grey", ls="--", label="distilled only")
    ax.axhline(t["dice"], color="black", ls=":", label="teacher")
    ax.set(xlabel="labeled target cases", ylabel="test Dice", title=f"E2 on {dataset_name(result)}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "e2.png", dpi=120)
    mlflow.set_tracking_uri(f"sqlite:///{run_dir.resolve() / 'mlflow.db'}")
    mlflow.set_experiment("e2")
    with mlflow.start_run(run_name="e2-summary"):
        for name, r in m.items():
            mlflow.log_metric("dice." + re.sub(r"[^0-9A-Za-z_.-]+", "_", name).strip("_"), r["dice"])
        mlflow.log_artifacts(str(out), artifact_path="results")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(HC18), help="labeled folder source (images/, masks/)")
    add_dataset_args(p)
    p.add_argument("--run-dir", default="runs/e2")
    p.add_argument("--out", default="results/e2")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20])
    p.add_argument("--student-arch", default="attention_unet")
    p.add_argument("--teacher-epochs", type=int, default=30)
    p.add_argument("--student-epochs", type=int, default=30)
    p.add_argument("--finetune-epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("NAKT_PROGRESS", "0")
    if not (Path(args.data) / "images").is_dir():
        raise SystemExit(f"no labeled data at {args.data} (expected images/ and masks/); pass --data")
    resolve_dataset(args)
    t0 = time.perf_counter()
    result = run(args)
    result["wall_s"] = time.perf_counter() - t0
    write_results(result, Path(args.out), Path(args.run_dir))
    print((Path(args.out) / "e2.md").read_text())
    print(f"total {result['wall_s'] / 60:.1f} min; written {args.out}/e2.md, e2.json, e2.png")


if __name__ == "__main__":
    main()

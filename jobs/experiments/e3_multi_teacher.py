"""E3 — several teachers from disjoint sites: fusion rules, a searched fusion, and the teachers' ensemble, on HC18
(or any labeled folder: --data, --dataset-name, --labels).

    .venv/bin/python jobs/experiments/e3_multi_teacher.py            # full: 26 min on 2 CPU cores (96x96)
    .venv/bin/python jobs/experiments/e3_multi_teacher.py --smoke    # same path, tiny: ~5 min (quiet machine)
    .venv/bin/python jobs/experiments/e3_multi_teacher.py --reuse    # keep runs/e3's teachers and annotation set

Full-run cost, measured 2026-12-01 on 2 cores (the host's speed drifts by up to ~2x; allow 50 min): teachers
98 + 122 + 75 s (40 epochs), annotation and evaluations ~2 min, four timm_unet students ~100 s each (24 epochs),
the search 760 s (8 trials, ASHA stopped 4).

Protocol (``jobs/experiments/protocol.py``, seed 0, split by subject): three teachers of different architectures
(SegResNet, a timm ResNet-18 U-Net, AttentionUnet), each trained on its own site (``site_a``, ``site_b``,
``site_c``: disjoint subjects, a "hospital" each). One annotation run with the three over the ``transferal`` split
(masks never read) stores every teacher's map. Students of one architecture (default: timm_unet, whose capacity
E1 showed a student needs; ``--student-arch unet`` gives the small MONAI UNet of the earlier runs) are trained,
same settings, on the maps fused by each rule, re-fused at training time (no teacher runs again):
  mean            the default configuration (``fusion.rule`` defaults to mean);
  weighted_mean   weights = each teacher's Dice on ``val`` (scored by ``evaluate`` at the original resolution,
                  floored at 0.001), so a teacher that does better on the shared validation split counts more;
  majority_vote   one vote per teacher; staple: STAPLE (EM over the teachers' labels), unweighted;
  searched        ``nakt tune`` (``tune_student``): ``--trials`` trials over ``fusion.rule`` in {weighted_mean,
                  majority_vote, staple} and ``fusion.weights`` on the simplex, Optuna TPE, ASHA on val Dice, one
                  trial at a time; the best finished trial's student.
These are compared on ``test`` with each teacher alone and with the teachers' ensemble at inference (the mean of
their probabilities). Every model picks its best epoch on ``val`` (foreground Dice at the original resolution,
95% bootstrap CI; differences paired over the same test cases). The default-vs-searched table, with the cost per
trial, is issue 5's measurement and is also written as ``search.md``. Results: ``results/e3/`` (``e3.md``,
``e3.json``, ``e3.png``, ``search.md``, the search's own ``tune_results.{md,csv,png}``) and the run's MLflow store
(``<run_dir>/mlflow.db``, experiment ``e3``: a run per training, the search's parent and child runs, the default
student registered as ``e3-student@candidate``, the searched one as ``@champion``, and a summary run).
``--smoke`` writes to ``runs/e3-smoke`` and ``results/e3-smoke`` unless told otherwise.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import time
from pathlib import Path

from _common import (
    add_common_args,  # (the script's folder is on sys.path)
    dataset_name,
)
from _common import main as common_main

SITES = ("site_a", "site_b", "site_c")
RULES = ("mean", "weighted_mean", "majority_vote", "staple")
DEFAULT = "student_mean"  # the default configuration
SEARCHED = "student_searched"


def run(args: argparse.Namespace) -> dict:
    import protocol

    from nakt_ray import config
    from nakt_ray.annotation.pipeline import annotate
    from nakt_ray.evaluation.evaluate import ENSEMBLE, evaluate
    from nakt_ray.runtime.cluster import init_ray
    from nakt_ray.search.tune import tune_student
    from nakt_ray.training.student import train_student
    from nakt_ray.training.teacher import train_teacher

    run_dir = Path(args.run_dir)
    splits = protocol.materialise(args.data, run_dir / "splits", seed=args.seed)
    if args.smoke:  # the same splits, cut to a few cases each
        splits = {**splits, **{k: protocol.subset(splits[k], n, run_dir / f"{k}_small") for k, n in (
            ("site_a", 12), ("site_b", 12), ("site_c", 12), ("transferal", 16), ("val", 8), ("test", 12))}}
    epochs = dict(teacher=2, student=2) if args.smoke else dict(teacher=args.teacher_epochs,
                                                                student=args.student_epochs)
    trials = 2 if args.smoke else args.trials
    train_common = {"batch_size": 8, "num_workers": 0, "lr": 2e-3}
    # the smoke checks the path: one pass an epoch, not the student's default floor of 550 steps
    one_pass = {"min_steps": 0} if args.smoke else {}
    raw = {
        "run_dir": str(run_dir),
        "data": {"labels": list(args.labels), "transferal": str(splits["transferal"]),
                 "val": str(splits["val"]), "test": str(splits["test"])},
        "preprocess": {"size": [args.size, args.size]},
        "teachers": [{"name": f"{arch}_{site}", "arch": arch, "train_data": str(splits[site]),
                      "val_data": str(splits["val"])} for arch, site in zip(args.teacher_archs, SITES)],
        "student": {"name": DEFAULT, "arch": args.student_arch},
        "teacher_training": {**train_common, "epochs": epochs["teacher"]},
        "training": {**train_common, "epochs": epochs["student"], "lr": 1e-3, **one_pass},
        "tracking": {"experiment": "e3", "registered_model": "e3-student"},
        "ray": {"num_cpus": os.cpu_count()},
    }
    cfg = config.from_dict(raw)
    teachers = [t.name for t in cfg.teachers]
    init_ray(cfg.ray)
    timings, models, students = {}, {}, {}
    for teacher in cfg.teachers:
        t = time.perf_counter()
        done = cfg.teacher_checkpoint(teacher)
        models[teacher.name] = str(done if args.reuse and done.exists() else train_teacher(cfg, teacher))
        timings[f"{teacher.name}_s"] = time.perf_counter() - t
    t = time.perf_counter()
    # Once: every teacher's map is stored, every fusion below is applied at training time. With --reuse, the cases
    # an earlier run wrote are kept (annotate's resume).
    annotate(cfg, resume=args.reuse and (run_dir / "annotations" / "manifest.json").exists())
    timings["annotate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    val_report = evaluate(cfg, dict(models), str(splits["val"]), run_dir / "evaluation_val")
    timings["teachers_val_s"] = time.perf_counter() - t
    val_dice = {n: float(val_report["models"][n]["dice"]) for n in teachers}
    val_weights = [d if d >= 1e-3 else 1e-3 for d in val_dice.values()]  # (NaN compares False: 1e-3 too)

    fusions = {"mean": None, "weighted_mean": val_weights, "majority_vote": None, "staple": None}
    for rule, weights in fusions.items():
        name = f"student_{rule}"
        scfg = config.from_dict({**raw, "fusion": {"rule": rule, "weights": weights},
                                 "student": {**raw["student"], "name": name}})
        t = time.perf_counter()
        result = train_student(scfg, register=name == DEFAULT)  # the default is registered (alias candidate)
        timings[f"{name}_s"] = time.perf_counter() - t
        models[name] = result["model_path"]
        students[name] = {"rule": rule, "weights": weights, "train_wall_s": result["wall_s"],
                          "best_val_dice": result["metrics"].get("best_val_dice"),
                          "epoch_s": result["metrics"].get("epoch_s")}

    space = {"fusion.rule": {"choice": ["weighted_mean", "majority_vote", "staple"]},
             "fusion.weights": {"simplex": len(teachers)}}
    # ASHA's rungs are at grace x 2^k up to the last epoch, inclusive: a trial below the cutoff of a rung *at* the
    # last epoch is stopped at its last report and its training task ended while it finishes (model file maybe not
    # copied, MLflow child run without its final metric and artifact). A grace period that does not divide the
    # epochs by a power of 2 keeps that rung away (24 epochs: rungs 5, 10, 20; the smoke's 2 epochs cannot).
    grace = max(1, (epochs["student"] - 1) // 4)
    tcfg = config.from_dict({**raw, "student": {**raw["student"], "name": SEARCHED},
                             "tune": {"num_samples": trials, "max_concurrent_trials": 1, "scheduler": "asha",
                                      "grace_period": grace, "reduction_factor": 2, "seed": args.seed,
                                      "space": space}})
    t = time.perf_counter()
    search = tune_student(tcfg)
    timings["search_s"] = time.perf_counter() - t
    best = search["champion"]
    models[SEARCHED] = best["model_path"]
    rows = [{k: r[k] for k in ("trial_id", "status", "epochs", "best", "wall_s", "values", "error")}
            for r in search["rows"]]

    t = time.perf_counter()
    report = evaluate(cfg, models, str(splits["test"]), run_dir / "evaluation", ensemble=teachers)
    timings["evaluate_s"] = time.perf_counter() - t
    # The best single teacher is the one with the best *validation* Dice (the test split picks nothing).
    best_teacher = max(teachers, key=lambda t: val_dice[t])
    pairs = [(n, ref) for n in models if n.startswith("student_") for ref in (DEFAULT, ENSEMBLE, best_teacher)
             if n != ref]
    deltas = paired_deltas(run_dir / "evaluation" / "evaluation_cases.csv", pairs)
    return {"teachers": teachers, "teacher_archs": list(args.teacher_archs), "student_arch": args.student_arch,
            "val_dice_teachers": val_dice, "students": students, "models": report["models"],
            "deltas": deltas, "table": report["table"], "ensemble": ENSEMBLE, "best_teacher": best_teacher,
            "search": {"name": search["name"], "search_alg": search["search_alg"], "trials": rows,
                       "best_trial": best["trial_id"], "best_values": best["values"], "best_val_dice": best["best"],
                       "model_uri": search["model_uri"], "wall_s": search["wall_s"], "space": space,
                       "files": search["files"]},
            "timings": timings, "image_size": args.size, "epochs": epochs,
            "cases": {k: len(list((Path(splits[k]) / "images").iterdir())) for k in (*SITES, "transferal", "test")},
            "smoke": args.smoke}


def paired_deltas(cases_csv: Path, pairs: list[tuple[str, str]]) -> dict[str, dict]:
    """Per-case Dice of model minus reference over the same test cases: ``{model: {reference: {"delta",
    "delta_ci"}}}``, the mean and its 95% paired bootstrap CI."""
    import numpy as np

    from nakt_ray.metrics import bootstrap_ci

    with open(cases_csv) as f:
        rows = list(csv.DictReader(f))
    out = {}
    for model, ref in pairs:
        diff = np.array([float(r[f"dice__{model}"]) - float(r[f"dice__{ref}"]) for r in rows])
        mean, lo, hi = bootstrap_ci(diff)
        out.setdefault(model, {})[ref] = {"delta": mean, "delta_ci": [lo, hi]}
    return out


def search_table(result: dict) -> list[str]:
    """Default configuration vs best searched student, with the cost per trial (issue 5)."""
    m, s, rows = result["models"], result["search"], result["search"]["trials"]
    default, searched, d = m[DEFAULT], m[SEARCHED], result["deltas"][SEARCHED][DEFAULT]
    default_wall = result["students"][DEFAULT]["train_wall_s"]
    best_wall = next(r["wall_s"] for r in rows if r["trial_id"] == s["best_trial"])
    walls = [r["wall_s"] for r in rows]
    full = [r["wall_s"] for r in rows if r["epochs"] == result["epochs"]["student"]]

    def shares(values: dict) -> str:
        w = values.get("fusion.weights")
        return ", ".join(f"{x / sum(w):.2f}" for x in w) if w else "-"

    def ci(r: dict) -> str:
        return f"{r['dice_ci'][0]:.4f}-{r['dice_ci'][1]:.4f}"

    lines = [
        f"{dataset_name(result)}, three teachers ({', '.join(result['teachers'])}), student {result['student_arch']}, "
        f"{result['image_size']}x{result['image_size']}, {result['epochs']['student']} epochs per student or trial. "
        f"Test Dice on {result['cases']['test']} cases, 95% bootstrap CI; the difference is paired over the cases.",
        "", "| student | fusion (weights as shares of " + ", ".join(result["teachers"]) + ") | val Dice (best epoch) "
        "| test Dice | 95% CI | training wall s |", "|---|---|---|---|---|---|",
        f"| default configuration | mean | {result['students'][DEFAULT]['best_val_dice']:.4f} | "
        f"{default['dice']:.4f} | {ci(default)} | {default_wall:.0f} |",
        f"| best searched (trial {s['best_trial']}) | {s['best_values'].get('fusion.rule')} "
        f"({shares(s['best_values'])}) | {s['best_val_dice']:.4f} | {searched['dice']:.4f} | {ci(searched)} | "
        f"{best_wall:.0f} |", "",
        f"Best searched minus default: {d['delta']:+.4f} Dice (95% CI {d['delta_ci'][0]:+.4f} to "
        f"{d['delta_ci'][1]:+.4f}).", "",
        f"Search cost: {len(rows)} trials ({s['search_alg']}, ASHA, one at a time) in {s['wall_s']:.0f} s, "
        f"{sum(walls) / len(walls):.0f} s per trial on average (Tune's time to the trial's last report); "
        f"{len(full)} of them trained to the last epoch" + (f" ({sum(full) / len(full):.0f} s each)" if full else "")
        + (", the others were stopped early by ASHA" if len(full) < len(rows) else "")
        + f". One default student: {default_wall:.0f} s (Ray Train fit).", "",
        "| trial | status | epochs | best val Dice | wall s | rule | weights (shares) |",
        "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['trial_id']} | {r['status']} | {r['epochs']} | {r['best']:.4f} | {r['wall_s']:.0f} | "
                     f"{r['values'].get('fusion.rule')} | {shares(r['values'])} |")
    return lines


def write_results(result: dict, out: Path, run_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    out.mkdir(parents=True, exist_ok=True)
    m, d, ens = result["models"], result["deltas"], result["ensemble"]
    best = result.get("best_teacher") or max(result["teachers"], key=lambda t: result["val_dice_teachers"][t])
    kind = "smoke" if result["smoke"] else "full"

    def dice(name: str) -> str:
        r = m[name]
        return f"{r['dice']:.4f} | {r['dice_ci'][0]:.4f}-{r['dice_ci'][1]:.4f}"

    def delta(name: str, ref: str) -> str:
        x = d.get(name, {}).get(ref)
        return f"{x['delta']:+.4f} ({x['delta_ci'][0]:+.4f} to {x['delta_ci'][1]:+.4f})" if x else "-"

    sites = ", ".join(f"{t}: {result['cases'][site]} cases" for t, site in zip(result["teachers"], SITES))
    lines = [f"# E3: several teachers, fusion rules, searched fusion, ensemble ({kind})", "",
             f"{dataset_name(result)}, split by subject (seed 0), {result['image_size']}x{result['image_size']}, "
             f"classes {', '.join(result.get('labels', ['background', 'head'])[1:])}; teachers on disjoint "
             f"sites ({sites}); students ({result['student_arch']}) on the transferal split "
             f"({result['cases']['transferal']} cases); epochs: teachers {result['epochs']['teacher']}, students "
             f"{result['epochs']['student']}. Dice on the test split ({result['cases']['test']} cases), 95% bootstrap "
             "CI; differences paired over the same cases.", "",
             "| model | test Dice | 95% CI | minus default student | minus teachers' ensemble | minus best teacher "
             f"({best}, best val Dice) |", "|---|---|---|---|---|---|"]
    for t in result["teachers"]:
        lines.append(f"| teacher {t} (val Dice {result['val_dice_teachers'][t]:.3f}) | {dice(t)} | | | |")
    lines.append(f"| teachers' ensemble at inference (mean of probabilities) | {dice(ens)} | | | |")
    for name in [f"student_{r}" for r in RULES] + [SEARCHED]:
        s = result["students"].get(name)
        label = (f"student, {s['rule']}" + (" (default configuration)" if name == DEFAULT else "")
                 + (f", weights = val Dice {[round(w, 3) for w in s['weights']]}" if s["weights"] else "")) if s \
            else f"student, searched fusion ({result['search']['best_values'].get('fusion.rule')})"
        lines.append(f"| {label} | {dice(name)} | {delta(name, DEFAULT)} | {delta(name, ens)} | {delta(name, best)} |")
    lines += ["", "## Default configuration vs best searched (issue 5)", "", *search_table(result), "",
              "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result["timings"].items()), "",
              "All models:", "", result["table"]]
    (out / "e3.md").write_text("\n".join(lines) + "\n")
    (out / "search.md").write_text("\n".join([f"# Best searched student vs default configuration ({kind})", "",
                                              *search_table(result)]) + "\n")
    (out / "e3.json").write_text(json.dumps(result, indent=2))
    for key, f in result["search"]["files"].items():  # the search's own table and plot
        shutil.copyfile(f, out / f"tune_results.{key}")

    names = [*result["teachers"], ens, *(f"student_{r}" for r in RULES), SEARCHED]
    labels = [*(f"T {t}" for t in result["teachers"]), "ensemble", *(f"S {r}" for r in RULES), "S searched"]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ys = [m[n]["dice"] for n in names]
    errs = [[y - m[n]["dice_ci"][0] for n, y in zip(names, ys)], [m[n]["dice_ci"][1] - y for n, y in zip(names, ys)]]
    colors = ["C0"] * len(result["teachers"]) + ["C1"] + ["C2"] * len(RULES) + ["C3"]
    ax.bar(range(len(names)), ys, yerr=errs, color=colors, capsize=3)
    ax.axhline(m[DEFAULT]["dice"], color="grey", ls="--", lw=1, label="default student")
    ax.set_xticks(range(len(names)), labels, rotation=30, ha="right")
    ax.set(ylabel="test Dice (95% CI)", title=f"E3 on {dataset_name(result)}: teachers, ensemble, students by fusion",
           ylim=(max(0.0, min(ys) - 0.1), 1.0))
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "e3.png", dpi=120)

    mlflow.set_tracking_uri(f"sqlite:///{run_dir.resolve() / 'mlflow.db'}")
    mlflow.set_experiment("e3")
    with mlflow.start_run(run_name="e3-summary"):
        mlflow.log_metrics({f"dice.{name}": r["dice"] for name, r in m.items()})
        mlflow.log_metrics({f"delta.{name}.vs.{ref}": x["delta"] for name, refs in d.items()
                            for ref, x in refs.items()})
        mlflow.log_metrics({"search_wall_s": result["search"]["wall_s"], "wall_s": result["wall_s"],
                            "search_trials": len(result["search"]["trials"])})
        mlflow.log_artifacts(str(out), artifact_path="results")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, "e3", size=96)
    p.add_argument("--teacher-archs", nargs=3, default=["segresnet", "timm_unet", "attention_unet"],
                   help="architectures of the teachers of site_a, site_b, site_c")
    p.add_argument("--student-arch", default="timm_unet",
                   help="the students' architecture (E1: the small MONAI UNet caps a student's Dice; docs/results.md)")
    p.add_argument("--trials", type=int, default=8, help="search trials (--smoke: 2)")
    p.add_argument("--teacher-epochs", type=int, default=40)
    p.add_argument("--student-epochs", type=int, default=24, help="per student and per search trial")
    common_main(p.parse_args(), "e3", run, write_results, "e3.md, search.md, e3.json, e3.png")


if __name__ == "__main__":
    main()

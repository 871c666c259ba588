"""E7 — small data (issue 21): does the default student still reach the teachers' ensemble when every site has a
dozen labeled images and the transferal set a few dozen? HC18 (or any labeled folder: --data, --dataset-name,
--labels), E3's protocol cut to size, several seeds, and the candidate fixes measured alone and together.

    .venv/bin/python jobs/experiments/e7_small_data.py --smoke                     # same path, tiny: ~6 min
    .venv/bin/python jobs/experiments/e7_small_data.py --regimes 12/36 --seeds 0   # one cell: ~16 min
    .venv/bin/python jobs/experiments/e7_small_data.py --reuse                     # the study; done cells kept

Cost on 2 cores, 96x96 (2026-12-07: the smoke measured, 6.3 min on a busy machine; a cell estimated from a
partial run, whose segresnet teacher took 3.1-4.6 s an epoch (8 steps + validation) while the machine was
quiet, 5-8 times that while another study ran, and from E3's stage costs): a cell ~16 min on idle cores (12/36:
teachers ~5 min, as E3's, since the floor gives them E3's steps; two annotations ~1.5; six students ~7.5;
evaluations ~2.5), 24/90 and 60/178 ~19 min each (more annotation and longer default students), so the study
(3 regimes x 3 seeds) ~2.7 h idle, up to twice that as the host drifts; run it alone, and with --reuse, which
keeps every finished cell and the finished parts of an interrupted one.

Protocol. The split of ``protocol.py`` (``--seed``, default 0: E3's split, so val and test are E3's) is made once;
val (58 images) and test (116) are kept whole in every cell. A *regime* ``S/T`` cuts each site to S images and the
transferal split to T images; a *seed* draws them: the images of each split in an order shuffled by the seed, the
first S (T) taken, so for one seed a smaller regime's images are part of a larger one's (60: site_b has 57, all
taken; 178 is the whole transferal split). A cell (regime, seed) is one unit, in ``<run-dir>/cells/<regime>/seed<k>``:
  teachers      E3's: segresnet on site_a, timm_unet on site_b, attention_unet on site_c, 40 epochs of batch 8 with
                ``teacher_training.min_steps`` (default 320, the steps a 60-image site gets from 40 epochs): a
                12-image teacher is not left at 80 steps (decision 67). The same teachers serve every candidate.
  annotation    once without and once with flip TTA (``teachers[].tta_flips: [-1, -2]``, four passes), each teacher's
                map stored in both sets (``annotations/``, ``annotations_tta/``).
  students      timm_unet, 24 epochs of batch 8 (E3's), one per candidate (``--candidates``):
                  default  the default configuration before E7 (decision 74): mean fusion, no TTA, one pass an
                           epoch (``training.min_steps: 0``);
                  steps    ``training.min_steps`` (default 550, the steps E3's 178-image students get): the default
                           configuration since decision 74;
                  vote     majority vote; staple: STAPLE;  tta: the TTA annotation set;
                  all      steps + staple + tta;
                  aug      ``training.augment_strength: 2`` (not run unless asked).
                  steps_tta  the floor and TTA, without STAPLE (not run unless asked).
                A candidate whose training would equal an earlier one's (``steps`` where the set already gives the
                floor) reuses that student.
  evaluation    teachers (without TTA), their ensemble (mean of probabilities) and every student on test; best
                teacher by val Dice; per-case Dice differences paired over the test cases (E3's ``paired_deltas``).
The goal (issue 21), per regime on the mean over seeds: candidate >= ensemble - 0.005 and >= the best teacher.
Results: ``results/e7/`` (``e7.md``, ``e7.json``, ``e7.png``), every cell's ``cell.json`` in its folder, and the
MLflow store ``<run-dir>/mlflow.db`` (experiment ``e7``: every training, and the ``e7-summary`` run).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, dataset_name  # noqa: E402  (this folder)
from _common import main as common_main  # noqa: E402

SITES = ("site_a", "site_b", "site_c")
TEACHER_ARCHS = ("segresnet", "timm_unet", "attention_unet")
REGIMES = ("12/36", "24/90", "60/178")
TTA_FLIPS = [-1, -2]
# name -> what differs from the default configuration; the fusion rule of "all" is STAPLE (E3 and issue 21's
# dermoscopy run: STAPLE at or above vote)
CANDIDATES: dict[str, dict[str, Any]] = {
    "default": {}, "steps": {"floor": True}, "vote": {"rule": "majority_vote"}, "staple": {"rule": "staple"},
    "tta": {"tta": True}, "all": {"floor": True, "rule": "staple", "tta": True}, "aug": {"augment_strength": 2.0},
    "steps_tta": {"floor": True, "tta": True}}
DEFAULT_CANDIDATES = ("default", "steps", "vote", "staple", "tta", "all")
GOAL_MARGIN = 0.005  # the student may be this much below the ensemble
# The figure's names: `default` is the configuration before decision 74, `steps` today's default.
PLOT_LABELS = {"default": "default before E7 (one pass an epoch)", "steps": "min_steps 550 (the default now)"}


def parse_regime(text: str) -> tuple[int, int]:
    """``'12/36'`` -> ``(12, 36)``: images per site, transferal images."""
    try:
        site, transferal = (int(x) for x in text.split("/"))
    except ValueError:
        raise SystemExit(f"--regimes: got {text!r}; expected SITE/TRANSFERAL image counts, e.g. 12/36") from None
    if site < 1 or transferal < 1:
        raise SystemExit(f"--regimes: got {text!r}; expected counts >= 1")
    return site, transferal


def cell_id(regime: str, seed: int) -> str:
    site, transferal = parse_regime(regime)
    return f"s{site}-t{transferal}/seed{seed}"


def draw(folder: Path, n: int, out: Path, seed: int, salt: int) -> Path:
    """The first ``n`` images of ``folder`` (a split: images/, masks/) in an order shuffled by ``(seed, salt)``, as
    a folder of links at ``out``: for one seed and split, a smaller draw is the start of a larger one."""
    files = sorted(p.name for p in (folder / "images").iterdir())
    random.Random(seed * 7919 + salt).shuffle(files)
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for f in files[:n]:
            if (folder / sub / f).exists() and not (out / sub / f).exists():
                (out / sub / f).symlink_to((folder / sub / f).resolve())
    return out


def candidate_overrides(name: str, min_steps: int, annotations_tta: str) -> dict[str, Any]:
    """The student's config sections for candidate ``name`` (``fusion``, ``training`` and ``student`` changes)."""
    c = CANDIDATES[name]
    return {"fusion": {"rule": c.get("rule", "mean")},
            "training": {"min_steps": min_steps if c.get("floor") else 0,
                         "augment_strength": c.get("augment_strength", 1.0)},
            "student": {"name": f"student_{name}", "annotations": annotations_tta if c.get("tta") else None}}


def run_cell(args: argparse.Namespace, splits: dict[str, Path], regime: str, seed: int) -> dict:
    """One (regime, seed) cell: teachers, two annotation runs, the candidates' students, evaluation. Resumable with
    --reuse: finished teachers, annotation cases and students (``progress.json``) are kept."""
    from e3_multi_teacher import paired_deltas

    from nakt_ray import config
    from nakt_ray.annotation.pipeline import annotate
    from nakt_ray.evaluation.evaluate import ENSEMBLE, evaluate
    from nakt_ray.training.loop import passes_per_epoch
    from nakt_ray.training.student import train_student, unfinished_run
    from nakt_ray.training.teacher import train_teacher

    t_cell = time.perf_counter()
    site_n, transferal_n = parse_regime(regime)
    cell = Path(args.run_dir) / "cells" / cell_id(regime, seed)
    data = {s: draw(splits[s], site_n, cell / "data" / s, seed, i) for i, s in enumerate(SITES)}
    data["transferal"] = draw(splits["transferal"], transferal_n, cell / "data" / "transferal", seed, 3)
    cases = {k: len(list((v / "images").iterdir())) for k, v in data.items()}
    train = {"batch_size": 8, "num_workers": 0}
    raw = {"run_dir": str(cell),
           "data": {"labels": list(args.labels), "transferal": str(data["transferal"]), "val": str(splits["val"]),
                    "test": str(splits["test"])},
           "preprocess": {"size": [args.size, args.size]},
           "teachers": [{"name": f"{arch}_{site}", "arch": arch, "train_data": str(data[site]),
                         "val_data": str(splits["val"])} for arch, site in zip(args.teacher_archs, SITES)],
           "student": {"name": "student_default", "arch": args.student_arch},
           "teacher_training": {**train, "lr": 2e-3, "epochs": args.teacher_epochs,
                                "min_steps": args.teacher_min_steps},
           "training": {**train, "lr": 1e-3, "epochs": args.student_epochs},
           "tracking": {"uri": f"sqlite:///{Path(args.run_dir).resolve() / 'mlflow.db'}", "experiment": "e7",
                        "registered_model": "e7-student"},
           "ray": {"num_cpus": os.cpu_count()}}
    cfg = config.from_dict(raw)
    teachers = [t.name for t in cfg.teachers]
    progress_file = cell / "progress.json"
    progress = json.loads(progress_file.read_text()) if args.reuse and progress_file.exists() else {}
    timings, students = progress.setdefault("timings", {}), progress.setdefault("students", {})
    models: dict[str, str] = {}
    for teacher in cfg.teachers:
        t = time.perf_counter()
        done = cfg.teacher_checkpoint(teacher)
        models[teacher.name] = str(done if args.reuse and done.exists() else train_teacher(cfg, teacher))
        timings.setdefault(f"teacher_{teacher.name}_s", time.perf_counter() - t)
    sets = {False: cell / "annotations", True: cell / "annotations_tta"}
    for tta in sorted({bool(CANDIDATES[c].get("tta")) for c in args.candidates}):
        acfg = config.from_dict({**raw, "teachers": [{**t, "tta_flips": TTA_FLIPS if tta else []}
                                                     for t in raw["teachers"]]})
        t = time.perf_counter()
        annotate(acfg, output=str(sets[tta]), resume=args.reuse and (sets[tta] / "manifest.json").exists())
        timings.setdefault("annotate_tta_s" if tta else "annotate_s", time.perf_counter() - t)
    t = time.perf_counter()
    val_report = evaluate(cfg, dict(models), str(splits["val"]), cell / "evaluation_val")
    timings["teachers_val_s"] = time.perf_counter() - t
    val_dice = {n: float(val_report["models"][n]["dice"]) for n in teachers}

    trained: dict[tuple, str] = {}  # what a student's training depends on -> its candidate
    for name in args.candidates:
        scfg = config.from_dict({**raw, **{k: {**raw.get(k, {}), **v} for k, v in candidate_overrides(
            name, args.min_steps, str(sets[True])).items()}})
        passes = passes_per_epoch(scfg.training, cases["transferal"])
        key = (scfg.fusion.rule, scfg.student.annotations, passes, scfg.training.augment_strength)
        s = f"student_{name}"
        if key in trained:  # the same training as an earlier candidate's: its student, not a second run
            students[s] = {**students[f"student_{trained[key]}"], "same_as": f"student_{trained[key]}"}
        elif (s not in students or students[s].get("key") != list(key)
              or not Path(students[s]["model_path"]).exists()):
            t = time.perf_counter()
            result = train_student(scfg, register=False, run_name=f"{s}-{cell_id(regime, seed)}",
                                   resume=args.reuse and unfinished_run(scfg.student_checkpoint))
            m = result["metrics"]
            students[s] = {"model_path": result["model_path"], "key": list(key), "rule": scfg.fusion.rule,
                           "tta": scfg.student.annotations is not None, "passes": passes,
                           "steps": int(m.get("steps", 0)) * (int(m.get("epoch", -1)) + 1),
                           "train_wall_s": result["wall_s"], "wall_s": time.perf_counter() - t,
                           "best_val_dice": m.get("best_val_dice")}
        trained.setdefault(key, name)
        models[s] = students[s]["model_path"]
        progress_file.write_text(json.dumps(progress, indent=1))  # a finished student survives an interruption

    t = time.perf_counter()
    report = evaluate(cfg, models, str(splits["test"]), cell / "evaluation", ensemble=teachers)
    timings["evaluate_s"] = time.perf_counter() - t
    best_teacher = max(teachers, key=lambda n: val_dice[n])  # chosen on val: the test split picks nothing
    pairs = [(s, ref) for s in students for ref in (ENSEMBLE, best_teacher)] + [(ENSEMBLE, best_teacher)]
    pairs += [(s, "student_default") for s in students if s != "student_default" and "student_default" in students]
    deltas = paired_deltas(cell / "evaluation" / "evaluation_cases.csv", pairs)
    result = {"regime": regime, "seed": seed, "cases": {**cases, "val": len(list((splits["val"] / "images").iterdir())),
                                                       "test": len(list((splits["test"] / "images").iterdir()))},
              "teachers": teachers, "val_dice_teachers": val_dice, "best_teacher": best_teacher,
              "students": students, "dice": {n: r["dice"] for n, r in report["models"].items()},
              "dice_ci": {n: r["dice_ci"] for n, r in report["models"].items()}, "deltas": deltas,
              "timings": timings, "cell_s": time.perf_counter() - t_cell}
    (cell / "cell.json").write_text(json.dumps(result, indent=1))
    return result


ENSEMBLE = "teachers_ensemble"  # evaluation.evaluate.ENSEMBLE (the reports read without importing nakt_ray)
BEST = "best_teacher"  # in the summary: the teacher with the best val Dice of each cell


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def summarise(cells: list[dict], candidates: list[str]) -> dict[str, dict]:
    """Per regime, over its seeds: mean test Dice of each teacher, the best teacher (by val, per cell), the ensemble
    and each student; each student's paired differences to the ensemble, the best teacher and the default student
    (mean over seeds of the per-cell means, and per seed); the goal: mean difference to the ensemble >=
    -GOAL_MARGIN and to the best teacher >= 0."""
    out: dict[str, dict] = {}
    for regime in dict.fromkeys(c["regime"] for c in cells):
        rc = sorted((c for c in cells if c["regime"] == regime), key=lambda c: c["seed"])
        names = [*rc[0]["teachers"], BEST, ENSEMBLE, *(f"student_{n}" for n in candidates)]
        dice = {n: [c["dice"][c["best_teacher"] if n == BEST else n] for c in rc] for n in names}
        row: dict[str, Any] = {"seeds": [c["seed"] for c in rc], "cases": rc[0]["cases"],
                               "dice": {n: _mean(v) for n, v in dice.items()}, "dice_per_seed": dice,
                               "deltas": {}, "goal": {}}
        for n in candidates:
            s = f"student_{n}"
            refs = (ENSEMBLE, BEST) if n == "default" else (ENSEMBLE, BEST, "student_default")
            per = {ref: [c["deltas"][s][c["best_teacher"] if ref == BEST else ref]["delta"] for c in rc]
                   for ref in refs}
            row["deltas"][s] = {ref: {"mean": _mean(v), "per_seed": v} for ref, v in per.items()}
            ens, best = _mean(per[ENSEMBLE]), _mean(per[BEST])
            row["goal"][s] = {"vs_ensemble": ens >= -GOAL_MARGIN, "vs_best_teacher": best >= 0,
                              "met": ens >= -GOAL_MARGIN and best >= 0}
        row["ensemble_vs_best"] = {"mean": _mean([c["deltas"][ENSEMBLE][c["best_teacher"]]["delta"] for c in rc])}
        out[regime] = row
    return out


def run(args: argparse.Namespace) -> dict:
    import protocol

    from nakt_ray.config import RayConfig
    from nakt_ray.runtime.cluster import init_ray

    run_dir = Path(args.run_dir)
    if (run_dir / "cells").exists() and not args.reuse:
        raise SystemExit(f"{run_dir} holds an earlier E7 run; pass --reuse to keep its finished cells, or remove it "
                         "or pass another --run-dir")
    splits = protocol.materialise(args.data, run_dir / "splits", seed=args.seed)
    if args.smoke:  # val and test cut to a few cases (fixed: the first by name)
        splits.update({k: protocol.subset(splits[k], n, run_dir / f"{k}_small") for k, n in (("val", 8),
                                                                                           ("test", 12))})
    init_ray(RayConfig(num_cpus=os.cpu_count()))
    cells, t0 = [], time.perf_counter()
    for regime in args.regimes:
        for seed in args.seeds:
            done = run_dir / "cells" / cell_id(regime, seed) / "cell.json"
            earlier = json.loads(done.read_text()) if args.reuse and done.exists() else None
            missing = [n for n in args.candidates if earlier and f"student_{n}" not in earlier["students"]]
            if earlier and not missing:
                print(f"E7 cell {cell_id(regime, seed)}: done earlier ({done})", flush=True)
                cells.append(earlier)
                continue
            # (a cell done earlier without some of these candidates runs again: what it has is kept, the missing
            # students are trained, or taken from an equal one, and the evaluation is redone)
            print(f"E7 cell {cell_id(regime, seed)}: " + (f"adding {', '.join(missing)}" if missing else "starting"),
                  flush=True)
            cells.append(run_cell(args, splits, regime, seed))
            print(f"E7 cell {cell_id(regime, seed)}: {cells[-1]['cell_s'] / 60:.1f} min", flush=True)
    return {"regimes": list(args.regimes), "seeds": list(args.seeds), "candidates": list(args.candidates),
            "split_seed": args.seed, "teacher_archs": list(args.teacher_archs), "student_arch": args.student_arch,
            "epochs": {"teacher": args.teacher_epochs, "student": args.student_epochs},
            "min_steps": {"teacher": args.teacher_min_steps, "student": args.min_steps}, "image_size": args.size,
            "cells": cells, "summary": summarise(cells, list(args.candidates)), "smoke": args.smoke,
            "run_s": time.perf_counter() - t0}


def _d(x: dict | None) -> str:
    if not x:
        return "-"
    return f"{x['mean']:+.4f} ({', '.join(f'{v:+.3f}' for v in x['per_seed'])})"


def write_results(result: dict, out: Path, run_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    out.mkdir(parents=True, exist_ok=True)
    summary, cands = result["summary"], result["candidates"]
    kind = "smoke" if result["smoke"] else f"{len(result['cells'])} cells"
    lines = [f"# E7: small data, teachers' ensemble vs students ({kind})", "",
             f"{dataset_name(result)}, E3's split (seed {result['split_seed']}) cut to size per regime SITE/"
             f"TRANSFERAL, subsets drawn by each seed; {result['image_size']}x{result['image_size']}; teachers "
             f"{', '.join(result['teacher_archs'])} ({result['epochs']['teacher']} epochs, min_steps "
             f"{result['min_steps']['teacher']}), students {result['student_arch']} ({result['epochs']['student']} "
             f"epochs; `steps`: min_steps {result['min_steps']['student']}). Test Dice: mean over seeds (per seed in "
             "brackets); differences paired over the test cases, then averaged over seeds. Goal (issue 21): "
             f"minus ensemble >= -{GOAL_MARGIN} and minus best teacher >= 0.", ""]
    for regime, row in summary.items():
        c = row["cases"]
        lines += [f"## Regime {regime}: sites {c['site_a']}/{c['site_b']}/{c['site_c']} images, transferal "
                  f"{c['transferal']}, val {c['val']}, test {c['test']}; seeds {row['seeds']}", "",
                  "| model | test Dice | per seed | minus ensemble | minus best teacher | minus default | goal |",
                  "|---|---|---|---|---|---|---|"]
        for n, v in row["dice"].items():
            per = ", ".join(f"{x:.3f}" for x in row["dice_per_seed"][n])
            d, g = row["deltas"].get(n, {}), row["goal"].get(n)
            goal = "-" if g is None else "**met**" if g["met"] else "no" + (
                " (ens.)" if not g["vs_ensemble"] else "") + (" (best)" if not g["vs_best_teacher"] else "")
            label = {BEST: "best teacher (by val, per seed)", ENSEMBLE: "teachers' ensemble"}.get(n, n)
            lines.append(f"| {label} | {v:.4f} | {per} | {_d(d.get(ENSEMBLE))} | {_d(d.get(BEST))} | "
                         f"{_d(d.get('student_default'))} | {goal} |")
        lines.append(f"\nEnsemble minus best teacher: {row['ensemble_vs_best']['mean']:+.4f}.\n")
    lines += ["## Cost per cell (s)", "", "| cell | total | teachers | annotation (plain, TTA) | students (passes, "
              "steps) | evaluation |", "|---|---|---|---|---|---|"]
    for c in result["cells"]:
        t = c["timings"]
        teach = sum(v for k, v in t.items() if k.startswith("teacher_"))
        studs = ", ".join(f"{n[8:]} {s['wall_s']:.0f} ({s['passes']}, {s['steps']})" for n, s in
                          c["students"].items() if "same_as" not in s)
        lines.append(f"| {cell_id(c['regime'], c['seed'])} | {c['cell_s']:.0f} | {teach:.0f} | "
                     f"{t.get('annotate_s', 0):.0f}, {t.get('annotate_tta_s', 0):.0f} | {studs} | "
                     f"{t.get('evaluate_s', 0) + t.get('teachers_val_s', 0):.0f} |")
    lines += ["", f"This run: {result['run_s'] / 60:.1f} min (cells done earlier and kept with --reuse count 0)."]
    (out / "e7.md").write_text("\n".join(lines) + "\n")
    (out / "e7.json").write_text(json.dumps(result, indent=2))

    regimes = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=False)
    width = 0.8 / max(1, len(cands))
    for ax, ref, floor, title in ((axes[0], ENSEMBLE, -GOAL_MARGIN, "minus teachers' ensemble"),
                                  (axes[1], BEST, 0.0, "minus best teacher (by val)")):
        for i, n in enumerate(cands):
            xs = [r + (i - (len(cands) - 1) / 2) * width for r in range(len(regimes))]
            ds = [summary[g]["deltas"][f"student_{n}"][ref] for g in regimes]
            ax.bar(xs, [d["mean"] for d in ds], width, label=PLOT_LABELS.get(n, n), color=f"C{i}")
            for x, d in zip(xs, ds):
                ax.plot([x] * len(d["per_seed"]), d["per_seed"], "k.", ms=3)
        ax.axhline(floor, color="grey", ls="--", lw=1)
        ax.set_xticks(range(len(regimes)), regimes)
        ax.set(xlabel="regime: images per site / transferal images", ylabel="test Dice difference (paired)",
               title=title)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"E7 on {dataset_name(result)}: students by candidate, mean over seeds (dots: seeds)")
    fig.tight_layout()
    fig.savefig(out / "e7.png", dpi=120)

    mlflow.set_tracking_uri(f"sqlite:///{run_dir.resolve() / 'mlflow.db'}")
    mlflow.set_experiment("e7")
    with mlflow.start_run(run_name="e7-summary"):
        for regime, row in summary.items():
            key = "r" + regime.replace("/", "-")
            mlflow.log_metrics({f"dice.{key}.{n}": v for n, v in row["dice"].items()})
            mlflow.log_metrics({f"delta.{key}.{s}.vs.{ref}": d["mean"] for s, refs in row["deltas"].items()
                                for ref, d in refs.items()})
            mlflow.log_metrics({f"goal.{key}.{s}": float(g["met"]) for s, g in row["goal"].items()})
        mlflow.log_metrics({"wall_s": result["wall_s"], "cells": len(result["cells"])})
        mlflow.log_artifacts(str(out), artifact_path="results")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, "e7", size=96)  # --seed: the protocol split's seed (E3's: 0); --seeds draw the subsets
    p.add_argument("--regimes", nargs="+", default=list(REGIMES), metavar="SITE/TRANSFERAL",
                   help="images per site / transferal images (default: %(default)s; --smoke: 6/10)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                   help="one cell per regime and seed; the seed draws the cell's images (--smoke: 0)")
    p.add_argument("--candidates", nargs="+", default=list(DEFAULT_CANDIDATES), choices=list(CANDIDATES),
                   help="students to train per cell (default: %(default)s; 'default' is always trained)")
    p.add_argument("--teacher-archs", nargs=3, default=list(TEACHER_ARCHS))
    p.add_argument("--student-arch", default="timm_unet")
    p.add_argument("--teacher-epochs", type=int, default=40)
    p.add_argument("--student-epochs", type=int, default=24)
    p.add_argument("--teacher-min-steps", type=int, default=320,
                   help="teacher_training.min_steps of every cell (default: the steps of a 60-image site in 40 "
                        "epochs of batch 8)")
    p.add_argument("--min-steps", type=int, default=550,
                   help="training.min_steps of the steps and all candidates (default: the steps of E3's "
                        "178-image students, 23 x 24)")
    args = p.parse_args()
    if args.smoke:  # the same path, tiny: one small regime, two epochs, floors that still add passes
        args.regimes = ["6/10"] if args.regimes == list(REGIMES) else args.regimes
        args.seeds = [0] if args.seeds == [0, 1, 2] else args.seeds
        args.teacher_epochs, args.student_epochs, args.teacher_min_steps, args.min_steps = 2, 2, 4, 6
    for regime in args.regimes:
        parse_regime(regime)
    args.candidates = ["default", *(c for c in dict.fromkeys(args.candidates) if c != "default")]
    common_main(args, "e7", run, write_results, "e7.md, e7.json, e7.png")


if __name__ == "__main__":
    main()

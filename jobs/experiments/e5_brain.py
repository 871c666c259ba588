"""E5 — 3D knowledge transfer on real brain anatomy: three 3D teachers of three architectures, one per MR contrast
("site"), distilled into one 3D student, scored per class in every site's contrast and in one no teacher saw.

    .venv/bin/python jobs/experiments/e5_brain.py             # full: see docs/results.md for the measured cost
    .venv/bin/python jobs/experiments/e5_brain.py --smoke     # the same path, tiny: a few minutes
    .venv/bin/python jobs/experiments/e5_brain.py --reuse     # keep the data, teachers and annotation sets

Data (``jobs/experiments/brain_mr.py``): 20 real brain label maps (SynthSeg's training maps, 1 mm, FreeSurfer
labels), grouped into 7 classes + background, rendered as MR-like head images by a generative model, one contrast
family per site (T1-like, T2-like, PD-like; and a low-resolution T1-like spin echo no teacher saw), resampled to
2 mm. Split by subject (seed 0): three teacher sites of 3 subjects each, a transferal set of 6 subjects in every
contrast (its labels never read), val 2 and test 3 subjects, each in every contrast.

Protocol: a 3D teacher per site (MONAI UNet, SegResNet, DynUNet; ``--patch``^3 patches, a third forced onto
foreground, nnU-Net's intensity augmentation), each on its own site's 3 subjects for about 6 minutes (epochs per
architecture in ``TEACHERS``: the budget is time, as a hospital's is, not steps), keeping its last epoch. One
annotation run of the transferal set
with the three (3D sliding window), maps stored per case (zarr). Students (one architecture, ``STUDENT``: a MONAI
UNet of five levels, 16-256 channels, no residual units: one level deeper than the T1 teacher's kind, which costs
~1.03x its step and sees 4x the context; same settings):
  student_mean      fused by the mean (the default configuration);
  student_searched  fused by the rule and weights searched on the validation subjects: the three teachers annotate
                    val (maps stored); the weighted mean and the confidence-weighted mean, each with every weight
                    vector of the simplex grid of step 0.1 (2 x 66) and with specialist weighting at four
                    temperatures (2 x 4: each case weighs each teacher by its confidence there against its own over
                    the set, ``fusion.specialist``), fuse them and are scored by Dice against val's labels on the
                    preprocessed grid; the best re-fuses the transferal set (``nakt fuse [--specialist]``: no
                    teacher runs again) and a student is trained on it.
Every model is scored on each contrast's test folder (``nakt evaluate``: each volume on its original grid, per-class
Dice and HD95 in mm with bootstrap CIs over the 3 subjects) against each teacher alone and the teachers' ensemble
(the mean of their probabilities). What the students learned from is scored too, after the fact: the fused labels
and each teacher's labels of the transferal set against its withheld masks, per contrast. Results: ``results/e5/``
(``e5.md``, ``e5.json``, per-contrast evaluations). ``--teachers-only`` stops after the teachers' table (calibration).
Seconds per step are kept in ``<run-dir>/timings.json``, so a ``--reuse`` run reports the whole cost.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import brain_mr  # noqa: E402  (the experiment's data, in this folder)

NAME = "e5"
TEACHERS = (  # (name, architecture, arch_args, site, epochs): epochs for about 6 minutes each on 2 cores at 48^3
    ("unet_t1", "unet", {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 0}, "site_t1", 60),
    ("segresnet_t2", "segresnet", {"init_filters": 8, "blocks_down": [1, 2, 2, 2], "blocks_up": [1, 1, 1]},
     "site_t2", 28),
    ("dynunet_pd", "dynunet", {"filters": [8, 16, 32, 64]}, "site_pd", 30),
)
STUDENT = ("unet", {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 0})


SEARCHED_RULES = ("weighted_mean", "confidence_weighted")
SPECIALIST_TEMPERATURES = (1.0, 0.5, 0.25, 0.1)


def search_fusion(cfg, val_annotations: Path, val_folder: str, step: float = 0.1) -> dict:
    """Score every fusion of the search on the stored val maps, by the mean foreground soft Dice (over the classes
    present, then cases) of its fused soft label against val's labels (preprocessed grid), what the student learns
    from; the Dice of its arg-max is kept beside it (a tie there chose a blend of a right and a wrong teacher in the
    fourth run, docs/results.md): each rule of :data:`SEARCHED_RULES` with
    every weight vector of the simplex grid (``step``), and each with specialist weighting (equal priors; the
    temperatures of :data:`SPECIALIST_TEMPERATURES`; ``fusion.specialist``, its standardisation over the val cases).
    Returns the best, the best of each rule, equal weights, and the top five."""
    from nakt_ray.annotation import parquet as ann
    from nakt_ray.annotation import volume_store as vs
    from nakt_ray.data.volume_cases import list_volume_cases, read_case_labels
    from nakt_ray.data.volume_preprocess import VolumeTransform
    from nakt_ray.fusion.rules import confidence_weighted, teacher_confidence, weighted_mean
    from nakt_ray.fusion.specialist import foreground_confidence, specialist_weights
    from nakt_ray.metrics import dice_per_class

    names = [t.name for t in cfg.teachers]
    table = ann.read_table(val_annotations).to_pydict()
    cases = {c.case_id: c for c in list_volume_cases(val_folder, require_masks=True)}
    n = round(1 / step)
    grid = [np.array(w) / n for w in itertools.product(range(n + 1), repeat=len(names)) if sum(w) == n]
    candidates = [(rule, w, None) for rule in SEARCHED_RULES for w in grid]
    candidates += [(rule, np.full(len(names), 1 / len(names)), temperature)
                   for rule in SEARCHED_RULES for temperature in SPECIALIST_TEMPERATURES]
    stored = []  # (quantised maps, truth) per ok case: the specialist weights need every case's confidence first
    for i, case_id in enumerate(table["case_id"]):
        if table["status"][i] != "ok":
            continue
        group = vs.open_case(val_annotations, table["store"][i])
        maps = np.stack([np.asarray(group[vs.teacher_key(t)][...]) for t in names])
        transform = VolumeTransform.from_dict(json.loads(table["geometry"][i]))
        stored.append((maps, read_case_labels(cases[case_id], cfg.volume, transform, cfg.data.num_classes)))
    confidence = np.stack([(lambda s, c: s / max(c, 1))(*foreground_confidence(ann.dequantize(m, axis=1)))
                           for m, _ in stored])
    per_case = {temperature: specialist_weights(confidence, temperature) for temperature in SPECIALIST_TEMPERATURES}
    scores, hard_scores = np.zeros(len(candidates)), np.zeros(len(candidates))
    for i, (maps, truth) in enumerate(stored):
        probs = ann.dequantize(maps, axis=1)
        t, c, d, h, w = probs.shape
        flat = probs.reshape(t, c, d * h, w)
        voxel_confidence = teacher_confidence(flat)  # independent of the weights: once per case
        masks = [(k, truth.reshape(d * h, w) == k) for k in range(1, c) if (truth == k).any()]
        for k, (rule, weights, temperature) in enumerate(candidates):
            if temperature is not None:
                weights = per_case[temperature][i]
            soft = (weighted_mean(flat, weights) if rule == "weighted_mean"
                    else confidence_weighted(flat, weights, confidence=voxel_confidence))
            hard_scores[k] += dice_per_class(soft.argmax(0).reshape(d, h, w), truth, c, spatial_dims=3)[1:].mean()
            scores[k] += np.mean([2 * soft[j][m].sum() / (soft[j].sum() + m.sum()) for j, m in masks])
    scores /= max(len(stored), 1)
    hard_scores /= max(len(stored), 1)

    def entry(k: int) -> dict:
        rule, weights, temperature = candidates[k]
        return {"rule": rule, "weights": [float(x) for x in weights], "specialist": temperature,
                "val_soft_dice": float(scores[k]), "val_dice": float(hard_scores[k])}

    equal = min(range(len(grid)), key=lambda k: np.abs(grid[k] - 1 / len(names)).sum())
    ranked = sorted(range(len(candidates)), key=lambda k: -scores[k])
    plain = len(SEARCHED_RULES) * len(grid)
    specialist_best = {rule: entry(max(range(plain + j * len(SPECIALIST_TEMPERATURES),
                                             plain + (j + 1) * len(SPECIALIST_TEMPERATURES)), key=lambda k: scores[k]))
                       for j, rule in enumerate(SEARCHED_RULES)}
    return {**entry(ranked[0]), "cases": len(stored), "candidates": len(candidates),
            "equal_weights_val_soft_dice": {rule: float(scores[j * len(grid) + equal])
                                       for j, rule in enumerate(SEARCHED_RULES)},
            "best_per_rule": {rule: entry(max(range(j * len(grid), (j + 1) * len(grid)), key=lambda k: scores[k]))
                              for j, rule in enumerate(SEARCHED_RULES)},
            "best_specialist": specialist_best,
            "val_confidence": {case: [float(x) for x in row] for case, row in zip(
                [cid for cid, st in zip(table["case_id"], table["status"]) if st == "ok"], confidence)},
            "top": [entry(k) for k in ranked[:5]]}


def annotation_quality(cfg, annotations: Path, truth_masks: Path) -> dict:
    """What the student learns from, scored after the fact: per contrast, the mean over cases of the mean foreground
    Dice of the stored hard label (the fused annotation) and of each teacher's argmax against the transferal set's
    withheld masks (preprocessed grid). Only this report reads those masks; the pipeline never does."""
    from nakt_ray.annotation import parquet as ann
    from nakt_ray.annotation import volume_store as vs
    from nakt_ray.data.readers import Case
    from nakt_ray.data.volume_cases import read_case_labels
    from nakt_ray.data.volume_preprocess import VolumeTransform
    from nakt_ray.fusion.specialist import foreground_confidence
    from nakt_ray.metrics import dice_per_class

    names = [t.name for t in cfg.teachers]
    table = ann.read_table(annotations).to_pydict()
    scores: dict[str, dict[str, list[float]]] = {}
    for i, case_id in enumerate(table["case_id"]):
        if table["status"][i] != "ok":
            continue
        group = vs.open_case(annotations, table["store"][i])
        transform = VolumeTransform.from_dict(json.loads(table["geometry"][i]))
        case = Case(case_id, table["source"][i], str(truth_masks / Path(table["source"][i]).name))
        truth = read_case_labels(case, cfg.volume, transform, cfg.data.num_classes)
        site = case_id.split("_", 1)[1]
        maps = {t: np.asarray(group[vs.teacher_key(t)][...]) for t in names}
        labels = {"fused": np.asarray(group["hard_label"][...])}
        labels.update({t: m.argmax(0) for t, m in maps.items()})
        for name, label in labels.items():
            dice = dice_per_class(label, truth, cfg.data.num_classes, spatial_dims=3)[1:].mean()
            scores.setdefault(site, {}).setdefault(name, []).append(float(dice))
        sums, count = foreground_confidence([ann.dequantize(m, axis=0) for m in maps.values()])
        for t, value in zip(names, sums / max(count, 1)):
            scores[site].setdefault(f"confidence {t}", []).append(float(value))
    return {site: {name: float(np.mean(v)) for name, v in by.items()} for site, by in scores.items()}


def evaluate_all(cfg, models: dict, folders: dict, teachers: list[str], out: Path, timings: dict) -> dict:
    """Every model and the teachers' ensemble on each contrast's test folder; the reports' summaries by contrast."""
    from nakt_ray.evaluation.evaluate import evaluate

    reports = {}
    for site, folder in folders["test"].items():
        t = time.perf_counter()
        report = evaluate(cfg, dict(models), folder, out / f"evaluation_{site}", ensemble=teachers)
        timings[f"evaluate_{site}_s"] = time.perf_counter() - t
        reports[site] = {name: {k: r[k] for k in ("n", "dice", "dice_ci", "hd95", "hd95_ci", "classes")}
                         for name, r in report["models"].items()}
    return reports


def run(args: argparse.Namespace) -> dict:
    from nakt_ray import config
    from nakt_ray.annotation.pipeline import annotate
    from nakt_ray.annotation.re_fuse import re_fuse
    from nakt_ray.evaluation.evaluate import ENSEMBLE
    from nakt_ray.runtime.cluster import init_ray
    from nakt_ray.training.student import train_student
    from nakt_ray.training.teacher import train_teacher

    run_dir = Path(args.run_dir)
    data = Path(args.data_dir or run_dir / "data")
    # Seconds per step, kept in the run folder: a step that --reuse skips keeps the time it took when it ran.
    timings_file = run_dir / "timings.json"
    timings: dict[str, float] = json.loads(timings_file.read_text()) if args.reuse and timings_file.exists() else {}

    def record(key: str, since: float, ran: bool = True) -> None:
        if ran:
            timings[key] = time.perf_counter() - since
            run_dir.mkdir(parents=True, exist_ok=True)
            timings_file.write_text(json.dumps(timings, indent=1))

    t = time.perf_counter()
    made = not (args.reuse and (data / "split.json").exists())
    if made:
        brain_mr.make_brain_set(data, seed=args.seed, sizes=brain_mr.SMOKE_SIZES if args.smoke else None)
    split = json.loads((data / "split.json").read_text())
    record("data_s", t, made)
    folders = split["folders"]
    # teacher epochs: --teacher-epochs for all, or 0 (default) for each its own (TEACHERS)
    epochs = dict(teacher=2, student=2) if args.smoke else dict(teacher=args.teacher_epochs,
                                                                student=args.student_epochs)
    common = {"batch_size": 2, "lr": 3e-3, "num_workers": 0, "torch_threads": os.cpu_count()}
    patches = dict(teacher=2, student=2) if args.smoke else dict(teacher=args.teacher_patches,
                                                                 student=args.student_patches)
    # the smoke checks the path: one pass an epoch, not the student's default floor of 550 steps
    one_pass = {"min_steps": 0} if args.smoke else {}
    raw = {
        "run_dir": str(run_dir),
        "data": {"labels": list(brain_mr.CLASSES), "transferal": folders["transferal"], "val": folders["val"]},
        "volume": {"spacing": [2.0, 2.0, 2.0], "orientation": "RAS", "modality": "mri", "crop_nonzero": True,
                   "patch_size": [args.patch] * 3},
        "teachers": [{"name": name, "arch": arch, "arch_args": {**arch_args, "spatial_dims": 3},
                      "train_data": folders["teachers"][site], "sliding_window": True,
                      "overlap": 0.25} for name, arch, arch_args, site, _ in TEACHERS],
        "fusion": {"rule": "mean"},
        "student": {"name": "student_mean", "arch": STUDENT[0], "arch_args": {**STUDENT[1], "spatial_dims": 3}},
        # Teachers keep their last epoch (no validation pass per epoch: it would cost more than their training);
        # students pick their best epoch on val.
        "teacher_training": {**common, "epochs": epochs["teacher"] or 1, "patches_per_case": patches["teacher"]},
        "training": {**common, "epochs": epochs["student"], "patches_per_case": patches["student"], **one_pass},
        "tracking": {"experiment": NAME, "registered_model": "e5-student"},
        "ray": {"num_cpus": os.cpu_count()},
    }
    cfg = config.from_dict(raw)
    init_ray(cfg.ray)
    models: dict[str, str] = {}
    for teacher, (*_, teacher_epochs) in zip(cfg.teachers, TEACHERS):
        t = time.perf_counter()
        done = cfg.teacher_checkpoint(teacher)
        trained = not (args.reuse and done.exists())
        if trained:  # each teacher its own epochs (a budget of time, not of steps)
            done = train_teacher(config.from_dict({**raw, "teacher_training": {
                **raw["teacher_training"], "epochs": epochs["teacher"] or teacher_epochs}}), teacher)
        models[teacher.name] = str(done)
        record(f"{teacher.name}_s", t, trained)

    teachers = [t.name for t in cfg.teachers]
    if args.teachers_only:  # calibration: the teachers and their ensemble on every contrast, nothing distilled
        return {"teachers": {n: {"arch": a, "site": s, "epochs": epochs["teacher"] or e}
                             for n, a, _, s, e in TEACHERS}, "patch": args.patch,
                "epochs": epochs, "patches_per_case": patches, "ensemble": ENSEMBLE,
                "classes": list(brain_mr.CLASSES), "timings_s": timings,
                "reports": evaluate_all(cfg, models, folders, teachers, Path(args.out), timings)}

    t = time.perf_counter()
    ann_dir = run_dir / "annotations"
    ran = not (args.reuse and (ann_dir / "summary.json").exists())
    if ran:
        annotate(cfg, output=str(ann_dir), resume=args.reuse and (ann_dir / "manifest.json").exists())
    record("annotate_s", t, ran)
    t = time.perf_counter()
    val_ann = run_dir / "annotations_val"
    ran = not (args.reuse and (val_ann / "summary.json").exists())
    if ran:
        annotate(cfg, transferal=folders["val"], output=str(val_ann),
                 resume=args.reuse and (val_ann / "manifest.json").exists())
    record("annotate_val_s", t, ran)
    t = time.perf_counter()
    search = search_fusion(cfg, val_ann, folders["val"])
    searched_dir = run_dir / "annotations_searched"
    if args.reuse and (searched_dir / "summary.json").exists():
        searched = json.loads((searched_dir / "manifest.json").read_text())["fusion"]
        temperature = (searched.get("specialist") or {}).get("temperature")
        if (searched["rule"], searched["weights"], temperature) != (search["rule"], search["weights"],
                                                                   search["specialist"]):
            shutil.rmtree(searched_dir)  # fused by an earlier search's choice: fuse again
    if not (searched_dir / "summary.json").exists():
        shutil.rmtree(searched_dir, ignore_errors=True)
        re_fuse(ann_dir, searched_dir, search["rule"], search["weights"], specialist=search["specialist"])
    record("search_s", t)
    truth = Path(folders["transferal"]).parent / "transferal_truth" / "masks"
    quality = {"mean": annotation_quality(cfg, ann_dir, truth),
               "searched": annotation_quality(cfg, searched_dir, truth)}
    if args.search_only:  # calibration: the fusion search and what it gives the students, nothing distilled
        return {"search": search, "annotation_quality": quality, "timings_s": timings}

    students = {}
    fusions = {"student_mean": (ann_dir, {"rule": "mean"}),
               # the re-fused set stores this fusion already, so training reads its soft labels as they are
               "student_searched": (searched_dir, {"rule": search["rule"], "weights": search["weights"]})}
    for name, (annotation_set, fusion) in fusions.items():
        if name not in args.students:
            continue
        scfg = config.from_dict({**raw, "fusion": fusion,
                                 "student": {**raw["student"], "name": name, "annotations": str(annotation_set)}})
        t = time.perf_counter()
        result = train_student(scfg, register=name == "student_mean")
        record(f"{name}_s", t)
        models[name] = result["model_path"]
        students[name] = {"best_val_dice": result["metrics"].get("best_val_dice"),
                          "train_wall_s": result.get("wall_s")}

    reports = evaluate_all(cfg, models, folders, teachers, Path(args.out), timings)
    return {"teachers": {n: {"arch": a, "site": s, "epochs": epochs["teacher"] or e}
                             for n, a, _, s, e in TEACHERS}, "student_arch": STUDENT[0],
            "patch": args.patch, "epochs": epochs, "patches_per_case": patches,
            "search": search, "annotation_quality": quality, "students": students, "reports": reports,
            "ensemble": ENSEMBLE,
            "classes": list(brain_mr.CLASSES), "split": split["subjects"], "timings_s": timings}


def write_results(result: dict, out: Path) -> None:
    """``e5.md``: per contrast, the mean over classes (Dice, HD95 mm, with CIs) of every model, the goal checks, and
    per-class Dice and HD95."""
    ens = result["ensemble"]
    teachers = list(result["teachers"])
    described = ", ".join(f"{n} ({v['arch']}, {v['site']})" for n, v in result["teachers"].items())
    distilled = "search" in result
    lines = [f"# E5: 3D transfer on brain anatomy ({len(result['classes']) - 1} classes, 2 mm)"
             + ("" if distilled else ": teachers only"), "",
             f"Teachers: {described}; patch {result['patch']}^3; epochs {result['epochs']}; "
             f"patches per case per epoch {result['patches_per_case']}."]
    if distilled:
        search = result["search"]
        chosen = f"{search['rule']} with weights {[round(w, 3) for w in search['weights']]}"
        if search.get("specialist"):
            chosen += f", specialist weighting at temperature {search['specialist']}"
        lines[-1] += (f" Student {result['student_arch']}. Searched fusion: {chosen} (on val, the fused soft label's "
                      f"soft Dice {search['val_soft_dice']:.3f} and its arg-max's Dice {search['val_dice']:.3f}; "
                      "soft Dice with equal weights: "
                      + ", ".join(f"{r} {v:.3f}" for r, v in search["equal_weights_val_soft_dice"].items())
                      + "; best without specialist weighting: "
                      + ", ".join(f"{r} {v['val_soft_dice']:.3f}" for r, v in search["best_per_rule"].items())
                      + ").")
    lines[-1] += (f" Cost: {sum(result['timings_s'].values()) / 60:.1f} min, the sum of the steps below (a step that "
                  f"--reuse skipped counts the time it took when it ran; this invocation {result['wall_s'] / 60:.1f} "
                  "min).")
    lines.append("")
    if "annotation_quality" in result:
        quality = result["annotation_quality"]
        sites = list(quality["mean"])
        lines += ["## What the students learn from: the transferal annotations against the withheld masks", "",
                  "Mean foreground Dice over classes and cases (preprocessed grid), by contrast.", "",
                  "| label | " + " | ".join(sites) + " |", "|---|" + "---|" * len(sites)]
        rows = [(f"fused, {fusion}", quality[fusion], "fused") for fusion in quality]
        rows += [(f"teacher {t}", quality["mean"], t) for t in teachers]
        rows += [(f"confidence of {t}", quality["mean"], f"confidence {t}") for t in teachers
                 if f"confidence {t}" in quality["mean"][sites[0]]]
        for label, by_site, key in rows:
            lines.append(f"| {label} | " + " | ".join(f"{by_site[s][key]:.3f}" for s in sites) + " |")
        lines += ["", "(confidence: each teacher's mean voxel confidence, 1 - H / log C, over the voxels any teacher "
                  "labels foreground; what specialist weighting standardises per teacher)", ""]
    for site, models in result["reports"].items():
        lines += [f"## Test contrast {site} ({models[teachers[0]]['n']} subjects)", "",
                  "| model | Dice (mean of classes) [95% CI] | HD95 mm [95% CI] |", "|---|---|---|"]
        for name, r in models.items():
            lines.append(f"| {name} | {r['dice']:.3f} [{r['dice_ci'][0]:.3f}, {r['dice_ci'][1]:.3f}] | "
                         f"{r['hd95']:.1f} [{r['hd95_ci'][0]:.1f}, {r['hd95_ci'][1]:.1f}] |")
        best_teacher = max(teachers, key=lambda n: models[n]["dice"])
        for student in [n for n in ("student_mean", "student_searched") if n in models]:
            s = models[student]["dice"]
            lines.append(f"\n{student}: {s - models[best_teacher]['dice']:+.3f} against the best teacher "
                         f"({best_teacher}), {s - models[ens]['dice']:+.3f} against the ensemble.")
        classes = list(next(iter(models.values()))["classes"])
        lines += ["", "| model | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
        for name, r in models.items():
            lines.append(f"| {name} | " + " | ".join(
                f"{r['classes'][c]['dice']:.2f} / {r['classes'][c]['hd95']:.1f}" for c in classes) + " |")
        lines += ["", "(per class: Dice / HD95 mm)", ""]
    lines += ["## Cost (s)", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k[:-2]} | {v:.0f} |" for k, v in result["timings_s"].items()]
    (out / f"{NAME}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default=None, help="default runs/e5 (runs/e5-smoke with --smoke)")
    p.add_argument("--out", default=None, help="default results/e5 (results/e5-smoke with --smoke)")
    p.add_argument("--data-dir", default=None, help="the brain-MR data (default <run-dir>/data, made if absent)")
    p.add_argument("--patch", type=int, default=48)
    p.add_argument("--teacher-epochs", type=int, default=0, help="0: each teacher its own (about 6 min each)")
    p.add_argument("--student-epochs", type=int, default=45)
    p.add_argument("--teacher-patches", type=int, default=20, help="patches per case per epoch (3 cases a site)")
    p.add_argument("--student-patches", type=int, default=16, help="patches per case per epoch (24 volumes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--teachers-only", action="store_true",
                   help="train the teachers and score them and their ensemble on every contrast; no students")
    p.add_argument("--students", default="student_mean,student_searched", type=lambda v: v.split(","),
                   help="which students to train (comma-separated; a calibration run may train one)")
    p.add_argument("--search-only", action="store_true",
                   help="stop after the fusion search and the annotations' quality (printed); no students")
    p.add_argument("--reuse", action="store_true", help="keep the data, teachers and annotation sets of --run-dir")
    args = p.parse_args()
    suffix = "-smoke" if args.smoke else ""
    args.run_dir = args.run_dir or f"runs/{NAME}{suffix}"
    args.out = args.out or f"results/{NAME}{suffix}"
    if args.smoke:
        args.patch = 32
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("NAKT_PROGRESS", "0")
    if not (brain_mr.BRAIN_LABELS / "labels").is_dir() and not args.data_dir:
        raise SystemExit(f"no brain label maps at {brain_mr.BRAIN_LABELS} (see its SOURCE.txt); pass --data-dir")
    if (Path(args.run_dir) / "annotations").exists() and not args.reuse:
        raise SystemExit(f"{args.run_dir} holds an earlier run; remove it, pass another --run-dir, or --reuse")
    t0 = time.perf_counter()
    result = run(args)
    result["wall_s"] = time.perf_counter() - t0
    if args.search_only:
        print(json.dumps(result, indent=1))
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"{NAME}.json").write_text(json.dumps(result, indent=2))
    write_results(result, Path(args.out))
    print((Path(args.out) / f"{NAME}.md").read_text())
    print(f"total {result['wall_s'] / 60:.1f} min; written {args.out}/{NAME}.md")


if __name__ == "__main__":
    main()

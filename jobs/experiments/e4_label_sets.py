"""E4 — label-space agnostic transfer: three teachers that each segment a different subset of the brain's
structures (three sites, overlapping subsets), one student of them all, against the upper bound (the same student
trained on the transferal set's true labels).

    .venv/bin/python jobs/experiments/e4_label_sets.py             # full: see docs/results.md for the cost
    .venv/bin/python jobs/experiments/e4_label_sets.py --smoke     # the same path, tiny: ~1-2.5 min
    .venv/bin/python jobs/experiments/e4_label_sets.py --reuse     # keep the data, teachers, upper bound, sets
    .venv/bin/python jobs/experiments/e4_label_sets.py --no-distil # teachers and upper bound only (calibration)

Data: E5's brain MR (``brain_mr.py``: 20 real label maps, 7 classes + background, rendered as MR-like heads at
2 mm) in one contrast for every site (T1-like: the study isolates the label-space question from domain shift), cut
into 2D axial slices with brain, written as 2D NIfTI (2 mm pixels: distances in mm). Split by subject (seed 0):
three teacher sites of 3 subjects, transferal 6 (its masks read only by the upper bound and the after-the-fact
scoring of the annotations), val 2, test 3.

Label sets (:data:`SITES`): site_a {white matter, cortex, ventricles}, site_b {ventricles, deep grey matter,
cerebellum}, site_c {cerebellum, brain stem, hippocampus + amygdala, white matter}: every class covered, three by
two teachers. A site's masks keep only its classes; its teacher (MONAI UNet, SegResNet, UNet: a few
minutes each) is trained on them under the site's own names, in its own order (``"brainstem"``, ``"deep grey
matter"``), best epoch on val in those labels. The union run matches them by name (``brainstem`` through
``data.label_aliases``).

Students (one architecture and budget): ``student_mean`` (the default fusion); ``student_<rule>``, the best of
mean, majority_vote and staple on val (the teachers annotate val, each rule fuses the stored maps and is scored
against val's labels; trained when it is not mean); ``student_partial``, every teacher's own map through the
partial-label loss (``fusion.target: teachers``, no fusion: decision 59 left it to E4); ``upper_bound`` (nakt's
labeled training path, as a teacher is trained).
Scored on test in the union run (``nakt evaluate``, per slice, at the original size): students and upper bound on
all classes, each teacher only on its own, the teachers' ensemble (mean over the teachers covering a class) on all.
Per class, over the test slices that hold it, with paired bootstrap CIs: how close does the union student come to
the upper bound, and does it keep each teacher's quality on its classes? Results: ``results/e4/`` (``e4.md``,
``e4.json``, ``evaluation/``); seconds per step in ``<run-dir>/timings.json`` (a --reuse run reports the whole).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import brain_mr  # noqa: E402  (the experiment's data, in this folder)

NAME = "e4"
CLASSES = brain_mr.CLASSES  # the student's labels: background + 7 structures
# site: (teacher, architecture, arch_args, epochs, [(the site's own label name, the student's class)]). The order
# of a site's labels is its own (site_c's is not the student's). Epochs: a few minutes each on 2 cores (per epoch,
# measured with other work on the cores: UNet 1.9 s, SegResNet 6.3 s). In the first run (docs/results.md, E4)
# site_c's teacher was an Attention U-Net (batch norm), which never predicted the smallest class of its site
# (hippocampus + amygdala, Dice 0.000 on test) where a UNet on site_c learned it (0.54 on val, 40 epochs); since the
# second run site_c's teacher is that UNet (60 epochs): a study of label spaces, not of one weak teacher.
SITES: dict[str, tuple[str, str, dict, int, list[tuple[str, str]]]] = {
    "site_a": ("unet_a", "unet", {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1}, 40,
               [("white_matter", "white_matter"), ("cortex", "cortex"), ("ventricles", "ventricles")]),
    "site_b": ("segresnet_b", "segresnet", {"init_filters": 16, "blocks_down": [1, 2, 2, 4],
                                            "blocks_up": [1, 1, 1]}, 30,
               [("Ventricles", "ventricles"), ("deep grey matter", "deep_grey_matter"),
                ("cerebellum", "cerebellum")]),
    "site_c": ("unet_c", "unet", {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1}, 60,
               [("cerebellum", "cerebellum"), ("brainstem", "brain_stem"),
                ("hippocampus-amygdala", "hippocampus_amygdala"), ("white matter", "white_matter")]),
}
ALIASES = {"brainstem": "brain_stem"}  # the one name that differs by more than case, "_", "-" and spaces
SPLIT_SIZES = {"site_a": 3, "site_b": 3, "site_c": 3, "transferal": 6, "val": 2, "test": 3}
SMOKE_SIZES = {k: 1 for k in SPLIT_SIZES}
CONTRAST = "site_t1"  # brain_mr's T1-like contrast, for every split
RULES = ("mean", "majority_vote", "staple")
UPPER = "upper_bound"
PARTIAL = "student_partial"  # learns from each teacher's map through the partial-label loss (decision 59)


def own_labels(site: str) -> list[str]:
    """A site's ``data.labels``: background, then its own names in its own order."""
    return ["background", *(own for own, _ in SITES[site][4])]


def site_lut(site: str) -> np.ndarray:
    """Student class index -> the site's own class index (uint8 [len(CLASSES)]; a class it lacks -> 0)."""
    lut = np.zeros(len(CLASSES), np.uint8)
    for i, (_, cls) in enumerate(SITES[site][4], start=1):
        lut[CLASSES.index(cls)] = i
    return lut


def _write_slice(path: Path, array: np.ndarray, spacing: tuple[float, float]) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0, 1.0])), str(path))


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(target.resolve())


def make_slices(out: Path, *, seed: int = 0, sizes: dict[str, int] | None = None, every: int = 1,
                labels_dir: Path = brain_mr.BRAIN_LABELS) -> dict[str, Any]:
    """Write E4's 2D data under ``out`` and return what ``split.json`` holds.

    Every subject is rendered in the T1-like contrast at 2 mm (``brain_mr.render_subject``) and cut into axial
    slices (across the array axis closest to S-I); a slice with any brain class is kept (every ``every``-th of them)
    as ``<subject>_z<k>.nii.gz``. Folders: ``site_*/`` (images, masks in that site's own label indices),
    ``transferal/images`` (unlabeled), ``transferal_truth/`` (links to those images, all-class masks: the upper
    bound's training data), ``val/`` and ``test/`` (all classes), ``val_site_*/`` (links to val's images, masks
    in the site's labels: each teacher picks its best epoch on its own classes)."""
    t0 = time.perf_counter()
    from nakt_ray.data.volumes import read_label_volume

    sizes = dict(sizes or SPLIT_SIZES)
    maps = sorted((Path(labels_dir) / "labels").glob("subject*.nii.gz"))
    if not maps:
        raise SystemExit(f"no label maps at {Path(labels_dir) / 'labels'} (expected subjectNN.nii.gz)")
    split = brain_mr.split_subjects([p.name.removesuffix(".nii.gz") for p in maps], seed, sizes)
    counts: dict[str, int] = {}
    for split_name, subjects in split.items():
        for subject in subjects if split_name != "unused" else ():
            labels, geometry = brain_mr.crop_to_brain(*read_label_volume(Path(labels_dir) / "labels" /
                                                                         f"{subject}.nii.gz"))
            rng = np.random.default_rng([seed, int(subject.removeprefix("subject")), zlib.crc32(CONTRAST.encode())])
            image, mask, grid = brain_mr.render_subject(labels, geometry, brain_mr.SITES[CONTRAST], rng)
            axis = int(np.argmax(np.abs(grid.direction_matrix[2])))  # the array axis closest to S-I: axial slices
            spacing = tuple(float(s) for a, s in enumerate(grid.spacing) if a != axis)
            kept = [k for k in range(mask.shape[axis]) if np.take(mask, k, axis=axis).any()][::every]
            for k in kept:
                name = f"{subject}_z{k:03d}.nii.gz"
                img2, mask2 = np.take(image, k, axis=axis).astype(np.float32), np.take(mask, k, axis=axis)
                if split_name in SITES:
                    _write_slice(out / split_name / "images" / name, img2, spacing)
                    _write_slice(out / split_name / "masks" / name, site_lut(split_name)[mask2], spacing)
                    continue
                folder = out / split_name
                _write_slice(folder / "images" / name, img2, spacing)
                if split_name == "transferal":  # its masks apart: the pipeline never reads them
                    _write_slice(out / "transferal_truth" / "masks" / name, mask2, spacing)
                    _link(folder / "images" / name, out / "transferal_truth" / "images" / name)
                    continue
                _write_slice(folder / "masks" / name, mask2, spacing)
                for site in SITES if split_name == "val" else ():  # each teacher picks its epoch on its labels
                    _link(folder / "images" / name, out / f"val_{site}" / "images" / name)
                    _write_slice(out / f"val_{site}" / "masks" / name, site_lut(site)[mask2], spacing)
            counts[split_name] = counts.get(split_name, 0) + len(kept)
    summary = {
        "seed": seed, "labels_dir": str(labels_dir), "subjects": split, "sizes": sizes, "every": every,
        "slices": counts, "classes": list(CLASSES), "contrast": CONTRAST,
        "sites": {s: {"teacher": v[0], "arch": v[1], "labels": own_labels(s),
                      "maps_to": {own: cls for own, cls in v[4]}} for s, v in SITES.items()},
        "folders": {"teachers": {s: str(out / s) for s in SITES}, "transferal": str(out / "transferal"),
                    "transferal_truth": str(out / "transferal_truth"), "val": str(out / "val"),
                    "test": str(out / "test"), **{f"val_{s}": str(out / f"val_{s}") for s in SITES}},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "split.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def stored_set(annotations: Path, truth_folder: Path) -> dict[str, Any]:
    """An annotation set's usable rows with what the reports score them by: ``names`` (teachers), ``classes`` (each
    teacher's union classes, manifest ``classes``), ``maps`` ``[N, T, K+1, H, W]`` (every teacher's stored map in
    the union layout: each channel at its union class, whatever the teacher's own order; zeros where it does not
    cover), ``fused`` ``[N, H, W]`` (the stored hard label) and ``truth`` ``[N, H, W]`` (the mask of the same file
    name in ``truth_folder/masks`` on the set's grid)."""
    from nakt_ray.annotation import parquet as ann
    from nakt_ray.data.datasets import geometry_of
    from nakt_ray.data.preprocess import preprocess_mask
    from nakt_ray.data.readers import read_mask

    manifest = ann.read_manifest(annotations)
    names = [r["name"] for r in manifest["teachers"]]
    classes = [list(r.get("classes") or range(len(CLASSES))) for r in manifest["teachers"]]
    size = tuple(manifest["label_shape"][1:])
    table = ann.read_table(annotations, ["source", "status", "geometry", "hard_label",
                                         *(ann.prob_column(t) for t in names)]).to_pydict()
    ok = [i for i, status in enumerate(table["status"]) if status == "ok"]
    maps = np.zeros((len(ok), len(names), len(CLASSES), *size), np.float32)
    for t, (name, c) in enumerate(zip(names, classes)):
        column = [table[ann.prob_column(name)][i] for i in ok]
        maps[:, t, c] = ann.dequantize(ann.from_bytes(column, (len(c), *size), manifest["prob_dtype"]))
    truth = [preprocess_mask(read_mask(str(truth_folder / "masks" / Path(table["source"][i]).name), len(CLASSES)),
                             geometry_of(table["geometry"][i])) for i in ok]
    fused = ann.from_bytes([table["hard_label"][i] for i in ok], size, "uint8")
    return {"names": names, "classes": classes, "maps": maps, "fused": fused, "truth": np.stack(truth)}


def choose_rule(val_annotations: Path, val_folder: Path) -> dict[str, Any]:
    """Each rule of :data:`RULES` fuses the teachers' stored val maps (``fusion.partial.fuse_partial``); its hard
    label is scored against val's labels (preprocessed grid): the mean over cases of the mean foreground Dice."""
    from nakt_ray.fusion.partial import coverage_from_classes, fuse_partial
    from nakt_ray.metrics import dice_per_class

    val = stored_set(val_annotations, val_folder)
    coverage = coverage_from_classes([c[1:] for c in val["classes"]], len(CLASSES))
    scores = {rule: float(dice_per_class(fuse_partial(val["maps"], coverage, rule).argmax(1), val["truth"],
                                         len(CLASSES))[:, 1:].mean()) for rule in RULES}
    return {"val_dice": scores, "best": max(RULES, key=lambda r: scores[r]), "cases": len(val["truth"])}


def annotation_quality(annotations: Path, truth_folder: Path) -> dict[str, dict[str, float]]:
    """What the students learn from, scored after the fact: per class, the mean Dice over the transferal slices
    that hold it of the stored fused label and of each covering teacher's label (preprocessed grid)."""
    from nakt_ray.metrics import dice_per_class

    got = stored_set(annotations, truth_folder)
    labels = {"fused": got["fused"], **{n: got["maps"][:, t].argmax(1) for t, n in enumerate(got["names"])}}
    covers = {"fused": range(len(CLASSES)), **dict(zip(got["names"], got["classes"]))}
    dice = {name: dice_per_class(label, got["truth"], len(CLASSES)) for name, label in labels.items()}  # [N, K+1]
    held = np.stack([(got["truth"] == k).any(axis=(1, 2)) for k in range(len(CLASSES))], axis=1)
    return {cls: {name: float(d[held[:, k], k].mean()) for name, d in dice.items() if k in covers[name]}
            for k, cls in enumerate(CLASSES) if k > 0 and held[:, k].any()}


def case_scores(cases_csv: Path, model: str) -> dict[str, dict[str, float]]:
    """``{case_id: {class: Dice}}`` of ``model`` from an ``evaluation_cases.csv`` (per-class columns
    ``dice__<model>__<class>``; NaN, a class the model does not cover, is left out)."""
    prefix = f"dice__{model}__"
    with open(cases_csv) as f:
        return {r["case_id"]: {k[len(prefix):]: float(v) for k, v in r.items()
                               if k.startswith(prefix) and not np.isnan(float(v))} for r in csv.DictReader(f)}


def class_presence(folder: Path) -> dict[str, set[int]]:
    """``{case_id: classes present in its mask}`` of a labeled folder of 2D files."""
    from nakt_ray.data.readers import list_cases, read_mask

    return {c.case_id: set(np.flatnonzero(np.bincount(read_mask(c.mask_path, len(CLASSES)).ravel())).tolist())
            for c in list_cases(folder, require_masks=True)}


def per_class_table(scores: dict[str, dict[str, dict[str, float]]], presence: dict[str, set[int]],
                    students: list[str], teachers: list[str]) -> dict[str, Any]:
    """Per class, over the test slices whose mask holds it: each model's mean Dice with its bootstrap CI, and the
    paired differences of each student minus every other model that has the class (the upper bound, the teachers'
    ensemble, each covering teacher), each with its paired bootstrap CI over those slices. ``scores``:
    ``{model: {case_id: {class (the student's name): Dice}}}``; a teacher has figures only for its own classes.
    Also per class and model the share of the slices *without* the class where the model predicts it (Dice 0 on
    an empty mask: false-positive slices)."""
    from nakt_ray.metrics import bootstrap_ci

    def stat(values: list[float]) -> dict[str, Any]:
        mean, lo, hi = bootstrap_ci(np.asarray(values)) if values else (float("nan"),) * 3
        return {"mean": mean, "ci": [lo, hi]}

    out: dict[str, Any] = {}
    for k, cls in enumerate(CLASSES):
        if k == 0:
            continue
        held = sorted(c for c, present in presence.items() if k in present)
        empty = sorted(c for c, present in presence.items() if k not in present)
        models = [m for m in scores if all(cls in scores[m].get(c, {}) for c in held + empty)]
        row: dict[str, Any] = {"slices": len(held), "models": {}, "deltas": {}, "false_positive_slices": {}}
        for m in models:
            row["models"][m] = stat([scores[m][c][cls] for c in held])
            row["false_positive_slices"][m] = (float(np.mean([scores[m][c][cls] == 0.0 for c in empty]))
                                               if empty else float("nan"))
        for s in [m for m in students if m in models]:
            row["deltas"][s] = {ref: stat([scores[s][c][cls] - scores[ref][c][cls] for c in held])
                                for ref in models if ref not in students}
        row["teachers"] = [t for t in teachers if t in models]
        out[cls] = row
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from nakt_ray import config
    from nakt_ray.annotation.pipeline import annotate
    from nakt_ray.evaluation.evaluate import ENSEMBLE, evaluate
    from nakt_ray.runtime.cluster import init_ray
    from nakt_ray.training.student import train_student
    from nakt_ray.training.teacher import train_teacher

    run_dir, out = Path(args.run_dir), Path(args.out)
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
        make_slices(data, seed=args.seed, sizes=SMOKE_SIZES if args.smoke else SPLIT_SIZES,
                    every=3 if args.smoke else 1)
    split = json.loads((data / "split.json").read_text())
    record("data_s", t, made)
    folders = split["folders"]
    epochs = {"teacher": 1, "student": 1} if args.smoke else {"teacher": args.teacher_epochs,
                                                              "student": args.student_epochs}
    common = {"batch_size": 8, "lr": 2e-3, "num_workers": 0}
    # the smoke checks the path: one pass an epoch, not the student's default floor of 550 steps
    one_pass = {"min_steps": 0} if args.smoke else {}
    base = {"run_dir": str(run_dir), "preprocess": {"size": [args.size, args.size], "mode": "letterbox"},
            # the students and the upper bound: one budget
            "training": {**common, "epochs": epochs["student"], "lr": 1e-3, **one_pass},
            "tracking": {"experiment": NAME, "registered_model": "e4-student"}, "ray": {"num_cpus": os.cpu_count()}}

    def site_raw(site: str) -> dict[str, Any]:  # a hospital's own run: its labels, its teacher
        name, arch, arch_args, site_epochs, _ = SITES[site]
        return {**base, "data": {"labels": own_labels(site), "val": folders[f"val_{site}"]},
                "teachers": [{"name": name, "arch": arch, "arch_args": arch_args,
                              "train_data": folders["teachers"][site], "val_data": folders[f"val_{site}"]}],
                "teacher_training": {**common, "epochs": epochs["teacher"] or site_epochs}}

    # The upper bound: the student's architecture and budget on the transferal set's true labels (a teacher's path).
    upper_raw = {**base, "data": {"labels": list(CLASSES), "val": folders["val"]},
                 "teachers": [{"name": UPPER, "arch": args.student_arch, "train_data": folders["transferal_truth"],
                               "val_data": folders["val"]}], "teacher_training": base["training"]}
    site_cfgs = {site: config.from_dict(site_raw(site)) for site in SITES}
    upper_cfg = config.from_dict(upper_raw)
    init_ray(upper_cfg.ray)
    models: dict[str, str] = {}
    for cfg in (*site_cfgs.values(), upper_cfg):
        teacher = cfg.teachers[0]
        t = time.perf_counter()
        done = cfg.teacher_checkpoint(teacher)
        trained = not (args.reuse and done.exists())
        if trained:
            done = train_teacher(cfg, teacher)
        models[teacher.name] = str(done)
        record(f"{teacher.name}_s", t, trained)

    teachers = [SITES[s][0] for s in SITES]
    result: dict[str, Any] = {
        "sites": split["sites"], "slices": split["slices"], "subjects": split["subjects"], "size": args.size,
        "epochs": {"students": epochs["student"], **{SITES[s][0]: epochs["teacher"] or SITES[s][3] for s in SITES}},
        "student_arch": args.student_arch, "classes": list(CLASSES), "aliases": ALIASES, "smoke": args.smoke}
    # The union run: the student's labels; the teachers as a deployment gets them, model files each declaring its
    # own labels, matched by name (ALIASES where a name differs by more than case and separators).
    raw = {**base, "data": {"labels": list(CLASSES), "label_aliases": ALIASES, "transferal": folders["transferal"],
                            "val": folders["val"], "test": folders["test"]},
           "teachers": [{"name": SITES[s][0], "arch": SITES[s][1], "arch_args": SITES[s][2],
                         "checkpoint": models[SITES[s][0]]} for s in SITES],
           "fusion": {"rule": "mean"}, "student": {"name": "student_mean", "arch": args.student_arch}}
    cfg = config.from_dict(raw)
    students: list[str] = []
    if not args.no_distil:
        sets = {"annotations": (folders["transferal"], "annotate_s"), "annotations_val": (folders["val"],
                                                                                           "annotate_val_s")}
        for sub, (source, key) in sets.items():
            t = time.perf_counter()
            ran = not (args.reuse and (run_dir / sub / "summary.json").exists())
            if ran:
                annotate(cfg, transferal=source, output=str(run_dir / sub),
                         resume=args.reuse and (run_dir / sub / "manifest.json").exists())
            record(key, t, ran)
        t = time.perf_counter()
        result["rule_search"] = choose_rule(run_dir / "annotations_val", Path(folders["val"]))
        record("rule_search_s", t)
        result["annotation_quality"] = annotation_quality(run_dir / "annotations", Path(folders["transferal_truth"]))
        # The default fusion; the best rule on val if it is another (re-fused at training time); and every
        # teacher's own map through the partial-label loss, no fusion at all (fusion.target: teachers).
        fusions = {f"student_{rule}": {"rule": rule, "target": "fused"}
                   for rule in ("mean", result["rule_search"]["best"])}
        fusions[PARTIAL] = {"rule": "mean", "target": "teachers"}
        for name, fusion in fusions.items():
            scfg = config.from_dict({**raw, "fusion": fusion, "student": {**raw["student"], "name": name}})
            t = time.perf_counter()
            trained = train_student(scfg, register=name == "student_mean")
            record(f"{name}_s", t)
            models[name] = trained["model_path"]
            students.append(name)
            result.setdefault("students", {})[name] = {"best_val_dice": trained["metrics"].get("best_val_dice"),
                                                       "train_wall_s": trained.get("wall_s")}

    # Scoring in the union run (nakt evaluate): the students and the upper bound on every class, each teacher and
    # the teachers' ensemble (fused over the classes each covers) only on the classes it covers.
    t = time.perf_counter()
    names = [*students, UPPER, *teachers]
    evaluate(cfg, {n: models[n] for n in names}, folders["test"], out / "evaluation", ensemble=teachers)
    record("evaluate_s", t)
    scores = {n: case_scores(out / "evaluation" / "evaluation_cases.csv", n) for n in [*names, ENSEMBLE]}
    result.update(teachers=teachers, students=result.get("students", {}), models=list(models),
                  table=per_class_table(scores, class_presence(Path(folders["test"])), students, teachers),
                  test_slices=len(scores[UPPER]), ensemble=ENSEMBLE, timings_s=timings)
    return result


def _ci(s: dict[str, Any], sign: bool = False) -> str:
    if not np.isfinite(s["mean"]):
        return "-"
    f = "+.3f" if sign else ".3f"
    return f"{s['mean']:{f}} [{s['ci'][0]:{f}}, {s['ci'][1]:{f}}]"


def class_lines(result: dict[str, Any], student: str) -> list[str]:
    """The per-class table of one student: covering teachers, student, upper bound, paired differences."""
    ens = result["ensemble"]
    lines = [f"| class | slices | covering teacher: Dice | {student} | {UPPER} | teachers' ensemble | {student} "
             f"minus {UPPER} | {student} minus covering teacher |", "|---|---|---|---|---|---|---|---|"]
    for cls, row in result["table"].items():
        m, d = row["models"], row["deltas"].get(student, {})
        lines.append(f"| {cls} | {row['slices']} | " + "; ".join(f"{t} {_ci(m[t])}" for t in row["teachers"])
                     + f" | {_ci(m[student])} | {_ci(m[UPPER])} | {_ci(m[ens])} | {_ci(d[UPPER], True)} | "
                     + "; ".join(f"{t} {_ci(d[t], True)}" for t in row["teachers"]) + " |")
    return lines


def summary_lines(result: dict[str, Any], student: str) -> list[str]:
    """The answers in numbers: the mean over classes against the upper bound, and each teacher's classes."""
    table = result["table"]
    ens = result["ensemble"]
    mean = {m: float(np.mean([r["models"][m]["mean"] for r in table.values()])) for m in (student, UPPER, ens)}
    lines = [f"- **{student} against the upper bound**: mean over the {len(table)} classes {mean[student]:.3f} "
             f"against {mean[UPPER]:.3f} ({mean[student] - mean[UPPER]:+.3f}; the teachers' ensemble at inference "
             f"{mean[ens]:.3f}); per class the paired difference's "
             "CI lies below 0 for " + (", ".join(c for c, r in table.items()
                                               if r["deltas"][student][UPPER]["ci"][1] < 0) or "no class") + "."]
    for teacher in result["teachers"]:
        own = [c for c, r in table.items() if teacher in r["teachers"]]
        s = float(np.mean([table[c]["models"][student]["mean"] for c in own]))
        t = float(np.mean([table[c]["models"][teacher]["mean"] for c in own]))
        below = [c for c in own if table[c]["deltas"][student][teacher]["ci"][1] < 0]
        above = [c for c in own if table[c]["deltas"][student][teacher]["ci"][0] > 0]
        lines.append(f"- **{teacher}'s classes** ({', '.join(own)}): teacher {t:.3f}, {student} {s:.3f} "
                     f"({s - t:+.3f}); the student is below it (paired CI below 0) on "
                     f"{', '.join(below) or 'none'}, above it on {', '.join(above) or 'none'}.")
    return lines


def write_results(result: dict[str, Any], out: Path) -> None:
    """``e4.md``: the setup, per student the per-class table and its summary, what the students learned from,
    false-positive slices, the fusion rule on val, and the cost per step."""
    kind = " (smoke)" if result["smoke"] else ""
    sites = "; ".join(f"{s} ({v['teacher']}, {v['arch']}, {result['epochs'][v['teacher']]} epochs, "
                      f"{result['slices'][s]} slices): " + ", ".join(f"{own} -> {cls}" if own != cls else own
                                                                    for own, cls in v["maps_to"].items())
                      for s, v in result["sites"].items())
    lines = [f"# E4: teachers with different label sets, one student of all {len(result['classes']) - 1} classes"
             + kind, "",
             f"Brain MR (T1-like, 2 mm), 2D axial slices at {result['size']}x{result['size']} (letterbox). Teachers "
             f"and their own labels: {sites}. Aliases: {result['aliases']}. Students and upper bound: "
             f"{result['student_arch']}, {result['epochs']['students']} epochs, best epoch on val; transferal "
             f"{result['slices'].get('transferal', 0)} slices. Test: {result['test_slices']} slices of "
             f"{len(result['subjects']['test'])} subjects; per class, Dice over the test slices whose mask holds the "
             "class, 95% bootstrap CI; differences paired over the same slices (slices of one subject are not "
             "independent: the intervals are narrower than a subject-level one would be).", ""]
    students = list(result.get("students") or {})
    if students:  # side by side first: the mean Dice per class of every student, the upper bound, the ensemble
        names = [UPPER, *students, result["ensemble"]]
        lines += ["## Students side by side", "", "| class | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names), *(f"| {c} | " + " | ".join(f"{r['models'][n]['mean']:.3f}"
                                                                         for n in names) + " |"
                                                   for c, r in result["table"].items()), ""]
    for student in students:
        lines += [f"## {student}", "", *class_lines(result, student), "", *summary_lines(result, student), ""]
    if not students:  # --no-distil
        lines += ["## Teachers and upper bound", "", "| class | slices | model: Dice |", "|---|---|---|", *(
            f"| {c} | {r['slices']} | " + "; ".join(f"{m} {_ci(s)}" for m, s in r["models"].items()) + " |"
            for c, r in result["table"].items()), ""]
    if "annotation_quality" in result:
        q = result["annotation_quality"]
        lines += ["## What the students learn from: the transferal annotations against the withheld masks", "",
                  "Per class, mean Dice over the transferal slices that hold it (preprocessed grid).", "",
                  "| class | fused (mean) | covering teachers |", "|---|---|---|"]
        lines += [f"| {c} | {by['fused']:.3f} | " + "; ".join(f"{t} {v:.3f}" for t, v in by.items() if t != "fused")
                  + " |" for c, by in q.items()]
        search = result["rule_search"]
        lines += ["", f"Fusion rule on val ({search['cases']} slices; mean foreground Dice of the fused label): "
                  + ", ".join(f"{r} {v:.3f}" for r, v in search["val_dice"].items()) + f"; best {search['best']}.",
                  ""]
    models = list(dict.fromkeys(m for r in result["table"].values() for m in r["false_positive_slices"]))
    lines += ["## False-positive slices", "", "Share of the test slices *without* the class where the model "
              "predicts it (a teacher only for its own classes).", "", "| class | " + " | ".join(models) + " |",
              "|---|" + "---|" * len(models)]
    for c, r in result["table"].items():
        fp = r["false_positive_slices"]
        lines.append(f"| {c} | " + " | ".join(f"{fp[m]:.2f}" if m in fp else "-" for m in models) + " |")
    lines += ["", "## Cost (s)", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k.removesuffix('_s')} | {v:.0f} |" for k, v in result["timings_s"].items()]
    lines += ["", f"Sum of the steps {sum(result['timings_s'].values()) / 60:.1f} min (a step --reuse skipped counts "
              f"the time it took when it ran); this invocation {result['wall_s'] / 60:.1f} min.",
              f"Command: `{result['command']}`."]
    (out / f"{NAME}.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default=None, help="default runs/e4 (runs/e4-smoke with --smoke)")
    p.add_argument("--out", default=None, help="default results/e4 (results/e4-smoke with --smoke)")
    p.add_argument("--data-dir", default=None, help="E4's slices (default <run-dir>/data, made if absent)")
    p.add_argument("--size", type=int, default=96, help="model input, square (--smoke: 64)")
    p.add_argument("--teacher-epochs", type=int, default=0, help="0: each teacher its own (SITES)")
    p.add_argument("--student-epochs", type=int, default=24, help="the students' and the upper bound's")
    p.add_argument("--student-arch", default="timm_unet", help="the students' and the upper bound's architecture")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="one subject per split, every third slice, 1 epoch")
    p.add_argument("--no-distil", action="store_true",
                   help="train and score the teachers and the upper bound only (calibration); no annotation")
    p.add_argument("--reuse", action="store_true",
                   help="keep the data, teachers, upper bound and annotation sets of --run-dir")
    args = p.parse_args(argv)
    suffix = "-smoke" if args.smoke else ""
    args.run_dir = args.run_dir or f"runs/{NAME}{suffix}"
    args.out = args.out or f"results/{NAME}{suffix}"
    if args.smoke:
        args.size = 64
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("NAKT_PROGRESS", "0")
    if not (brain_mr.BRAIN_LABELS / "labels").is_dir() and not args.data_dir:
        raise SystemExit(f"no brain label maps at {brain_mr.BRAIN_LABELS} (see its SOURCE.txt); pass --data-dir")
    if (Path(args.run_dir) / "teachers").exists() and not args.reuse:
        raise SystemExit(f"{args.run_dir} holds an earlier run; remove it, pass another --run-dir, or --reuse")
    t0 = time.perf_counter()
    result = run(args)
    result["wall_s"] = time.perf_counter() - t0
    result["command"] = " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.json").write_text(json.dumps(result, indent=2))  # the numbers first, then the report
    write_results(result, out)
    print((out / f"{NAME}.md").read_text())
    print(f"total {result['wall_s'] / 60:.1f} min; written {out}/{NAME}.md")


if __name__ == "__main__":
    main()

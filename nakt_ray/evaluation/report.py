"""The evaluation's figures and files: per-case scores -> means with bootstrap CIs -> ``evaluation.{md,json}`` and
``evaluation_cases.csv``; and the rule that keeps an earlier evaluation from being replaced unasked.

Every figure is reproducible: cases are put in ``case_id`` order before any bootstrap (Ray Data returns rows in
an order that changes between runs, and a seeded resample of a shuffled list is another resample), and the
bootstrap's seed is part of the report.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("dice", "iou", "hd95", "nsd")
FILES = ("evaluation.md", "evaluation.json", "evaluation_cases.csv")
UNITS = "px"  # distances in pixels: some image of the set has no pixel size in its header (PNG, JPEG, TIFF, BMP)
_TITLES = {"dice": "Dice", "iou": "IoU", "hd95": "HD95", "nsd": "NSD"}


def check_output(out_dir: str | Path, overwrite: bool = False) -> Path:
    """Refuse ``out_dir`` if it exists and holds anything, unless ``overwrite``: an earlier evaluation (the demo's
    in ``<run_dir>/evaluation``) is never replaced unasked. With ``overwrite`` only the evaluation's own files
    (:data:`FILES`) are replaced; nothing else in the folder is removed. Raises ``FileExistsError``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output {str(out)!r} is a file; expected a folder (pass another --output)")
    if out.is_dir() and not overwrite:
        held = sorted(p.name for p in out.iterdir())
        if held:
            shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
            raise FileExistsError(
                f"output folder {str(out)!r} is not empty ({shown}); pass --overwrite to replace the evaluation "
                "files in it, or --output for another folder")
    return out


def _stat(values: np.ndarray, seed: int, n_boot: int, alpha: float) -> tuple[float, list[float], int]:
    """Mean, bootstrap CI and count over the finite ``values`` (an undefined HD95 is NaN: left out)."""
    from nakt_ray.metrics import bootstrap_ci

    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, [math.nan, math.nan], 0
    mean, lo, hi = bootstrap_ci(finite, n_boot=n_boot, alpha=alpha, seed=seed)
    return mean, [lo, hi], int(finite.size)


def _scores(get: Any, n_cases: int, seed: int, n_boot: int, alpha: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in METRICS:
        mean, ci, n = _stat(np.asarray(get(m), dtype=np.float64), seed, n_boot, alpha)
        out[m], out[f"{m}_ci"] = mean, ci
        if m == "hd95":
            out["hd95_n"], out["hd95_undefined"] = n, n_cases - n
    return out


def summarize(rows: list[dict[str, Any]], names: list[str], labels: list[str], *, seed: int = 0,
              n_boot: int = 1000, alpha: float = 0.05) -> dict[str, dict[str, Any]]:
    """Per model: each metric's mean over cases with its percentile bootstrap CI, for the mean over foreground
    classes and for each foreground class (``classes``).

    Args:
        rows: the scored cases (no failed ones), each with ``case_id``, ``<metric>__<model>`` (the case's mean
            over foreground classes) and ``<metric>_class__<model>`` (``[C]`` per class), metric in
            :data:`METRICS`; any order (they are put in ``case_id`` order first).
        names: the models (columns) to summarise.
        labels: the class names, background first (``data.labels``).
        seed, n_boot, alpha: the bootstrap's (:func:`nakt_ray.metrics.bootstrap_ci`); one seed for every metric
            and model, so every interval resamples the same cases (paired).

    Returns:
        ``{model: {"n", "dice", "dice_ci", "iou", "iou_ci", "hd95", "hd95_ci", "hd95_n", "hd95_undefined",
        "nsd", "nsd_ci", "classes": {label: {same keys but n}}}}``; an undefined HD95 (NaN) is left out of its
        mean and CI and counted in ``hd95_undefined``.
    """
    rows = sorted(rows, key=lambda r: str(r["case_id"]))
    n = len(rows)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        entry: dict[str, Any] = {"n": n}
        entry.update(_scores(lambda m, name=name: [r[f"{m}__{name}"] for r in rows], n, seed, n_boot, alpha))
        entry["classes"] = {
            label: _scores(lambda m, c=c, name=name: [r[f"{m}_class__{name}"][c] for r in rows], n, seed, n_boot,
                           alpha)
            for c, label in enumerate(labels) if c > 0}
        out[name] = entry
    return out


def _fmt(value: float, ci: list[float], digits: int) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _cells(r: dict[str, Any]) -> list[str]:
    hd = _fmt(r["hd95"], r["hd95_ci"], 2) + (f" ({r['hd95_undefined']} undef.)" if r["hd95_undefined"] else "")
    return [_fmt(r["dice"], r["dice_ci"], 4), _fmt(r["iou"], r["iou_ci"], 4), hd, _fmt(r["nsd"], r["nsd_ci"], 4)]


def tables(report: dict[str, Any]) -> tuple[str, str]:
    """``(summary, full)`` Markdown of a report: the summary (a heading line and the table of means over
    foreground classes) is what the CLI and the demo print; the full text (per-class table, definitions) is
    ``evaluation.md``."""
    units, tol, boot = report["units"], report["nsd_tolerance"], report["bootstrap"]
    n_ok, n_failed = report["cases"], len(report["failed"])
    heads = ["Dice", "IoU", f"HD95 ({units})", f"NSD at {tol:g} {units}"]
    lines = [(f"Evaluation on {report['data']} ({n_ok} cases{f', {n_failed} failed' if n_failed else ''}); "
              f"mean over foreground classes at original resolution, [95% bootstrap CI]; units: {units}"), "",
             "| model | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(_cells(r)) + " |" for name, r in report["models"].items()]
    summary = "\n".join(lines)

    per_class = ["| model | class | " + " | ".join(heads) + " |", "|---" * (len(heads) + 2) + "|"]
    per_class += [f"| {name} | {label} | " + " | ".join(_cells(c)) + " |"
                  for name, r in report["models"].items() for label, c in r["classes"].items()]
    volumes = report.get("spatial_dims", 2) == 3
    unit_note = ("pixels of the original image: some image of the set gives no pixel size (PNG, JPEG, TIFF and BMP "
                 "have none), so HD95 and the NSD tolerance are in pixels for every case"
                 if units == "px" else "mm, from each image's pixel size in its header (NIfTI voxel sizes, DICOM "
                 "PixelSpacing)")
    boundary = ("- Boundary of a class: its pixels with a 4-neighbour outside it. HD95: the larger of the two "
                "directed 95th percentiles of the distances from one boundary to the nearest point of the other.")
    if volumes:
        unit_note = ("mm, from each volume's voxel spacing (d, h, w) in its header, on its original grid "
                     "(anisotropic voxels measured in mm)")
        boundary = ("- Each case is a volume, predicted on the run's preprocessed grid (`volume`) and mapped back "
                    "onto its original grid (shape, spacing, affine) before the argmax. Surface of a class: its "
                    "voxels with a 6-neighbour outside it. HD95: the larger of the two directed 95th percentiles "
                    "of the distances (mm) from one surface to the nearest voxel of the other.")
    definitions = [
        "## Definitions", "",
        ("- Each case is scored at its original size (the prediction is mapped back and argmaxed); a case's score "
         "is the mean over its foreground classes; the table gives the mean over cases."),
        (f"- 95% CI: percentile bootstrap over cases ({boot['resamples']} resamples, seed {boot['seed']}, cases "
         "in case_id order, so a rerun gives the same interval; every model and metric resamples the same cases)."),
        ("- Dice = 2|P∩T|/(|P|+|T|), IoU = |P∩T|/|P∪T|; a class absent from both prediction and truth scores 1, "
         "present in only one scores 0."),
        (f"{boundary} NSD at "
         f"tolerance {tol:g} {units}: the share of both boundaries lying within the tolerance of the other "
         "(MONAI's compute_hausdorff_distance(percentile=95) and compute_surface_dice; DeepMind surface-distance)."),
        ("- A class absent from both prediction and truth: HD95 0, NSD 1. A class present in only one of them: "
         "NSD 0, and HD95 undefined: left out of the case's class mean, of the mean over cases and of its CI, "
         "and counted (\"undef.\": cases whose HD95 is undefined; for the mean over classes, cases where it is "
         "undefined for every foreground class). A model whose HD95 is undefined in every case shows \"-\"."),
        f"- Units: {unit_note}.",
    ]
    full = "\n".join([summary, "", "## Per class", "", *per_class, "", *definitions])
    return summary, full


def _json_safe(value: Any) -> Any:
    """NaN and inf as null: ``json.dumps`` would write ``NaN``, which is not JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write(out_dir: str | Path, report: dict[str, Any], rows: list[dict[str, Any]], names: list[str],
          labels: list[str]) -> dict[str, str]:
    """Write ``evaluation.md`` (the full tables), ``evaluation.json`` (``report``, undefined values as null) and
    ``evaluation_cases.csv`` (one row per case in ``case_id`` order: ``<metric>__<model>`` for the mean over
    foreground classes, ``<metric>__<model>__<class>`` per class; ``nan`` where HD95 is undefined). Returns
    ``{file: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: str(out / name) for name in FILES}
    (out / "evaluation.md").write_text(tables(report)[1] + "\n")
    (out / "evaluation.json").write_text(json.dumps(_json_safe(report), indent=2) + "\n")
    classes = [(c, label) for c, label in enumerate(labels) if c > 0]
    with open(out / "evaluation_cases.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case_id", *(f"{m}__{n}" for n in names for m in METRICS),
                        *(f"{m}__{n}__{label}" for n in names for m in METRICS for _, label in classes)])
        for r in sorted(rows, key=lambda r: str(r["case_id"])):
            writer.writerow([r["case_id"], *(f"{r[f'{m}__{n}']:.5f}" for n in names for m in METRICS),
                             *(f"{r[f'{m}_class__{n}'][c]:.5f}" for n in names for m in METRICS for c, _ in classes)])
    return paths

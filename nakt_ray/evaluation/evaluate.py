"""Evaluation: Dice and IoU of models (and of the teachers' ensemble) on a labeled set, at original resolution.

The same Ray Data path as annotation: decode (keeping the original mask) -> the actor pools of
:mod:`nakt_ray.annotation.pools` (``annotate.pools`` decides the layout) -> a metrics task that maps each model's
probabilities back to the original image size (``preprocess.restore``), takes the argmax, and scores it against the
original mask. Written as Markdown and JSON (plus per-case CSV).

A model named like one of the run's teachers is scored as that teacher annotates: with its inference options
(sliding window, TTA flips, AMP) and its pool's resources (``pools.teacher_ref``).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nakt_ray.annotation import parquet as ann
from nakt_ray.annotation.pools import TeacherRef, add_teacher_pools, check_teachers, teacher_ref

if TYPE_CHECKING:
    from nakt_ray.config import RunConfig

ENSEMBLE = "teachers_ensemble"


def score_batch(batch: dict[str, np.ndarray], *, models: list[str], ensemble: list[str],
                num_classes: int) -> dict[str, np.ndarray]:
    """Per-case foreground Dice and IoU of each model (and of the mean of ``ensemble``'s probabilities)."""
    from nakt_ray.data.datasets import geometry_of
    from nakt_ray.data.preprocess import restore
    from nakt_ray.metrics import dice_per_class, foreground_mean, iou_per_class

    n = len(batch["case_id"])
    names = models + ([ENSEMBLE] if ensemble else [])
    out: dict[str, Any] = {"case_id": batch["case_id"], "error": batch["error"]}
    for name in names:
        out[f"dice__{name}"] = np.full(n, np.nan, dtype=np.float64)
        out[f"iou__{name}"] = np.full(n, np.nan, dtype=np.float64)
    for i in range(n):
        if batch["error"][i] != "":
            continue
        geom = geometry_of(batch["geometry"][i])
        mask = np.frombuffer(batch["mask"][i], dtype=np.uint8).reshape(batch["mask_shape"][i])
        probs = {m: ann.dequantize(batch[ann.prob_column(m)][i]) for m in models}
        if ensemble:
            probs[ENSEMBLE] = np.mean([probs[m] for m in ensemble], axis=0)
        for name, p in probs.items():
            pred = restore(p, geom).argmax(0).astype(np.uint8)
            out[f"dice__{name}"][i] = foreground_mean(dice_per_class(pred, mask, num_classes))
            out[f"iou__{name}"][i] = foreground_mean(iou_per_class(pred, mask, num_classes))
    return out


def model_refs(cfg: RunConfig, models: dict[str, str], batch_size: int = 8) -> list[TeacherRef]:
    """The pool entry of each model to score: a model named like a teacher of ``cfg`` runs as that teacher is
    configured (inference options, actors, batch size, CPUs, GPUs) from the source given; any other model (a
    student, a foreign file) runs plainly, in batches of ``batch_size``."""
    teachers = {t.name: t for t in cfg.teachers}
    return [teacher_ref(cfg, teachers[name], source) if name in teachers
            else TeacherRef(name, source, batch_size=batch_size) for name, source in models.items()]


def evaluate(cfg: RunConfig, models: dict[str, str], data: str, out_dir: str | Path,
             ensemble: list[str] | None = None, batch_size: int = 8) -> dict[str, Any]:
    """Score ``models`` (name -> any teacher source: model file or MLflow URI) on the labeled folder ``data``;
    writes ``evaluation.{md,json}`` and ``evaluation_cases.csv`` (per-case Dice) into ``out_dir``.

    Models named like the run's teachers run with those teachers' settings (:func:`model_refs`). Returns
    ``{"models": {name: {"dice", "dice_ci", "iou", "n"}}, "failed": [...], "table": markdown}``.
    """
    from nakt_ray.data.datasets import cases_dataset, decode_batch
    from nakt_ray.data.readers import list_cases
    from nakt_ray.metrics import bootstrap_ci
    from nakt_ray.tracking import tracking_uri

    pre = cfg.preprocess
    num_classes = cfg.data.num_classes
    refs = model_refs(cfg, models, batch_size)
    uri = tracking_uri(cfg)
    check_teachers(refs, num_classes, pre.in_channels, uri)  # fail fast, by name, before any actor starts
    cases = list_cases(data, require_masks=True, mask_suffix=cfg.data.mask_suffix)
    ds = cases_dataset(cases, rows_per_block=batch_size)
    ds = ds.map_batches(decode_batch, batch_size=batch_size, num_cpus=0.25,
                        fn_kwargs=dict(preprocess=pre, num_classes=num_classes, mask_values=cfg.data.mask_values,
                                       keep_mask=True))
    ds = add_teacher_pools(ds, refs, num_classes, pre.in_channels, uri, pools=cfg.annotate.pools,
                           shared_actors=cfg.annotate.shared_actors)
    ds = ds.map_batches(score_batch, batch_size=batch_size, num_cpus=0.25,
                        fn_kwargs=dict(models=list(models), ensemble=ensemble or [], num_classes=num_classes))
    rows = ds.take_all()

    names = list(models) + ([ENSEMBLE] if ensemble else [])
    ok = [r for r in rows if r["error"] == ""]
    failed = [{"case_id": r["case_id"], "reason": r["error"]} for r in rows if r["error"] != ""]
    results = {}
    for name in names:
        dice = np.array([r[f"dice__{name}"] for r in ok])
        iou = np.array([r[f"iou__{name}"] for r in ok])
        mean, lo, hi = bootstrap_ci(dice) if len(dice) else (float("nan"),) * 3
        results[name] = {"dice": float(mean), "dice_ci": [float(lo), float(hi)],
                         "iou": float(iou.mean()) if len(iou) else float("nan"), "n": len(dice)}
    lines = [f"Evaluation on {data} ({len(ok)} cases{f', {len(failed)} failed' if failed else ''}); "
             "foreground Dice / IoU at original resolution, 95% bootstrap CI", "",
             "| model | Dice | 95% CI | IoU |", "|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['dice']:.4f} | {r['dice_ci'][0]:.4f}-{r['dice_ci'][1]:.4f} | {r['iou']:.4f} |")
    table = "\n".join(lines)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.md").write_text(table + "\n")
    report = {"data": str(data), "models": results, "ensemble_of": ensemble or [], "failed": failed,
              "model_files": {k: str(v) for k, v in models.items()}}
    (out_dir / "evaluation.json").write_text(json.dumps(report, indent=2))
    with open(out_dir / "evaluation_cases.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case_id", *(f"dice__{n}" for n in names)])
        for r in sorted(ok, key=lambda r: r["case_id"]):
            writer.writerow([r["case_id"], *(f"{r[f'dice__{n}']:.5f}" for n in names)])
    return {**report, "table": table}

"""Evaluation: Dice, IoU, HD95 and NSD of models (and of the teachers' ensemble) on a labeled set, at original
resolution, per class and as the mean over foreground classes, with bootstrap CIs.

The same Ray Data path as annotation: decode (keeping the original mask) -> the actor pools of
:mod:`nakt_ray.annotation.pools` (``annotate.pools`` decides the layout) -> a metrics task that maps each model's
probabilities back to the original image size (``preprocess.restore``), takes the argmax, and scores it against the
original mask. Written as Markdown and JSON (plus per-case CSV) by :mod:`nakt_ray.evaluation.report`.

A model named like one of the run's teachers is scored as that teacher annotates: with its inference options
(sliding window, TTA flips, AMP) and its pool's resources (``pools.teacher_ref``).

Distances (HD95, the NSD tolerance) are in mm when every image's header gives its pixel size (NIfTI, DICOM:
``readers.read_pixel_spacing``; ``units: mm``), else in pixels of the original image for all (``units: px``).

A 3D run (``cfg.spatial_dims == 3``) scores volumes instead: one case per volume, scored on its original grid with
its voxel spacing (always mm), through the same pools (:mod:`nakt_ray.evaluation.volumes`), plus a figure per model
of orthogonal mid-slices (:mod:`nakt_ray.evaluation.figures`).
"""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from nakt_ray.annotation import parquet as ann
from nakt_ray.annotation.pools import TeacherRef, add_teacher_pools, check_teachers, teacher_ref
from nakt_ray.evaluation.report import METRICS, UNITS, summarize, tables, write

if TYPE_CHECKING:
    from nakt_ray.config import RunConfig

ENSEMBLE = "teachers_ensemble"
_MLFLOW_UNSAFE = re.compile(r"[^\w./ -]")


def union_probs(name: str, probs: dict[str, np.ndarray], classes: dict[str, list[int]], ensemble: list[str],
                num_classes: int) -> np.ndarray:
    """A model's probabilities ``[K+1, ...]`` over the run's classes: its stored map as is when it covers them all,
    else in the union layout (zeros at classes it does not cover); the ensemble fused by the mean over the classes
    each member covers (``fusion.fuse_teachers``: the plain mean when all cover all)."""
    from nakt_ray.fusion import coverage_from_classes, expand_to_union, fuse_teachers

    def covered(model: str) -> list[int]:
        return list(classes.get(model, range(num_classes)))

    if name != ENSEMBLE:
        own = covered(name)
        if len(own) == num_classes:
            return probs[name]
        return expand_to_union(probs[name], np.isin(np.arange(num_classes), own))[0]
    members = [covered(m) for m in ensemble]
    cov = None if all(len(c) == num_classes for c in members) else coverage_from_classes(
        [c[1:] for c in members], num_classes)
    return fuse_teachers([probs[m] for m in ensemble], cov, "mean")


def score_batch(batch: dict[str, np.ndarray], *, models: list[str], ensemble: list[str],
                num_classes: int, nsd_tolerance: float = 2.0, in_mm: bool = False,
                classes: dict[str, list[int]] | None = None) -> dict[str, np.ndarray]:
    """Per-case scores of each model (and of the mean of ``ensemble``'s probabilities): for every metric of
    :data:`~nakt_ray.evaluation.report.METRICS`, ``<metric>__<model>`` ``[B]`` (mean over foreground classes, an
    undefined HD95 left out) and ``<metric>_class__<model>`` ``[B, C]`` (per class; background NaN for HD95/NSD).
    HD95 and the NSD tolerance in pixels of the original image, or in mm with ``in_mm`` (each case's ``spacing``).
    ``classes``: the run's classes a model covers (``check_teachers``' records; all when absent); a model is
    scored only on those: its other classes are NaN, and its mean is over the ones it covers."""
    from nakt_ray.data.datasets import geometry_of
    from nakt_ray.data.preprocess import restore
    from nakt_ray.metrics import class_scores, foreground_nanmean

    n = len(batch["case_id"])
    names = models + ([ENSEMBLE] if ensemble else [])
    out: dict[str, Any] = {"case_id": batch["case_id"], "error": batch["error"]}
    for name in names:
        for m in METRICS:
            out[f"{m}__{name}"] = np.full(n, np.nan, dtype=np.float64)
            out[f"{m}_class__{name}"] = np.full((n, num_classes), np.nan, dtype=np.float64)
    for i in range(n):
        if batch["error"][i] != "":
            continue
        geom = geometry_of(batch["geometry"][i])
        mask = np.frombuffer(batch["mask"][i], dtype=np.uint8).reshape(batch["mask_shape"][i])
        probs = {m: ann.dequantize(batch[ann.prob_column(m)][i]) for m in models}
        for name in names:
            pred = restore(union_probs(name, probs, classes or {}, ensemble, num_classes), geom).argmax(0)
            spacing = tuple(float(s) for s in batch["spacing"][i]) if in_mm else None
            uncovered = ~np.isin(np.arange(num_classes), (classes or {}).get(name, range(num_classes)))
            for m, per_class in class_scores(pred.astype(np.uint8), mask, num_classes, nsd_tolerance,
                                             spacing).items():
                per_class[uncovered] = np.nan  # not its class: nothing to score it on
                out[f"{m}_class__{name}"][i] = per_class
                out[f"{m}__{name}"][i] = foreground_nanmean(per_class)
    return out


def model_label(source: str) -> str:
    """The name a model source gets in the tables when none is given (``--model SOURCE`` without ``NAME=``):
    ``models:/NAME@ALIAS`` -> ``NAME@ALIAS``, ``models:/NAME/3`` -> ``NAME/3``, ``runs:/RUN_ID/PATH`` ->
    ``RUN_ID``, a file -> its folder's name (``run/teachers/t1/model.pt`` -> ``t1``), or its stem when it has
    no folder (``model.pt`` -> ``model``)."""
    for scheme in ("models:/", "runs:/"):
        if source.startswith(scheme):
            rest = source[len(scheme):].strip("/")
            label = rest if scheme == "models:/" else rest.split("/")[0]
            if label:
                return label
    path = PurePosixPath(re.sub(r"^[a-z][\w+.-]*://", "", source).rstrip("/"))  # s3://bucket/a/model.pt
    return path.parent.name or path.stem or source


def models_from_args(items: list[str]) -> dict[str, str]:
    """``--model [NAME=]SOURCE`` values as ``{name: source}``; a source without a name gets
    :func:`model_label`. Two models with one name would overwrite each other's row: refused (ValueError)."""
    models: dict[str, str] = {}
    for item in items:
        name, sep, source = item.partition("=")
        if not sep or not name or "/" in name or ":" in name:  # "=" inside a path or URI, not after a name
            name, source = "", item
        name = name or model_label(source)
        if name in models:
            raise ValueError(f"--model {item!r}: the name {name!r} is already given to --model {models[name]!r}; "
                             "name them apart with NAME=SOURCE")
        models[name] = source
    return models


def mlflow_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's means as MLflow metrics ``<metric>.<model>`` (undefined ones left out). MLflow accepts only
    letters, digits and ``_ - . / space`` in a name, so other characters (the ``@`` of ``NAME@ALIAS``) become
    ``_``."""
    return {f"{m}.{_MLFLOW_UNSAFE.sub('_', name)}": float(r[m]) for name, r in report["models"].items()
            for m in METRICS if np.isfinite(r[m])}


def model_refs(cfg: RunConfig, models: dict[str, str], batch_size: int = 8) -> list[TeacherRef]:
    """The pool entry of each model to score: a model named like a teacher of ``cfg`` runs as that teacher is
    configured (inference options, actors, batch size, CPUs, GPUs) from the source given; any other model (a
    student, a foreign file) runs plainly, in batches of ``batch_size``."""
    teachers = {t.name: t for t in cfg.teachers}
    return [teacher_ref(cfg, teachers[name], source) if name in teachers
            else TeacherRef(name, source, batch_size=batch_size) for name, source in models.items()]


def evaluate(cfg: RunConfig, models: dict[str, str], data: str, out_dir: str | Path,
             ensemble: list[str] | None = None, batch_size: int = 8, seed: int = 0, nsd_tolerance: float = 2.0,
             n_boot: int = 1000) -> dict[str, Any]:
    """Score ``models`` (name -> any teacher source: model file or MLflow URI) on the labeled folder ``data``;
    writes ``evaluation.{md,json}`` and ``evaluation_cases.csv`` (per-case scores) into ``out_dir``, replacing
    those three files if there (the CLI refuses a non-empty folder first: ``report.check_output``).

    Models named like the run's teachers run with those teachers' settings (:func:`model_refs`). ``seed`` is the
    bootstrap's: the same inputs give the same report, byte for byte. ``nsd_tolerance`` in mm when every image's
    header gives its pixel size (NIfTI, DICOM; ``units: mm``), else in pixels (``units: px``). Returns the
    JSON report (``models``: see :func:`~nakt_ray.evaluation.report.summarize`; ``failed``; ``units``;
    ``nsd_tolerance``; ``bootstrap``) plus ``table`` (the summary Markdown) and ``files``.

    In a 3D run (``cfg.spatial_dims == 3``) ``data`` holds volumes (``data/volume_cases.py``), preprocessed by the
    run's ``volume`` config; each is scored on its original grid in mm (``units: mm``, ``spatial_dims: 3`` in
    the report), and ``evaluation_slices__<model>.png`` (orthogonal mid-slices of the first cases with the
    contours of ground truth, ensemble and model) are written too. ``batch_size`` is then one volume.
    """
    from nakt_ray.data.datasets import cases_dataset, decode_batch
    from nakt_ray.data.privacy import cases_for
    from nakt_ray.data.readers import list_cases, read_pixel_spacing
    from nakt_ray.tracking import tracking_uri

    pre = cfg.preprocess
    num_classes = cfg.data.num_classes
    refs = model_refs(cfg, models, batch_size)
    uri = tracking_uri(cfg)
    volumes = cfg.spatial_dims == 3
    if volumes:
        from nakt_ray.evaluation.volumes import volume_rows

        rows = volume_rows(cfg, refs, data, out_dir, ensemble or [], ENSEMBLE, nsd_tolerance, uri)
        in_mm = True  # a volume always has its voxel spacing
    else:
        # fail fast, by name, before any actor starts; and each model's classes (its label map)
        records = check_teachers(refs, cfg.data.labels, pre.in_channels, uri, aliases=cfg.data.label_aliases)
        cases = cases_for(list_cases(data, require_masks=True, mask_suffix=cfg.data.mask_suffix),
                          cfg.data.pseudonymize)
        # Distances in mm when every image's header gives its pixel size (NIfTI, DICOM), else in pixels for all.
        in_mm = all(read_pixel_spacing(c.image_path, c.slice_index) is not None for c in cases)
        ds = cases_dataset(cases, rows_per_block=batch_size)
        ds = ds.map_batches(decode_batch, batch_size=batch_size, num_cpus=0.25,
                            fn_kwargs=dict(preprocess=pre, num_classes=num_classes, mask_values=cfg.data.mask_values,
                                           keep_mask=True))
        ds = add_teacher_pools(ds, refs, records, pre.in_channels, uri, pools=cfg.annotate.pools,
                               shared_actors=cfg.annotate.shared_actors)
        ds = ds.map_batches(score_batch, batch_size=batch_size, num_cpus=0.25,
                            fn_kwargs=dict(models=list(models), ensemble=ensemble or [], num_classes=num_classes,
                                           nsd_tolerance=nsd_tolerance, in_mm=in_mm,
                                           classes={r["name"]: r["classes"] for r in records}))
        rows = ds.take_all()

    names = list(models) + ([ENSEMBLE] if ensemble else [])
    labels = list(cfg.data.labels)
    ok = [r for r in rows if r["error"] == ""]
    failed = sorted(({"case_id": str(r["case_id"]), "reason": str(r["error"])} for r in rows if r["error"] != ""),
                    key=lambda f: f["case_id"])
    report = {"data": str(data), "cases": len(ok), "units": "mm" if in_mm else UNITS,
              "nsd_tolerance": float(nsd_tolerance),
              "bootstrap": {"resamples": n_boot, "alpha": 0.05, "seed": seed}, "labels": labels,
              "models": summarize(ok, names, labels, seed=seed, n_boot=n_boot), "ensemble_of": ensemble or [],
              "failed": failed, "model_files": {k: str(v) for k, v in models.items()}}
    if volumes:
        report["spatial_dims"] = 3
    files = write(out_dir, report, ok, names, labels)
    if volumes:  # a figure per model: mid-slices of the first cases with the contours of truth, ensemble, model
        from nakt_ray.evaluation.figures import write_model_figures

        pictured = sorted((str(r["case_id"]), r["figure"]) for r in ok if r["figure"])
        if pictured:
            files.update(write_model_figures(out_dir, pictured, names, ENSEMBLE if ensemble else None, num_classes,
                                             labels))
    return {**report, "table": tables(report)[0], "files": files}

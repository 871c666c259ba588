"""Evaluation of volumes (a 3D run): every model predicts every labeled volume through the actor pools of
annotation, and each prediction is scored on the volume's ORIGINAL grid, in mm.

    labeled volumes -> read + preprocess (the run's ``volume``), image into a scratch store (tasks)
    -> the teachers' actor pools (:mod:`nakt_ray.annotation.pools`, one volume per batch; each model writes its
       probabilities into the case's store, as annotation does: ``annotation.volumes.VolumeTeacherPredictor``)
    -> scoring (tasks, one case at a time): for each model in turn, its maps -> ``restore_volume`` onto the original
       grid -> argmax -> Dice, IoU, HD95, NSD against the original mask with the original voxel spacing (mm);
       the teachers' ensemble is the mean of its members' probabilities, summed as they are read; the case's
       store is removed once scored

Why the pools and stores rather than arrays in rows: the rows carry store names, so the pools run volumes unchanged
(per-teacher or shared layout, restarts, the stop rule of a broken teacher, the teachers' own inference options) and
no row holds a volume's maps; a scoring task holds one model's maps of one volume (plus the ensemble's running sum)
at a time. The scratch stores live in ``<out_dir>/.volume-stores`` (a local or shared path, as annotation's stores)
and are removed as cases are scored and at the end.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nakt_ray.annotation import volume_store as vs
from nakt_ray.annotation.parquet import dequantize
from nakt_ray.annotation.pools import TEACHER_INPUT, TeacherRef, add_teacher_pools, check_teachers
from nakt_ray.evaluation.figures import FIGURE_CASES, CasePlanes
from nakt_ray.evaluation.report import METRICS
from nakt_ray.teachers.description import InferenceOptions

if TYPE_CHECKING:
    from nakt_ray.config import RunConfig

SCRATCH = ".volume-stores"
# The stage named in a case's error when its prediction cannot be scored (a mask that does not fit its image, ...).
SCORE_STAGE = "score"


def volume_refs(refs: list[TeacherRef], records: list[dict[str, Any]], teachers: set[str]) -> list[TeacherRef]:
    """The pool entries of a 3D evaluation: one volume per batch; a model that is not one of the run's ``teachers``
    (a student, a foreign model) and is 3D (its ``records`` entry from ``check_teachers``) predicts by sliding
    window with its input size as window, as a student is validated (``training/volume_validation.py``); a 2D one
    predicts slice by slice (``LoadedTeacher.predict``), each slice resampled to its input size."""
    out = []
    for ref, record in zip(refs, records):
        if ref.name not in teachers and len(record["input_size"]) == 3:
            ref = dataclasses.replace(ref, options=InferenceOptions(sliding_window=True))
        out.append(dataclasses.replace(ref, batch_size=1))
    return out


def _prepare(row: dict[str, Any], *, out_dir: str, volume: Any, max_voxels: int) -> dict[str, Any]:
    """Annotation's ``prepare_case`` (read, preprocess, image into a fresh store), keeping the paths the scoring
    needs (the mask, and the image for the pictures)."""
    from nakt_ray.annotation.volumes import prepare_case

    out = prepare_case(row, out_dir=out_dir, volume=volume, max_voxels=max_voxels)
    out.update(image_path=row["image_path"], mask_path=row["mask_path"], original_id=row["original_id"])
    return out


def score_case(group: Any, transform: Any, image_path: str, mask_path: str, models: list[str], ensemble: list[str],
               ensemble_name: str, num_classes: int, nsd_tolerance: float, picture: bool,
               classes: dict[str, list[int]] | None = None) -> tuple[dict[str, dict[str, np.ndarray]], bytes]:
    """Scores of each model's maps stored in ``group`` (and of the ``ensemble``'s mean, as ``ensemble_name``)
    against the case's original mask: ``{model: {metric: [C]}}``, HD95 and the NSD tolerance in mm; and, with
    ``picture``, the mid-planes for the figures (:class:`~nakt_ray.evaluation.figures.CasePlanes` bytes).
    ``classes``: the run's classes a model covers (all when absent), as ``evaluate.score_batch`` has it."""
    from nakt_ray.data.volume_preprocess import restore_volume
    from nakt_ray.data.volumes import check_pair, read_label_volume, read_volume
    from nakt_ray.errors import DataError, error
    from nakt_ray.fusion import coverage_from_classes, fuse_teachers
    from nakt_ray.metrics import class_scores

    mask, geometry = read_label_volume(mask_path)
    check_pair(transform.original, geometry, image_path, mask_path)
    top = int(mask.max()) if mask.size else 0
    if top >= num_classes:
        raise error(DataError, f"label volume {mask_path!r}", f"holds class {top}, but the run has {num_classes} "
                    f"classes (0 .. {num_classes - 1})")
    spacing = transform.original.spacing  # (d, h, w) mm of the original grid: distances in mm
    planes = CasePlanes(transform.original, mask) if picture else None
    scores: dict[str, dict[str, np.ndarray]] = {}

    classes = classes or {}
    partial = any(len(classes.get(m, range(num_classes))) != num_classes for m in ensemble)

    def score(name: str, probs: np.ndarray) -> None:
        pred = restore_volume(probs, transform).argmax(0).astype(np.uint8)
        scores[name] = class_scores(pred, mask, num_classes, nsd_tolerance, spacing, spatial_dims=3)
        uncovered = ~np.isin(np.arange(num_classes), classes.get(name, range(num_classes)))
        for per_class in scores[name].values():
            per_class[uncovered] = np.nan  # not its class: nothing to score it on
        if planes is not None:
            planes.add(name, pred)

    total: np.ndarray | None = None
    members: dict[str, np.ndarray] = {}
    for name in models:
        probs = dequantize(np.asarray(group[vs.teacher_key(name)][...]), axis=0)   # [C_t, D', H', W'] float32
        if name in ensemble and partial:
            members[name] = probs  # fused over the classes each covers, below
        elif name in ensemble:
            # the first member's array becomes the running sum; it is read (restored) before the next one is added
            total = probs if total is None else np.add(total, probs, out=total)
        own = list(classes.get(name, range(num_classes)))
        union = probs
        if len(own) != num_classes:  # the union layout (as fusion.expand_to_union, classes on axis 0 here)
            union = np.zeros((num_classes, *probs.shape[1:]), probs.dtype)
            union[own] = probs
        score(name, union)
        del probs, union
    if ensemble and partial:
        member_classes = [list(classes.get(m, range(num_classes))) for m in ensemble]
        cov = coverage_from_classes([c[1:] for c in member_classes], num_classes)
        maps = [members[m] for m in ensemble]
        d, h, w = maps[0].shape[1:]
        fused = fuse_teachers([p.reshape(p.shape[0], d * h, w) for p in maps], cov, "mean")
        score(ensemble_name, fused.reshape(num_classes, d, h, w))
        del members, maps, fused
    elif ensemble and total is not None:
        score(ensemble_name, total / len(ensemble))
    del total
    if planes is None:
        return scores, b""
    planes.add_image(read_volume(image_path)[0])
    return scores, planes.to_bytes()


def score_volumes(batch: dict[str, np.ndarray], *, out_dir: str, models: list[str], ensemble: list[str],
                  ensemble_name: str, num_classes: int, nsd_tolerance: float,
                  pictured: list[str], classes: dict[str, list[int]] | None = None) -> dict[str, np.ndarray]:
    """Ray Data task over prepared, predicted cases (one per batch): for every metric of
    :data:`~nakt_ray.evaluation.report.METRICS`, ``<metric>__<model>`` ``[B]`` (mean over foreground classes, an
    undefined HD95 left out) and ``<metric>_class__<model>`` ``[B, C]``, as ``evaluate.score_batch`` gives for
    images; ``figure``: the mid-planes of the cases in ``pictured`` (else empty). A case that cannot be scored
    becomes an error row (``score: ...``); every case's store is removed."""
    from nakt_ray.data.privacy import scrub
    from nakt_ray.data.volume_preprocess import VolumeTransform
    from nakt_ray.metrics import foreground_nanmean

    n = len(batch["case_id"])
    names = models + ([ensemble_name] if ensemble else [])
    errors = np.array(batch["error"], dtype=object)
    out: dict[str, Any] = {"case_id": np.asarray(batch["case_id"], dtype=object)}
    for name in names:
        for m in METRICS:
            out[f"{m}__{name}"] = np.full(n, np.nan, dtype=np.float64)
            out[f"{m}_class__{name}"] = np.full((n, num_classes), np.nan, dtype=np.float64)
    figures = np.full(n, b"", dtype=object)
    for i in range(n):
        store = str(batch[TEACHER_INPUT][i] or "")
        try:
            if errors[i]:
                continue
            case_id = str(batch["case_id"][i])
            transform = VolumeTransform.from_dict(json.loads(batch["geometry"][i]))
            scores, figures[i] = score_case(vs.open_case(out_dir, store), transform, str(batch["image_path"][i]),
                                            str(batch["mask_path"][i]), models, ensemble, ensemble_name,
                                            num_classes, nsd_tolerance, case_id in pictured, classes)
            for name, per_metric in scores.items():
                for m, per_class in per_metric.items():
                    out[f"{m}_class__{name}"][i] = per_class
                    out[f"{m}__{name}"][i] = foreground_nanmean(per_class)
        except Exception as err:  # noqa: BLE001 - one case that cannot be scored is recorded, the others go on
            why = f"{SCORE_STAGE}: {type(err).__name__}: {err}"
            original = str(batch["original_id"][i] or "")
            errors[i] = scrub(why, str(batch["case_id"][i]), original, str(batch["image_path"][i]),
                              str(batch["mask_path"][i])) if original else why
            for name in names:
                for m in METRICS:
                    out[f"{m}__{name}"][i] = np.nan
                    out[f"{m}_class__{name}"][i] = np.nan
        finally:
            if store:
                shutil.rmtree(Path(out_dir) / vs.STORES / store, ignore_errors=True)
    out["error"] = errors
    out["figure"] = figures
    return out


def volume_rows(cfg: RunConfig, refs: list[TeacherRef], data: str, out_dir: str | Path, ensemble: list[str],
                ensemble_name: str, nsd_tolerance: float, tracking_uri: str | None) -> list[dict[str, Any]]:
    """The scored rows of every labeled volume of ``data`` (failed ones with their ``error``), each model run by
    its pool entry in ``refs``; the first :data:`~nakt_ray.evaluation.figures.FIGURE_CASES` cases (by case_id)
    carry their mid-planes in ``figure``."""
    import ray

    from nakt_ray.annotation.pools import light_task_pool
    from nakt_ray.annotation.volumes import VOLUME_IN_CHANNELS, VolumeTeacherPredictor
    from nakt_ray.data.privacy import cases_for
    from nakt_ray.data.volume_cases import list_volume_cases
    from nakt_ray.data.volumes import MAX_VOXELS
    from nakt_ray.runtime.cluster import LIGHT_CPU

    num_classes = cfg.data.num_classes
    # fail fast, by name, before any actor starts (a 2D model fits: it predicts volumes slice by slice)
    records = check_teachers(refs, cfg.data.labels, VOLUME_IN_CHANNELS, tracking_uri, spatial_dims=3,
                             aliases=cfg.data.label_aliases)
    refs = volume_refs(refs, records, {t.name for t in cfg.teachers})
    cases = cases_for(list_volume_cases(data, require_masks=True, mask_suffix=cfg.data.mask_suffix),
                      cfg.data.pseudonymize)
    scratch = Path(out_dir).resolve() / SCRATCH
    scratch.mkdir(parents=True, exist_ok=True)
    items = [{"case_id": c.case_id, "image_path": c.image_path, "mask_path": c.mask_path or "",
              "original_id": c.original_id or ""} for c in cases]
    try:
        light = light_task_pool()
        ds = ray.data.from_items(items, override_num_blocks=len(items))  # a volume per block: cases stream one by one
        ds = ds.map(_prepare, num_cpus=LIGHT_CPU, compute=light,
                    fn_kwargs=dict(out_dir=str(scratch), volume=cfg.volume, max_voxels=MAX_VOXELS))
        ds = add_teacher_pools(ds, refs, records, VOLUME_IN_CHANNELS, tracking_uri, VolumeTeacherPredictor,
                               pools=cfg.annotate.pools, shared_actors=cfg.annotate.shared_actors,
                               predictor_kwargs={"out_dir": str(scratch), "spatial_dims": 3})
        ds = ds.map_batches(score_volumes, batch_size=1, num_cpus=LIGHT_CPU, compute=light,
                            fn_kwargs=dict(out_dir=str(scratch), models=[r.name for r in refs], ensemble=ensemble,
                                           ensemble_name=ensemble_name, num_classes=num_classes,
                                           nsd_tolerance=nsd_tolerance,
                                           pictured=sorted(c.case_id for c in cases)[:FIGURE_CASES],
                                           classes={r["name"]: r["classes"] for r in records}))
        return ds.take_all()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

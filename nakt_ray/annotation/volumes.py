"""Annotation of volumes (a 3D run): the same Ray Data pipeline as for images, with the maps in zarr stores.

    volumes -> read + preprocess, image into the case's store (tasks) -> teacher pool(s) (actors; each teacher
    writes its maps into the store) -> fuse slab by slab (tasks) -> one Parquet row per case (schema version 2)

Rows carry names, not arrays: the column the teachers read (``pools.TEACHER_INPUT``) holds the case's store name,
and each teacher's column the key it wrote, so the pools of :mod:`nakt_ray.annotation.pools` (per-teacher or shared,
restarts, the stop rule) run volumes unchanged. A 3D teacher predicts a whole volume by sliding window; a 2D
teacher predicts it slice by slice along its ``slice_axis`` (``LoadedTeacher.predict``). The layout of a store is
in :mod:`nakt_ray.annotation.volume_store`; the rows in ``docs/annotations.md``.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nakt_ray.annotation import parquet as ann
from nakt_ray.annotation import volume_store as vs
from nakt_ray.annotation.parquet import dequantize, quantize
from nakt_ray.annotation.pools import PREDICT_STAGE, TEACHER_INPUT, TeacherPredictor
from nakt_ray.data.volume_preprocess import VolumeTransform
from nakt_ray.errors import DataError, TeacherOutputError, error
from nakt_ray.fusion.labels import fold_channels

if TYPE_CHECKING:
    from nakt_ray.config import RunConfig
    from nakt_ray.data.readers import Case

# Volumes are single-channel (one intensity per voxel: nakt_ray/data/volumes.py).
VOLUME_IN_CHANNELS = 1


def volume_manifest(cfg: RunConfig, source: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest of a set of volumes (schema version 2): what the rows and stores hold and how they were made.
    ``preprocess`` holds the volume preprocessing, so a resume checks it as it checks an image run's."""
    from nakt_ray.config.convert import to_plain

    weights = cfg.fusion.effective_weights()
    return {
        "schema_version": ann.SCHEMA_VERSION_VOLUMES, "spatial_dims": 3,
        "transferal": str(Path(source).resolve()), "labels": list(cfg.data.labels),
        "image_channels": VOLUME_IN_CHANNELS, "image_dtype": "float16", "num_classes": cfg.data.num_classes,
        "prob_dtype": cfg.annotate.prob_dtype, "prob_scale": 255 if cfg.annotate.prob_dtype == "uint8" else 1,
        "chunk": vs.CHUNK, "stores": vs.STORES,
        "preprocess": to_plain(cfg.volume), "teachers": records,
        "fusion": {"rule": cfg.fusion.rule, "weights": weights},
    }


def prepare_case(row: dict[str, Any], *, out_dir: str, volume: Any, max_voxels: int) -> dict[str, Any]:
    """Read and preprocess one volume and write its image into a fresh store; a case that fails keeps its row with
    the reason (``decode: ...``) and no store."""
    from nakt_ray.data.privacy import scrub
    from nakt_ray.data.readers import Case
    from nakt_ray.data.volume_cases import read_case_volume

    case = Case(row["case_id"], row["image_path"], row["mask_path"] or None, None, row["original_id"] or None)
    name = vs.store_name(case.case_id)
    out = {"case_id": case.case_id, "source": case.case_id if case.original_id else case.image_path,
           "geometry": "", "shape": "", "error": "", TEACHER_INPUT: ""}
    try:
        image, transform = read_case_volume(case, volume, max_voxels)
        vs.create_case(out_dir, name, image, {"case_id": case.case_id, "shape": list(image.shape[1:])})
        out.update(geometry=json.dumps(transform.to_dict()), shape=json.dumps(list(image.shape[1:])))
        out[TEACHER_INPUT] = name
    except Exception as err:  # noqa: BLE001 - any failure of one case is recorded, the run goes on
        why = f"decode: {type(err).__name__}: {err}"
        out["error"] = scrub(why, case.case_id, case.original_id, case.image_path) if case.original_id else why
    return out


class VolumeTeacherPredictor(TeacherPredictor):
    """Ray Data actor UDF: hosts one teacher and writes its maps of each case into the case's store.

    Input columns: ``image`` (the store name) and ``error``; adds ``prob__<name>``, the key written ("" for a
    failed case). A case whose output is unusable (``TeacherOutputError``) becomes an error row, as for images,
    and the stop rule of :class:`~nakt_ray.annotation.pools.TeacherPredictor` applies per batch of cases.
    """

    RUN_KWARGS = ("out_dir",)  # a kept host serves runs with stores of their own

    def __init__(self, *, out_dir: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.out_dir = out_dir
        self.key = vs.teacher_key(self.name)

    def _predict_case(self, name: str, spacing: tuple[float, ...] | None = None) -> None:
        """``spacing``: mm per axis ``(d, h, w)`` of the case's preprocessed grid, which a whole-image teacher
        (nnU-Net) resamples from; other teachers ignore it."""
        group = vs.open_case(self.out_dir, name, mode="r+")
        x = torch.from_numpy(np.asarray(group["image"][...], dtype=np.float32))[None]   # [1, C_in, D, H, W]
        if self.teacher.device.type == "cuda":
            x = x.pin_memory().to(self.teacher.device, non_blocking=True)
        probs = fold_channels(self.teacher.predict(x, spacing)[0].cpu().numpy(), self.label_map, axis=0)
        vs.write_map(group, self.key, quantize(probs, self.prob_dtype))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = np.array(batch["error"], dtype=object)
        keys = np.full(len(errors), "", dtype=object)
        reasons = []
        geometries = batch.get("geometry")
        for i, name in enumerate(batch[TEACHER_INPUT]):
            if errors[i]:
                continue
            try:
                self._predict_case(str(name), _grid_spacing(geometries[i] if geometries is not None else ""))
                keys[i] = self.key
                reasons.append("")
            except (TeacherOutputError, DataError) as err:
                errors[i] = f"{PREDICT_STAGE}: {err}"
                reasons.append(str(err))
        if reasons:
            self._count_failures(reasons)
        batch[self.column] = keys
        batch["error"] = errors
        return batch


def _grid_spacing(geometry: str) -> tuple[float, ...] | None:
    """The spacing ``(d, h, w)`` of a case's preprocessed grid from its row's ``geometry`` (None: not known)."""
    if not geometry:
        return None
    return tuple(VolumeTransform.from_dict(json.loads(geometry)).geometry.spacing)


def fuse_cases(batch: dict[str, np.ndarray], *, out_dir: str, teachers: list[str], rule: str,
               weights: list[float] | None, coverage: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Fuse each case's stored teacher maps (slab by slab, :func:`volume_store.fuse_case`) and give the Parquet rows
    of schema version 2. A failed case's store is removed: failed cases carry no arrays."""
    n = len(batch["case_id"])
    errors = np.array(batch["error"], dtype=object)
    agreement = np.full(n, np.nan, dtype=np.float32)
    entropy = np.full(n, np.nan, dtype=np.float32)
    stores = np.asarray(batch[TEACHER_INPUT], dtype=object).copy()
    for i in range(n):
        if not errors[i]:
            try:
                figures = vs.fuse_case(vs.open_case(out_dir, stores[i], mode="r+"), teachers, rule, weights,
                                       coverage=coverage)
                agreement[i], entropy[i] = figures["agreement"], figures["entropy"]
            except Exception as err:  # noqa: BLE001 - a case that cannot be fused is recorded, the run goes on
                errors[i] = f"fuse: {type(err).__name__}: {err}"
        if errors[i] and stores[i]:
            shutil.rmtree(Path(out_dir) / vs.STORES / stores[i], ignore_errors=True)
            stores[i] = ""
    ok = errors == ""
    return {"case_id": np.asarray(batch["case_id"], dtype=object), "source": np.asarray(batch["source"], dtype=object),
            "status": np.where(ok, "ok", "error").astype(object), "error": errors,
            "geometry": np.where(ok, np.asarray(batch["geometry"], dtype=object), "").astype(object),
            "store": stores, "shape": np.where(ok, np.asarray(batch["shape"], dtype=object), "").astype(object),
            "agreement": agreement, "entropy": entropy}


def re_fuse_volume_cases(batch: dict[str, Any], *, src: str, out_dir: str, teachers: list[str], rule: str,
                         weights: list[float] | None, coverage: np.ndarray | None = None,
                         case_weights: dict[str, list[float]] | None = None) -> dict[str, Any]:
    """Rows of a set of volumes -> the same rows in ``out_dir``: each ok case's store copied there and fused again
    by ``rule`` / ``weights`` (its ``agreement`` and ``entropy`` recomputed); error rows pass through.
    ``case_weights``: per case id, its own weights (``fusion.specialist``), in place of ``weights``."""
    out = {k: np.asarray(v).copy() for k, v in batch.items()}
    for i, status in enumerate(batch["status"]):
        if status != "ok":
            continue
        name = str(batch["store"][i])
        shutil.copytree(Path(src) / vs.STORES / name, Path(out_dir) / vs.STORES / name, dirs_exist_ok=True)
        own = weights if case_weights is None else case_weights.get(str(batch["case_id"][i]), weights)
        figures = vs.fuse_case(vs.open_case(out_dir, name, mode="r+"), teachers, rule, own, coverage=coverage)
        out["agreement"][i], out["entropy"][i] = figures["agreement"], figures["entropy"]
    return out


def volume_confidence_cases(batch: dict[str, Any], *, src: str, teachers: list[str]) -> dict[str, Any]:
    """Rows of a set of volumes -> ``case_id`` and ``confidence`` (``[T]``: each teacher's mean foreground
    confidence, ``fusion.specialist.foreground_confidence``), read slab by slab from the case's store; NaN for error
    rows."""
    from nakt_ray.fusion.specialist import foreground_confidence

    out = np.full((len(batch["status"]), len(teachers)), np.nan)
    for i, status in enumerate(batch["status"]):
        if status != "ok":
            continue
        group = vs.open_case(src, str(batch["store"][i]))
        maps = [group[vs.teacher_key(t)] for t in teachers]
        sums, count = np.zeros(len(teachers)), 0
        for z0, z1 in vs.slabs(maps[0].shape[1]):
            s, n = foreground_confidence([dequantize(np.asarray(m[:, z0:z1]), axis=0) for m in maps])
            sums, count = sums + s, count + n
        out[i] = sums / max(count, 1)
    return {"case_id": np.asarray(batch["case_id"]), "confidence": out}


def volume_dataset(cfg: RunConfig, todo: list[Case], out_dir: str, teachers: list[Any], records: list[dict[str, Any]],
                   tracking_uri: str | None, predictor_cls: type, layout: str, shared_actors: int | None) -> Any:
    """The Ray Dataset that annotates ``todo`` into ``out_dir``: prepare (tasks) -> teacher pools -> fuse (tasks);
    ``layout`` and ``shared_actors`` as the run resolved them (``pipeline._annotate``)."""
    import ray

    from nakt_ray.annotation.hosts import add_teacher_stage
    from nakt_ray.annotation.pools import light_task_pool
    from nakt_ray.data.volumes import MAX_VOXELS
    from nakt_ray.runtime.cluster import LIGHT_CPU

    items = [{"case_id": c.case_id, "image_path": c.image_path, "mask_path": c.mask_path or "",
              "original_id": c.original_id or ""} for c in todo]
    light = light_task_pool()
    ds = ray.data.from_items(items, override_num_blocks=len(items))  # a volume per block: cases stream one by one
    ds = ds.map(prepare_case, num_cpus=LIGHT_CPU, compute=light,
                fn_kwargs=dict(out_dir=out_dir, volume=cfg.volume, max_voxels=MAX_VOXELS))
    if predictor_cls is TeacherPredictor:
        predictor_cls = VolumeTeacherPredictor
    # One case per batch: a volume is a whole batch's work, and the teachers' maps of one case are all a worker holds.
    teachers = [dataclasses.replace(t, batch_size=1) for t in teachers]
    ds = add_teacher_stage(ds, teachers, records, VOLUME_IN_CHANNELS, tracking_uri, predictor_cls,
                           cfg.annotate.prob_dtype, layout, shared_actors,
                           predictor_kwargs={"out_dir": out_dir, "spatial_dims": 3},
                           keep_teachers_s=cfg.annotate.keep_teachers_s, run_id=uuid.uuid4().hex)
    weights = cfg.fusion.effective_weights()
    return ds.map_batches(fuse_cases, batch_size=1, num_cpus=LIGHT_CPU, compute=light,
                          fn_kwargs=dict(out_dir=out_dir, teachers=[t.name for t in teachers], rule=cfg.fusion.rule,
                                         weights=weights, coverage=ann.coverage({"labels": cfg.data.labels,
                                                                                   "teachers": records})))


def check_volume_output(out_dir: str) -> None:
    """Volume stores are written with zarr on a local path (object stores: not yet; docs/decisions.md, 52)."""
    if "://" in str(out_dir) and not str(out_dir).startswith("file://"):
        raise error(DataError, f"annotation output {out_dir!r}", "is an object-store URI; an annotation set of "
                    "volumes is written to a local or shared (mounted) path for now")

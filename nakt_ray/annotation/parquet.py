"""The annotation set: Parquet files of teacher predictions and fused soft labels, plus a manifest.

One row per transferal case (documented in ``docs/annotations.md``)::

    case_id      string   stable id of the case (see nakt_ray/data/readers.py)
    source       string   path of the original image
    status       string   "ok" or "error"
    error        string   why the case failed ("" when ok); stage and reason
    geometry     string   JSON of preprocess.Geometry (maps predictions back to the original image)
    image        binary   preprocessed model input, float16 [C_in, H, W], C order
    prob__<t>    binary   teacher t's probabilities [C_t, H, W]: uint8 (p * 255, rounded; default) or float16;
                          C_t = the run's classes it covers (manifest: teachers[i].classes; all C by default)
    soft_label   binary   fused probabilities [C, H, W], same dtype
    hard_label   binary   argmax of soft_label, uint8 [H, W]
    agreement    float    teachers' mean pairwise foreground Dice (1.0 for one teacher)
    entropy      float    mean per-pixel entropy of the fused label

Arrays are raw bytes (``np.frombuffer``) so any Parquet reader can use them; shapes and dtypes are in the
manifest (``manifest.json`` beside the files), which also records teachers, their fingerprints, the fusion and
the schema version. Failed cases are rows with status "error", so every input case appears exactly once.

A set of volumes (a 3D run) is schema version 2: its rows hold no arrays but the name of the case's zarr store
(``annotation/volume_store.py``), whose arrays are chunked so that a patch reads only what it covers::

    case_id, source, status, error   as above
    geometry     string   JSON of volume_preprocess.VolumeTransform (maps predictions back to the original grid)
    store        string   the case's group under stores/ ("" for a failed case)
    shape        string   JSON [D, H, W] of the preprocessed grid
    agreement    float    teachers' mean pairwise foreground Dice over the volume
    entropy      float    mean normalised voxel entropy of the fused label
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from nakt_ray.errors import DataError, error
from nakt_ray.runtime import storage
from nakt_ray.runtime.cluster import LIGHT_CPU

SCHEMA_VERSION = 1
SCHEMA_VERSION_VOLUMES = 2
SCHEMA_VERSIONS = (SCHEMA_VERSION, SCHEMA_VERSION_VOLUMES)
MANIFEST = "manifest.json"
SUMMARY = "summary.json"
PROB_PREFIX = "prob__"


def prob_column(teacher: str) -> str:
    """The column that holds ``teacher``'s probability maps: ``prob__<teacher>``."""
    return f"{PROB_PREFIX}{teacher}"


PROB_DTYPES = ("uint8", "float16")


def quantize(probs: np.ndarray, dtype: str = "uint8") -> np.ndarray:
    """Probabilities in [0, 1] -> stored form: uint8 (p * 255 rounded; the default) or float16."""
    if dtype == "float16":
        return probs.astype(np.float16)
    return np.clip(np.rint(probs * 255.0), 0, 255).astype(np.uint8)


def dequantize(q: np.ndarray, axis: int = -3) -> np.ndarray:
    """Stored probabilities (uint8 or float16) -> float32 renormalised to sum to 1 over the class ``axis``."""
    p = q.astype(np.float32)
    if q.dtype == np.uint8:
        p /= 255.0
    return p / np.clip(p.sum(axis=axis, keepdims=True), 1e-6, None)


def to_bytes(batch: np.ndarray) -> np.ndarray:
    """``[B, ...]`` array -> object array of B byte strings (a Parquet binary column)."""
    out = np.empty(len(batch), dtype=object)
    for i in range(len(batch)):
        out[i] = np.ascontiguousarray(batch[i]).tobytes()
    return out


def from_bytes(column: Any, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """A binary column of B values -> ``[B, *shape]`` array (an empty value, a failed case, gives zeros)."""
    n = int(np.prod(shape))
    out = np.zeros((len(column), *shape), dtype=dtype)
    for i, raw in enumerate(column):
        if raw is not None and len(raw):
            arr = np.frombuffer(raw, dtype=dtype)
            if arr.size != n:
                raise error(DataError, f"annotation value {i}",
                            f"holds {arr.size} values; expected shape {shape} ({n})")
            out[i] = arr.reshape(shape)
    return out


METADATA_KEY = b"nakt.manifest"


def arrow_schema(teachers: list[str], manifest: dict[str, Any]):
    """The Parquet schema of an annotation set, carrying the manifest (JSON) in its metadata.

    Every Parquet file then describes itself: ``pq.read_schema(f).metadata[b"nakt.manifest"]``.
    """
    import pyarrow as pa

    fields = [("case_id", pa.string()), ("source", pa.string()), ("status", pa.string()), ("error", pa.string()),
              ("geometry", pa.string()), ("image", pa.binary())]
    fields += [(prob_column(t), pa.binary()) for t in teachers]
    fields += [("soft_label", pa.binary()), ("hard_label", pa.binary()), ("agreement", pa.float32()),
               ("entropy", pa.float32())]
    meta = {METADATA_KEY: json.dumps({"schema_version": SCHEMA_VERSION, **manifest}).encode()}
    return pa.schema(fields, metadata=meta)


def arrow_schema_volumes(manifest: dict[str, Any]):
    """The Parquet schema of an annotation set of volumes (schema version 2), carrying the manifest."""
    import pyarrow as pa

    fields = [("case_id", pa.string()), ("source", pa.string()), ("status", pa.string()), ("error", pa.string()),
              ("geometry", pa.string()), ("store", pa.string()), ("shape", pa.string()), ("agreement", pa.float32()),
              ("entropy", pa.float32())]
    meta = {METADATA_KEY: json.dumps({"schema_version": SCHEMA_VERSION_VOLUMES, **manifest}).encode()}
    return pa.schema(fields, metadata=meta)


def teacher_classes(manifest: dict[str, Any]) -> list[list[int]]:
    """The run's classes each teacher of an annotation set covers (its stored channels), background 0 first; all
    of them for a set written before teachers could have label sets of their own."""
    k = len(manifest["labels"])
    return [list(t.get("classes", range(k))) for t in manifest["teachers"]]


def coverage(manifest: dict[str, Any]) -> np.ndarray | None:
    """The coverage matrix bool ``[T, K+1]`` of an annotation set's teachers (``fusion.partial``), or None when
    every teacher covers every class (fusion then takes its usual, faster path)."""
    from nakt_ray.fusion import coverage_from_classes

    classes = teacher_classes(manifest)
    k = len(manifest["labels"])
    if all(len(c) == k for c in classes):
        return None
    return coverage_from_classes([c[1:] for c in classes], k)


def teacher_shapes(manifest: dict[str, Any]) -> list[tuple[int, ...]]:
    """Each teacher's stored map shape ``[C_t, *spatial]`` in a set of images (``label_shape`` with its classes)."""
    return [(len(c), *manifest["label_shape"][1:]) for c in teacher_classes(manifest)]


def fused_columns(probs_q: list[np.ndarray], ok: np.ndarray, rule: str, weights: list[float] | None,
                  coverage: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Fuse quantised teacher maps, T arrays ``[B, C_t, H, W]`` (uint8 or float16; each its covered classes, see
    :func:`coverage`), into the fused columns of an annotation set.

    Returns ``soft_label``, ``hard_label`` (bytes columns; empty for rows where ``ok`` is False), ``agreement``
    and ``entropy`` (NaN for those rows).
    """
    from nakt_ray.fusion import entropy, fuse_teachers, hard_label, pairwise_dice_partial

    n = len(probs_q[0])
    probs = [dequantize(q) for q in probs_q]  # the soft label is stored in the teachers' maps' dtype
    k = coverage.shape[1] if coverage is not None else probs[0].shape[1]
    soft = np.zeros((n, k, *probs[0].shape[2:]), dtype=np.float32)
    agreement = np.full(n, np.nan, dtype=np.float32)
    ent = np.full(n, np.nan, dtype=np.float32)
    if ok.any():
        good = [p[ok] for p in probs]
        soft[ok] = fuse_teachers(good, coverage, rule, weights)
        agreement[ok] = pairwise_dice_partial(good, coverage)
        ent[ok] = entropy(soft[ok])
    out = {"soft_label": to_bytes(quantize(soft, probs_q[0].dtype.name)), "hard_label": to_bytes(hard_label(soft)),
           "agreement": agreement, "entropy": ent}
    out["soft_label"][~ok] = b""
    out["hard_label"][~ok] = b""
    return out


def re_fuse_batch(batch: dict[str, np.ndarray], *, teachers: list[str], shapes: list[tuple[int, ...]], rule: str,
                  weights: list[float] | None, prob_dtype: str = "uint8", coverage: np.ndarray | None = None,
                  case_weights: dict[str, list[float]] | None = None) -> dict[str, np.ndarray]:
    """Stored annotation rows -> the same rows with the fused columns recomputed by another rule / weights from
    the stored per-teacher maps (``prob__<t>``, of shapes ``shapes`` (:func:`teacher_shapes`) and
    ``prob_dtype``; ``coverage`` as :func:`coverage`). ``case_weights``: per case id, its own weights (the
    specialist weighting, ``fusion.specialist``), in place of ``weights``."""
    ok = np.asarray(batch["status"]) == "ok"
    probs_q = [from_bytes(batch[prob_column(t)], shape, prob_dtype) for t, shape in zip(teachers, shapes)]
    if case_weights is None:
        return {**batch, **fused_columns(probs_q, ok, rule, weights, coverage)}
    rows = [fused_columns([q[i:i + 1] for q in probs_q], ok[i:i + 1], rule,
                          case_weights.get(str(batch["case_id"][i]), weights), coverage) for i in range(len(ok))]
    return {**batch, **{k: np.concatenate([r[k] for r in rows]) for k in rows[0]}} if rows else dict(batch)


def confidence_batch(batch: dict[str, np.ndarray], *, teachers: list[str], shapes: list[tuple[int, ...]],
                     prob_dtype: str = "uint8") -> dict[str, np.ndarray]:
    """Stored annotation rows -> ``case_id`` and ``confidence`` (``[T]`` per row: each teacher's mean foreground
    confidence, ``fusion.specialist.foreground_confidence``; NaN for error rows)."""
    from nakt_ray.fusion.specialist import foreground_confidence

    ok = np.asarray(batch["status"]) == "ok"
    probs = [dequantize(from_bytes(batch[prob_column(t)], shape, prob_dtype)) for t, shape in zip(teachers, shapes)]
    out = np.full((len(ok), len(teachers)), np.nan)
    for i in np.flatnonzero(ok):
        sums, count = foreground_confidence([p[i] for p in probs])
        out[i] = sums / max(count, 1)
    return {"case_id": np.asarray(batch["case_id"]), "confidence": out}


def write_manifest(out_dir: str | Path, manifest: dict[str, Any]) -> str:
    """Write ``manifest.json`` into the annotation set at ``out_dir`` (a path or a URI, see ``storage``)."""
    path = storage.join(out_dir, MANIFEST)
    storage.write_text(path, json.dumps({"schema_version": SCHEMA_VERSION, **manifest}, indent=2))  # a v2 manifest
    return path                                                                                  # names its own


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """The manifest of the annotation set at ``out_dir`` (a path or a URI); raises when it is missing or was
    written for another schema version."""
    path = storage.join(out_dir, MANIFEST)
    if not storage.exists(path):
        raise FileNotFoundError(f"annotation set {str(out_dir)!r} has no {MANIFEST}; was it written by "
                                "`nakt annotate`?")
    manifest = json.loads(storage.read_text(path))
    if manifest.get("schema_version") not in SCHEMA_VERSIONS:
        raise error(DataError, f"annotation set {str(out_dir)!r}", f"has schema version "
                    f"{manifest.get('schema_version')}; this nakt-ray reads versions "
                    f"{', '.join(map(str, SCHEMA_VERSIONS))} (1: images, 2: volumes)")
    return manifest


def parquet_files(out_dir: str | Path) -> list[str]:
    """The set's Parquet files, as paths or URIs like ``out_dir`` (Ray Data reads either)."""
    return storage.list_files(out_dir, ".parquet")


def read_table(out_dir: str | Path, columns: list[str] | None = None):
    """The annotation set as one pyarrow Table (driver-side use: summaries, tests, small sets)."""
    import pyarrow.parquet as pq

    fs, files = storage.listing(out_dir, ".parquet")
    if not files:
        raise FileNotFoundError(f"annotation set {str(out_dir)!r} holds no Parquet files")
    return pq.ParquetDataset(files, filesystem=fs).read(columns=columns)


def read_parquet(paths: list[str], **kwargs: Any):
    """``ray.data.read_parquet`` with fractional-CPU read tasks.

    Ray 2.60's default Parquet path (DataSourceV2) lists files in a task that always asks for a whole CPU; beside
    Ray Train workers on a 2-core machine it waits minutes for one (measured: 1 min 44 s stalled). The V1 path
    honours ``num_cpus``, so reads use it, at 0.25 CPU per task.
    """
    import ray

    ctx = ray.data.DataContext.get_current()
    v2, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    try:
        return ray.data.read_parquet(paths, num_cpus=LIGHT_CPU, **kwargs)
    finally:
        ctx.use_datasource_v2 = v2

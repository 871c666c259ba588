"""Ray Datasets the stages read: folder cases decoded and preprocessed, and annotation sets from Parquet.

Decoding is a plain function over a batch (``dict[str, np.ndarray]``) run as Ray Data *tasks* (CPU), ahead of
any actor pool, so GPU actors never wait on image decoding. A case that cannot be read or preprocessed keeps its
row, with the reason in ``error`` and zero arrays, so downstream stages account for it instead of losing it.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from nakt_ray import annotations as ann
from nakt_ray.config import PreprocessConfig
from nakt_ray.preprocess import Geometry, preprocess_image, preprocess_mask
from nakt_ray.sources import Case, read_image, read_mask


# CPUs asked by light Ray Data tasks (reads, filters, writes, fusion). Ray's default for a task is a whole CPU,
# which on a 2-core machine beside actor pools or Train workers leaves such tasks waiting (measured: a Parquet
# write waited 18 s for its CPU while the pipeline had finished; a Parquet read stalled a Train epoch 1 min 44 s).
LIGHT_CPU = 0.25


def decode_batch(batch: dict[str, np.ndarray], *, preprocess: PreprocessConfig, num_classes: int,
                 mask_values: tuple[int, ...] | None = None, with_label: bool = False,
                 keep_mask: bool = False) -> dict[str, np.ndarray]:
    """Read and preprocess a batch of cases.

    Input columns: ``case_id``, ``image_path``, ``mask_path`` and optionally ``slice_index`` (-1 for 2D files).
    Output columns: ``case_id``, ``source``,
    ``geometry`` (JSON), ``error`` ("" when ok), ``image`` float32 ``[B, C_in, H, W]``; with ``with_label`` also
    ``target`` uint8 ``[B, C, H, W]`` (one-hot x 255, the same encoding as soft labels); with ``keep_mask`` the
    original-size mask as ``mask`` (bytes) and ``mask_shape`` ``[B, 2]`` (for evaluation at full resolution).
    """
    n = len(batch["case_id"])
    c_in, (h, w) = preprocess.in_channels, preprocess.size
    images = np.zeros((n, c_in, h, w), dtype=np.float32)
    targets = np.zeros((n, num_classes, h, w), dtype=np.uint8) if with_label else None
    masks = np.empty(n, dtype=object)
    mask_shapes = np.zeros((n, 2), dtype=np.int32)
    geometry = np.empty(n, dtype=object)
    errors = np.empty(n, dtype=object)
    for i in range(n):
        errors[i], geometry[i], masks[i] = "", "", b""
        path = str(batch["image_path"][i])
        slice_index = int(batch["slice_index"][i]) if "slice_index" in batch else -1
        slice_index = None if slice_index < 0 else slice_index
        try:
            image, geom = preprocess_image(read_image(path, slice_index), preprocess)
            images[i] = image
            geometry[i] = json.dumps(geom.to_dict())
            if with_label or keep_mask:
                mask_path = batch["mask_path"][i]
                if mask_path is None or mask_path == "":
                    raise ValueError(f"case {batch['case_id'][i]!r} has no mask")
                mask = read_mask(str(mask_path), num_classes, mask_values, slice_index)
                if mask.shape != (geom.orig_h, geom.orig_w):
                    raise ValueError(f"mask {mask_path!r} is {mask.shape[0]}x{mask.shape[1]} but its image is "
                                     f"{geom.orig_h}x{geom.orig_w}")
                if with_label:
                    label = preprocess_mask(mask, geom)
                    targets[i] = (np.eye(num_classes, dtype=np.uint8)[label] * 255).transpose(2, 0, 1)
                if keep_mask:
                    masks[i], mask_shapes[i] = mask.tobytes(), mask.shape
        except Exception as err:  # noqa: BLE001 - any failure of one case is recorded, the run goes on
            errors[i] = f"decode: {type(err).__name__}: {err}"
    out = {"case_id": np.asarray(batch["case_id"], dtype=object), "source": np.asarray(batch["image_path"], dtype=object),
           "geometry": geometry, "error": errors, "image": images}
    if with_label:
        out["target"] = targets
    if keep_mask:
        out["mask"], out["mask_shape"] = masks, mask_shapes
    return out


def geometry_of(value: str) -> Geometry:
    return Geometry(**json.loads(value))


def cases_dataset(cases: list[Case], rows_per_block: int = 16):
    """A Ray Dataset of case references (paths only); decoding happens downstream, in parallel tasks."""
    import ray

    # slice_index -1 means "a 2D file" (a Ray column must have one type).
    items = [{"case_id": c.case_id, "image_path": c.image_path, "mask_path": c.mask_path or "",
              "slice_index": -1 if c.slice_index is None else c.slice_index} for c in cases]
    # from_items would make 200 blocks by default (PLATFORM_NOTES); one block per few batches streams well.
    return ray.data.from_items(items, override_num_blocks=max(1, min(len(items), -(-len(items) // rows_per_block))))


def labeled_dataset(cases: list[Case], preprocess: PreprocessConfig, num_classes: int,
                    mask_values: tuple[int, ...] | None, batch_size: int = 16):
    """Decoded labeled cases for training: columns ``case_id``, ``image``, ``target``, ``error``."""
    ds = cases_dataset(cases, rows_per_block=batch_size)
    return ds.map_batches(decode_batch, batch_size=batch_size, num_cpus=0.5,
                          fn_kwargs=dict(preprocess=preprocess, num_classes=num_classes, mask_values=mask_values,
                                         with_label=True))


def split_errors(ds) -> tuple[Any, list[dict[str, str]]]:
    """Materialise ``ds`` and split off rows whose ``error`` is set.

    Returns ``(good rows with columns image and target, [{case_id, error}] of the others)``.
    """
    from ray.data.expressions import col

    ds = ds.materialize()
    bad = ds.filter(expr=col("error") != "", num_cpus=LIGHT_CPU).select_columns(
        ["case_id", "error"], num_cpus=LIGHT_CPU).take_all()
    good = ds.filter(expr=col("error") == "", num_cpus=LIGHT_CPU) if bad else ds
    return good.select_columns(["image", "target"], num_cpus=LIGHT_CPU).materialize(), [
        {"case_id": r["case_id"], "error": r["error"]} for r in bad]


def annotation_batch(batch: dict[str, np.ndarray], *, image_shape: tuple[int, ...], label_shape: tuple[int, ...],
                     teachers: list[str] | None = None, rule: str | None = None,
                     weights: list[float] | None = None, prob_dtype: str = "uint8",
                     agreement: str = "none") -> dict[str, np.ndarray]:
    """Parquet annotation rows -> training columns ``image`` float32 and ``target`` ``[B, C, H, W]`` (probabilities
    in the set's stored dtype, uint8 x 255 or float16; the training loop renormalises either).

    With ``rule`` the target is re-fused from the stored per-teacher maps (no teacher runs again); otherwise the
    stored ``soft_label`` is used. ``agreement`` adds a per-pixel loss weight ``weight`` ``[B, H, W]`` (uint8 x
    255): ``case``, the case's stored mean pairwise Dice of the teachers, everywhere; ``pixel``, the share of
    teachers whose arg-max equals the target's at that pixel.
    """
    out = {"image": ann.from_bytes(batch["image"], image_shape, "float16").astype(np.float32)}
    probs = None
    if rule is not None or agreement == "pixel":
        probs = np.stack([ann.from_bytes(batch[ann.prob_column(t)], label_shape, prob_dtype) for t in teachers],
                         axis=1)  # [B, T, C, H, W]
    if rule is None:
        out["target"] = ann.from_bytes(batch["soft_label"], label_shape, prob_dtype)
    else:
        from nakt_ray.fusion import fuse

        out["target"] = ann.quantize(fuse(ann.dequantize(probs), rule, weights), prob_dtype)
    if agreement == "case":
        agree = np.nan_to_num(np.asarray(batch["agreement"], dtype=np.float32), nan=1.0)
        out["weight"] = np.broadcast_to((np.clip(agree, 0, 1) * 255).round().astype(np.uint8)[:, None, None],
                                        (len(agree), *label_shape[1:])).copy()
    elif agreement == "pixel":
        fused = out["target"].argmax(1)  # [B, H, W]
        share = (probs.argmax(2) == fused[:, None]).mean(1)  # [B, H, W]
        out["weight"] = (share * 255).round().astype(np.uint8)
    return out


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


def annotation_columns(manifest: dict[str, Any], rule: str | None, agreement: str = "none") -> list[str]:
    """The Parquet columns :func:`annotation_batch` needs."""
    teachers = [t["name"] for t in manifest["teachers"]]
    columns = ["status", "image"] + ([ann.prob_column(t) for t in teachers] if rule or agreement == "pixel" else [])
    if rule is None:
        columns.append("soft_label")
    if agreement == "case":
        columns.append("agreement")
    return columns


# Rows decoded per Ray Data task when streaming an annotation set: about this many bytes of output per task.
DECODE_BYTES = 16 * 2**20


def decode_rows(manifest: dict[str, Any], batch_size: int) -> int:
    """Rows per decode task for an annotation set: enough for ~``DECODE_BYTES`` of output, at least a batch.

    The decode is cheap (a copy out of Parquet bytes); the cost is per task. Decoding in training batches (8 rows)
    ran ~100 tasks per HC18 epoch at ~150 ms of scheduling each on 2 cores, 15 s an epoch for 0.3 s of work, and
    left Ray Train at 0.4x a plain loop (decision 35). The training batch size is set by the consumer.
    """
    return max(batch_size, min(1024, DECODE_BYTES // decoded_row_bytes(manifest)))


def decoded_row_bytes(manifest: dict[str, Any]) -> int:
    """Bytes of one decoded training row of an annotation set (float32 image, uint8/float16 target)."""
    target = 2 if manifest.get("prob_dtype") == "float16" else 1
    return max(1, 4 * int(np.prod(manifest["image_shape"])) + target * int(np.prod(manifest["label_shape"])))


def annotation_dataset(annotations_dir: str, rule: str | None = None, weights: list[float] | None = None,
                       batch_size: int = 32, agreement: str = "none", shuffle: bool = False,
                       seed: int | None = None):
    """The ``ok`` rows of an annotation set as a streaming Ray Dataset with ``image`` and ``target`` columns
    (and ``weight`` with ``agreement``), read from its Parquet files; ``shuffle`` randomises the file order
    every epoch (with a local shuffle buffer in the consumer, a cheap per-epoch shuffle), reproducibly when a
    ``seed`` is given."""
    from ray.data import FileShuffleConfig
    from ray.data.expressions import col

    manifest = ann.read_manifest(annotations_dir)
    if agreement not in ("none", "case", "pixel"):
        raise ValueError(f"agreement weighting {agreement!r}: expected none, case or pixel")
    ds = read_parquet(ann.parquet_files(annotations_dir), columns=annotation_columns(manifest, rule, agreement),
                      shuffle=(FileShuffleConfig(seed=seed) if seed is not None else "files") if shuffle else None)
    ds = ds.filter(expr=col("status") == "ok", num_cpus=LIGHT_CPU)
    return ds.map_batches(annotation_batch, batch_size=decode_rows(manifest, batch_size), num_cpus=0.25,
                          fn_kwargs=dict(image_shape=tuple(manifest["image_shape"]),
                                         label_shape=tuple(manifest["label_shape"]),
                                         teachers=[t["name"] for t in manifest["teachers"]],
                                         rule=rule, weights=weights, prob_dtype=manifest["prob_dtype"],
                                         agreement=agreement))

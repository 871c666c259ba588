"""Ray Datasets of folder cases: listed, decoded and preprocessed (the input of annotation, training and evaluation).

Decoding is a plain function over a batch (``dict[str, np.ndarray]``) run as Ray Data *tasks* (CPU), ahead of
any actor pool, so GPU actors never wait on image decoding. A case that cannot be read or preprocessed keeps its
row, with the reason in ``error`` and zero arrays, so downstream stages account for it instead of losing it.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from nakt_ray.config import PreprocessConfig
from nakt_ray.data.preprocess import Geometry, preprocess_image, preprocess_mask
from nakt_ray.data.privacy import scrub
from nakt_ray.data.readers import Case, read_image, read_mask, read_pixel_spacing
from nakt_ray.runtime.cluster import LIGHT_CPU


def decode_batch(batch: dict[str, np.ndarray], *, preprocess: PreprocessConfig, num_classes: int,
                 mask_values: tuple[int, ...] | None = None, with_label: bool = False,
                 keep_mask: bool = False) -> dict[str, np.ndarray]:
    """Read and preprocess a batch of cases.

    Input columns: ``case_id``, ``image_path``, ``mask_path`` and optionally ``slice_index`` (-1 for 2D files) and
    ``original_id`` (set for a pseudonymous case: its ``source`` is then its case id, and its error message names
    it by that id only, see ``privacy.scrub``). Output columns: ``case_id``, ``source``,
    ``geometry`` (JSON), ``error`` ("" when ok), ``image`` float32 ``[B, C_in, H, W]``; with ``with_label`` also
    ``target`` uint8 ``[B, C, H, W]`` (one-hot x 255, the same encoding as soft labels); with ``keep_mask`` the
    original-size mask as ``mask`` (bytes), ``mask_shape`` ``[B, 2]`` and the image's pixel size ``spacing``
    ``[B, 2]`` in mm (NaN where the file gives none), for evaluation at full resolution.
    """
    n = len(batch["case_id"])
    c_in, (h, w) = preprocess.in_channels, preprocess.size
    images = np.zeros((n, c_in, h, w), dtype=np.float32)
    targets = np.zeros((n, num_classes, h, w), dtype=np.uint8) if with_label else None
    masks = np.empty(n, dtype=object)
    mask_shapes = np.zeros((n, 2), dtype=np.int32)
    spacings = np.full((n, 2), np.nan, dtype=np.float64)
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
                    spacings[i] = read_pixel_spacing(path, slice_index) or (np.nan, np.nan)
        except Exception as err:  # noqa: BLE001 - any failure of one case is recorded, the run goes on
            errors[i] = f"decode: {type(err).__name__}: {err}"
    sources = np.asarray(batch["image_path"], dtype=object).copy()
    for i, original in enumerate(batch.get("original_id", ())):
        if original:  # a pseudonymous case: nothing that leaves here names its files
            case_id = str(batch["case_id"][i])
            sources[i] = case_id
            errors[i] = scrub(errors[i], case_id, str(original), str(batch["image_path"][i]),
                              str(batch["mask_path"][i] or ""))
    out = {"case_id": np.asarray(batch["case_id"], dtype=object), "source": sources,
           "geometry": geometry, "error": errors, "image": images}
    if with_label:
        out["target"] = targets
    if keep_mask:
        out["mask"], out["mask_shape"], out["spacing"] = masks, mask_shapes, spacings
    return out


def geometry_of(value: str) -> Geometry:
    return Geometry(**json.loads(value))


def cases_dataset(cases: list[Case], rows_per_block: int = 16):
    """A Ray Dataset of case references (paths only); decoding happens downstream, in parallel tasks."""
    import ray

    # slice_index -1 means "a 2D file" (a Ray column must have one type).
    items = [{"case_id": c.case_id, "image_path": c.image_path, "mask_path": c.mask_path or "",
              "slice_index": -1 if c.slice_index is None else c.slice_index,
              "original_id": c.original_id or ""} for c in cases]
    # from_items would make 200 blocks by default (measured: 200 tiny Parquet files at ~11 images/s); one block
    # per few batches streams well.
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


def labeled_split(cfg: Any, folder: str, batch_size: int) -> tuple[Any, list[dict[str, str]], int]:
    """Decode a labeled folder for training: (dataset of good cases, failed cases, number of cases listed)."""
    from nakt_ray.data.privacy import cases_for
    from nakt_ray.data.readers import list_cases

    cases = cases_for(list_cases(folder, require_masks=True, mask_suffix=cfg.data.mask_suffix), cfg.data.pseudonymize)
    ds = labeled_dataset(cases, cfg.preprocess, cfg.data.num_classes, cfg.data.mask_values, batch_size=batch_size)
    good, failed = split_errors(ds)
    if len(failed) == len(cases):
        raise ValueError(f"none of the {len(cases)} cases in {folder!r} could be read; first error: "
                         f"{failed[0]['error']}")
    return good, failed, len(cases)

"""Patch sampling for 3D training, as nnU-Net does it: random boxes of ``volume.patch_size`` voxels, a share of them
centred on a foreground voxel.

A case is a set of arrays on one grid ``[D, H, W]`` (channel-first maps ``[C, D, H, W]`` or label maps
``[D, H, W]``): the zarr arrays of an annotation store (``annotation/volume_store.py``) or numpy arrays of a
labeled volume held in memory. :func:`choose_patch` picks a box; :func:`read_patch` reads only that box (from zarr
through ``volume_store.read_box``, so only the chunks the box touches are read and decoded, never the whole
volume) and pads what lies outside the volume.

Where a box goes (per spatial axis, volume size ``s``, patch size ``p``): its start is drawn from
``[min(0, s - p), max(0, s - p)]``, so a box lies inside a volume larger than the patch, and a volume smaller than
the patch lies inside the box at a random offset (the rest is padding). A foreground-forced box (probability
``foreground_share``; nnU-Net's ``oversample_foreground_percent`` is 0.33) picks a random foreground class among
those present in the case, then a random one of its recorded voxels (``class_locations``), and is centred on it
within those bounds, so it always contains that voxel. A case without foreground gets a uniform box.

Padding: the image with 0 (the mean after z-scoring), probabilities with "background, certain" (class 0 at 1),
label maps with class 0.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "FOREGROUND_SHARE",
    "choose_patch",
    "class_argmax",
    "class_locations",
    "one_hot",
    "padding_of_probabilities",
    "read_patch",
]

FOREGROUND_SHARE = 0.33  # nnU-Net's default share of foreground-forced patches
LOCATIONS_PER_CLASS = 10_000  # as annotation/volume_store.py keeps per class


def class_locations(label: np.ndarray, num_classes: int, rng: np.random.Generator,
                    per_class: int = LOCATIONS_PER_CLASS) -> np.ndarray:
    """Up to ``per_class`` random voxels of each foreground class of a label map ``[D, H, W]`` as int32 rows
    ``(class, d, h, w)`` ``[N, 4]``: the same table an annotation store keeps as ``class_locations``."""
    rows = []
    for cls in range(1, num_classes):
        where = np.argwhere(label == cls)
        if len(where) > per_class:
            where = where[rng.choice(len(where), per_class, replace=False)]
        if len(where):
            rows.append(np.concatenate([np.full((len(where), 1), cls), where], axis=1))
    return np.concatenate(rows).astype(np.int32) if rows else np.zeros((0, 4), np.int32)


def choose_patch(shape: Sequence[int], patch_size: Sequence[int], locations: np.ndarray | None,
                 rng: np.random.Generator, foreground_share: float = FOREGROUND_SHARE) -> tuple[np.ndarray, bool]:
    """The start ``(d, h, w)`` of a random box of ``patch_size`` on a grid of ``shape`` (a start may be negative
    where the volume is smaller than the patch), and whether it was forced onto foreground.

    Args:
        shape: the volume's ``(D, H, W)``.
        patch_size: the box's ``(d, h, w)``.
        locations: ``[N, 4]`` int rows ``(class, d, h, w)`` of foreground voxels (``class_locations``); None or
            empty: no foreground.
        rng: the case's generator (one per case and epoch: patches are reproducible from the seed).
        foreground_share: the probability that a box is centred on a foreground voxel, in [0, 1].
    """
    if not 0 <= foreground_share <= 1:
        raise ValueError(f"foreground_share {foreground_share!r}: expected a share in [0, 1]")
    shape_a, patch = np.asarray(shape, dtype=np.int64), np.asarray(patch_size, dtype=np.int64)
    lo, hi = np.minimum(0, shape_a - patch), np.maximum(0, shape_a - patch)
    forced = bool(rng.random() < foreground_share)
    if forced and locations is not None and len(locations):
        classes = np.unique(locations[:, 0])
        cls = classes[rng.integers(len(classes))]
        rows = locations[locations[:, 0] == cls]
        centre = rows[rng.integers(len(rows)), 1:].astype(np.int64)
        return np.clip(centre - patch // 2, lo, hi), True
    return rng.integers(lo, hi + 1), False


def padding_of_probabilities(num_classes: int, dtype: Any) -> np.ndarray:
    """The value ``[C]`` of a stored probability map outside the volume: background certain (255 for uint8 maps,
    1.0 for float16 ones)."""
    fill = np.zeros(num_classes, dtype=dtype)
    fill[0] = 255 if np.dtype(dtype) == np.uint8 else 1
    return fill


def read_patch(array: Any, start: Sequence[int], patch_size: Sequence[int], fill: Any = 0) -> np.ndarray:
    """The box ``start : start + patch_size`` over the last three axes of ``array`` (``[..., D, H, W]``: a zarr
    array, read box-only, or a numpy array), the part outside the volume filled with ``fill`` (a scalar, or one
    value per leading channel ``[C]``).

    Returns:
        ``[..., d, h, w]`` of the array's dtype.
    """
    from nakt_ray.annotation.volume_store import read_box

    shape = tuple(int(s) for s in array.shape)
    lead, grid = shape[:-3], shape[-3:]
    start = [int(a) for a in start]
    size = [int(n) for n in patch_size]
    inner_lo = [max(a, 0) for a in start]
    inner_hi = [min(a + n, s) for a, n, s in zip(start, size, grid)]
    out_dtype = array.dtype if isinstance(array, np.ndarray) else np.dtype(str(array.dtype))
    out = np.empty((*lead, *size), dtype=out_dtype)
    fill = np.asarray(fill, dtype=out_dtype)
    out[...] = fill.reshape(fill.shape + (1, 1, 1)) if fill.ndim else fill
    if all(b > a for a, b in zip(inner_lo, inner_hi)):
        extent = [b - a for a, b in zip(inner_lo, inner_hi)]
        if isinstance(array, np.ndarray):
            box = array[(Ellipsis, *(slice(a, b) for a, b in zip(inner_lo, inner_hi)))]
        else:
            box = read_box(array, inner_lo, extent)
        at = tuple(slice(a - s0, a - s0 + n) for a, s0, n in zip(inner_lo, start, extent))
        out[(Ellipsis, *at)] = box
    return out


def class_argmax(probs: np.ndarray) -> np.ndarray:
    """``argmax`` over the class axis of maps ``[..., C, d, h, w]`` (the first class on ties, as ``np.argmax``), in
    C passes over contiguous class planes: ``np.argmax`` over that strided axis took about twice as long, and as
    long as reading the patch (3 teachers x 4 classes x 64^3: 13 ms against 8 ms)."""
    planes = np.moveaxis(probs, -4, 0)
    best, index = planes[0].copy(), np.zeros(planes.shape[1:], np.uint8)
    for c in range(1, planes.shape[0]):
        np.copyto(index, c, where=planes[c] > best)
        np.maximum(best, planes[c], out=best)
    return index


def one_hot(label: np.ndarray, num_classes: int) -> np.ndarray:
    """A label map ``[d, h, w]`` -> ``[C, d, h, w]`` uint8 one-hot x 255 (the stored form of a certain label)."""
    return (np.arange(num_classes, dtype=np.uint8)[:, None, None, None] == label[None]).astype(np.uint8) * 255

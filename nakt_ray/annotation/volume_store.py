"""The maps of an annotation set of volumes (schema version 2): one chunked, compressed zarr group per case.

A volume's maps do not fit a Parquet row (one teacher's uint8 maps of a 160 x 160 x 120 CT with 8 classes are
25 MB; a whole set's are gigabytes), and a student reading a 64^3 patch must not decode the whole volume. So each
case's arrays live in a zarr v3 group under ``<set>/stores/``, chunked ``CHUNK`` voxels a side and compressed
(zstd), and the case's Parquet row (``annotation/parquet.py``, ``docs/annotations.md``) names its group. The
group of a case::

    image               float16 [C_in, D, H, W]   the preprocessed model input
    prob/<teacher>      uint8   [C_t, D, H, W]    each teacher's probabilities (p * 255; or float16) over the
                                                  run's classes it covers (manifest: teachers[i].classes)
    soft_label          uint8   [C, D, H, W]      the fused probabilities, same dtype
    hard_label          uint8   [D, H, W]         argmax of soft_label
    class_locations     int32   [N, 4]            (class, d, h, w) of up to LOCATIONS_PER_CLASS voxels of each
                                                  foreground class of hard_label, for foreground-forced patches

Every array is on the case's preprocessed grid (``VolumeTransform.geometry``, kept as JSON in the row). A worker
holds at most one teacher's maps of one volume at once (while that teacher predicts it); fusion reads the teachers'
maps slab by slab (``CHUNK`` slices), so no worker ever holds a whole case's maps (docs/decisions.md, 52).
"""
from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nakt_ray.annotation.parquet import dequantize, quantize
from nakt_ray.errors import DataError, error

__all__ = [
    "CHUNK",
    "LOCATIONS_PER_CLASS",
    "STORES",
    "create_case",
    "fuse_case",
    "open_case",
    "read_box",
    "store_name",
    "teacher_key",
    "write_map",
]

STORES = "stores"
# Voxels per chunk side: a 64^3 patch touches at most 27 chunks (3.4x the patch read); a chunk of 8 classes is
# 256 KiB before compression.
CHUNK = 32
# Foreground voxels remembered per class for foreground-forced patch sampling (nnU-Net keeps 10 000 too).
LOCATIONS_PER_CLASS = 10_000


def store_name(case_id: str) -> str:
    """The group name of a case under ``stores/``: its id made safe for a path, plus a hash (two ids that differ
    only in unsafe characters stay apart)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", case_id)[:80]
    return f"{safe}-{hashlib.sha256(case_id.encode()).hexdigest()[:8]}.zarr"


def teacher_key(teacher: str) -> str:
    return f"prob/{teacher}"


def _zarr() -> Any:
    import zarr  # imported where used: only volume runs need it

    return zarr


def _path(root: str | Path, name: str) -> str:
    return str(Path(root) / STORES / name)


def open_case(root: str | Path, name: str, mode: str = "r") -> Any:
    """The zarr group of case ``name`` (from its row's ``store``) in the set at ``root``."""
    try:
        return _zarr().open_group(_path(root, name), mode=mode)
    except (FileNotFoundError, KeyError, ValueError) as err:
        raise error(DataError, f"annotation store {_path(root, name)!r}", f"cannot be opened: {err}") from None


def _chunks(shape: Sequence[int]) -> tuple[int, ...]:
    """Channels whole, ``CHUNK`` voxels along each spatial axis."""
    spatial = tuple(min(CHUNK, int(s)) for s in shape[-3:])
    return (*shape[:-3], *spatial)


def create_case(root: str | Path, name: str, image: np.ndarray, attrs: dict[str, Any]) -> Any:
    """Create (or overwrite: a resumed case starts again) case ``name``'s group holding its ``image``
    ``[C_in, D, H, W]`` as float16, with ``attrs`` (JSON-able: case id, grid); returns the group."""
    group = _zarr().open_group(_path(root, name), mode="w")
    group.attrs.update(attrs)
    write_map(group, "image", image.astype(np.float16))
    return group


def write_map(group: Any, key: str, array: np.ndarray) -> None:
    """Write ``array`` (``[C, D, H, W]`` or ``[D, H, W]``) as ``key`` of ``group``, chunked and compressed."""
    arr = group.create_array(key, shape=array.shape, dtype=array.dtype, chunks=_chunks(array.shape),
                             overwrite=True)
    arr[...] = array


def read_box(array: Any, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """The box ``start : start + size`` over the last three (spatial) axes of a zarr ``array``; only the chunks
    it touches are read and decoded."""
    box = tuple(slice(int(a), int(a) + int(n)) for a, n in zip(start, size))
    return np.asarray(array[(Ellipsis, *box)])


def slabs(depth: int) -> Iterator[tuple[int, int]]:
    """``(z0, z1)`` of the slabs of ``CHUNK`` slices that a case of ``depth`` slices is read and fused by."""
    for z0 in range(0, depth, CHUNK):
        yield z0, min(depth, z0 + CHUNK)


def fuse_case(group: Any, teachers: list[str], rule: str, weights: list[float] | None, *,
              seed: int = 0, coverage: np.ndarray | None = None) -> dict[str, float]:
    """Fuse the stored teacher maps of one case slab by slab into ``soft_label``, ``hard_label`` and
    ``class_locations``; returns the case's ``agreement`` (mean pairwise foreground Dice of the teachers' argmax
    labels over the whole volume, as ``fusion.pairwise_dice``) and ``entropy`` (mean normalised voxel entropy of
    the fused label, as ``fusion.entropy``). ``coverage`` (``parquet.coverage``): the run's classes each teacher
    covers, None when all cover all; agreement then counts, per pair, the classes both cover
    (``fusion.pairwise_dice_partial``).

    Per-voxel rules (mean, weighted mean, majority vote, confidence-weighted) give what fusing the whole volume at
    once gives; STAPLE estimates its teacher performance per slab of ``CHUNK`` slices (docs/decisions.md, 52).
    """
    from nakt_ray.fusion import fuse_teachers, union_labels

    maps = [group[teacher_key(t)] for t in teachers]
    cov = np.ones((len(maps), maps[0].shape[0]), bool) if coverage is None else np.asarray(coverage, bool)
    shape = (cov.shape[1], *maps[0].shape[1:])  # [C, D, H, W] of the union
    dtype = maps[0].dtype
    n_classes, depth = shape[0], shape[1]
    soft_arr = group.create_array("soft_label", shape=shape, dtype=dtype, chunks=_chunks(shape), overwrite=True)
    hard_arr = group.create_array("hard_label", shape=shape[1:], dtype="uint8", chunks=_chunks(shape[1:]),
                                  overwrite=True)
    pairs = list(itertools.combinations(range(len(teachers)), 2))
    inter = np.zeros((len(pairs), n_classes))
    sizes = np.zeros((len(pairs), n_classes))
    entropy_sum = 0.0
    rng = np.random.default_rng(seed)
    locations: list[list[np.ndarray]] = [[] for _ in range(n_classes)]
    for z0, z1 in slabs(depth):
        probs = [dequantize(np.asarray(m[:, z0:z1]), axis=0) for m in maps]  # T x [C_t, s, H, W]
        c = n_classes
        s, h, w = probs[0].shape[1:]
        # Fusion works on [C, H, W] images: the slab is one image of s * H rows.
        soft = fuse_teachers([p.reshape(p.shape[0], s * h, w) for p in probs], coverage, rule,
                             weights).reshape(c, s, h, w)
        soft_q = quantize(soft, np.dtype(dtype).name)
        soft_arr[:, z0:z1] = soft_q
        hard = soft.argmax(axis=0).astype(np.uint8)
        hard_arr[z0:z1] = hard
        labels = [union_labels(p.argmax(axis=0), cov[t]) for t, p in enumerate(probs)]  # T x [s, H, W]
        for k, (a, b) in enumerate(pairs):
            for cls in np.flatnonzero(cov[a] & cov[b]):  # the classes both cover (background skipped below)
                if cls == 0:
                    continue
                in_a, in_b = labels[a] == cls, labels[b] == cls
                inter[k, cls] += np.count_nonzero(in_a & in_b)
                sizes[k, cls] += np.count_nonzero(in_a) + np.count_nonzero(in_b)
        p = np.clip(soft, 1e-12, 1.0)
        entropy_sum += float(-(soft * np.log(p)).sum(axis=0).sum()) / np.log(n_classes)
        for cls in range(1, n_classes):
            where = np.argwhere(hard == cls)
            if len(where) > LOCATIONS_PER_CLASS:
                where = where[rng.choice(len(where), LOCATIONS_PER_CLASS, replace=False)]
            if len(where):
                where[:, 0] += z0
                locations[cls].append(where)
    rows = []
    for cls in range(1, n_classes):
        if locations[cls]:
            found = np.concatenate(locations[cls])
            if len(found) > LOCATIONS_PER_CLASS:
                found = found[rng.choice(len(found), LOCATIONS_PER_CLASS, replace=False)]
            rows.append(np.concatenate([np.full((len(found), 1), cls), found], axis=1))
    found = np.concatenate(rows).astype(np.int32) if rows else np.zeros((0, 4), np.int32)
    loc = group.create_array("class_locations", shape=found.shape, dtype="int32",
                             chunks=(max(1, min(len(found), 8192)), 4), overwrite=True)
    if len(found):
        loc[...] = found
    # A class empty in both labels of a pair counts as 1.0, as fusion.pairwise_dice has it; a pair that shares no
    # class is left out, and with none left there is nothing to disagree on (fusion.pairwise_dice_partial).
    shared = [(cov[a] & cov[b])[1:] for a, b in pairs]
    dice = np.where(sizes > 0, 2 * inter / np.maximum(sizes, 1), 1.0)[:, 1:]
    scores = [dice[k][m].mean() for k, m in enumerate(shared) if m.any()]
    agreement = float(np.mean(scores)) if scores else 1.0
    return {"agreement": agreement, "entropy": entropy_sum / float(np.prod(shape[1:]))}

"""The one volume preprocessing used by teachers and students, and its exact inverse (the 3D twin of
nakt_ray/data/preprocess.py; axis conventions in nakt_ray/data/volumes.py).

``preprocess_volume`` takes an image ``[D, H, W]`` with its geometry through four steps, each recorded in a
:class:`VolumeTransform`:

1. canonical orientation: axes permuted and flipped (never interpolated) so that ``(W, H, D)`` point as
   ``cfg.orientation`` says (``RAS``: Right, Anterior, Superior); an oblique volume gets the nearest such order;
2. resampling to ``cfg.spacing`` (linear; shape ``round(shape * spacing / target)`` as nnU-Net does). The grid
   keeps the volume's extent, so the spacing actually used is ``extent / shape``, the target up to rounding,
   and every voxel centre maps back exactly;
3. intensity normalisation by modality: CT is clipped to the dataset's foreground percentiles and z-scored with
   the dataset's mean and std (nnU-Net's CTNormalization; :func:`ct_statistics`); MRI is z-scored per volume
   over its non-zero voxels, which are then the only ones set (over all voxels when ``crop_nonzero`` is off;
   nnU-Net's ZScoreNormalization);
4. optionally, a crop to the bounding box of the non-zero voxels.

``preprocess_label_volume`` applies the spatial steps (1, 2, 4) to a label map with nearest neighbour.
``restore_volume`` maps a model's probabilities back onto the ORIGINAL grid in reverse order: the crop is padded
with background (class 0, probability 1), the grid resampled back linearly and renormalised to sum 1, the
orientation undone. The result has the original shape, and its geometry is ``transform.original`` exactly.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nakt_ray.config.volume import VolumePreprocessConfig
from nakt_ray.data.volumes import VolumeGeometry, grid_difference
from nakt_ray.errors import ConfigError, DataError, error, expected

__all__ = [
    "VolumeTransform",
    "ct_statistics",
    "orientation_for",
    "preprocess_label_volume",
    "preprocess_volume",
    "restore_volume",
]

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

# LPS physical axis and sign towards which each orientation letter points.
_LETTERS = {"L": (0, 1.0), "R": (0, -1.0), "P": (1, 1.0), "A": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


@dataclass(frozen=True)
class VolumeTransform:
    """What :func:`preprocess_volume` applied, enough to map a prediction back exactly (JSON: :meth:`to_dict`).

    ``original``: the input's grid. Orientation: oriented axis ``b`` is original axis ``permutation[b]``, reversed
    where ``flips[b]``; ``oriented`` is that grid. ``resampled``: the grid after resampling (``target_spacing``
    asked for; its ``spacing`` is the one used, ``extent / shape``). ``crop``: ``(start, stop)`` per axis
    ``(d, h, w)`` of the resampled grid. :attr:`geometry` is the grid of the preprocessed array.
    """

    original: VolumeGeometry
    orientation: str | None
    permutation: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    oriented: VolumeGeometry
    target_spacing: tuple[float, float, float] | None
    resampled: VolumeGeometry
    crop: Box

    @property
    def geometry(self) -> VolumeGeometry:
        """The grid of the preprocessed array ``[D', H', W']`` (the resampled grid, cropped)."""
        return _cropped_geometry(self.resampled, self.crop)

    def to_dict(self) -> dict[str, Any]:
        return {"original": self.original.to_dict(), "orientation": self.orientation,
                "permutation": list(self.permutation), "flips": list(self.flips), "oriented": self.oriented.to_dict(),
                "target_spacing": None if self.target_spacing is None else list(self.target_spacing),
                "resampled": self.resampled.to_dict(), "crop": [list(c) for c in self.crop]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VolumeTransform:
        ts = data["target_spacing"]
        return cls(VolumeGeometry.from_dict(data["original"]), data["orientation"],
                   tuple(int(p) for p in data["permutation"]),  # type: ignore[arg-type]
                   tuple(bool(f) for f in data["flips"]),  # type: ignore[arg-type]
                   VolumeGeometry.from_dict(data["oriented"]),
                   None if ts is None else tuple(float(s) for s in ts),  # type: ignore[arg-type]
                   VolumeGeometry.from_dict(data["resampled"]),
                   tuple((int(a), int(b)) for a, b in data["crop"]))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------------
# Spatial steps: each a geometry function and an array function, so the grid and the voxels never disagree.


def orientation_for(geometry: VolumeGeometry, code: str | None) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """``(permutation, flips)`` that bring ``geometry``'s axes ``(W, H, D)`` closest to ``code`` (e.g. ``"RAS"``).

    The permutation is the one whose axes are most aligned with the target axes (sum of |cosines|), so an oblique
    volume gets its nearest axis order; identity and no flips when ``code`` is None.
    """
    if code is None:
        return (0, 1, 2), (False, False, False)
    target = [_LETTERS[code[2 - b]] for b in range(3)]   # array axis b = d, h, w is code letter 2, 1, 0
    d = geometry.direction_matrix
    best = max(itertools.permutations(range(3)),
               key=lambda perm: sum(abs(d[target[b][0], perm[b]]) for b in range(3)))
    flips = tuple(bool(np.sign(d[target[b][0], best[b]]) != target[b][1]) for b in range(3))
    return tuple(best), flips  # type: ignore[return-value]


def _oriented_geometry(g: VolumeGeometry, perm: Sequence[int], flips: Sequence[bool]) -> VolumeGeometry:
    d = g.direction_matrix
    start = np.zeros(3)
    for b, a in enumerate(perm):
        if flips[b]:
            start[a] = g.shape[a] - 1   # the reversed axis starts at the old last voxel
    origin = g.affine() @ np.append(start, 1.0)
    direction = np.stack([d[:, a] * (-1.0 if flips[b] else 1.0) for b, a in enumerate(perm)], axis=1)
    return VolumeGeometry.create([g.shape[a] for a in perm], [g.spacing[a] for a in perm], origin[:3], direction)


def _orient(array: np.ndarray, perm: Sequence[int], flips: Sequence[bool]) -> np.ndarray:
    """``[..., D, H, W]`` -> the oriented axes (the last three)."""
    lead = array.ndim - 3
    out = np.transpose(array, tuple(range(lead)) + tuple(lead + a for a in perm))
    axes = tuple(lead + b for b in range(3) if flips[b])
    return np.ascontiguousarray(np.flip(out, axes) if axes else out)


def _unorient(array: np.ndarray, perm: Sequence[int], flips: Sequence[bool]) -> np.ndarray:
    lead = array.ndim - 3
    axes = tuple(lead + b for b in range(3) if flips[b])
    out = np.flip(array, axes) if axes else array
    inverse = np.argsort(perm)
    return np.ascontiguousarray(np.transpose(out, tuple(range(lead)) + tuple(lead + int(b) for b in inverse)))


def _resampled_geometry(g: VolumeGeometry, target: Sequence[float] | None) -> VolumeGeometry:
    if target is None:
        return g
    shape = np.asarray(g.shape, dtype=float)
    spacing = np.asarray(g.spacing, dtype=float)
    new_shape = np.maximum(1, np.round(shape * spacing / np.asarray(target, dtype=float))).astype(int)
    # Same extent (align_corners=False): voxel i' of the new grid is at old index (i' + 0.5) * n / n' - 0.5.
    scale = shape / new_shape
    origin = g.affine() @ np.append((scale - 1.0) / 2.0, 1.0)
    return VolumeGeometry.create(new_shape, spacing * scale, origin[:3], g.direction_matrix)


def _resample(array: np.ndarray, shape: Sequence[int], mode: str) -> np.ndarray:
    """``[C, D, H, W]`` float32 onto ``shape`` with the voxel-centre mapping of :func:`_resampled_geometry`."""
    if tuple(array.shape[1:]) == tuple(shape):
        return array
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    if mode == "nearest":
        out = F.interpolate(t, size=tuple(shape), mode="nearest-exact")
    else:
        out = F.interpolate(t, size=tuple(shape), mode="trilinear", align_corners=False)
    return out[0].numpy()


def _cropped_geometry(g: VolumeGeometry, box: Box) -> VolumeGeometry:
    start = np.asarray([b[0] for b in box], dtype=float)
    origin = g.affine() @ np.append(start, 1.0)
    return VolumeGeometry.create([b[1] - b[0] for b in box], g.spacing, origin[:3], g.direction_matrix)


def _nonzero_box(mask: np.ndarray) -> Box:
    """The bounding box ``(start, stop)`` per axis of ``mask [D, H, W]``; the whole grid when it is empty."""
    if not mask.any():
        return tuple((0, n) for n in mask.shape)  # type: ignore[return-value]
    box = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)  # type: ignore[return-value]


def _crop(array: np.ndarray, box: Box) -> np.ndarray:
    (d0, d1), (h0, h1), (w0, w1) = box
    return np.ascontiguousarray(array[..., d0:d1, h0:h1, w0:w1])


# ----------------------------------------------------------------------------------------------------------------
# Intensities


def _normalize(image: np.ndarray, nonzero: np.ndarray, cfg: VolumePreprocessConfig) -> np.ndarray:
    if cfg.modality == "ct":
        stats = cfg.ct_stats
        assert stats is not None  # checked in preprocess_volume
        return ((np.clip(image, stats.p_low, stats.p_high) - stats.mean) / max(stats.std, 1e-8)).astype(np.float32)
    if cfg.modality == "mri":
        if cfg.crop_nonzero:
            values = image[nonzero]
            if values.size == 0:
                return np.zeros_like(image)
            out = np.zeros_like(image)
            out[nonzero] = (values - values.mean()) / max(float(values.std()), 1e-8)
            return out
        return ((image - image.mean()) / max(float(image.std()), 1e-8)).astype(np.float32)
    return image


# ----------------------------------------------------------------------------------------------------------------
# The steps


def _check_input(array: np.ndarray, geometry: VolumeGeometry, what: str) -> None:
    if array.ndim != 3 or tuple(array.shape) != geometry.shape:
        raise error(DataError, what, expected(tuple(array.shape), f"an array [D, H, W] of its geometry's shape "
                                                                   f"{geometry.shape}"))


def preprocess_volume(image: np.ndarray, geometry: VolumeGeometry,
                      cfg: VolumePreprocessConfig) -> tuple[np.ndarray, VolumeTransform]:
    """Image ``[D, H, W]`` on ``geometry`` -> model input ``[1, D', H', W']`` float32 and what was applied
    (the input's grid is ``transform.geometry``)."""
    _check_input(image, geometry, "preprocess_volume image")
    if cfg.modality == "ct" and cfg.ct_stats is None:
        raise error(ConfigError, "config key 'volume.ct_stats'", expected(None, "the dataset's CT statistics "
                    "{mean, std, p_low, p_high} (nakt_ray.data.volume_preprocess.ct_statistics) when modality is "
                    "'ct'"))
    perm, flips = orientation_for(geometry, cfg.orientation)                                    # 1. orientation
    oriented = _oriented_geometry(geometry, perm, flips)
    resampled = _resampled_geometry(oriented, cfg.spacing)                                      # 2. resampling
    array = _resample(_orient(image.astype(np.float32, copy=False), perm, flips)[None], resampled.shape, "linear")[0]
    nonzero = array != 0
    array = _normalize(array, nonzero, cfg)                                                     # 3. intensities
    box = _nonzero_box(nonzero) if cfg.crop_nonzero else tuple((0, n) for n in array.shape)    # 4. crop
    transform = VolumeTransform(geometry, cfg.orientation, perm, flips, oriented, cfg.spacing, resampled,
                                box)  # type: ignore[arg-type]
    return _crop(array, transform.crop)[None].astype(np.float32, copy=False), transform


def preprocess_label_volume(mask: np.ndarray, geometry: VolumeGeometry, cfg: VolumePreprocessConfig,
                            transform: VolumeTransform) -> np.ndarray:
    """Label map ``[D, H, W]`` on ``geometry`` (its image's grid) -> ``[D', H', W']`` on ``transform.geometry``:
    the spatial steps of its image, nearest neighbour; the dtype is kept. ``cfg`` must be the config the
    image was preprocessed with."""
    _check_input(mask, geometry, "preprocess_label_volume label map")
    diff = grid_difference(transform.original, geometry)
    if diff is not None:
        raise error(DataError, "preprocess_label_volume label map", f"has {diff} of the image it belongs to; "
                                                                    "expected the image's grid")
    if (cfg.orientation, cfg.spacing) != (transform.orientation, transform.target_spacing):
        raise error(ConfigError, "preprocess_label_volume", f"got orientation {cfg.orientation!r} and spacing "
                    f"{cfg.spacing} but the image was preprocessed with {transform.orientation!r} and "
                    f"{transform.target_spacing}; expected the image's config")
    oriented = _orient(mask, transform.permutation, transform.flips)
    resampled = _resample(oriented[None].astype(np.float32), transform.resampled.shape, "nearest")[0]
    return _crop(resampled, transform.crop).astype(mask.dtype)


def restore_volume(probs: np.ndarray | torch.Tensor, transform: VolumeTransform) -> np.ndarray:
    """Probabilities ``[K, D', H', W']`` (K >= 2 classes, background first) on ``transform.geometry`` ->
    ``[K, D, H, W]`` float32 on the original grid (``transform.original``), summing to 1 over K at every voxel."""
    t = torch.as_tensor(probs, dtype=torch.float32).cpu().numpy()
    if t.ndim != 4 or t.shape[0] < 2 or tuple(t.shape[1:]) != transform.geometry.shape:
        raise error(DataError, "restore_volume probabilities", expected(tuple(t.shape), f"[K >= 2, "
                    f"{', '.join(map(str, transform.geometry.shape))}] (classes first, on the preprocessed grid)"))
    full = np.zeros((t.shape[0], *transform.resampled.shape), dtype=np.float32)
    full[0] = 1.0                                              # outside the crop: background, for certain
    (d0, d1), (h0, h1), (w0, w1) = transform.crop
    full[:, d0:d1, h0:h1, w0:w1] = t
    back = _resample(full, transform.oriented.shape, "linear")
    back = np.clip(back, 0.0, None)
    total = back.sum(axis=0, keepdims=True)
    back = back / np.maximum(total, 1e-12)   # linear weights sum to 1 already; this absorbs rounding and clipping
    back[0][total[0] <= 0] = 1.0             # a voxel with no probability at all is background
    return _unorient(back, transform.permutation, transform.flips).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------------------------------
# Dataset statistics


def ct_statistics(cases: Iterable[np.ndarray | tuple[np.ndarray, np.ndarray | None]], *,
                  foreground: Callable[[np.ndarray], np.ndarray] | None = None,
                  percentiles: tuple[float, float] = (0.5, 99.5), samples_per_volume: int = 10_000,
                  seed: int = 0) -> dict[str, float]:
    """The CT statistics nnU-Net normalises with: ``mean``, ``std``, ``p_low``, ``p_high`` (the ``percentiles``)
    of foreground intensities, ``samples_per_volume`` voxels drawn (with replacement) from each volume.

    ``cases``: volumes ``[D, H, W]`` (HU), each alone or as ``(image, mask)``; the foreground is ``mask > 0``, or
    ``foreground(image)`` (a boolean array) for a volume without mask. The result fits ``volume.ct_stats``.
    """
    rng = np.random.default_rng(seed)
    samples = []
    for i, case in enumerate(cases):
        image, mask = case if isinstance(case, tuple) else (case, None)
        if mask is not None:
            if mask.shape != image.shape:
                raise error(DataError, f"ct_statistics case {i}", f"has a mask of shape {mask.shape} for an image of "
                                                                  f"shape {image.shape}; expected the same shape")
            fg = mask > 0
        elif foreground is not None:
            fg = np.asarray(foreground(image), dtype=bool)
        else:
            raise error(DataError, f"ct_statistics case {i}", "has no mask and no foreground rule was given; "
                                                              "expected (image, mask) or foreground=callable")
        values = image[fg]
        if values.size:
            samples.append(rng.choice(values.astype(np.float64), samples_per_volume, replace=True))
    if not samples:
        raise error(DataError, "ct_statistics", "found no foreground voxel in any volume; expected masks (or a "
                                                "foreground rule) that mark some voxels")
    allv = np.concatenate(samples)
    lo, hi = np.percentile(allv, percentiles)
    return {"mean": float(allv.mean()), "std": float(allv.std()), "p_low": float(lo), "p_high": float(hi)}

"""The generative image model behind the synthetic volumes: images made from label maps, as SynthSeg does
(Billot et al., Medical Image Analysis 2023), simplified.

A label map ``[D, H, W]`` (generation labels: every tissue that should look different, targets or not) becomes an
image in four steps, each an argument of :func:`render_image`:

1. per-label Gaussian intensities: label ``l`` draws from ``N(mean_l, std_l)``, part of that spread a smooth field
   (tissue that varies slowly inside an organ) and part white noise (texture);
2. a smooth multiplicative bias field: a small random grid (``bias_cells`` per axis) of log-gains, upsampled and
   exponentiated, so intensities drift by ~``bias_strength`` (relative) across the field of view, as coil
   sensitivity makes them drift in MR (0 for CT);
3. blur by the acquisition's point-spread function, a Gaussian of full width at half maximum ``blur_fwhm_mm`` per
   axis ``(d, h, w)``: a thick-slice acquisition blurs its slice axis more;
4. noise: Rician (the magnitude of a complex signal with Gaussian noise in both channels, MR) or Gaussian (CT).

:func:`acquire` adds what a real acquisition with coarser voxels does: it renders on a fine grid, samples the
blurred image on the acquisition's (coarser) grid where the noise is added, and can then resample to an output
grid (a 1 x 1 x 5 mm scan stored at 2 mm). :func:`resample` keeps the geometry consistent: the grid keeps its
extent (as ``nakt_ray/data/volume_preprocess.py`` does), so the spacing used is ``extent / shape``.

Intensities are in whatever unit the contrast gives: MR-like arbitrary units (about 0-1) or CT Hounsfield units.
Axis order and geometry as in ``nakt_ray/data/volumes.py``: arrays ``[D, H, W]``, spacing ``(d, h, w)`` mm.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from nakt_ray.data.volumes import VolumeGeometry

__all__ = ["NOISE_KINDS", "Contrast", "acquire", "add_noise", "render_image", "resample", "smooth_field"]

Contrast = Mapping[int, tuple[float, float]]
"""Generation label -> (mean, std) of its intensity, in the image's unit."""

NOISE_KINDS = ("rician", "gaussian")
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def _linear_axis(array: np.ndarray, axis: int, n_out: int, align_corners: bool = False) -> np.ndarray:
    """Linear interpolation of ``array`` along ``axis`` onto ``n_out`` samples. ``align_corners=False``: the grid
    keeps its extent, output sample ``i`` sits at input index ``(i + 0.5) * n / n_out - 0.5`` (PyTorch's and
    ``nakt_ray/data/volume_preprocess.py``'s convention); True: first and last samples on the input's ends.
    Gathers along one axis at a time: exact trilinear interpolation, no coordinate array for the whole grid."""
    n = array.shape[axis]
    if n == n_out:
        return array
    if align_corners:
        pos = np.linspace(0.0, n - 1.0, n_out)
    else:
        pos = np.clip((np.arange(n_out) + 0.5) * (n / n_out) - 0.5, 0.0, n - 1.0)
    i0 = np.minimum(np.floor(pos).astype(np.int64), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    shape = [1] * array.ndim
    shape[axis] = n_out
    w = (pos - i0).astype(np.float32).reshape(shape)
    return np.take(array, i0, axis=axis) * (1.0 - w) + np.take(array, i1, axis=axis) * w


def smooth_field(rng: np.random.Generator, shape: Sequence[int], cells: Sequence[int] | int) -> np.ndarray:
    """A smooth zero-mean, ~unit-std random field ``[D, H, W]`` float32: a coarse normal grid of ``cells + 1``
    values per axis, upsampled linearly (corners aligned) to ``shape``."""
    cells = (cells,) * 3 if isinstance(cells, int) else tuple(cells)
    field = rng.standard_normal(tuple(max(2, int(c) + 1) for c in cells)).astype(np.float32)
    for axis, n in enumerate(shape):
        field = _linear_axis(field, axis, int(n), align_corners=True)
    field = field - field.mean()
    std = float(field.std())
    return np.ascontiguousarray(field / std if std > 1e-6 else field, dtype=np.float32)


def add_noise(image: np.ndarray, noise_std: float, rng: np.random.Generator, kind: str = "rician") -> np.ndarray:
    """``image`` with noise of standard deviation ``noise_std`` (image units): ``rician`` = ``|image + n1 + i n2|``
    (MR magnitude images; never negative), ``gaussian`` = ``image + n1`` (CT)."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise={kind!r}: expected one of {list(NOISE_KINDS)}")
    if noise_std <= 0:
        return image.astype(np.float32, copy=False)
    real = image + np.float32(noise_std) * rng.standard_normal(image.shape, dtype=np.float32)
    if kind == "gaussian":
        return real.astype(np.float32, copy=False)
    imag = np.float32(noise_std) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag).astype(np.float32, copy=False)


def render_image(labels: np.ndarray, spacing: Sequence[float], contrast: Contrast, *, bias_strength: float = 0.0,
                 blur_fwhm_mm: Sequence[float] | None = None, noise_std: float = 0.0,
                 rng: np.random.Generator, noise: str = "rician", smooth_share: float = 0.6,
                 smooth_mm: float = 24.0, bias_cells: int = 3) -> np.ndarray:
    """An image ``[D, H, W]`` float32 of the label map ``labels`` (non-negative integers) on a grid of
    ``spacing`` ``(d, h, w)`` mm.

    Args:
        contrast: every label present -> ``(mean, std)`` of its intensity (ValueError naming the missing ones).
        bias_strength: std of the log-gain of the multiplicative bias field (0: none; 0.3 ~ +-30 %).
        blur_fwhm_mm: the acquisition's resolution, FWHM of the Gaussian PSF per axis ``(d, h, w)`` in mm
            (None: no blur; an axis whose FWHM is below a fifth of its voxel is not blurred).
        noise_std: std of the noise in image units, added last (0: none).
        rng: the only source of randomness: the same generator state gives the same image.
        noise: ``"rician"`` (MR) or ``"gaussian"`` (CT).
        smooth_share: share of each label's std that is a smooth field (the rest is white texture).
        smooth_mm: size of the smooth field's blobs in mm.
        bias_cells: cells of the bias grid per axis (low order: 3 gives a field that bends a few times).
    """
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.dtype.kind not in "iu":
        raise ValueError(f"labels: got {labels.dtype} array of shape {labels.shape}; expected integer [D, H, W]")
    if noise not in NOISE_KINDS:
        raise ValueError(f"noise={noise!r}: expected one of {list(NOISE_KINDS)}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing={tuple(spacing)}: expected three positive mm values (d, h, w)")
    present = np.flatnonzero(np.bincount(labels.ravel()))
    missing = sorted(int(v) for v in present if int(v) not in contrast)
    if missing:
        raise ValueError(f"contrast has no (mean, std) for label(s) {missing}; expected one for every label "
                         "present in the label map")
    # 1. per-label intensities: mean + std * (smooth part + white part), through lookup tables.
    top = int(present[-1])
    mean_lut = np.zeros(top + 1, np.float32)
    std_lut = np.zeros(top + 1, np.float32)
    for label in present:
        mean_lut[label], std_lut[label] = contrast[int(label)]
    shape = labels.shape
    extent = np.asarray(shape) * np.asarray(spacing, dtype=float)
    smooth = smooth_field(rng, shape, np.maximum(1, np.round(extent / smooth_mm)).astype(int))
    white = rng.standard_normal(shape, dtype=np.float32)
    a = np.float32(smooth_share)
    spread = a * smooth + np.float32(math.sqrt(max(0.0, 1.0 - smooth_share ** 2))) * white
    image = mean_lut[labels] + std_lut[labels] * spread
    del smooth, white, spread
    # 2. multiplicative bias field (coil sensitivity).
    if bias_strength > 0:
        image *= np.exp(np.float32(bias_strength) * smooth_field(rng, shape, bias_cells))
    # 3. the acquisition's point-spread function.
    if blur_fwhm_mm is not None:
        sigma = [f / _FWHM_PER_SIGMA / s for f, s in zip(blur_fwhm_mm, spacing, strict=True)]
        sigma = [s if s * _FWHM_PER_SIGMA >= 0.2 else 0.0 for s in sigma]
        if any(sigma):
            image = ndimage.gaussian_filter(image, sigma, mode="nearest", truncate=3.0)
    # 4. noise.
    return add_noise(image, noise_std, rng, noise)


def _resampled_geometry(g: VolumeGeometry, shape: Sequence[int]) -> VolumeGeometry:
    """``g``'s extent on ``shape`` voxels: voxel ``i'`` sits at old index ``(i' + 0.5) * n / n' - 0.5``."""
    old = np.asarray(g.shape, dtype=float)
    new = np.asarray(shape, dtype=float)
    scale = old / new
    origin = g.affine() @ np.append((scale - 1.0) / 2.0, 1.0)
    return VolumeGeometry.create(new.astype(int), np.asarray(g.spacing) * scale, origin[:3], g.direction_matrix)


def resample(array: np.ndarray, geometry: VolumeGeometry, *, spacing: Sequence[float] | None = None,
             shape: Sequence[int] | None = None, nearest: bool = False) -> tuple[np.ndarray, VolumeGeometry]:
    """``array [D, H, W]`` on ``geometry`` resampled onto the grid of the same extent with ``shape`` voxels, or
    with ``round(extent / spacing)`` voxels (then the spacing used is ``extent / shape``, ``spacing`` up to
    rounding). Linear for images; ``nearest=True`` for label maps (the input voxel that contains the new voxel's
    centre, as PyTorch's ``nearest-exact``). Returns ``(array, geometry)``."""
    if (spacing is None) == (shape is None):
        raise ValueError("resample: give exactly one of spacing= and shape=")
    if shape is None:
        extent = np.asarray(geometry.shape) * np.asarray(geometry.spacing)
        shape = np.maximum(1, np.round(extent / np.asarray(spacing, dtype=float))).astype(int)
    shape = tuple(int(s) for s in shape)
    out = array
    for axis, n in enumerate(shape):
        if nearest:
            size = out.shape[axis]
            index = np.minimum(np.floor((np.arange(n) + 0.5) * (size / n)).astype(np.int64), size - 1)
            out = np.take(out, index, axis=axis)
        else:
            out = _linear_axis(out.astype(np.float32, copy=False), axis, n)
    return np.ascontiguousarray(out), _resampled_geometry(geometry, shape)


def acquire(labels: np.ndarray, geometry: VolumeGeometry, contrast: Contrast, *, rng: np.random.Generator,
            fwhm_mm: Sequence[float], noise_std: float, bias_strength: float, noise: str = "rician",
            acquisition_spacing: Sequence[float] | None = None,
            output_shape: Sequence[int] | None = None) -> tuple[np.ndarray, VolumeGeometry]:
    """An acquisition of the fine label map ``labels`` on ``geometry``: rendered there without noise (blurred by
    ``fwhm_mm``, the PSF per axis), sampled on the acquisition grid (``acquisition_spacing``; None: the fine grid)
    where the noise is added, then resampled to ``output_shape`` voxels over the same extent (None: kept).
    Returns the image float32 and its geometry."""
    image = render_image(labels, geometry.spacing, contrast, bias_strength=bias_strength, blur_fwhm_mm=fwhm_mm,
                         noise_std=0.0, rng=rng, noise=noise)
    g = geometry
    if acquisition_spacing is not None:
        image, g = resample(image, g, spacing=acquisition_spacing)
    image = add_noise(image, noise_std, rng, noise)
    if output_shape is not None:
        image, g = resample(image, g, shape=output_shape)
    return image.astype(np.float32, copy=False), g

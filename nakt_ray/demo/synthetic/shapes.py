"""Pixel-grid primitives the scene is drawn with: smooth random fields and rotated-ellipse geometry.

Everything is float32 ``[H, W]`` over the pixel grid ``yy, xx`` (``np.mgrid``, pixel centres at integers) unless
said otherwise. Heads, inner structures, rings and fluid pockets are all ellipses: :func:`ellipse_frame` gives a
pixel's coordinates in an ellipse's frame, from which the filled ellipse (``rho <= 1``), a soft inside, a distance
to the outline and a bony ring profile follow.
"""
from __future__ import annotations

import numpy as np

__all__ = ["ellipse_frame", "inward_distance", "ring_profile", "smooth_noise", "smooth_noise_1d", "soft_inside"]


def _interp_weights(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Left neighbour index [n_out] and weight of the right neighbour [n_out, 1] for linear upsampling (ends
    aligned)."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    i0 = np.minimum(np.floor(pos).astype(np.int64), n_in - 2)
    return i0, (pos - i0).astype(np.float32)[:, None]


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Smooth zero-mean, unit-std random field [H, W] with about ``cells`` (rows, cols) blobs across the image.

    Coarse normal noise is upsampled with separable linear interpolation, far cheaper than a large Gaussian blur
    at full resolution. Gathers rather than interpolation-matrix products on purpose: small BLAS calls spawn
    threads that crawl when other processes share the cores.
    """
    h, w = shape
    ch, cw = max(2, cells[0] + 1), max(2, cells[1] + 1)
    coarse = rng.standard_normal((ch, cw)).astype(np.float32)
    iy, wy = _interp_weights(h, ch)
    rows = coarse[iy] * (1.0 - wy) + coarse[iy + 1] * wy  # [H, cw]
    ix, wx = _interp_weights(w, cw)
    rows_t = rows.T  # [cw, H]
    field = (rows_t[ix] * (1.0 - wx) + rows_t[ix + 1] * wx).T  # [H, W]
    field = field - field.mean()
    std = float(field.std())
    return np.ascontiguousarray(field / std if std > 1e-6 else field)


def smooth_noise_1d(rng: np.random.Generator, coord: np.ndarray, cells: int) -> np.ndarray:
    """Smooth zero-mean random function of ``coord`` (values in [-1, 1]), evaluated elementwise; ~unit std.

    Tabulated on 1024 steps and looked up, which is several times faster than ``np.interp`` per pixel.
    """
    knots = np.linspace(-1.0, 1.0, cells + 1)
    table = np.interp(np.linspace(-1.0, 1.0, 1025), knots, rng.standard_normal(cells + 1)).astype(np.float32)
    index = ((np.clip(coord, -1.0, 1.0) + 1.0) * 512.0 + 0.5).astype(np.intp)
    return table[index]


def ellipse_frame(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, a: float, b: float, theta: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotated ellipse coordinates: (u along the major axis, v along the minor axis, normalised radius rho).

    ``rho`` is 1 on the ellipse, < 1 inside; u, v are in pixels.
    """
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    dx, dy = xx - np.float32(cx), yy - np.float32(cy)
    u = dx * c + dy * s
    v = -dx * s + dy * c
    rho = np.sqrt((u / np.float32(a)) ** 2 + (v / np.float32(b)) ** 2)
    return u, v, rho


def inward_distance(u: np.ndarray, v: np.ndarray, rho: np.ndarray, a: float, b: float) -> np.ndarray:
    """First-order signed distance to the ellipse in pixels, positive inside: (1 - rho) / |grad rho|."""
    grad = np.sqrt((u / np.float32(a * a)) ** 2 + (v / np.float32(b * b)) ** 2)
    return (1.0 - rho) * rho / np.maximum(grad, np.float32(1e-6))


def soft_inside(rho: np.ndarray, edge: float) -> np.ndarray:
    """Soft indicator of rho < 1 with a transition of relative width ``edge``."""
    return np.clip((1.0 - rho) / np.float32(max(edge, 1e-3)) + 0.5, 0.0, 1.0)


def ring_profile(dist: np.ndarray, thickness: float) -> np.ndarray:
    """Skull-ring intensity profile across the bone: peaks at ``thickness / 2`` inside the outer edge."""
    t = np.float32(thickness)
    return np.exp(-0.5 * ((dist - 0.5 * t) / (0.36 * t)) ** 2)

"""A 3D abdominal phantom: a body outline and four target structures whose size, position and shape vary per case.

Generation labels (what :func:`phantom_labels` returns; every one gets its own intensity in
``nakt_ray/demo/synthetic/render.py``):

====  ===============  ====================================================================
0     background       air outside the body
1     large_organ      a liver-like lobe on the patient's right (target)
2     small_organ      a kidney-like ellipsoid on the left, posterior (target)
3     vessel           a curved tube running head to foot in front of the spine (target)
4     lesion           a small round lesion inside the large organ (target)
5     soft_tissue      the body's other soft tissue (not a target)
6     fat              the subcutaneous fat layer under the body outline (not a target)
7     bone             a spine-like column, posterior (not a target)
====  ===============  ====================================================================

Masks keep the targets: :func:`phantom_mask` maps 5, 6 and 7 to background, and :data:`PHANTOM_LABELS` names the
mask's classes, background first.

The anatomy is drawn from ``rng`` as parameters in millimetres (nothing drawn depends on the grid) and then
evaluated at the physical position of every voxel centre, so one case can be evaluated on several grids (a fine
rendering grid and the coarser acquisition grid, a tilted grid) and stays the same body. Anatomical frame: axis
``d`` along the body towards the head (superior), ``h`` towards the back (posterior), ``w`` towards the patient's
left, as an axial scan stored by ITK with an identity direction; ``rotation`` tilts the grid inside it (an
oblique acquisition). Sizes scale with the field of view's smaller in-plane half-extent, so a smaller volume holds
a smaller body, not a cut-off one.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["GENERATION_LABELS", "NUM_TARGETS", "PHANTOM_LABELS", "PhantomAnatomy", "draw_anatomy",
           "evaluate_anatomy", "phantom_labels", "phantom_mask"]

PHANTOM_LABELS: tuple[str, ...] = ("background", "large_organ", "small_organ", "vessel", "lesion")
"""Class names of the phantom's masks, background first (class index = position)."""

GENERATION_LABELS: tuple[str, ...] = PHANTOM_LABELS + ("soft_tissue", "fat", "bone")
"""Every label :func:`phantom_labels` draws (index = value); those past :data:`NUM_TARGETS` are masked out."""

NUM_TARGETS = len(PHANTOM_LABELS)


@dataclass(frozen=True)
class Wave:
    """A sum of random plane waves: a smooth zero-mean, ~unit-std field defined at any point in mm."""

    k: np.ndarray       # [K, 3] wave vectors, rad/mm (d, h, w)
    phase: np.ndarray   # [K]

    def __call__(self, p: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros(np.shape(p[0]), np.float32)
        amp = np.float32(math.sqrt(2.0 / len(self.phase)))
        for k, ph in zip(self.k, self.phase, strict=True):
            out += amp * np.cos(np.float32(k[0]) * p[0] + np.float32(k[1]) * p[1] + np.float32(k[2]) * p[2]
                                + np.float32(ph))
        return out


@dataclass(frozen=True)
class PhantomAnatomy:
    """One case's body, in mm in the anatomical frame (origin at the field of view's centre); see the module
    docstring for the frame."""

    body_axes: tuple[float, float]            # semi-axes (h, w) of the body's elliptical outline
    body_centre: tuple[float, float]          # (h, w)
    fat: float                                # thickness of the fat layer
    spine: tuple[float, float, float]         # centre (h, w), radius
    organs: tuple[tuple[np.ndarray, np.ndarray, np.ndarray, Wave, float], ...]   # centre, semi-axes, rotation,
    #                                                                          # deformation field, its strength
    vessel: tuple[float, float, float, float, float]   # centre (h, w), radius, bend amplitude, bend period
    lesion: tuple[np.ndarray, float]          # centre (d, h, w), radius
    outline: Wave                             # wobble of the body outline


def _wave(rng: np.random.Generator, waves: int, wavelength: tuple[float, float]) -> Wave:
    direction = rng.standard_normal((waves, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    k = direction * (2.0 * math.pi / rng.uniform(*wavelength, size=(waves, 1)))
    return Wave(k=k, phase=rng.uniform(0.0, 2.0 * math.pi, size=waves))


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A random rotation of at most ~``max_deg`` degrees about each axis."""
    out = np.eye(3)
    for a, b in ((0, 1), (0, 2), (1, 2)):
        t = math.radians(rng.uniform(-max_deg, max_deg))
        r = np.eye(3)
        r[a, a] = r[b, b] = math.cos(t)
        r[a, b], r[b, a] = -math.sin(t), math.sin(t)
        out = out @ r
    return out


def draw_anatomy(rng: np.random.Generator, extent_mm: Sequence[float]) -> PhantomAnatomy:
    """One case's anatomy for a field of view of ``extent_mm`` ``(d, h, w)``."""
    ext = np.asarray(extent_mm, dtype=float)
    r0 = 0.5 * min(ext[1], ext[2])            # every in-plane size is a fraction of this
    u = rng.uniform
    bh, bw = r0 * u(0.62, 0.72), r0 * u(0.84, 0.92)
    bc = (r0 * u(-0.03, 0.03), r0 * u(-0.03, 0.03))
    spine = (bc[0] + 0.62 * bh, bc[1] + r0 * u(-0.03, 0.03), r0 * u(0.11, 0.14))
    # large organ on the patient's right (w < 0), anterior-ish; small organ left and posterior
    large = (np.array([ext[0] * u(-0.12, 0.02), bc[0] - bh * u(0.05, 0.2), bc[1] - bw * u(0.38, 0.48)]),
             np.array([ext[0] * u(0.22, 0.3), bh * u(0.48, 0.58), bw * u(0.34, 0.42)]),
             _rotation(rng, 12.0), _wave(rng, 6, (50.0, 110.0)), u(0.08, 0.16))
    small = (np.array([ext[0] * u(0.0, 0.15), bc[0] + bh * u(0.3, 0.42), bc[1] + bw * u(0.45, 0.55)]),
             np.array([ext[0] * u(0.14, 0.18), r0 * u(0.16, 0.2), r0 * u(0.11, 0.14)]),
             _rotation(rng, 20.0), _wave(rng, 4, (40.0, 80.0)), u(0.05, 0.1))
    vessel = (bc[0] + 0.62 * bh - spine[2] - r0 * u(0.1, 0.14), bc[1] + r0 * u(0.04, 0.12), r0 * u(0.06, 0.08),
              r0 * u(0.03, 0.08), ext[0] * u(0.8, 1.6))
    # the lesion inside the large organ's core, so the organ's wobble never cuts it off
    lesion_radius = r0 * u(0.06, 0.09)
    offset = rng.uniform(-0.3, 0.3, size=3) * (large[1] - lesion_radius)
    lesion = (large[0] + large[2] @ offset, lesion_radius)
    return PhantomAnatomy(body_axes=(bh, bw), body_centre=bc, fat=r0 * u(0.05, 0.08), spine=spine,
                          organs=(large, small), vessel=vessel, lesion=lesion,
                          outline=_wave(rng, 5, (60.0, 160.0)))


def evaluate_anatomy(anatomy: PhantomAnatomy, shape: Sequence[int], spacing: Sequence[float],
                     rotation: np.ndarray | None = None) -> np.ndarray:
    """Generation labels ``[D, H, W]`` uint8 of ``anatomy`` on a grid of ``shape`` voxels of ``spacing`` mm whose
    centre is the field of view's centre; ``rotation`` (3x3, columns = the grid's axes in the anatomical frame)
    tilts the grid."""
    rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=float)
    axes = [(np.arange(n, dtype=np.float32) - np.float32((n - 1) / 2.0)) * np.float32(s)
            for n, s in zip(shape, spacing, strict=True)]
    idx = np.meshgrid(*axes, indexing="ij", sparse=True)
    # p = rot @ grid position: a point's anatomical coordinates (d, h, w) in mm
    p = [sum(np.float32(rot[r, c]) * idx[c] for c in range(3)) for r in range(3)]
    p = [np.broadcast_to(x, tuple(shape)).astype(np.float32) for x in p]
    a = anatomy
    out = np.zeros(tuple(shape), np.uint8)
    # body: an elliptic cylinder along d whose outline wobbles, a fat layer under it
    wobble = 1.0 + 0.04 * a.outline(p)
    rho = np.sqrt(((p[1] - a.body_centre[0]) / a.body_axes[0]) ** 2
                  + ((p[2] - a.body_centre[1]) / a.body_axes[1]) ** 2) / wobble
    body = rho <= 1.0
    out[body] = 6
    inner = rho <= 1.0 - a.fat / min(a.body_axes)
    out[inner] = 5
    for label, (centre, semi, r, field, strength) in zip((1, 2), a.organs, strict=True):
        q = [p[i] - np.float32(centre[i]) for i in range(3)]
        local = [sum(np.float32(r[c, i]) * q[c] for c in range(3)) / np.float32(semi[i]) for i in range(3)]
        inside = (local[0] ** 2 + local[1] ** 2 + local[2] ** 2) <= (1.0 + strength * field(p)) ** 2
        out[inside & inner] = label
    h, w, radius, bend, period = a.vessel
    along = np.float32(2.0 * math.pi / period) * p[0]
    tube = ((p[1] - np.float32(h) - np.float32(0.5 * bend) * np.sin(along)) ** 2
            + (p[2] - np.float32(w) - np.float32(bend) * np.cos(0.7 * along)) ** 2) <= np.float32(radius ** 2)
    out[tube & inner] = 3
    sh, sw, sr = a.spine
    out[((p[1] - np.float32(sh)) ** 2 + (p[2] - np.float32(sw)) ** 2 <= np.float32(sr ** 2)) & body] = 7
    centre, radius = a.lesion
    ball = sum((p[i] - np.float32(centre[i])) ** 2 for i in range(3)) <= np.float32(radius ** 2)
    out[ball & (out == 1)] = 4
    return out


def phantom_labels(shape: Sequence[int], spacing: Sequence[float], rng: np.random.Generator, *,
                   rotation: np.ndarray | None = None) -> np.ndarray:
    """One random case's generation labels ``[D, H, W]`` uint8 (values in :data:`GENERATION_LABELS`) on a grid of
    ``shape`` voxels of ``spacing`` ``(d, h, w)`` mm; the anatomy fills the grid's field of view. ``rotation``:
    see :func:`evaluate_anatomy`."""
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"shape={tuple(shape)}: expected (D, H, W) with every side >= 4 voxels")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing={tuple(spacing)}: expected three positive mm values (d, h, w)")
    anatomy = draw_anatomy(rng, np.asarray(shape) * np.asarray(spacing, dtype=float))
    return evaluate_anatomy(anatomy, shape, spacing, rotation)


def phantom_mask(labels: np.ndarray) -> np.ndarray:
    """The segmentation mask of generation labels: targets kept (1-4), every other tissue background; uint8."""
    out = np.asarray(labels).astype(np.uint8, copy=True)
    out[out >= NUM_TARGETS] = 0
    return out

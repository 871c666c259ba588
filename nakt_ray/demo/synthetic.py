"""Synthetic fetal-head ultrasound: the project's embedded default data, with known masks.

Each case mimics a 2D B-mode fetal-head image (the HC18 task): a bright elliptical skull ring with darker brain
inside, amniotic fluid around it, textured maternal tissue, multiplicative speckle, depth attenuation, a convex-probe
fan, acoustic shadows behind the skull, missing ring segments, and bright distractors (placenta, other ring-like
cross-sections, bone-like lines). An acquisition *site* is a :class:`SiteStyle`; the presets in :data:`SITES` differ
in intensity, noise, contrast and head-shape statistics, so teachers trained on one site are imperfect on the others.

Label maps hold class indices: 0 background, 1 fetal head (the filled ellipse inside the outer edge of the skull
ring), and with ``num_classes=3`` also 2, an inner fluid-filled structure (cavum / ventricles) drawn over class 1.
The image content does not depend on ``num_classes``: the same generator state gives the same image, only the label
map differs.

Example::

    rng = np.random.default_rng(0)
    image, label = generate_case(rng, SITES["site_a"])          # uint8 [H, W], uint8 [H, W]
    write_folder("data/site_a", 64, "site_a", seed=0)          # images/*.png + masks/*.png + synthetic.json
    write_folder("data/transferal", 64, "mixed", seed=1, size=(128, 128))
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = [
    "IMAGE_FORMATS",
    "MIXED",
    "SITES",
    "SiteStyle",
    "generate_case",
    "generate_mixed_case",
    "get_site",
    "write_folder",
]

MIXED = "mixed"
"""Site name that makes :func:`write_folder` draw every case from a random preset."""

IMAGE_FORMATS: tuple[str, ...] = ("png", "jpg", "tif", "bmp")
"""File formats :func:`write_folder` can write images in (masks are always PNG)."""

NUM_CLASSES_SUPPORTED: tuple[int, ...] = (2, 3)

# Image size the pixel-valued style parameters (speckle grain, line widths) are calibrated for; other sizes scale
# them so a smaller image looks like a downsampled version of the same acquisition.
_REFERENCE_SIZE = 240.0


@dataclass(frozen=True)
class SiteStyle:
    """How one acquisition site (scanner, preset, sonographer, population) renders fetal-head images.

    Intensities are echogenicities on a linear scale where ~1 saturates to white after ``gain``; ranges are
    ``(low, high)`` and are sampled uniformly per case.

    Attributes:
        name: site name, used in case ids.
        height_range: image height in pixels.
        width_range: image width in pixels.
        gain_range: overall gain (multiplies echogenicity before compression).
        tissue_level: mean echogenicity of maternal soft tissue.
        head_contrast: how much darker the brain is than tissue (0 = same, 1 = black).
        inner_contrast: how much darker the inner structure (class 2) is than the brain.
        speckle_strength: standard deviation of the multiplicative speckle field (mean 1) after blurring.
        speckle_grain: speckle blur sigma in pixels at 240 px image size (lateral; axial is 60 % of it).
        attenuation: intensity fall-off over the full depth, in nepers (exp(-attenuation) at the bottom).
        fan: convex-probe fan (black outside a sector) instead of a full linear-probe rectangle.
        fan_half_angle_range: half opening angle of the fan, degrees.
        ring_brightness: echogenicity of the skull ring where the beam hits it head-on.
        ring_thickness_range: skull thickness as a fraction of the head's semi-major axis.
        head_size_range: semi-major axis of the head as a fraction of min(height, width).
        eccentricity_range: ellipse eccentricity sqrt(1 - (b/a)^2) of the head (0 = circle).
        rotation_range: head rotation in degrees (major axis against the image x axis).
        position_jitter: head-centre offset from the image centre as a fraction of (height, width).
        shadow_strength: darkening (0..1) of tissue distal to the skull along shadowed beams.
        dropout_rate: mean number of ring segments that drop out (Poisson).
        dropout_width_range: angular half-width of one dropout, degrees of the ellipse parameter.
        placenta_prob: probability of a bright placenta-like band.
        distractor_rate: mean number of distractors (rings, blobs, bone-like lines, fluid pockets; Poisson).
        fluid_prob: probability of a dark amniotic-fluid halo around the head.
        fluid_margin_range: width of that halo as a fraction of the head's semi-major axis.
        gamma: intensity nonlinearity applied to the compressed [0, 1] image (1 = linear, < 1 brightens).
        noise_floor: standard deviation of additive electronic noise, in 8-bit grey levels.
        ui_overlay: draw a depth scale and a black info box like a scanner screenshot.
        rgb_tint: per-channel factors used when an RGB image is written.
    """

    name: str = "custom"
    height_range: tuple[int, int] = (192, 224)
    width_range: tuple[int, int] = (272, 320)
    gain_range: tuple[float, float] = (1.0, 1.25)
    tissue_level: float = 0.32
    head_contrast: float = 0.45
    inner_contrast: float = 0.5
    speckle_strength: float = 0.5
    speckle_grain: float = 1.2
    attenuation: float = 0.8
    fan: bool = True
    fan_half_angle_range: tuple[float, float] = (30.0, 38.0)
    ring_brightness: float = 1.2
    ring_thickness_range: tuple[float, float] = (0.05, 0.075)
    head_size_range: tuple[float, float] = (0.27, 0.45)
    eccentricity_range: tuple[float, float] = (0.35, 0.7)
    rotation_range: tuple[float, float] = (-30.0, 30.0)
    position_jitter: float = 0.12
    shadow_strength: float = 0.3
    dropout_rate: float = 0.8
    dropout_width_range: tuple[float, float] = (8.0, 25.0)
    placenta_prob: float = 0.3
    distractor_rate: float = 1.0
    fluid_prob: float = 0.7
    fluid_margin_range: tuple[float, float] = (0.05, 0.4)
    gamma: float = 1.0
    noise_floor: float = 2.0
    ui_overlay: bool = True
    rgb_tint: tuple[float, float, float] = (1.0, 0.97, 0.92)

    def __post_init__(self) -> None:
        def check_range(field: str, lo_min: float, hi_max: float) -> None:
            lo, hi = getattr(self, field)
            if not (lo_min <= lo <= hi <= hi_max):
                raise ValueError(
                    f"SiteStyle.{field}={(lo, hi)!r}: expected low <= high within [{lo_min}, {hi_max}]"
                )

        def check_value(field: str, lo: float, hi: float) -> None:
            value = getattr(self, field)
            if not (lo <= value <= hi):
                raise ValueError(f"SiteStyle.{field}={value!r}: expected a value in [{lo}, {hi}]")

        check_range("height_range", 16, 4096)
        check_range("width_range", 16, 4096)
        check_range("gain_range", 0.01, 100.0)
        check_range("fan_half_angle_range", 5.0, 80.0)
        check_range("ring_thickness_range", 0.005, 0.3)
        check_range("head_size_range", 0.02, 0.6)
        check_range("eccentricity_range", 0.0, 0.95)
        check_range("rotation_range", -360.0, 360.0)
        check_range("dropout_width_range", 0.0, 180.0)
        check_range("fluid_margin_range", 0.0, 2.0)
        check_value("tissue_level", 0.0, 10.0)
        check_value("head_contrast", 0.0, 1.0)
        check_value("inner_contrast", -1.0, 1.0)
        check_value("speckle_strength", 0.0, 3.0)
        check_value("speckle_grain", 0.0, 20.0)
        check_value("attenuation", 0.0, 10.0)
        check_value("ring_brightness", 0.0, 10.0)
        check_value("position_jitter", 0.0, 0.5)
        check_value("shadow_strength", 0.0, 1.0)
        check_value("dropout_rate", 0.0, 20.0)
        check_value("placenta_prob", 0.0, 1.0)
        check_value("distractor_rate", 0.0, 20.0)
        check_value("fluid_prob", 0.0, 1.0)
        check_value("gamma", 0.05, 10.0)
        check_value("noise_floor", 0.0, 255.0)
        if len(self.rgb_tint) != 3 or not all(0.0 <= t <= 2.0 for t in self.rgb_tint):
            raise ValueError(f"SiteStyle.rgb_tint={self.rgb_tint!r}: expected three factors in [0, 2]")
        if not self.name or any(c in self.name for c in "/\\ "):
            raise ValueError(f"SiteStyle.name={self.name!r}: expected a non-empty name without spaces or slashes")


SITES: dict[str, SiteStyle] = {
    # Reference site: mid-range everything, convex probe, moderate speckle and shadowing.
    "site_a": SiteStyle(name="site_a"),
    # Old linear-probe machine: low contrast, coarse heavy speckle, strong attenuation, small heads (early
    # gestation) anywhere in the frame at any angle, a dim thin skull and many distractors.
    "site_b": SiteStyle(
        name="site_b",
        height_range=(208, 240),
        width_range=(288, 336),
        gain_range=(1.0, 1.2),
        tissue_level=0.3,
        head_contrast=0.35,
        inner_contrast=0.3,
        speckle_strength=0.7,
        speckle_grain=1.5,
        attenuation=1.5,
        fan=False,
        ring_brightness=1.0,
        ring_thickness_range=(0.045, 0.065),
        head_size_range=(0.12, 0.24),
        eccentricity_range=(0.2, 0.55),
        rotation_range=(-90.0, 90.0),
        position_jitter=0.25,
        shadow_strength=0.2,
        dropout_rate=1.5,
        placenta_prob=0.5,
        distractor_rate=2.5,
        fluid_prob=0.35,
        fluid_margin_range=(0.05, 0.25),
        gamma=1.0,
        noise_floor=6.0,
        ui_overlay=False,
        rgb_tint=(0.95, 1.0, 1.0),
    ),
    # Bright modern scanner, late gestation: large eccentric heads, thick saturated skull, heavy acoustic
    # shadowing and ring dropouts, fine weak speckle, log-like compression.
    "site_c": SiteStyle(
        name="site_c",
        height_range=(176, 208),
        width_range=(256, 304),
        gain_range=(1.3, 1.6),
        tissue_level=0.34,
        head_contrast=0.55,
        inner_contrast=0.6,
        speckle_strength=0.35,
        speckle_grain=1.0,
        attenuation=0.4,
        fan=True,
        fan_half_angle_range=(34.0, 42.0),
        ring_brightness=1.5,
        ring_thickness_range=(0.055, 0.08),
        head_size_range=(0.38, 0.55),
        eccentricity_range=(0.55, 0.8),
        rotation_range=(-20.0, 20.0),
        position_jitter=0.08,
        shadow_strength=0.75,
        dropout_rate=2.5,
        dropout_width_range=(10.0, 35.0),
        placenta_prob=0.6,
        distractor_rate=1.0,
        fluid_prob=0.5,
        fluid_margin_range=(0.03, 0.15),
        gamma=0.7,
        noise_floor=1.5,
        ui_overlay=True,
        rgb_tint=(1.0, 0.95, 0.88),
    ),
    # Dark low-gain site with fine grain: round heads at any rotation, a thin skull, lots of fluid and ring-like
    # distractors, a narrow fan and an expanding (gamma > 1) compression curve.
    "site_d": SiteStyle(
        name="site_d",
        height_range=(224, 256),
        width_range=(320, 384),
        gain_range=(0.9, 1.05),
        tissue_level=0.4,
        head_contrast=0.35,
        inner_contrast=0.45,
        speckle_strength=0.45,
        speckle_grain=0.8,
        attenuation=1.0,
        fan=True,
        fan_half_angle_range=(28.0, 34.0),
        ring_brightness=1.5,
        ring_thickness_range=(0.03, 0.05),
        head_size_range=(0.22, 0.36),
        eccentricity_range=(0.1, 0.4),
        rotation_range=(-180.0, 180.0),
        position_jitter=0.15,
        shadow_strength=0.4,
        dropout_rate=0.5,
        placenta_prob=0.2,
        distractor_rate=2.0,
        fluid_prob=0.9,
        fluid_margin_range=(0.1, 0.5),
        gamma=1.25,
        noise_floor=3.0,
        ui_overlay=True,
        rgb_tint=(0.92, 0.97, 1.0),
    ),
}


def get_site(name: str) -> SiteStyle:
    """Return the preset called ``name``; an unknown name raises ValueError listing the valid names."""
    if name in SITES:
        return SITES[name]
    close = difflib.get_close_matches(str(name), list(SITES), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"site={name!r} is not a known site{hint}; valid names: {sorted(SITES)} or {MIXED!r}")


def _check_num_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or num_classes not in NUM_CLASSES_SUPPORTED:
        raise ValueError(f"num_classes={num_classes!r}: expected one of {list(NUM_CLASSES_SUPPORTED)}")


# ---------------------------------------------------------------------------------------------------------------
# Small field helpers. Everything is float32 [H, W] unless said otherwise.


def _interp_weights(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Left neighbour index [n_out] and weight of the right neighbour [n_out, 1] for linear upsampling (ends aligned)."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    i0 = np.minimum(np.floor(pos).astype(np.int64), n_in - 2)
    return i0, (pos - i0).astype(np.float32)[:, None]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
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


def _smooth_noise_1d(rng: np.random.Generator, coord: np.ndarray, cells: int) -> np.ndarray:
    """Smooth zero-mean random function of ``coord`` (values in [-1, 1]), evaluated elementwise; ~unit std.

    Tabulated on 1024 steps and looked up, which is several times faster than ``np.interp`` per pixel.
    """
    knots = np.linspace(-1.0, 1.0, cells + 1)
    table = np.interp(np.linspace(-1.0, 1.0, 1025), knots, rng.standard_normal(cells + 1)).astype(np.float32)
    index = ((np.clip(coord, -1.0, 1.0) + 1.0) * 512.0 + 0.5).astype(np.intp)
    return table[index]


def _ellipse_frame(
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


def _inward_distance(u: np.ndarray, v: np.ndarray, rho: np.ndarray, a: float, b: float) -> np.ndarray:
    """First-order signed distance to the ellipse in pixels, positive inside: (1 - rho) / |grad rho|."""
    grad = np.sqrt((u / np.float32(a * a)) ** 2 + (v / np.float32(b * b)) ** 2)
    return (1.0 - rho) * rho / np.maximum(grad, np.float32(1e-6))


def _soft_inside(rho: np.ndarray, edge: float) -> np.ndarray:
    """Soft indicator of rho < 1 with a transition of relative width ``edge``."""
    return np.clip((1.0 - rho) / np.float32(max(edge, 1e-3)) + 0.5, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# The generator.


@dataclass(frozen=True)
class _Probe:
    """Scan geometry of one case: per-pixel depth, lateral position and beam direction."""

    depth: np.ndarray  # [H, W] 0 at the transducer, 1 at the deepest sample
    lateral: np.ndarray  # [H, W] -1 .. 1 across the scan
    beam_x: np.ndarray  # [H, W] or scalar: unit beam direction, x component
    beam_y: np.ndarray  # [H, W] or scalar: unit beam direction, y component
    origin_x: np.ndarray  # [H, W] or scalar: where each pixel's beam starts
    origin_y: np.ndarray
    field_of_view: np.ndarray  # [H, W] bool, False outside the fan


def _make_probe(rng: np.random.Generator, style: SiteStyle, yy: np.ndarray, xx: np.ndarray) -> _Probe:
    h, w = yy.shape
    if not style.fan:
        return _Probe(
            depth=yy / np.float32(h),
            lateral=2.0 * xx / np.float32(w) - 1.0,
            beam_x=np.float32(0.0),
            beam_y=np.float32(1.0),
            origin_x=xx,
            origin_y=np.float32(-1.0),
            field_of_view=np.ones((h, w), dtype=bool),
        )
    # Convex probe: beams radiate from a virtual apex above the image; the top of the fan is an arc (or cut flat
    # by the image edge) and the sides are straight lines cut by the image borders.
    apex_x = np.float32(w / 2.0 + rng.uniform(-0.03, 0.03) * w)
    apex_y = np.float32(-rng.uniform(0.25, 0.6) * h)
    half_angle = np.deg2rad(rng.uniform(*style.fan_half_angle_range))
    dx, dy = xx - apex_x, yy - apex_y
    r = np.sqrt(dx * dx + dy * dy)
    angle = np.arctan2(dx, dy)
    r_min = float(-apex_y) * rng.uniform(1.0, 1.15)
    r_max = (h - float(apex_y)) * rng.uniform(0.96, 1.06)
    inside = (np.abs(angle) <= half_angle) & (r >= r_min) & (r <= r_max)
    return _Probe(
        depth=((r - r_min) / np.float32(r_max - r_min)).astype(np.float32),
        lateral=(angle / np.float32(half_angle)).astype(np.float32),
        beam_x=dx / r,
        beam_y=dy / r,
        origin_x=apex_x,
        origin_y=apex_y,
        field_of_view=inside,
    )


def _speckle(rng: np.random.Generator, shape: tuple[int, int], strength: float, grain: float) -> np.ndarray:
    """Multiplicative speckle [H, W], mean 1, std ``strength``: gamma-distributed intensity blurred anisotropically.

    Gamma intensity with shape k is the speckle of k averaged Rayleigh looks; the blur gives the grain (the
    resolution cell is wider laterally than axially). Shape k is chosen so the std after blurring is ``strength``.
    """
    if strength <= 0.0:
        return np.ones(shape, dtype=np.float32)
    sigma = (max(0.6 * grain, 0.3), max(grain, 0.3))
    # Variance of white noise after a Gaussian blur shrinks by about 1 / (4 pi sy sx) (for sigma >~ 1).
    shrink = min(1.0, 1.0 / (4.0 * np.pi * sigma[0] * sigma[1]))
    k = 1.0 / (strength * strength / shrink)
    raw = rng.gamma(k, 1.0 / k, size=shape).astype(np.float32)
    field = ndimage.gaussian_filter(raw, sigma=sigma, mode="reflect")
    # Renormalise exactly (the shrink factor above is only approximate for small sigma).
    field -= field.mean()
    field *= np.float32(strength / max(float(field.std()), 1e-6))
    field += 1.0
    return np.maximum(field, 0.0)


def _ring_profile(dist: np.ndarray, thickness: float) -> np.ndarray:
    """Skull-ring intensity profile across the bone: peaks at ``thickness / 2`` inside the outer edge."""
    t = np.float32(thickness)
    return np.exp(-0.5 * ((dist - 0.5 * t) / (0.36 * t)) ** 2)


def _draw_distractors(
    rng: np.random.Generator,
    style: SiteStyle,
    echo: np.ndarray,
    yy: np.ndarray,
    xx: np.ndarray,
    head: tuple[float, float, float, float, float],
    scale: float,
) -> None:
    """Paint distractors into ``echo`` in place: ring-like cross-sections, bright blobs, bone lines, fluid pockets."""
    h, w = echo.shape
    hy, hx, ha, hb, _ = head
    tissue = style.tissue_level
    for _ in range(int(rng.poisson(style.distractor_rate))):
        kind = rng.integers(4)
        size = ha * rng.uniform(0.3, 0.8)
        # Prefer places away from the head so distractors compete with it instead of hiding under it.
        for _try in range(8):
            cy, cx = rng.uniform(0.1, 0.95) * h, rng.uniform(0.05, 0.95) * w
            if np.hypot((cy - hy) / hb, (cx - hx) / ha) > 1.0 + 0.8 * size / ha:
                break
        theta = rng.uniform(0.0, np.pi)
        if kind == 0:
            # Another elliptical cross-section (abdomen, limb, cyst): a partial bright ring.
            a = size
            b = a * rng.uniform(0.5, 1.0)
            u, v, rho = _ellipse_frame(yy, xx, cy, cx, a, b, theta)
            dist = _inward_distance(u, v, rho, a, b)
            thickness = max(1.2 * scale, a * rng.uniform(0.05, 0.12))
            phase = np.arctan2(v / b, u / a)
            arc = np.cos(phase - rng.uniform(-np.pi, np.pi)) > rng.uniform(-0.6, 0.4)
            ring = _ring_profile(dist, thickness) * arc * np.float32(style.ring_brightness * rng.uniform(0.4, 0.9))
            inside = _soft_inside(rho, 0.1)
            echo *= 1.0 - inside * np.float32(rng.uniform(0.0, 0.4))
            np.maximum(echo, ring, out=echo)
        elif kind == 1:
            # Bright irregular blob (bowel, placenta lobule, calcification cluster).
            a = size * rng.uniform(0.4, 0.9)
            b = a * rng.uniform(0.4, 1.0)
            _, _, rho = _ellipse_frame(yy, xx, cy, cx, a, b, theta)
            wobble = 0.25 * _smooth_noise(rng, (h, w), (6, 8))
            blob = _soft_inside(rho + wobble, 0.4) * np.float32(tissue * rng.uniform(1.6, 2.8))
            np.maximum(echo, blob, out=echo)
        elif kind == 2:
            # Bone-like specular line (femur, rib) with a short soft tail.
            half_len = size * rng.uniform(0.6, 1.2)
            width = max(1.0 * scale, half_len * rng.uniform(0.04, 0.09))
            u, v, _ = _ellipse_frame(yy, xx, cy, cx, 1.0, 1.0, theta)
            along = np.clip(np.abs(u) - np.float32(half_len), 0.0, None)
            line = np.exp(-0.5 * ((v / np.float32(width)) ** 2 + (along / np.float32(width)) ** 2))
            np.maximum(echo, line * np.float32(style.ring_brightness * rng.uniform(0.5, 1.0)), out=echo)
        else:
            # Dark fluid pocket (amniotic fluid, cyst, vessel).
            a = size * rng.uniform(0.6, 1.4)
            b = a * rng.uniform(0.3, 0.8)
            _, _, rho = _ellipse_frame(yy, xx, cy, cx, a, b, theta)
            wobble = 0.2 * _smooth_noise(rng, (h, w), (5, 7))
            pocket = _soft_inside(rho + wobble, 0.3)
            echo *= 1.0 - pocket * np.float32(rng.uniform(0.6, 0.9))


def _draw_placenta(rng: np.random.Generator, style: SiteStyle, echo: np.ndarray, probe: _Probe) -> None:
    """Paint a bright, granular placenta-like band at the top or bottom of the scan into ``echo`` in place."""
    h, w = echo.shape
    thick = rng.uniform(0.1, 0.22)
    if rng.random() < 0.65:  # anterior placenta, just under the abdominal wall
        top = rng.uniform(0.02, 0.12) + 0.05 * _smooth_noise_1d(rng, probe.lateral, 4)
    else:  # posterior placenta, deep
        top = rng.uniform(0.7, 0.82) + 0.05 * _smooth_noise_1d(rng, probe.lateral, 4)
    thickness = thick * (1.0 + 0.3 * _smooth_noise_1d(rng, probe.lateral, 5))
    # Only part of the lateral extent.
    start, stop = sorted(rng.uniform(-1.3, 1.3, size=2))
    stop = max(stop, start + 0.8)
    lateral_on = np.clip(np.minimum(probe.lateral - start, stop - probe.lateral) * 8.0, 0.0, 1.0)
    rel = (probe.depth - top) / np.maximum(thickness, 0.02)
    band = np.clip(np.minimum(rel, 1.0 - rel) * 12.0, 0.0, 1.0) * lateral_on
    texture = 1.0 + 0.35 * _smooth_noise(rng, (h, w), (10, 16))
    level = np.float32(style.tissue_level * rng.uniform(1.5, 2.2))
    np.maximum(echo, band * texture * level, out=echo)
    # Bright chorionic plate on the fluid-facing edge.
    plate = np.exp(-0.5 * (rel / 0.06) ** 2) * lateral_on * np.float32(style.ring_brightness * 0.5)
    np.maximum(echo, plate, out=echo)


def generate_case(
    rng: np.random.Generator, style: SiteStyle, num_classes: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic fetal-head ultrasound image and its label map.

    Args:
        rng: source of randomness; the case is a deterministic function of its state and ``style``.
        style: acquisition site; height and width are drawn from its ranges.
        num_classes: 2 (background, head) or 3 (also an inner structure, class 2, drawn over the head).

    Returns:
        ``(image, label)``: image uint8 [H, W] grey levels 0..255 (0 outside the fan); label uint8 [H, W] with
        class indices 0..num_classes-1. Class 1 is the filled ellipse bounded by the outer edge of the skull ring.
        The image does not depend on ``num_classes``.
    """
    _check_num_classes(num_classes)
    if not isinstance(style, SiteStyle):
        raise ValueError(f"style={style!r}: expected a SiteStyle (see SITES)")
    h = int(rng.integers(style.height_range[0], style.height_range[1] + 1))
    w = int(rng.integers(style.width_range[0], style.width_range[1] + 1))
    scale = min(h, w) / _REFERENCE_SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    probe = _make_probe(rng, style, yy, xx)

    # 1. Head geometry: semi-axes a >= b in pixels, rotation theta, centre (cy, cx) kept inside the frame.
    a = rng.uniform(*style.head_size_range) * min(h, w)
    ecc = rng.uniform(*style.eccentricity_range)
    b = a * np.sqrt(1.0 - ecc * ecc)
    theta = np.deg2rad(rng.uniform(*style.rotation_range))
    ext_x = np.sqrt((a * np.cos(theta)) ** 2 + (b * np.sin(theta)) ** 2)
    ext_y = np.sqrt((a * np.sin(theta)) ** 2 + (b * np.cos(theta)) ** 2)
    # Pixel centres run 0..h-1; keep a margin so the whole head (and its label) stays inside the image.
    margin_y, margin_x = max(1.0, 0.03 * h), max(1.0, 0.03 * w)
    fit = min(1.0, (0.5 * (h - 1) - margin_y) / ext_y, (0.5 * (w - 1) - margin_x) / ext_x)
    a, b, ext_x, ext_y = a * fit, b * fit, ext_x * fit, ext_y * fit
    cy = h * (0.52 + style.position_jitter * rng.uniform(-1.0, 1.0))
    cx = w * (0.5 + style.position_jitter * rng.uniform(-1.0, 1.0))
    cy = float(np.clip(cy, ext_y + margin_y, h - 1 - ext_y - margin_y))
    cx = float(np.clip(cx, ext_x + margin_x, w - 1 - ext_x - margin_x))
    u, v, rho = _ellipse_frame(yy, xx, cy, cx, a, b, theta)
    dist = _inward_distance(u, v, rho, a, b)
    thickness = max(1.5 * scale, a * rng.uniform(*style.ring_thickness_range))

    # 2. Maternal tissue: layered (wider than deep) low-frequency texture.
    tissue = style.tissue_level * (
        1.0
        + 0.35 * _smooth_noise(rng, (h, w), (6, 3))
        + 0.25 * _smooth_noise(rng, (h, w), (14, 8))
    )
    echo = np.clip(tissue, 0.05 * style.tissue_level, None).astype(np.float32)
    # Bright fascia / muscle-wall layers roughly parallel to the transducer face.
    for _ in range(int(rng.integers(1, 4))):
        layer_depth = rng.uniform(0.03, 0.6) + 0.04 * _smooth_noise_1d(rng, probe.lateral, 4)
        layer_width = rng.uniform(0.004, 0.015)
        layer = np.exp(-0.5 * ((probe.depth - layer_depth) / np.float32(layer_width)) ** 2)
        layer *= np.clip(0.5 + _smooth_noise_1d(rng, probe.lateral, 6), 0.0, 1.0)
        np.maximum(echo, layer * np.float32(style.tissue_level * rng.uniform(1.5, 2.5)), out=echo)

    # 3. Distractors and placenta sit under the fluid and the head.
    if rng.random() < style.placenta_prob:
        _draw_placenta(rng, style, echo, probe)
    _draw_distractors(rng, style, echo, yy, xx, (cy, cx, a, b, theta), scale)

    # 4. Amniotic fluid halo around the head: near-anechoic, irregular outline.
    if rng.random() < style.fluid_prob:
        margin = rng.uniform(*style.fluid_margin_range)
        wobble = 0.5 * margin * _smooth_noise(rng, (h, w), (4, 5))
        fluid = _soft_inside(rho / np.float32(1.0 + margin) + wobble, 0.15)
        echo *= 1.0 - fluid * np.float32(rng.uniform(0.8, 0.95))

    # 5. Brain: darker than tissue, faint texture, a dashed midline echo and small echogenic spots.
    head_in = _soft_inside(rho, 2.0 / a)
    brain = style.tissue_level * (1.0 - style.head_contrast) * (1.0 + 0.3 * _smooth_noise(rng, (h, w), (8, 8)))
    echo = echo * (1.0 - head_in) + np.clip(brain, 0.0, None) * head_in
    dash = np.clip(0.6 + _smooth_noise_1d(rng, np.clip(u / np.float32(a), -1.0, 1.0), 10), 0.0, 1.0)
    midline_w = max(0.8 * scale, 0.015 * a)
    midline = np.exp(-0.5 * (v / np.float32(midline_w)) ** 2) * dash * (rho < 0.85)
    np.maximum(echo, midline * np.float32(0.45 * style.ring_brightness * rng.uniform(0.3, 1.0)), out=echo)

    # 6. Inner structure (class 2): a fluid-filled ellipse on the midline with its own echogenicity and thin walls.
    ia = a * rng.uniform(0.18, 0.3)
    ib = b * rng.uniform(0.1, 0.2)
    offset = a * rng.uniform(0.12, 0.35) * rng.choice([-1.0, 1.0])
    icy = cy + offset * np.sin(theta) + b * rng.uniform(-0.04, 0.04) * np.cos(theta)
    icx = cx + offset * np.cos(theta) - b * rng.uniform(-0.04, 0.04) * np.sin(theta)
    itheta = theta + np.deg2rad(rng.uniform(-8.0, 8.0))
    iu, iv, irho = _ellipse_frame(yy, xx, icy, icx, ia, ib, itheta)
    inner_in = _soft_inside(irho, 1.5 / ib)
    inner_level = style.tissue_level * (1.0 - style.head_contrast) * (1.0 - style.inner_contrast)
    echo = echo * (1.0 - inner_in) + np.float32(inner_level) * inner_in
    inner_wall = _ring_profile(_inward_distance(iu, iv, irho, ia, ib), max(1.0 * scale, 0.1 * ib))
    np.maximum(echo, inner_wall * np.float32(0.35 * style.ring_brightness), out=echo)

    # 7. Skull ring: brightest where the beam meets the bone head-on, with dropouts along the ellipse.
    gu, gv = u / np.float32(a * a), v / np.float32(b * b)
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    nx, ny = gu * c - gv * s, gu * s + gv * c
    nnorm = np.sqrt(nx * nx + ny * ny) + np.float32(1e-9)
    incidence = np.abs(nx * probe.beam_x + ny * probe.beam_y) / nnorm
    reflect = 0.35 + 0.65 * incidence**1.5
    phase = np.arctan2(v / np.float32(b), u / np.float32(a))
    keep = np.ones_like(phase)
    for _ in range(int(rng.poisson(style.dropout_rate))):
        centre = rng.uniform(-np.pi, np.pi)
        half = np.deg2rad(rng.uniform(*style.dropout_width_range)) + 1e-3
        gap = np.abs((phase - np.float32(centre + np.pi)) % np.float32(2 * np.pi) - np.float32(np.pi))
        gap /= np.float32(half)
        keep *= 1.0 - np.float32(rng.uniform(0.6, 1.0)) * np.clip(1.5 - gap, 0.0, 1.0)
    ring = _ring_profile(dist, thickness) * reflect * keep * np.float32(style.ring_brightness)
    ring *= 1.0 + 0.15 * _smooth_noise(rng, (h, w), (10, 10))
    np.maximum(echo, ring, out=echo)

    # 8. Acoustic shadow: along some beams, everything deeper than the near skull wall is darkened. For each pixel
    #    the beam (origin + s * direction) is intersected with the head ellipse in its normalised frame.
    ox, oy = probe.origin_x - np.float32(cx), probe.origin_y - np.float32(cy)
    pu, pv = (ox * c + oy * s) / np.float32(a), (-ox * s + oy * c) / np.float32(b)
    qu = (probe.beam_x * c + probe.beam_y * s) / np.float32(a)
    qv = (-probe.beam_x * s + probe.beam_y * c) / np.float32(b)
    qa = qu * qu + qv * qv
    qb = 2.0 * (pu * qu + pv * qv)
    qc = pu * pu + pv * pv - 1.0
    disc = qb * qb - 4.0 * qa * qc
    entry = (-qb - np.sqrt(np.maximum(disc, 0.0))) / (2.0 * qa)
    travelled = np.sqrt((xx - probe.origin_x) ** 2 + (yy - probe.origin_y) ** 2)
    distal = np.clip((travelled - entry - thickness) / np.float32(2.0 * scale + 1.0), 0.0, 1.0) * (disc > 0)
    beams = np.clip(0.45 + 0.6 * _smooth_noise_1d(rng, probe.lateral, int(rng.integers(6, 14))), 0.0, 1.0)
    echo *= 1.0 - np.float32(style.shadow_strength) * beams * distal

    # 9. Speckle, depth attenuation with imperfect gain compensation, gain and compression.
    echo *= _speckle(rng, (h, w), style.speckle_strength, style.speckle_grain * max(scale, 0.5))
    tgc = np.exp(-np.float32(style.attenuation) * probe.depth)
    gain = rng.uniform(*style.gain_range)
    grey = np.clip(echo * tgc * np.float32(gain), 0.0, 1.0) ** np.float32(style.gamma) * np.float32(255.0)
    grey += rng.standard_normal((h, w)).astype(np.float32) * np.float32(style.noise_floor)
    grey[~probe.field_of_view] = 0.0
    if style.ui_overlay:
        _draw_ui(rng, grey)
    image = np.clip(np.rint(grey), 0, 255).astype(np.uint8)

    # 10. Label map: head ellipse (outer skull edge), then the inner structure on top.
    label = (rho <= 1.0).astype(np.uint8)
    if num_classes >= 3:
        label[(irho <= 1.0) & (rho <= 1.0)] = 2
    return image, label


def _draw_ui(rng: np.random.Generator, grey: np.ndarray) -> None:
    """Scanner-screenshot furniture in place: a depth scale with ticks on the left, a black info box at the corner."""
    h, w = grey.shape
    grey[:, : max(2, w // 60)] = 0.0
    tick = max(1, h // 120)
    for y in np.linspace(h * 0.05, h * 0.95, 11).astype(int):
        grey[y : y + tick, 0 : max(2, w // 80)] = 200.0
    if rng.random() < 0.7:
        bh, bw = int(h * rng.uniform(0.08, 0.16)), int(w * rng.uniform(0.1, 0.18))
        grey[h - bh :, w - bw :] = 0.0


def generate_mixed_case(
    rng: np.random.Generator, num_classes: int = 2, sites: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, str]:
    """Draw one case from a uniformly random site, for mixed transferal and test sets.

    Args:
        rng: source of randomness (picks the site, then the case).
        num_classes: as in :func:`generate_case`.
        sites: preset names to draw from; default all of :data:`SITES`.

    Returns:
        ``(image, label, site_name)``: image and label as in :func:`generate_case`.
    """
    names = sorted(SITES) if sites is None else list(sites)
    if not names:
        raise ValueError("sites=[]: expected at least one site name")
    styles = [get_site(n) for n in names]
    pick = int(rng.integers(len(styles)))
    image, label = generate_case(rng, styles[pick], num_classes)
    return image, label, names[pick]


def _case_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """Independent generator for case ``index``: a case does not depend on how many cases are written, and
    different sites with the same seed do not share geometry."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(stream.encode())], spawn_key=(index,)))


def write_folder(
    out_dir: str | os.PathLike[str],
    num_cases: int,
    site: str | SiteStyle,
    seed: int,
    num_classes: int = 2,
    fmt: str = "png",
    rgb: bool = False,
    prefix: str = "",
    size: tuple[int, int] | None = None,
) -> Path:
    """Write a synthetic dataset folder: ``images/<case>.<fmt>``, ``masks/<case>.png`` and ``synthetic.json``.

    Case ids are ``{prefix}{site}_{i:04d}`` (for ``site="mixed"`` the site drawn for that case). Masks are lossless
    PNG: 0/255 when ``num_classes == 2`` (as in HC18), the class index otherwise. Same arguments give
    byte-identical files; case i does not depend on ``num_cases``. Existing files with the same names are
    overwritten, other files are left alone.

    Args:
        out_dir: folder to create or fill.
        num_cases: number of cases (>= 0).
        site: a preset name from :data:`SITES`, ``"mixed"`` (each case from a random preset) or a SiteStyle.
        seed: non-negative base seed.
        num_classes: 2 or 3, see :func:`generate_case`.
        fmt: image file format, one of :data:`IMAGE_FORMATS` (JPEG at quality 95).
        rgb: write 3-channel images (grey with the site's slight colour tint, like a screenshot).
        prefix: prepended to every case id.
        size: optional fixed (height, width) for every case, overriding the site's size ranges.

    Returns:
        ``out_dir`` as a Path.
    """
    _check_num_classes(num_classes)
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"fmt={fmt!r}: expected one of {list(IMAGE_FORMATS)}")
    if isinstance(num_cases, bool) or not isinstance(num_cases, (int, np.integer)) or num_cases < 0:
        raise ValueError(f"num_cases={num_cases!r}: expected a non-negative integer")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected a non-negative integer")
    if size is not None and (len(size) != 2 or min(size) < 16):
        raise ValueError(f"size={size!r}: expected (height, width) with both >= 16")
    if any(c in prefix for c in "/\\"):
        raise ValueError(f"prefix={prefix!r}: expected no path separators")

    if isinstance(site, SiteStyle):
        styles = {site.name: site}
        stream = site.name
    elif site == MIXED:
        styles = dict(SITES)
        stream = MIXED
    else:
        styles = {site: get_site(site)}
        stream = site
    if size is not None:
        hw = (int(size[0]), int(size[0])), (int(size[1]), int(size[1]))
        styles = {n: dataclasses.replace(s, height_range=hw[0], width_range=hw[1]) for n, s in styles.items()}
    names = sorted(styles)

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(int(num_cases)):
        rng = _case_rng(int(seed), stream, i)
        name = names[int(rng.integers(len(names)))] if len(names) > 1 else names[0]
        style = styles[name]
        image, label = generate_case(rng, style, num_classes)
        case_id = f"{prefix}{name}_{i:04d}"
        if rgb:
            tint = np.asarray(style.rgb_tint, dtype=np.float32)
            pixels = np.clip(np.rint(image[..., None].astype(np.float32) * tint), 0, 255).astype(np.uint8)
        else:
            pixels = image
        save_kwargs = {"quality": 95} if fmt == "jpg" else {}
        Image.fromarray(pixels).save(out / "images" / f"{case_id}.{fmt}", **save_kwargs)
        mask = label * np.uint8(255) if num_classes == 2 else label
        Image.fromarray(mask).save(out / "masks" / f"{case_id}.png")
        cases.append({"case_id": case_id, "site": name, "height": image.shape[0], "width": image.shape[1]})

    meta = {
        "generator": "nakt_ray.demo.synthetic",
        "site": site.name if isinstance(site, SiteStyle) else site,
        "seed": int(seed),
        "num_cases": int(num_cases),
        "num_classes": int(num_classes),
        "fmt": fmt,
        "rgb": bool(rgb),
        "prefix": prefix,
        "size": list(size) if size is not None else None,
        "mask_values": "0/255" if num_classes == 2 else "class index",
        "styles": {n: dataclasses.asdict(s) for n, s in styles.items()},
        "cases": cases,
    }
    (out / "synthetic.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return out

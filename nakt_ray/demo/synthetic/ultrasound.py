"""Image formation: how a B-mode scanner turns the scene's echogenicity into grey levels.

The probe (a linear rectangle or a convex fan with a virtual apex above the image) gives every pixel a depth, a
lateral position and a beam direction; along those beams the skull casts acoustic shadows, the intensity falls
off with depth, and multiplicative speckle gives the grain. :func:`form_image` then applies gain, compression,
noise, the field of view and the scanner's screen furniture. Echogenicity is float32 [H, W] on the linear scale of
:class:`~nakt_ray.demo.synthetic.sites.SiteStyle` (~1 saturates after gain).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from nakt_ray.demo.synthetic.shapes import smooth_noise_1d
from nakt_ray.demo.synthetic.sites import SiteStyle

__all__ = ["Probe", "add_acoustic_shadow", "draw_ui", "form_image", "make_probe", "speckle"]


@dataclass(frozen=True)
class Probe:
    """Scan geometry of one case: per-pixel depth, lateral position and beam direction."""

    depth: np.ndarray  # [H, W] 0 at the transducer, 1 at the deepest sample
    lateral: np.ndarray  # [H, W] -1 .. 1 across the scan
    beam_x: np.ndarray  # [H, W] or scalar: unit beam direction, x component
    beam_y: np.ndarray  # [H, W] or scalar: unit beam direction, y component
    origin_x: np.ndarray  # [H, W] or scalar: where each pixel's beam starts
    origin_y: np.ndarray
    field_of_view: np.ndarray  # [H, W] bool, False outside the fan


def make_probe(rng: np.random.Generator, style: SiteStyle, yy: np.ndarray, xx: np.ndarray) -> Probe:
    """Draw the scan geometry of one case over the pixel grid ``yy, xx`` ([H, W] each, from ``np.mgrid``).

    A linear probe (``style.fan`` False) fires vertical beams from just above every column and sees the whole
    rectangle; a convex probe draws its apex, opening angle and depth range from ``rng``.
    """
    h, w = yy.shape
    if not style.fan:
        return Probe(
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
    return Probe(
        depth=((r - r_min) / np.float32(r_max - r_min)).astype(np.float32),
        lateral=(angle / np.float32(half_angle)).astype(np.float32),
        beam_x=dx / r,
        beam_y=dy / r,
        origin_x=apex_x,
        origin_y=apex_y,
        field_of_view=inside,
    )


def speckle(rng: np.random.Generator, shape: tuple[int, int], strength: float, grain: float) -> np.ndarray:
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


def add_acoustic_shadow(
    rng: np.random.Generator,
    echo: np.ndarray,
    probe: Probe,
    yy: np.ndarray,
    xx: np.ndarray,
    head: tuple[float, float, float, float, float],
    thickness: float,
    scale: float,
    strength: float,
) -> None:
    """Darken ``echo`` in place behind the skull along some beams: everything deeper than the near skull wall.

    Args:
        rng: draws which beams are shadowed (a smooth function of the lateral position).
        echo: echogenicity [H, W], modified in place.
        probe: the case's scan geometry.
        yy, xx: the pixel grid [H, W].
        head: ``(cy, cx, a, b, theta)``: centre and semi-axes in pixels, rotation in radians.
        thickness: skull thickness in pixels (the shadow starts behind the bone).
        scale: image size relative to :data:`~nakt_ray.demo.synthetic.sites.REFERENCE_SIZE`.
        strength: darkening (0..1) on a fully shadowed beam.
    """
    cy, cx, a, b, theta = head
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    # For each pixel the beam (origin + s * direction) is intersected with the head ellipse in its normalised frame.
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
    beams = np.clip(0.45 + 0.6 * smooth_noise_1d(rng, probe.lateral, int(rng.integers(6, 14))), 0.0, 1.0)
    echo *= 1.0 - np.float32(strength) * beams * distal


def form_image(
    rng: np.random.Generator, echo: np.ndarray, probe: Probe, style: SiteStyle, scale: float
) -> np.ndarray:
    """Image echogenicity the way the scanner shows it: speckle, depth attenuation with imperfect gain
    compensation, gain, compression (clip and gamma), electronic noise, black outside the field of view and, if
    the site has one, the screenshot furniture.

    Args:
        rng: draws the speckle, the gain, the noise and the UI layout.
        echo: echogenicity [H, W] on the linear scale of :class:`~nakt_ray.demo.synthetic.sites.SiteStyle`.
        probe: the case's scan geometry.
        style: the site.
        scale: image size relative to :data:`~nakt_ray.demo.synthetic.sites.REFERENCE_SIZE` (scales the grain).

    Returns:
        uint8 [H, W] grey levels 0..255.
    """
    h, w = echo.shape
    echo = echo * speckle(rng, (h, w), style.speckle_strength, style.speckle_grain * max(scale, 0.5))
    tgc = np.exp(-np.float32(style.attenuation) * probe.depth)
    gain = rng.uniform(*style.gain_range)
    grey = np.clip(echo * tgc * np.float32(gain), 0.0, 1.0) ** np.float32(style.gamma) * np.float32(255.0)
    grey += rng.standard_normal((h, w)).astype(np.float32) * np.float32(style.noise_floor)
    grey[~probe.field_of_view] = 0.0
    if style.ui_overlay:
        draw_ui(rng, grey)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def draw_ui(rng: np.random.Generator, grey: np.ndarray) -> None:
    """Scanner-screenshot furniture in place: a depth scale with ticks on the left, a black info box at the corner."""
    h, w = grey.shape
    grey[:, : max(2, w // 60)] = 0.0
    tick = max(1, h // 120)
    for y in np.linspace(h * 0.05, h * 0.95, 11).astype(int):
        grey[y : y + tick, 0 : max(2, w // 80)] = 200.0
    if rng.random() < 0.7:
        bh, bw = int(h * rng.uniform(0.08, 0.16)), int(w * rng.uniform(0.1, 0.18))
        grey[h - bh :, w - bw :] = 0.0

"""One synthetic case: the fetal head and its surroundings drawn as echogenicity, imaged, and its label map.

The scene is built in layers, each drawn over the last (the numbered steps of :func:`generate_case`): maternal
tissue, placenta and distractors, the amniotic-fluid halo, the brain with its midline, the inner structure (class
2), the skull ring; :mod:`~nakt_ray.demo.synthetic.ultrasound` then casts the shadows and forms the image. The
draws from ``rng`` happen in a fixed order, so the same generator state always gives the same case, whatever
``num_classes``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nakt_ray.demo.synthetic.shapes import (
    ellipse_frame,
    inward_distance,
    ring_profile,
    smooth_noise,
    smooth_noise_1d,
    soft_inside,
)
from nakt_ray.demo.synthetic.sites import REFERENCE_SIZE, SITES, SiteStyle, check_num_classes, get_site
from nakt_ray.demo.synthetic.ultrasound import Probe, add_acoustic_shadow, form_image, make_probe

__all__ = ["generate_case", "generate_mixed_case"]


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
    check_num_classes(num_classes)
    if not isinstance(style, SiteStyle):
        raise ValueError(f"style={style!r}: expected a SiteStyle (see SITES)")
    h = int(rng.integers(style.height_range[0], style.height_range[1] + 1))
    w = int(rng.integers(style.width_range[0], style.width_range[1] + 1))
    scale = min(h, w) / REFERENCE_SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    probe = make_probe(rng, style, yy, xx)

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
    u, v, rho = ellipse_frame(yy, xx, cy, cx, a, b, theta)
    dist = inward_distance(u, v, rho, a, b)
    thickness = max(1.5 * scale, a * rng.uniform(*style.ring_thickness_range))

    # 2. Maternal tissue: layered (wider than deep) low-frequency texture.
    tissue = style.tissue_level * (
        1.0
        + 0.35 * smooth_noise(rng, (h, w), (6, 3))
        + 0.25 * smooth_noise(rng, (h, w), (14, 8))
    )
    echo = np.clip(tissue, 0.05 * style.tissue_level, None).astype(np.float32)
    # Bright fascia / muscle-wall layers roughly parallel to the transducer face.
    for _ in range(int(rng.integers(1, 4))):
        layer_depth = rng.uniform(0.03, 0.6) + 0.04 * smooth_noise_1d(rng, probe.lateral, 4)
        layer_width = rng.uniform(0.004, 0.015)
        layer = np.exp(-0.5 * ((probe.depth - layer_depth) / np.float32(layer_width)) ** 2)
        layer *= np.clip(0.5 + smooth_noise_1d(rng, probe.lateral, 6), 0.0, 1.0)
        np.maximum(echo, layer * np.float32(style.tissue_level * rng.uniform(1.5, 2.5)), out=echo)

    # 3. Distractors and placenta sit under the fluid and the head.
    if rng.random() < style.placenta_prob:
        _draw_placenta(rng, style, echo, probe)
    _draw_distractors(rng, style, echo, yy, xx, (cy, cx, a, b, theta), scale)

    # 4. Amniotic fluid halo around the head: near-anechoic, irregular outline.
    if rng.random() < style.fluid_prob:
        margin = rng.uniform(*style.fluid_margin_range)
        wobble = 0.5 * margin * smooth_noise(rng, (h, w), (4, 5))
        fluid = soft_inside(rho / np.float32(1.0 + margin) + wobble, 0.15)
        echo *= 1.0 - fluid * np.float32(rng.uniform(0.8, 0.95))

    # 5. Brain: darker than tissue, faint texture, a dashed midline echo and small echogenic spots.
    head_in = soft_inside(rho, 2.0 / a)
    brain = style.tissue_level * (1.0 - style.head_contrast) * (1.0 + 0.3 * smooth_noise(rng, (h, w), (8, 8)))
    echo = echo * (1.0 - head_in) + np.clip(brain, 0.0, None) * head_in
    dash = np.clip(0.6 + smooth_noise_1d(rng, np.clip(u / np.float32(a), -1.0, 1.0), 10), 0.0, 1.0)
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
    iu, iv, irho = ellipse_frame(yy, xx, icy, icx, ia, ib, itheta)
    inner_in = soft_inside(irho, 1.5 / ib)
    inner_level = style.tissue_level * (1.0 - style.head_contrast) * (1.0 - style.inner_contrast)
    echo = echo * (1.0 - inner_in) + np.float32(inner_level) * inner_in
    inner_wall = ring_profile(inward_distance(iu, iv, irho, ia, ib), max(1.0 * scale, 0.1 * ib))
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
    ring = ring_profile(dist, thickness) * reflect * keep * np.float32(style.ring_brightness)
    ring *= 1.0 + 0.15 * smooth_noise(rng, (h, w), (10, 10))
    np.maximum(echo, ring, out=echo)

    # 8. Acoustic shadow behind the skull along some beams.
    add_acoustic_shadow(rng, echo, probe, yy, xx, (cy, cx, a, b, theta), thickness, scale, style.shadow_strength)

    # 9. Speckle, depth attenuation with imperfect gain compensation, gain and compression.
    image = form_image(rng, echo, probe, style, scale)

    # 10. Label map: head ellipse (outer skull edge), then the inner structure on top.
    label = (rho <= 1.0).astype(np.uint8)
    if num_classes >= 3:
        label[(irho <= 1.0) & (rho <= 1.0)] = 2
    return image, label


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
            u, v, rho = ellipse_frame(yy, xx, cy, cx, a, b, theta)
            dist = inward_distance(u, v, rho, a, b)
            thickness = max(1.2 * scale, a * rng.uniform(0.05, 0.12))
            phase = np.arctan2(v / b, u / a)
            arc = np.cos(phase - rng.uniform(-np.pi, np.pi)) > rng.uniform(-0.6, 0.4)
            ring = ring_profile(dist, thickness) * arc * np.float32(style.ring_brightness * rng.uniform(0.4, 0.9))
            inside = soft_inside(rho, 0.1)
            echo *= 1.0 - inside * np.float32(rng.uniform(0.0, 0.4))
            np.maximum(echo, ring, out=echo)
        elif kind == 1:
            # Bright irregular blob (bowel, placenta lobule, calcification cluster).
            a = size * rng.uniform(0.4, 0.9)
            b = a * rng.uniform(0.4, 1.0)
            _, _, rho = ellipse_frame(yy, xx, cy, cx, a, b, theta)
            wobble = 0.25 * smooth_noise(rng, (h, w), (6, 8))
            blob = soft_inside(rho + wobble, 0.4) * np.float32(tissue * rng.uniform(1.6, 2.8))
            np.maximum(echo, blob, out=echo)
        elif kind == 2:
            # Bone-like specular line (femur, rib) with a short soft tail.
            half_len = size * rng.uniform(0.6, 1.2)
            width = max(1.0 * scale, half_len * rng.uniform(0.04, 0.09))
            u, v, _ = ellipse_frame(yy, xx, cy, cx, 1.0, 1.0, theta)
            along = np.clip(np.abs(u) - np.float32(half_len), 0.0, None)
            line = np.exp(-0.5 * ((v / np.float32(width)) ** 2 + (along / np.float32(width)) ** 2))
            np.maximum(echo, line * np.float32(style.ring_brightness * rng.uniform(0.5, 1.0)), out=echo)
        else:
            # Dark fluid pocket (amniotic fluid, cyst, vessel).
            a = size * rng.uniform(0.6, 1.4)
            b = a * rng.uniform(0.3, 0.8)
            _, _, rho = ellipse_frame(yy, xx, cy, cx, a, b, theta)
            wobble = 0.2 * smooth_noise(rng, (h, w), (5, 7))
            pocket = soft_inside(rho + wobble, 0.3)
            echo *= 1.0 - pocket * np.float32(rng.uniform(0.6, 0.9))


def _draw_placenta(rng: np.random.Generator, style: SiteStyle, echo: np.ndarray, probe: Probe) -> None:
    """Paint a bright, granular placenta-like band at the top or bottom of the scan into ``echo`` in place."""
    h, w = echo.shape
    thick = rng.uniform(0.1, 0.22)
    if rng.random() < 0.65:  # anterior placenta, just under the abdominal wall
        top = rng.uniform(0.02, 0.12) + 0.05 * smooth_noise_1d(rng, probe.lateral, 4)
    else:  # posterior placenta, deep
        top = rng.uniform(0.7, 0.82) + 0.05 * smooth_noise_1d(rng, probe.lateral, 4)
    thickness = thick * (1.0 + 0.3 * smooth_noise_1d(rng, probe.lateral, 5))
    # Only part of the lateral extent.
    start, stop = sorted(rng.uniform(-1.3, 1.3, size=2))
    stop = max(stop, start + 0.8)
    lateral_on = np.clip(np.minimum(probe.lateral - start, stop - probe.lateral) * 8.0, 0.0, 1.0)
    rel = (probe.depth - top) / np.maximum(thickness, 0.02)
    band = np.clip(np.minimum(rel, 1.0 - rel) * 12.0, 0.0, 1.0) * lateral_on
    texture = 1.0 + 0.35 * smooth_noise(rng, (h, w), (10, 16))
    level = np.float32(style.tissue_level * rng.uniform(1.5, 2.2))
    np.maximum(echo, band * texture * level, out=echo)
    # Bright chorionic plate on the fluid-facing edge.
    plate = np.exp(-0.5 * (rel / 0.06) ** 2) * lateral_on * np.float32(style.ring_brightness * 0.5)
    np.maximum(echo, plate, out=echo)

"""Acquisition sites: how one scanner, preset, sonographer and population render fetal-head images.

A site is a frozen :class:`SiteStyle` of intensity, noise, contrast, probe and head-shape statistics, checked when
it is made; :data:`SITES` holds the four presets (``site_a`` .. ``site_d``) that the demo trains one teacher on
each, chosen so that a teacher of one site is imperfect on the others.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

__all__ = ["MIXED", "NUM_CLASSES_SUPPORTED", "REFERENCE_SIZE", "SITES", "SiteStyle", "check_num_classes", "get_site"]

MIXED = "mixed"
"""Site name that makes :func:`~nakt_ray.demo.synthetic.folders.write_folder` draw every case from a random
preset."""

NUM_CLASSES_SUPPORTED: tuple[int, ...] = (2, 3)
"""Label-map class counts the generator can draw: background + head, or also the inner structure."""

# Image size the pixel-valued style parameters (speckle grain, line widths) are calibrated for; other sizes scale
# them so a smaller image looks like a downsampled version of the same acquisition.
REFERENCE_SIZE = 240.0


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


def check_num_classes(num_classes: int) -> None:
    """Raise ValueError unless ``num_classes`` is one of :data:`NUM_CLASSES_SUPPORTED`."""
    if isinstance(num_classes, bool) or num_classes not in NUM_CLASSES_SUPPORTED:
        raise ValueError(f"num_classes={num_classes!r}: expected one of {list(NUM_CLASSES_SUPPORTED)}")


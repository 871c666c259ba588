"""Pictures of predictions for people: the mask PNG encoding, the overlay of an image with its class map, and the
montage of a volume's orthogonal mid-slices (``nakt predict``). Given the class names, a picture gets a legend strip
below it (a box of each foreground class's colour and its name), drawn with Pillow so the picture stays one RGB
array."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from nakt_ray.data.volumes import VolumeGeometry

# Colours of foreground classes 1, 2, ... (RGB): class k is always PALETTE[(k - 1) % 16], in every picture
# (nakt_ray/evaluation/figures.py keeps the same list as CLASS_COLOURS; it cannot import this layer). The first eight
# are the original ones; the next eight extend it for many-class label sets (brain structures) before it repeats.
PALETTE = np.array([(255, 64, 0), (0, 160, 255), (255, 215, 0), (0, 220, 90), (220, 0, 220), (0, 230, 230),
                    (255, 128, 160), (150, 100, 255),
                    (170, 110, 40), (0, 128, 128), (210, 245, 60), (128, 0, 0), (0, 70, 200), (128, 128, 0),
                    (170, 255, 195), (220, 190, 255)], dtype=np.float32)
FILL_ALPHA = 0.4
# The legend strip: background, text colour, and the gaps around its entries (pixels).
LEGEND_BACKGROUND = (24, 24, 24)
LEGEND_TEXT = (255, 255, 255)
_LEGEND_PAD = 6


def class_colour(cls: int) -> np.ndarray:
    """RGB uint8 ``[3]`` of foreground class ``cls`` (>= 1) in every picture."""
    if cls < 1:
        raise ValueError(f"class {cls} has no colour: background (0) is not coloured; expected a class >= 1")
    return PALETTE[(int(cls) - 1) % len(PALETTE)].astype(np.uint8)


def mask_scale(num_classes: int) -> int:
    """The factor between a class index and its grey value in a mask PNG (255 for binary)."""
    if not 2 <= num_classes <= 256:
        raise ValueError(f"a model with {num_classes} classes cannot be written as an 8-bit mask PNG; expected "
                         "2 to 256 classes")
    return max(1, 255 // (num_classes - 1))


def _contour(region: np.ndarray) -> np.ndarray:
    """Pixels of boolean ``region`` ``[H, W]`` with a 4-neighbour outside it (or on the image border)."""
    padded = np.pad(region, 1, constant_values=False)
    interior = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return region & ~interior


def _font(size: int) -> Any:
    """Pillow's built-in font at ``size`` pixels (a scalable one since Pillow 10.1; the fixed bitmap one before)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # an older Pillow or one without FreeType
        return ImageFont.load_default()


def legend_strip(labels: Sequence[str], width: int) -> np.ndarray:
    """A legend for the class names ``labels`` (index = class, 0 = background, which is left out): RGB uint8
    ``[h, w, 3]``, one entry per foreground class (a box of :func:`class_colour` and the name) in rows that wrap at
    ``width`` pixels; ``w`` is ``width``, or more where one entry alone is wider."""
    from PIL import Image, ImageDraw

    if isinstance(labels, (str, bytes)) or not all(isinstance(name, str) for name in labels):
        raise ValueError(f"labels must be a sequence of class names (str), background first; got {labels!r}")
    if len(labels) < 2:
        raise ValueError(f"labels must name the background and at least one class; got {list(labels)}")
    size = max(11, min(24, int(width) // 48))  # text height: readable at any image width, not a banner
    font = _font(size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entries = [(cls, str(name), size + 4 + int(np.ceil(measure.textlength(str(name), font=font))))
               for cls, name in enumerate(labels) if cls > 0]
    width = max(int(width), max(w for *_, w in entries) + 2 * _LEGEND_PAD)
    rows: list[list[tuple[int, str, int]]] = [[]]
    x = _LEGEND_PAD
    for entry in entries:  # wrap an entry to a new row when it would cross the right edge
        if rows[-1] and x + entry[2] + _LEGEND_PAD > width:
            rows.append([])
            x = _LEGEND_PAD
        rows[-1].append(entry)
        x += entry[2] + 2 * _LEGEND_PAD
    row_height = size + _LEGEND_PAD
    strip = Image.new("RGB", (width, len(rows) * row_height + _LEGEND_PAD), LEGEND_BACKGROUND)
    draw = ImageDraw.Draw(strip)
    for r, row in enumerate(rows):
        x, y = _LEGEND_PAD, _LEGEND_PAD + r * row_height
        for cls, name, entry_width in row:
            draw.rectangle((x, y, x + size - 1, y + size - 1), fill=tuple(int(v) for v in class_colour(cls)))
            _, top, _, bottom = draw.textbbox((0, 0), name, font=font)  # centred on the box, for any font kind
            draw.text((x + size + 4, y + (size - (bottom - top)) / 2 - top), name, fill=LEGEND_TEXT, font=font)
            x += entry_width + 2 * _LEGEND_PAD
    return np.asarray(strip)


def with_legend(rgb: np.ndarray, labels: Sequence[str] | None) -> np.ndarray:
    """A picture ``[H, W, 3]`` with :func:`legend_strip` below it (the picture unchanged in its top-left ``H x W``;
    padded on the right where the legend is wider); ``rgb`` itself when ``labels`` is None."""
    if labels is None:
        return rgb
    strip = legend_strip(labels, rgb.shape[1])
    picture = np.zeros((rgb.shape[0], strip.shape[1], 3), np.uint8)
    picture[:, :rgb.shape[1]] = rgb
    return np.concatenate([picture, strip], axis=0)


def _check_label_names(label: np.ndarray, labels: Sequence[str] | None) -> None:
    if labels is not None and label.size and int(label.max()) >= len(labels):
        raise ValueError(f"the label map holds class {int(label.max())} but labels names only {len(labels)} classes "
                         f"({list(labels)}); give one name per class, background first")


def overlay(image: np.ndarray, label: np.ndarray, labels: Sequence[str] | None = None) -> np.ndarray:
    """Image ``[C, H, W]`` (any intensities) + class map ``[H, W]`` -> RGB uint8 ``[H, W, 3]`` for people.

    The image is shown in grey (channel mean, stretched to 0-255); each foreground class is filled with its
    :func:`class_colour` at :data:`FILL_ALPHA` and outlined in it. With ``labels`` (the class names, background
    first) a legend strip is added below (:func:`with_legend`): ``[H + h, max(W, w), 3]``.
    """
    _check_label_names(label, labels)
    grey = image.astype(np.float32).mean(0)
    grey = 255 * (grey - grey.min()) / max(float(np.ptp(grey)), 1e-6)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for cls in np.unique(label):
        if cls == 0:
            continue
        region = label == cls
        colour = PALETTE[(int(cls) - 1) % len(PALETTE)]
        rgb[region] = (1 - FILL_ALPHA) * rgb[region] + FILL_ALPHA * colour
        rgb[_contour(region)] = colour
    return with_legend(np.clip(rgb, 0, 255).astype(np.uint8), labels)


def volume_montage(image: np.ndarray, label: np.ndarray, geometry: VolumeGeometry, min_side: int = 192,
                   max_side: int = 512, labels: Sequence[str] | None = None) -> np.ndarray:
    """Axial, coronal and sagittal mid-slices of a volume side by side, each with :func:`overlay`'s colours:
    ``image`` and ``label`` ``[D, H, W]`` on ``geometry`` -> RGB uint8 ``[h, w, 3]``; with ``labels`` (the class
    names, background first) a legend strip below the three.

    The planes pass through the centre of the labelled foreground (the volume's centre when there is none), in the
    display convention of ``nakt_ray/evaluation/figures.py`` (RAS order, first axis up, the patient's right on the
    right), resampled (nearest) to square pixels at one scale for the three, so anisotropic voxels keep their shape,
    the longest side of a plane between ``min_side`` and ``max_side`` pixels.
    """
    from PIL import Image

    from nakt_ray.evaluation.figures import foreground_centre, grey, mid_planes, plane_spacings, to_display

    _check_label_names(label, labels)
    shown, spacing = to_display(image, geometry)
    shown_label = to_display(label, geometry)[0]
    centre = foreground_centre(shown_label)
    planes, label_planes = mid_planes(grey(shown), centre), mid_planes(shown_label, centre)
    # one scale for the three planes, so that they share their mm per pixel
    sizes = {name: (planes[name].shape[0] * row_mm, planes[name].shape[1] * col_mm)
             for name, (row_mm, col_mm) in plane_spacings(spacing).items()}
    longest = max(max(hw) for hw in sizes.values())
    scale = min(max_side, max(min_side, longest)) / longest   # display pixels per mm
    panels = []
    for name, (h, w) in sizes.items():
        rgb = overlay(planes[name][None], label_planes[name])
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        panels.append(np.asarray(Image.fromarray(rgb).resize(size, Image.NEAREST)))
    height = max(p.shape[0] for p in panels)
    gap = np.zeros((height, 4, 3), np.uint8)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0))) for p in panels]
    return with_legend(np.concatenate([padded[0], gap, padded[1], gap, padded[2]], axis=1), labels)

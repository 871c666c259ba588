"""Pictures of predictions for people: the mask PNG encoding, the overlay of an image with its class map, and the
montage of a volume's orthogonal mid-slices (``nakt predict``)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from nakt_ray.data.volumes import VolumeGeometry

# Colours of foreground classes 1, 2, ... (RGB), reused cyclically beyond eight classes.
PALETTE = np.array([(255, 64, 0), (0, 160, 255), (255, 215, 0), (0, 220, 90), (220, 0, 220), (0, 230, 230),
                    (255, 128, 160), (150, 100, 255)], dtype=np.float32)
FILL_ALPHA = 0.4


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


def overlay(image: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Image ``[C, H, W]`` (any intensities) + class map ``[H, W]`` -> RGB uint8 ``[H, W, 3]`` for people.

    The image is shown in grey (channel mean, stretched to 0-255); each foreground class is filled with its
    :data:`PALETTE` colour at :data:`FILL_ALPHA` and outlined in it.
    """
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
    return np.clip(rgb, 0, 255).astype(np.uint8)


def volume_montage(image: np.ndarray, label: np.ndarray, geometry: VolumeGeometry, min_side: int = 192,
                   max_side: int = 512) -> np.ndarray:
    """Axial, coronal and sagittal mid-slices of a volume side by side, each with :func:`overlay`'s colours:
    ``image`` and ``label`` ``[D, H, W]`` on ``geometry`` -> RGB uint8 ``[h, w, 3]``.

    The planes pass through the centre of the labelled foreground (the volume's centre when there is none), in the
    display convention of ``nakt_ray/evaluation/figures.py`` (RAS order, first axis up, the patient's right on the
    right), resampled (nearest) to square pixels at one scale for the three, so anisotropic voxels keep their shape,
    the longest side of a plane between ``min_side`` and ``max_side`` pixels.
    """
    from PIL import Image

    from nakt_ray.evaluation.figures import foreground_centre, grey, mid_planes, plane_spacings, to_display

    shown, spacing = to_display(image, geometry)
    labels = to_display(label, geometry)[0]
    centre = foreground_centre(labels)
    planes, label_planes = mid_planes(grey(shown), centre), mid_planes(labels, centre)
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
    return np.concatenate([padded[0], gap, padded[1], gap, padded[2]], axis=1)

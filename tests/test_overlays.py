"""Pictures of predictions with three or more classes: one colour per class, the same in every picture, and a
legend of the class names (``nakt_ray/inference/overlays.py``, ``nakt_ray/evaluation/figures.py``)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from nakt_ray.data.volumes import VolumeGeometry
from nakt_ray.evaluation.figures import CLASS_COLOURS, CasePlanes, write_model_figures
from nakt_ray.inference.overlays import (
    LEGEND_BACKGROUND,
    PALETTE,
    legend_strip,
    overlay,
    volume_montage,
)

NAMES = ["background", "liver", "left kidney", "spleen"]


def ramp(h: int, w: int) -> np.ndarray:
    return np.tile(np.linspace(0, 1000, w, dtype=np.float32), (1, h, 1))  # [1, H, W], a horizontal ramp


def four_class_map(h: int = 40, w: int = 120) -> np.ndarray:
    label = np.zeros((h, w), dtype=np.uint8)
    label[4:16, 4:16] = 1
    label[20:32, 4:16] = 2
    label[20:32, 30:50] = 3
    return label


def has_colour(rgb: np.ndarray, colour, tol: int = 0) -> bool:
    return bool((np.abs(rgb.astype(int) - np.asarray(colour, dtype=int)).sum(-1) <= tol).any())


def test_four_classes_get_three_colours_and_a_legend_with_each():
    label = four_class_map()
    rgb = overlay(ramp(40, 120), label, NAMES)
    picture, strip = rgb[:40], rgb[40:]
    assert rgb.dtype == np.uint8 and rgb.shape[1] == 120 and strip.shape[0] > 10
    # each class's contour is its palette colour, and the three differ
    contour = {1: picture[4, 8], 2: picture[20, 8], 3: picture[20, 40]}
    for cls, value in contour.items():
        assert (value == PALETTE[cls - 1]).all(), cls
    assert len({tuple(v) for v in contour.values()}) == 3
    # the legend strip: a box of each class's colour, text in white, nothing of a class not named
    for cls in (1, 2, 3):
        assert (np.abs(strip.astype(int) - PALETTE[cls - 1]).sum(-1) == 0).sum() >= 25, cls  # a box, not a pixel
    assert has_colour(strip, (255, 255, 255)) and (strip[0, 0] == LEGEND_BACKGROUND).all()
    assert not has_colour(strip, PALETTE[3])
    # the image part is the overlay without a legend
    assert (picture == overlay(ramp(40, 120), label)).all()


def test_a_class_has_its_colour_whichever_classes_are_present():
    label = np.zeros((40, 120), dtype=np.uint8)
    label[20:32, 30:50] = 3
    rgb = overlay(ramp(40, 120), label, NAMES)
    assert (rgb[20, 40] == PALETTE[2]).all()
    # the legend lists every named class, present or not
    for cls in (1, 2, 3):
        assert has_colour(rgb[40:], PALETTE[cls - 1]), cls


def test_without_names_the_output_is_unchanged():
    image, label = ramp(8, 8), np.zeros((8, 8), dtype=np.uint8)
    label[2:6, 2:6] = 1
    plain = overlay(image, label)
    assert plain.shape == (8, 8, 3)
    # the overlay of before (tests/test_export_predict.py::test_overlay_fills_and_outlines_each_class_over_grey)
    grey = 255 * np.linspace(0, 1, 8, dtype=np.float32)
    expected = np.repeat(np.tile(grey, (8, 1))[..., None], 3, axis=-1)
    region = label == 1
    expected[region] = 0.6 * expected[region] + 0.4 * PALETTE[0]
    expected[2, 2:6] = expected[5, 2:6] = expected[2:6, 2] = expected[2:6, 5] = PALETTE[0]
    assert (plain == np.clip(expected, 0, 255).astype(np.uint8)).all()
    # binary with names: the same picture, a legend below, widened where the legend needs it
    named = overlay(image, label, ["background", "a rather long structure name"])
    assert named.shape[0] > 8 and named.shape[1] > 8 and (named[:8, :8] == plain).all()
    assert (named[:8, 8:] == 0).all()


def test_legend_wraps_many_classes_into_rows_at_the_width():
    names = ["background"] + [f"structure {k}" for k in range(1, 21)]
    strip = legend_strip(names, 300)
    assert strip.shape[1] == 300 and strip.shape[0] > 3 * legend_strip(names[:2], 300).shape[0]
    for cls in range(1, 21):  # 16 colours, then the palette repeats
        assert has_colour(strip, PALETTE[(cls - 1) % len(PALETTE)])
    assert len({tuple(c) for c in PALETTE}) == len(PALETTE)


def test_bad_names_are_errors():
    with pytest.raises(ValueError, match="labels names only 3 classes"):
        overlay(ramp(40, 120), four_class_map(), NAMES[:3])
    with pytest.raises(ValueError, match="labels must name the background and at least one class"):
        legend_strip(["background"], 100)
    with pytest.raises(ValueError, match="sequence of class names"):
        legend_strip("background", 100)


def geometry(shape=(12, 16, 20)) -> VolumeGeometry:
    return VolumeGeometry.create(shape, (2.0, 1.0, 1.0), (0.0, 0.0, 0.0))


def three_class_volume(shape=(12, 16, 20)) -> tuple[np.ndarray, np.ndarray]:
    image = np.random.default_rng(0).normal(100, 10, shape).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    label[3:9, 3:8, 3:9] = 1
    label[3:9, 8:13, 10:17] = 2
    return image, label


def test_volume_montage_has_class_colours_and_a_legend():
    image, label = three_class_volume()
    plain = volume_montage(image, label, geometry())
    named = volume_montage(image, label, geometry(), labels=["background", "thalamus", "hippocampus"])
    h, w = plain.shape[:2]
    assert named.shape[1] == w and named.shape[0] > h and (named[:h] == plain).all()
    for cls in (1, 2):
        assert has_colour(plain, PALETTE[cls - 1]) and has_colour(named[h:], PALETTE[cls - 1]), cls
    assert not has_colour(named[h:], PALETTE[2])
    with pytest.raises(ValueError, match="labels names only 2 classes"):
        volume_montage(image, label, geometry(), labels=["background", "thalamus"])


def test_figures_and_overlays_share_the_palette():
    assert [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in PALETTE.astype(int)] == list(CLASS_COLOURS)


def model_figure(tmp_path, label: np.ndarray, pred: np.ndarray, num_classes: int, labels=None) -> np.ndarray:
    image = three_class_volume()[0]
    planes = CasePlanes(geometry(), label)
    planes.add("student", pred)
    planes.add_image(image)
    files = write_model_figures(tmp_path, [("case0", planes.to_bytes())], ["student"], None, num_classes, labels)
    return np.asarray(Image.open(files["evaluation_slices__student.png"]).convert("RGB"))


def test_evaluation_figure_colours_each_class(tmp_path):
    _, label = three_class_volume()
    pred = np.roll(label, 1, axis=2)
    picture = model_figure(tmp_path, label, pred, 3, ["background", "thalamus", "hippocampus"])
    # matplotlib antialiases lines: a colour is found within a small tolerance
    for cls in (1, 2):
        assert has_colour(picture, PALETTE[cls - 1], tol=40), cls
    assert not has_colour(picture, (0, 210, 90), tol=40)  # the one-class truth green is not used
    with pytest.raises(ValueError, match="num_classes is 3"):
        model_figure(tmp_path, label, pred, 3, ["background", "thalamus"])


def test_evaluation_figure_of_one_class_is_unchanged_by_names(tmp_path):
    _, label = three_class_volume()
    binary = (label > 0).astype(np.uint8)
    (tmp_path / "plain").mkdir()
    (tmp_path / "named").mkdir()
    plain = model_figure(tmp_path / "plain", binary, np.roll(binary, 1, axis=2), 2)
    named = model_figure(tmp_path / "named", binary, np.roll(binary, 1, axis=2), 2, ["background", "brain"])
    assert plain.shape == named.shape and (plain == named).all()
    assert has_colour(plain, (0, 210, 90), tol=40) and has_colour(plain, (255, 64, 0), tol=40)

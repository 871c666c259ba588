"""Tests for nakt_ray.demo.synthetic: determinism, shapes, image content matching the masks, site differences, files."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from nakt_ray.demo.synthetic import (
    IMAGE_FORMATS,
    SITES,
    SiteStyle,
    generate_case,
    generate_mixed_case,
    get_site,
    write_folder,
)

SITE_NAMES = sorted(SITES)
SMALL = (64, 80)  # (height, width) for fast tests


def small(style: SiteStyle, size: tuple[int, int] = SMALL) -> SiteStyle:
    return dataclasses.replace(style, height_range=(size[0], size[0]), width_range=(size[1], size[1]))


def batch(style: SiteStyle, n: int, seed: int = 0, num_classes: int = 2) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [generate_case(rng, style, num_classes) for _ in range(n)]


def test_presets_exist_and_are_named() -> None:
    assert {"site_a", "site_b", "site_c", "site_d"} <= set(SITES)
    for name, style in SITES.items():
        assert style.name == name
        assert get_site(name) is style


@pytest.mark.parametrize("site", SITE_NAMES)
def test_same_seed_same_case_different_seed_different_case(site: str) -> None:
    style = SITES[site]
    image_1, label_1 = generate_case(np.random.default_rng(7), style)
    image_2, label_2 = generate_case(np.random.default_rng(7), style)
    image_3, label_3 = generate_case(np.random.default_rng(8), style)
    np.testing.assert_array_equal(image_1, image_2)
    np.testing.assert_array_equal(label_1, label_2)
    assert image_1.shape != image_3.shape or not np.array_equal(image_1, image_3)
    assert label_1.shape != label_3.shape or not np.array_equal(label_1, label_3)


@pytest.mark.parametrize("site", SITE_NAMES)
@pytest.mark.parametrize("num_classes", [2, 3])
def test_shapes_dtypes_and_label_values(site: str, num_classes: int) -> None:
    style = SITES[site]
    for image, label in batch(style, 4, seed=1, num_classes=num_classes):
        assert image.dtype == np.uint8 and label.dtype == np.uint8
        assert image.ndim == 2 and label.shape == image.shape
        assert style.height_range[0] <= image.shape[0] <= style.height_range[1]
        assert style.width_range[0] <= image.shape[1] <= style.width_range[1]
        assert set(np.unique(label)) == set(range(num_classes))  # every class present in every case
        # The head lies wholly inside the frame.
        assert label[0].max() == label[-1].max() == label[:, 0].max() == label[:, -1].max() == 0


@pytest.mark.parametrize("site", SITE_NAMES)
def test_image_does_not_depend_on_num_classes_and_class_2_lies_inside_the_head(site: str) -> None:
    style = small(SITES[site])
    for (image_2, label_2), (image_3, label_3) in zip(batch(style, 4, 3, 2), batch(style, 4, 3, 3)):
        np.testing.assert_array_equal(image_2, image_3)
        np.testing.assert_array_equal(label_2, (label_3 > 0).astype(np.uint8))
        inner = (label_3 == 2).sum()
        assert 0 < inner < 0.5 * (label_3 > 0).sum()


@pytest.mark.parametrize("site", SITE_NAMES)
def test_foreground_fraction_is_plausible(site: str) -> None:
    # HC18 heads cover 2 % .. 57 % of the image, 28 % on average.
    fractions = np.array([(label > 0).mean() for _, label in batch(small(SITES[site]), 24, seed=2)])
    assert fractions.min() > 0.01 and fractions.max() < 0.65
    assert 0.04 < fractions.mean() < 0.45


def ring_and_inside_means(image: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    """Mean grey level of the outer band of the head mask (the skull) and of its eroded core (the brain)."""
    head = label > 0
    radius = np.sqrt(head.sum() / np.pi)
    core = ndimage.binary_erosion(head, iterations=max(2, int(0.2 * radius)))
    ring = head & ~ndimage.binary_erosion(head, iterations=max(1, int(0.06 * radius)))
    return float(image[ring].mean()), float(image[core].mean())


@pytest.mark.parametrize("site", SITE_NAMES)
def test_skull_ring_is_brighter_than_the_brain(site: str) -> None:
    # The mask must correspond to image content: a bright band just inside its edge, darker inside.
    pairs = np.array([ring_and_inside_means(*case) for case in batch(small(SITES[site], (96, 128)), 16, seed=3)])
    ring, inside = pairs[:, 0], pairs[:, 1]
    assert ring.mean() > 1.5 * inside.mean()
    assert (ring > inside).mean() >= 0.8


def site_statistics(site: str, n: int = 24) -> dict[str, np.ndarray]:
    cases = batch(small(SITES[site], (96, 128)), n, seed=4)
    stats: dict[str, list[float]] = {"mean": [], "head_size": [], "noise": [], "black": []}
    for image, label in cases:
        grey = image.astype(np.float32)
        visible = image > 0
        stats["mean"].append(float(grey.mean()))
        stats["head_size"].append(float(np.sqrt((label > 0).mean())))
        # Relative high-pass residual: speckle and electronic noise against the local brightness.
        residual = grey - ndimage.uniform_filter(grey, 3)
        stats["noise"].append(float(residual[visible].std() / max(grey[visible].mean(), 1.0)))
        stats["black"].append(float((image == 0).mean()))
    return {k: np.array(v) for k, v in stats.items()}


def clearly_different(x: np.ndarray, y: np.ndarray) -> bool:
    """Welch-style check: the means differ by more than 4 standard errors."""
    se = np.sqrt(x.var(ddof=1) / len(x) + y.var(ddof=1) / len(y))
    return abs(x.mean() - y.mean()) > 4.0 * se


@pytest.fixture(scope="module")
def per_site_stats() -> dict[str, dict[str, np.ndarray]]:
    return {site: site_statistics(site) for site in SITE_NAMES}


@pytest.mark.parametrize(
    ("statistic", "larger", "smaller"),
    [
        ("mean", "site_c", "site_d"),  # bright site vs dark site
        ("mean", "site_c", "site_a"),
        ("mean", "site_a", "site_d"),
        ("head_size", "site_c", "site_b"),  # late gestation vs small heads
        ("head_size", "site_a", "site_b"),
        ("noise", "site_b", "site_c"),  # high-noise site vs clean site
        ("black", "site_a", "site_b"),  # convex fan vs full-frame linear probe
    ],
)
def test_sites_differ(
    per_site_stats: dict[str, dict[str, np.ndarray]], statistic: str, larger: str, smaller: str
) -> None:
    x, y = per_site_stats[larger][statistic], per_site_stats[smaller][statistic]
    assert x.mean() > y.mean()
    assert clearly_different(x, y)


def test_mixed_case_draws_several_sites() -> None:
    rng = np.random.default_rng(5)
    drawn = [generate_mixed_case(rng, 2, sites=["site_a", "site_b"])[2] for _ in range(12)]
    assert set(drawn) == {"site_a", "site_b"}
    image, label, site = generate_mixed_case(np.random.default_rng(0))
    assert site in SITES and image.shape == label.shape


def read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


@pytest.mark.parametrize("fmt", IMAGE_FORMATS)
@pytest.mark.parametrize(("num_classes", "rgb"), [(2, False), (3, True)])
def test_write_folder_files_are_readable_and_deterministic(
    tmp_path: Path, fmt: str, num_classes: int, rgb: bool
) -> None:
    kwargs = dict(num_cases=3, site="site_a", seed=11, num_classes=num_classes, fmt=fmt, rgb=rgb, prefix="t_",
                  size=(48, 64))
    out = write_folder(tmp_path / "one", **kwargs)
    assert out == tmp_path / "one"
    ids = [f"t_site_a_{i:04d}" for i in range(3)]
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i}.{fmt}" for i in ids]
    assert sorted(p.name for p in (out / "masks").iterdir()) == [f"{i}.png" for i in ids]
    for case_id in ids:
        image = read(out / "images" / f"{case_id}.{fmt}")
        mask = read(out / "masks" / f"{case_id}.png")
        assert image.shape == ((48, 64, 3) if rgb else (48, 64)) and image.dtype == np.uint8
        assert mask.shape == (48, 64) and mask.dtype == np.uint8
        expected = {0, 255} if num_classes == 2 else {0, 1, 2}
        assert set(np.unique(mask)) == expected
        if rgb:
            assert not np.array_equal(image[..., 0], image[..., 2])  # tinted, not pure grey
    meta = json.loads((out / "synthetic.json").read_text())
    assert (meta["site"], meta["seed"], meta["num_cases"], meta["num_classes"]) == ("site_a", 11, 3, num_classes)
    assert [c["case_id"] for c in meta["cases"]] == ids

    again = write_folder(tmp_path / "two", **kwargs)
    for first in sorted(out.rglob("*.*")):
        assert first.read_bytes() == (again / first.relative_to(out)).read_bytes(), first.name


def test_write_folder_png_mask_matches_generator_and_case_does_not_depend_on_count(tmp_path: Path) -> None:
    out_3 = write_folder(tmp_path / "three", 3, "site_d", seed=2, size=(40, 56))
    out_5 = write_folder(tmp_path / "five", 5, "site_d", seed=2, size=(40, 56))
    for i in range(3):
        name = f"site_d_{i:04d}.png"
        np.testing.assert_array_equal(read(out_3 / "images" / name), read(out_5 / "images" / name))
        np.testing.assert_array_equal(read(out_3 / "masks" / name), read(out_5 / "masks" / name))
    # Different sites with the same seed do not share geometry.
    out_b = write_folder(tmp_path / "b", 1, "site_a", seed=2, size=(40, 56))
    assert not np.array_equal(read(out_b / "masks" / "site_a_0000.png"), read(out_3 / "masks" / "site_d_0000.png"))


def test_write_folder_mixed_and_custom_style(tmp_path: Path) -> None:
    out = write_folder(tmp_path / "mixed", 12, "mixed", seed=0, size=(40, 56))
    meta = json.loads((out / "synthetic.json").read_text())
    assert meta["site"] == "mixed"
    sites = {c["site"] for c in meta["cases"]}
    assert len(sites) >= 2 and sites <= set(SITES)
    for case in meta["cases"]:
        assert case["case_id"].startswith(case["site"] + "_")
        assert (out / "images" / f"{case['case_id']}.png").is_file()

    custom = dataclasses.replace(SITES["site_b"], name="my_site")
    out = write_folder(tmp_path / "custom", 2, custom, seed=0)
    assert sorted(p.stem for p in (out / "masks").iterdir()) == ["my_site_0000", "my_site_0001"]


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda tmp: get_site("site_z"), "site_z"),
        (lambda tmp: write_folder(tmp, 1, "nope", seed=0), "nope"),
        (lambda tmp: write_folder(tmp, 1, "site_a", seed=0, num_classes=4), "num_classes"),
        (lambda tmp: write_folder(tmp, 1, "site_a", seed=0, fmt="gif"), "fmt"),
        (lambda tmp: write_folder(tmp, -1, "site_a", seed=0), "num_cases"),
        (lambda tmp: write_folder(tmp, 1, "site_a", seed=-3), "seed"),
        (lambda tmp: generate_case(np.random.default_rng(0), SITES["site_a"], num_classes=1), "num_classes"),
        (lambda tmp: generate_case(np.random.default_rng(0), SITES["site_a"], num_classes=5), "num_classes"),
        (lambda tmp: SiteStyle(head_size_range=(0.5, 0.2)), "head_size_range"),
        (lambda tmp: SiteStyle(speckle_strength=-1.0), "speckle_strength"),
    ],
)
def test_bad_input_raises_naming_the_argument(tmp_path: Path, call, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        call(tmp_path)


def test_unknown_site_lists_valid_names() -> None:
    with pytest.raises(ValueError) as info:
        get_site("site_x")
    for name in SITE_NAMES:
        assert name in str(info.value)
    assert "mixed" in str(info.value)

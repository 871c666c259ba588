"""Tests for the synthetic 3D data: nakt_ray/demo/synthetic/{render,phantom,volumes}.py (the generative image model,
the phantom, the sites and the dataset folders)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from nakt_ray.data.volumes import VolumeGeometry, grid_difference, read_label_volume, read_volume
from nakt_ray.demo.synthetic import (
    HELD_OUT_SITE,
    PHANTOM_LABELS,
    TEACHER_SITES,
    VOLUME_SITES,
    generate_volume,
    make_volume_folders,
    phantom_labels,
    phantom_mask,
    render_image,
    resample,
)
from nakt_ray.demo.synthetic.phantom import GENERATION_LABELS

SMALL = (24, 24, 24)        # field of view 60 mm: fast
CONTRAST = {0: (0.0, 0.0), 1: (1.0, 0.05), 2: (0.5, 0.05)}


def _blocks() -> np.ndarray:
    """Labels [20, 20, 20]: 0 around a cube of 1 whose inner half along w is 2."""
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[5:15, 5:15, 5:15] = 1
    lab[5:15, 5:15, 10:15] = 2
    return lab


def test_render_image_shape_determinism_and_contrast() -> None:
    lab = _blocks()
    kw = dict(bias_strength=0.2, blur_fwhm_mm=(2.0, 2.0, 2.0), noise_std=0.02)
    a = render_image(lab, (1.0, 1.0, 1.0), CONTRAST, rng=np.random.default_rng(0), **kw)
    b = render_image(lab, (1.0, 1.0, 1.0), CONTRAST, rng=np.random.default_rng(0), **kw)
    c = render_image(lab, (1.0, 1.0, 1.0), CONTRAST, rng=np.random.default_rng(1), **kw)
    assert a.shape == lab.shape and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    core1, core2 = a[8:12, 8:12, 6:8], a[8:12, 8:12, 12:14]
    assert core1.mean() > 1.5 * core2.mean() > 0          # each label near its mean (bias within +-50 %)
    assert a.min() >= 0                                    # Rician magnitudes
    ct = render_image(lab, (1.0, 1.0, 1.0), {0: (-1000.0, 5.0), 1: (40.0, 10.0), 2: (700.0, 50.0)},
                      rng=np.random.default_rng(0), noise_std=20.0, noise="gaussian")
    assert ct.min() < -900 and abs(float(np.median(ct[8:12, 8:12, 6:8])) - 40.0) < 30.0
    with pytest.raises(ValueError, match=r"label\(s\) \[2\]"):
        render_image(lab, (1.0, 1.0, 1.0), {0: (0.0, 0.0), 1: (1.0, 0.1)}, rng=np.random.default_rng(0))


def test_render_blurs_the_thick_slice_axis_more() -> None:
    """A 5 mm slice PSF on d smears the cube's edges along d and leaves w sharp."""
    img = render_image(_blocks(), (1.0, 1.0, 1.0), {0: (0.0, 0.0), 1: (1.0, 0.0), 2: (1.0, 0.0)},
                       blur_fwhm_mm=(5.0, 1.0, 1.0), rng=np.random.default_rng(0))
    across_d = np.abs(np.diff(img[:, 10, 10])).max()
    across_w = np.abs(np.diff(img[10, 10, :])).max()
    assert across_w > 0.8 and across_d < 0.4


def test_resample_keeps_extent_and_geometry() -> None:
    g = VolumeGeometry.create((40, 30, 30), (1.0, 1.0, 1.0), (10.0, -5.0, 3.0), [[0, 0, 1], [0, 1, 0], [1, 0, 0]])
    lab = np.zeros(g.shape, np.uint8)
    lab[10:30, 5:25, 5:25] = 3
    thick, tg = resample(lab.astype(np.float32), g, spacing=(5.0, 1.0, 1.0))
    near, ng = resample(lab, g, shape=tg.shape, nearest=True)
    assert thick.shape == (8, 30, 30) and tg.spacing == (5.0, 1.0, 1.0) and grid_difference(tg, ng) is None
    assert near.dtype == np.uint8 and set(np.unique(near)) == {0, 3}
    # same extent: the first voxel's corner is where it was
    corner = lambda geo: geo.affine() @ np.array([-0.5, -0.5, -0.5, 1.0])
    assert np.allclose(corner(g), corner(tg))


def test_phantom_labels_shapes_classes_determinism_and_variation() -> None:
    shape, spacing = (56, 56, 56), (2.5, 2.5, 2.5)
    a = phantom_labels(shape, spacing, np.random.default_rng(0))
    assert a.shape == shape and a.dtype == np.uint8
    assert set(np.unique(a)) == set(range(len(GENERATION_LABELS)))     # every tissue drawn
    assert np.array_equal(a, phantom_labels(shape, spacing, np.random.default_rng(0)))
    b = phantom_labels(shape, spacing, np.random.default_rng(1))
    mask_a, mask_b = phantom_mask(a), phantom_mask(b)
    assert set(np.unique(mask_a)) == set(range(len(PHANTOM_LABELS))) and PHANTOM_LABELS[0] == "background"
    counts_a = np.bincount(mask_a.ravel(), minlength=5)
    counts_b = np.bincount(mask_b.ravel(), minlength=5)
    assert np.all(counts_a[1:] != counts_b[1:])                      # size varies per case
    assert counts_a[1] > counts_a[2] > counts_a[4] > 0                # large > small organ > lesion
    # the lesion lies inside the large organ: its dilation touches organ 1 and nothing else but itself
    from scipy import ndimage
    ring = ndimage.binary_dilation(a == 4) & (a != 4)
    assert set(np.unique(a[ring])) <= {1, 3}


def test_sites_differ_in_spacing_orientation_and_contrast() -> None:
    assert set(TEACHER_SITES) | {HELD_OUT_SITE} <= set(VOLUME_SITES) and HELD_OUT_SITE not in TEACHER_SITES
    out = {name: generate_volume(site, np.random.default_rng(7)) for name, site in VOLUME_SITES.items()}
    t1_img, t1_mask, t1_geo = out["mr_t1"]
    t2_img, t2_mask, t2_geo = out["mr_t2"]
    # the thick-slice site has fewer slices and a geometry that says 5 mm, over the same field of view
    assert t2_geo.shape[0] < t1_geo.shape[0] and t2_geo.spacing[0] == pytest.approx(5.0)
    assert t2_geo.shape[0] * 5.0 == pytest.approx(t1_geo.shape[0] * 2.5, abs=5.0)
    for name, (img, mask, geo) in out.items():
        assert img.shape == mask.shape == geo.shape and img.dtype == np.float32 and mask.dtype == np.uint8
        d = geo.direction_matrix
        axis_aligned = np.allclose(np.abs(d), np.round(np.abs(d)))
        assert axis_aligned == (VOLUME_SITES[name].tilt_deg == 0), name
        assert set(np.unique(mask)) == set(range(len(PHANTOM_LABELS))), name
    assert not np.allclose(t2_geo.direction_matrix, np.round(t2_geo.direction_matrix))   # oblique
    # same anatomy, different contrast: the large organ is brighter than the small one in T1, darker in T2
    t1 = [t1_img[t1_mask == k].mean() for k in (1, 2)]
    t2 = [t2_img[t2_mask == k].mean() for k in (1, 2)]
    assert t1[0] > t1[1] and t2[0] < t2[1]
    ct_img, ct_mask, _ = out["ct"]
    assert ct_img[ct_mask == 3].mean() > 150 and ct_img.min() < -900   # contrasted vessel, air, in HU


def test_make_volume_folders_writes_readable_pairs_deterministically(tmp_path) -> None:
    kw = dict(cases_per_site=1, seed=3, shape=SMALL, transferal_cases=4, val_cases=1, test_cases=2)
    summary = make_volume_folders(tmp_path / "a", **kw)
    root = tmp_path / "a"
    assert summary["labels"] == list(PHANTOM_LABELS) and set(summary["sites"]) == set(TEACHER_SITES)
    assert summary["held_out"] == HELD_OUT_SITE
    assert not (root / "transferal" / "masks").exists()
    assert {p.name for p in (root / "transferal_truth" / "masks").iterdir()} == \
        {p.name for p in (root / "transferal" / "images").iterdir()}
    # transferal cycles through every site, the held-out one included
    assert {c.split("_", 1)[1].rsplit("_", 1)[0] for c in summary["cases"]["transferal"]} == \
        set(TEACHER_SITES) | {HELD_OUT_SITE}
    pairs = [(root / s, c) for s in TEACHER_SITES for c in summary["cases"][s]]
    pairs += [(root / "val", c) for c in summary["cases"]["val"]]
    pairs += [(root / "test", c) for c in summary["cases"]["test"]]
    for folder, case in pairs:
        image, ig = read_volume(folder / "images" / f"{case}.nii.gz")
        mask, mg = read_label_volume(folder / "masks" / f"{case}.nii.gz")
        assert image.shape == mask.shape == ig.shape and mask.dtype == np.uint8 and int(mask.max()) <= 4
        assert grid_difference(ig, mg) is None, case
    t2 = summary["cases"]["mr_t2"][0]
    _, g = read_volume(root / "mr_t2" / "images" / f"{t2}.nii.gz")
    assert g.spacing[0] == pytest.approx(5.0) and not np.allclose(g.direction_matrix, np.round(g.direction_matrix))
    meta = json.loads((root / "volumes.json").read_text())
    assert meta["seed"] == 3 and set(meta["site_parameters"]) == set(TEACHER_SITES) | {HELD_OUT_SITE}
    # the same seed gives bit-identical files
    make_volume_folders(tmp_path / "b", **kw)
    files = sorted(p.relative_to(root) for p in root.rglob("*.nii.gz"))
    assert len(files) == 3 * 2 + 4 * 2 + 1 * 2 + 2 * 2
    for rel in files:
        assert (root / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_make_volume_folders_rejects_bad_arguments(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown site"):
        make_volume_folders(tmp_path, sites=("mr_t9",), cases_per_site=1)
    with pytest.raises(ValueError, match="cases_per_site"):
        make_volume_folders(tmp_path, cases_per_site=-1)

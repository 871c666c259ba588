"""Volume preprocessing and its exact inverse (nakt_ray/data/volume_preprocess.py), and its config
(nakt_ray/config/volume.py)."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from test_volumes import oblique_nifti_affine, rotation, write_nifti

from nakt_ray.config.volume import CTStatistics, VolumePreprocessConfig
from nakt_ray.data.volume_preprocess import (
    VolumeTransform,
    ct_statistics,
    orientation_for,
    preprocess_label_volume,
    preprocess_volume,
    restore_volume,
)
from nakt_ray.data.volumes import (
    VolumeGeometry,
    geometry_from_sitk,
    read_label_volume,
    read_volume,
    to_sitk_image,
    write_volume,
)
from nakt_ray.errors import ConfigError, DataError

OBLIQUE = VolumeGeometry.create((12, 30, 36), (3.0, 0.9, 0.7), (-12.5, 30.25, 41.0), rotation(20, 20)[:, ::-1])


def blobs(shape, centres_mm, radii_mm, spacing) -> np.ndarray:
    """Label map ``[D, H, W]`` of spheres (class i + 1, later ones on top) with centres and radii in mm, so they
    stay round on an anisotropic grid: smooth shapes whose boundaries are the only place a round trip may differ."""
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"))
    out = np.zeros(shape, np.uint8)
    for i, (c, r) in enumerate(zip(centres_mm, radii_mm)):
        out[((grid - np.reshape(c, (3, 1, 1, 1))) ** 2).sum(0) <= r * r] = i + 1
    return out


def near_boundary(labels: np.ndarray) -> np.ndarray:
    """Voxels with a different label among their 26 neighbours (edges replicate)."""
    padded = np.pad(labels, 1, mode="edge")
    out = np.zeros(labels.shape, bool)
    d, h, w = labels.shape
    for dd in (0, 1, 2):
        for dh in (0, 1, 2):
            for dw in (0, 1, 2):
                out |= padded[dd:dd + d, dh:dh + h, dw:dw + w] != labels
    return out


def one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    return (labels[None] == np.arange(k).reshape(k, 1, 1, 1)).astype(np.float32)


def physical(geometry: VolumeGeometry, index) -> np.ndarray:
    return (geometry.affine() @ np.append(np.asarray(index, float), 1.0))[:3]


# ------------------------------------------------------------------------------------------------------- spatial


@pytest.mark.parametrize("code", ["RAS", "LPS"])
@pytest.mark.parametrize("direction", [rotation(20, 20)[:, ::-1], np.diag([1.0, -1.0, -1.0])[[1, 0, 2]]])
def test_orientation_permutes_and_flips_as_simpleitk_dicomorient(code, direction):
    g = VolumeGeometry.create((5, 6, 7), (3.0, 0.9, 0.7), (1.0, 2.0, 3.0), direction)
    image = np.random.default_rng(0).normal(size=g.shape).astype(np.float32)
    x, tr = preprocess_volume(image, g, VolumePreprocessConfig(orientation=code, modality="none", crop_nonzero=False))
    ref = sitk.DICOMOrient(to_sitk_image(image, g), code)
    np.testing.assert_array_equal(x[0], sitk.GetArrayFromImage(ref))
    ref_geometry = geometry_from_sitk(ref.GetSize(), ref.GetSpacing(), ref.GetOrigin(), ref.GetDirection())
    np.testing.assert_allclose(tr.geometry.affine(), ref_geometry.affine(), atol=1e-9)


def test_every_voxel_keeps_its_physical_place_through_orientation_and_crop():
    # d runs Posterior, h Inferior, w Left: RAS needs d and h swapped and every axis reversed
    direction = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])       # columns d, h, w (LPS)
    g = VolumeGeometry.create((6, 7, 8), (3.0, 0.9, 0.7), (5.0, -3.0, 2.0), direction)
    image = np.zeros(g.shape, np.float32)
    image[2:5, 1:4, 3:7] = np.arange(1, 37).reshape(3, 3, 4)
    x, tr = preprocess_volume(image, g, VolumePreprocessConfig(orientation="RAS", modality="none"))
    assert tr.permutation == (1, 0, 2) and tr.flips == (True, True, True) and x.shape[1:] == (3, 3, 4)
    for value in range(1, 37):
        before = np.argwhere(image == value)[0]
        after = np.argwhere(x[0] == value)[0]
        np.testing.assert_allclose(physical(tr.geometry, after), physical(g, before), atol=1e-9)


def test_resampling_rounds_shapes_like_nnunet_and_keeps_the_extent():
    cfg = VolumePreprocessConfig(spacing=(1.5, 1.2, 1.2), orientation=None, modality="none", crop_nonzero=False)
    x, tr = preprocess_volume(np.ones(OBLIQUE.shape, np.float32), OBLIQUE, cfg)
    expect = tuple(int(v) for v in np.round(np.multiply(OBLIQUE.shape, OBLIQUE.spacing) / (1.5, 1.2, 1.2)))
    assert x.shape == (1, *expect) == (1, 24, 22, 21)
    np.testing.assert_allclose(np.multiply(tr.resampled.shape, tr.resampled.spacing),
                               np.multiply(OBLIQUE.shape, OBLIQUE.spacing))          # same field of view
    centre = lambda g: physical(g, (np.asarray(g.shape) - 1) / 2)                      # noqa: E731
    np.testing.assert_allclose(centre(tr.resampled), centre(OBLIQUE), atol=1e-9)
    np.testing.assert_allclose(tr.resampled.spacing, (1.5, 1.2, 1.2), rtol=0.05)       # the target, up to rounding
    np.testing.assert_allclose(x, 1.0, atol=1e-6)


def test_labels_survive_preprocess_one_hot_restore_argmax_on_an_oblique_anisotropic_nifti(tmp_path):
    """The acceptance round trip: a NIfTI written by nibabel (0.7 x 0.9 x 3.0 mm, 20 degrees oblique about two
    axes, origin far from 0) is read, preprocessed to 1 mm isotropic RAS, and a perfect prediction (the one-hot
    labels on the preprocessed grid) restored: it lands on the original grid and equals the labels except at
    their boundaries."""
    affine = oblique_nifti_affine()
    spacing_dhw = (3.0, 0.9, 0.7)
    # an organ (class 1) holding a lesion (class 2)
    labels = blobs((12, 30, 36), [(18, 13, 12), (16, 14, 13.5)], [7.5, 4.0], spacing_dhw)
    image = np.where(labels > 0, 200.0 + 50 * labels, 0.0).astype(np.float32)       # MRI-like: 0 outside
    image_path = write_nifti(tmp_path / "ct.nii.gz", image.transpose(2, 1, 0), affine)
    mask_path = write_nifti(tmp_path / "ct_mask.nii.gz", labels.transpose(2, 1, 0), affine)

    array, geometry = read_volume(image_path)
    mask, mask_geometry = read_label_volume(mask_path)
    cfg = VolumePreprocessConfig(spacing=(1.0, 1.0, 1.0), orientation="RAS", modality="mri", crop_nonzero=True)
    x, tr = preprocess_volume(array, geometry, cfg)
    y = preprocess_label_volume(mask, mask_geometry, cfg, tr)
    assert x.shape[1:] == y.shape == tr.geometry.shape and y.dtype == np.uint8
    assert tr.resampled.shape == (36, 27, 25)                    # round((12, 30, 36) * (3, 0.9, 0.7) / 1)
    assert set(np.unique(y)) == {0, 1, 2}

    tr = VolumeTransform.from_dict(json.loads(json.dumps(tr.to_dict())))   # as a later stage would read it
    probs = restore_volume(one_hot(y, 3), tr)
    assert probs.shape == (3, *mask.shape)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    restored = probs.argmax(0).astype(np.uint8)
    wrong = restored != mask
    assert wrong.mean() < 0.03                                   # > 97 % of voxels agree
    assert not (wrong & ~near_boundary(mask)).any()              # and every disagreement is at a boundary
    for k in (1, 2):                                             # per class, at 0.7 mm voxels on 1 mm resampling
        dice = 2 * ((restored == k) & (mask == k)).sum() / ((restored == k).sum() + (mask == k).sum())
        assert dice > 0.9, (k, dice)

    # The restored prediction is on the original grid exactly, and written as NIfTI it has the input's affine.
    assert tr.original == geometry
    out = write_volume(tmp_path / "pred.nii.gz", restored, tr.original)
    written = nib.load(str(out))
    assert written.shape == image.transpose(2, 1, 0).shape
    assert np.allclose(written.affine, nib.load(str(image_path)).affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(written.dataobj).transpose(2, 1, 0), restored)


def test_restore_pads_the_crop_with_certain_background():
    image = np.zeros(OBLIQUE.shape, np.float32)
    image[4:8, 10:20, 12:30] = 1.0
    x, tr = preprocess_volume(image, OBLIQUE, VolumePreprocessConfig(orientation=None, modality="none"))
    assert x.shape[1:] == (4, 10, 18)                             # cropped to the non-zero box
    probs = np.zeros((2, *x.shape[1:]), np.float32)
    probs[1] = 1.0                                                # "everything inside the crop is foreground"
    restored = restore_volume(probs, tr)
    np.testing.assert_array_equal(restored.argmax(0), (image > 0).astype(int))
    np.testing.assert_allclose(restored.sum(0), 1.0, atol=1e-6)


def test_label_map_on_another_grid_is_refused():
    x, tr = preprocess_volume(np.ones(OBLIQUE.shape, np.float32), OBLIQUE, VolumePreprocessConfig())
    shifted = VolumeGeometry.create(OBLIQUE.shape, OBLIQUE.spacing, (0.0, 0.0, 0.0), OBLIQUE.direction)
    with pytest.raises(DataError, match=r"label map: has origin \(0\.0, 0\.0, 0\.0\) mm.*expected the image's grid"):
        preprocess_label_volume(np.zeros(OBLIQUE.shape, np.uint8), shifted, VolumePreprocessConfig(), tr)
    with pytest.raises(ConfigError, match=r"got orientation 'LPS'.*preprocessed with 'RAS'"):
        preprocess_label_volume(np.zeros(OBLIQUE.shape, np.uint8), OBLIQUE, VolumePreprocessConfig(orientation="LPS"),
                                tr)
    with pytest.raises(DataError, match=r"restore_volume probabilities: got \(2, 3, 4, 5\)"):
        restore_volume(np.zeros((2, 3, 4, 5), np.float32), tr)


def test_orientation_for_an_axis_aligned_volume_is_a_pure_permutation():
    lps_identity = VolumeGeometry.create((4, 5, 6), (1, 1, 1), (0, 0, 0), np.eye(3)[:, ::-1])   # ITK identity
    assert orientation_for(lps_identity, "LPS") == ((0, 1, 2), (False, False, False))
    assert orientation_for(lps_identity, "RAS") == ((0, 1, 2), (False, True, True))
    assert orientation_for(lps_identity, None) == ((0, 1, 2), (False, False, False))


# --------------------------------------------------------------------------------------------------- intensities


def test_ct_is_clipped_to_the_dataset_percentiles_and_z_scored_with_its_statistics():
    stats = CTStatistics(mean=100.0, std=50.0, p_low=-200.0, p_high=400.0)
    image = np.array([-1000.0, -200.0, 100.0, 400.0, 3000.0], np.float32).reshape(1, 1, 5)
    g = VolumeGeometry.create(image.shape, (1, 1, 1), (0, 0, 0))
    x, _ = preprocess_volume(image, g, VolumePreprocessConfig(modality="ct", ct_stats=stats, orientation=None,
                                                              crop_nonzero=False))
    np.testing.assert_allclose(x.ravel(), [-6.0, -6.0, 0.0, 6.0, 6.0])


def test_ct_without_dataset_statistics_is_a_config_error():
    with pytest.raises(ConfigError, match=r"config key 'volume\.ct_stats': got None; expected the dataset's CT "
                                          r"statistics.*ct_statistics"):
        preprocess_volume(np.ones(OBLIQUE.shape, np.float32), OBLIQUE, VolumePreprocessConfig(modality="ct"))


@pytest.mark.parametrize("crop_nonzero", [True, False])
def test_mri_is_z_scored_per_volume_over_non_zero_voxels(crop_nonzero):
    rng = np.random.default_rng(0)
    image = np.zeros(OBLIQUE.shape, np.float32)
    image[2:10, 5:25, 5:30] = rng.normal(500.0, 80.0, (8, 20, 25))
    x, _ = preprocess_volume(image, OBLIQUE, VolumePreprocessConfig(modality="mri", orientation=None,
                                                                    crop_nonzero=crop_nonzero))
    inside = x[0] != 0 if crop_nonzero else np.ones(x.shape[1:], bool)
    assert abs(float(x[0][inside].mean())) < 1e-4 and abs(float(x[0][inside].std()) - 1) < 1e-4
    if not crop_nonzero:
        assert x[0, 0, 0, 0] < -0.5                               # the zero background joined the statistics


def test_ct_statistics_follow_nnunet_foreground_sampling():
    rng = np.random.default_rng(1)
    cases = []
    for _ in range(3):
        image = rng.normal(-1000, 5, (6, 20, 20)).astype(np.float32)        # air
        mask = np.zeros(image.shape, np.uint8)
        mask[1:5, 5:15, 5:15] = 1
        image[mask > 0] = rng.normal(40.0, 10.0, int(mask.sum()))           # soft tissue
        cases.append((image, mask))
    stats = ct_statistics(cases)
    assert stats["mean"] == pytest.approx(40.0, abs=0.5) and stats["std"] == pytest.approx(10.0, abs=0.5)
    foreground = np.concatenate([image[mask > 0] for image, mask in cases])
    assert stats["p_low"] == pytest.approx(np.percentile(foreground, 0.5), abs=2.0)
    assert stats["p_high"] == pytest.approx(np.percentile(foreground, 99.5), abs=2.0)
    CTStatistics(**stats)._validate("volume.ct_stats.")                # fits the config as it is
    by_rule = ct_statistics([c[0] for c in cases], foreground=lambda im: im > -500)
    assert by_rule["mean"] == pytest.approx(stats["mean"], abs=0.5)
    assert ct_statistics(cases, seed=3) != stats and ct_statistics(cases) == stats   # sampled, and seeded
    with pytest.raises(DataError, match=r"ct_statistics case 0: has no mask and no foreground rule"):
        ct_statistics([cases[0][0]])
    with pytest.raises(DataError, match="found no foreground voxel"):
        ct_statistics([(cases[0][0], np.zeros_like(cases[0][1]))])


# -------------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("kwargs,key,allowed", [
    ({"spacing": (1.0, 0.0, 1.0)}, "spacing", "three spacings (d, h, w) in mm between 0.01 and 50"),
    ({"spacing": (1.0, 1.0, 80.0)}, "spacing", "between 0.01 and 50"),
    ({"spacing": (1.0, 1.0)}, "spacing", "three spacings"),
    ({"orientation": "XYZ"}, "orientation", "'RAS', 'LPS' or null"),
    ({"modality": "pet"}, "modality", "one of 'ct', 'mri', 'none'"),
    ({"clip": (99.5, 0.5)}, "clip", "0 <= low < high <= 100"),
    ({"clip": (0.5, 101.0)}, "clip", "0 <= low < high <= 100"),
    ({"ct_stats": CTStatistics(0.0, 0.0, -1.0, 1.0)}, "ct_stats.std", "a standard deviation > 0"),
    ({"ct_stats": CTStatistics(0.0, 1.0, 5.0, 1.0)}, "ct_stats.p_high", "an intensity above p_low"),
    ({"ct_stats": CTStatistics(float("nan"), 1.0, -1.0, 1.0)}, "ct_stats.mean", "a finite number"),
])
def test_config_errors_name_the_key_the_value_and_what_is_allowed(kwargs, key, allowed):
    with pytest.raises(ConfigError) as err:
        VolumePreprocessConfig(**kwargs)._validate("preprocess.")
    assert str(err.value).startswith(f"config key 'preprocess.{key}': got ")
    assert allowed in str(err.value)


def test_default_config_is_valid_and_builds_from_plain_data():
    from nakt_ray.config.convert import build

    VolumePreprocessConfig()._validate("preprocess.")
    cfg = build(VolumePreprocessConfig, {"spacing": [3, 0.8, 0.8], "modality": "ct",
                                         "ct_stats": {"mean": 60.0, "std": 140.0, "p_low": -958, "p_high": 1320}},
                "preprocess")
    assert cfg.spacing == (3.0, 0.8, 0.8) and cfg.ct_stats == CTStatistics(60.0, 140.0, -958.0, 1320.0)

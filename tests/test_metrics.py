"""Segmentation metrics on hand-made label maps, cross-checked against MONAI; bootstrap intervals."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_iou

from nakt_ray.metrics import bootstrap_ci, dice_per_class, foreground_mean, iou_per_class

PRED = [[1, 1], [0, 0]]
TARGET = [[1, 0], [0, 0]]

# (pred, target, num_classes, expected Dice per class, expected IoU per class)
KNOWN = [
    # class 0: |P|=2, |T|=3, overlap 2; class 1: |P|=2, |T|=1, overlap 1
    (PRED, TARGET, 2, [4 / 5, 2 / 3], [2 / 3, 1 / 2]),
    (PRED, PRED, 2, [1.0, 1.0], [1.0, 1.0]),
    # class 2 absent from both -> 1.0
    (PRED, TARGET, 3, [4 / 5, 2 / 3, 1.0], [2 / 3, 1 / 2, 1.0]),
    # class 1 only in the prediction, class 2 only in the target -> 0.0 each
    ([[1, 0], [0, 0]], [[2, 0], [0, 0]], 3, [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]),
    # everything background in both -> foreground classes empty in both -> 1.0
    ([[0, 0], [0, 0]], [[0, 0], [0, 0]], 2, [1.0, 1.0], [1.0, 1.0]),
    # complete miss
    ([[1, 1], [1, 1]], [[0, 0], [0, 0]], 2, [0.0, 0.0], [0.0, 0.0]),
    ([[0, 1, 2, 2]], [[0, 2, 2, 1]], 3, [1.0, 0.0, 0.5], [1.0, 0.0, 1 / 3]),
]


@pytest.mark.parametrize("pred, target, num_classes, dice, iou", KNOWN)
def test_known_values(pred: list, target: list, num_classes: int, dice: list, iou: list) -> None:
    pred_arr, target_arr = np.array(pred), np.array(target)
    np.testing.assert_allclose(dice_per_class(pred_arr, target_arr, num_classes), dice)
    np.testing.assert_allclose(iou_per_class(pred_arr, target_arr, num_classes), iou)


def test_batch_form() -> None:
    rows = [row for row in KNOWN if row[2] == 3 and np.shape(row[0]) == (2, 2)]  # the 2x2, 3-class cases
    preds = np.stack([np.array(row[0]) for row in rows])  # [B, H, W]
    targets = np.stack([np.array(row[1]) for row in rows])
    dice = dice_per_class(preds, targets, 3)
    iou = iou_per_class(preds, targets, 3)
    assert dice.shape == iou.shape == (len(rows), 3)
    np.testing.assert_allclose(dice, [row[3] for row in rows])
    np.testing.assert_allclose(iou, [row[4] for row in rows])
    # extra leading axes work too: [2, B, H, W] -> [2, B, C]
    assert dice_per_class(np.stack([preds, preds]), np.stack([targets, targets]), 3).shape == (2, len(rows), 3)


def test_accepts_any_integer_dtype() -> None:
    pred, target = np.array(PRED, dtype=np.uint8), np.array(TARGET, dtype=np.int64)
    np.testing.assert_allclose(dice_per_class(pred, target, 2), [4 / 5, 2 / 3])
    np.testing.assert_allclose(dice_per_class(pred.astype(bool), target.astype(bool), 2), [4 / 5, 2 / 3])


def _one_hot_tensor(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """[B, H, W] -> float one-hot [B, C, H, W]."""
    return torch.nn.functional.one_hot(torch.from_numpy(labels).long(), num_classes).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("num_classes", [2, 4])
def test_agrees_with_monai_on_non_empty_classes(num_classes: int) -> None:
    rng = np.random.default_rng(num_classes)
    target = rng.integers(0, num_classes, size=(3, 12, 10))
    pred = np.where(rng.random(target.shape) < 0.3, rng.integers(0, num_classes, target.shape), target)
    # every class present in every map, so MONAI's empty-class handling never applies
    for labels in (pred, target):
        for b in range(3):
            assert set(np.unique(labels[b])) == set(range(num_classes))
    y_pred, y = _one_hot_tensor(pred, num_classes), _one_hot_tensor(target, num_classes)
    monai_dice = compute_dice(y_pred, y, include_background=True).numpy()
    monai_iou = compute_iou(y_pred, y, include_background=True).numpy()
    np.testing.assert_allclose(dice_per_class(pred, target, num_classes), monai_dice, rtol=1e-5)
    np.testing.assert_allclose(iou_per_class(pred, target, num_classes), monai_iou, rtol=1e-5)


# (pred, target, num_classes, message fragment)
ERRORS = [
    (np.zeros((2, 2), int), np.zeros((2, 3), int), 2, "does not match target shape"),
    (np.zeros((2, 2)), np.zeros((2, 2), int), 2, "integer label map"),
    (np.zeros((2, 2), int), np.full((2, 2), 2), 2, "expected 0 .. 1"),
    (np.full((2, 2), -1), np.zeros((2, 2), int), 2, "expected 0 .. 1"),
    (np.zeros(4, int), np.zeros(4, int), 2, "[H, W]"),
    (np.zeros((2, 2), int), np.zeros((2, 2), int), 0, "num_classes"),
]


@pytest.mark.parametrize("pred, target, num_classes, message", ERRORS)
@pytest.mark.parametrize("metric", [dice_per_class, iou_per_class])
def test_errors(metric, pred: np.ndarray, target: np.ndarray, num_classes: int, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        metric(pred, target, num_classes)
    assert message in str(excinfo.value)


def test_foreground_mean() -> None:
    assert foreground_mean(np.array([0.2, 0.6, 1.0])) == pytest.approx(0.8)
    assert isinstance(foreground_mean(np.array([0.2, 0.6])), float)
    batch = foreground_mean(np.array([[0.0, 0.5, 0.7], [1.0, 0.1, 0.3]]))
    np.testing.assert_allclose(batch, [0.6, 0.2])
    with pytest.raises(ValueError, match="at least 2 classes"):
        foreground_mean(np.array([0.5]))


# ---------------------------------------------------------------------------------------------------------------
# bootstrap
# ---------------------------------------------------------------------------------------------------------------
def test_bootstrap_contains_mean_and_narrows_with_more_cases() -> None:
    rng = np.random.default_rng(1)
    few = rng.normal(0.8, 0.1, size=10)
    many = rng.normal(0.8, 0.1, size=1000)
    mean_few, low_few, high_few = bootstrap_ci(few)
    mean_many, low_many, high_many = bootstrap_ci(many)
    assert mean_few == pytest.approx(few.mean())
    assert low_few < mean_few < high_few
    assert low_many < mean_many < high_many
    assert (high_many - low_many) < (high_few - low_few) / 3


def test_bootstrap_width_matches_normal_theory() -> None:
    values = np.random.default_rng(2).normal(0.0, 1.0, size=400)
    _, low, high = bootstrap_ci(values, n_boot=2000)
    # 95 % normal interval of a mean: 2 * 1.96 * sd / sqrt(n) ~ 0.196
    assert 0.16 < high - low < 0.23


def test_bootstrap_alpha_and_seed() -> None:
    values = np.random.default_rng(3).random(50)
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(values, seed=7)
    _, low95, high95 = bootstrap_ci(values, alpha=0.05)
    _, low50, high50 = bootstrap_ci(values, alpha=0.5)
    assert low95 < low50 < high50 < high95


def test_bootstrap_single_case_is_degenerate() -> None:
    assert bootstrap_ci([0.7]) == pytest.approx((0.7, 0.7, 0.7))


@pytest.mark.parametrize(
    "values, kwargs, message",
    [
        ([], {}, "non-empty"),
        ([[0.1, 0.2]], {}, "1-D"),
        ([0.1, np.nan], {}, "finite"),
        ([0.1, 0.2], {"alpha": 0.0}, "alpha"),
        ([0.1, 0.2], {"alpha": 1.5}, "alpha"),
        ([0.1, 0.2], {"n_boot": 0}, "n_boot"),
    ],
)
def test_bootstrap_errors(values: list, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(values, **kwargs)


def test_surface_scores_on_hand_made_discs() -> None:
    from nakt_ray.metrics import case_scores, surface_scores

    yy, xx = np.mgrid[:40, :40]
    disc = lambda cy, cx, r: ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.int64)  # noqa: E731
    target = np.stack([disc(20, 20, 8), disc(20, 20, 8), disc(20, 20, 8)])
    pred = np.stack([disc(20, 20, 8), disc(20, 23, 8), np.zeros((40, 40), np.int64)])  # same, shifted 3 px, empty
    s = surface_scores(pred, target, 2, ["hd95", "nsd"], nsd_tolerance=1.0)
    assert s["hd95"][0] == 0 and 2.0 <= s["hd95"][1] <= 3.0 and np.isnan(s["hd95"][2])
    assert s["nsd"][0] == 1.0 and 0.0 < s["nsd"][1] < 1.0 and s["nsd"][2] == 0.0
    wide = surface_scores(pred, target, 2, ["nsd"], nsd_tolerance=3.0)["nsd"][1]
    assert wide > s["nsd"][1]  # a wider tolerance forgives the shift
    all_scores = case_scores(pred, target, 2, ["hd95"])
    assert set(all_scores) == {"dice", "iou", "hd95"} and all_scores["dice"][0] == 1.0
    with pytest.raises(ValueError, match="unknown surface metrics"):
        surface_scores(pred, target, 2, ["hd100"])


# ---------------------------------------------------------------------------------------------------------------
# boundary metrics of the evaluation: HD95 and NSD per class, in pixels or mm
# ---------------------------------------------------------------------------------------------------------------
def _squares(shift_rows: int = 0, shift_cols: int = 3, size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A 10x10 square (target) and the same square moved by (shift_rows, shift_cols) pixels (prediction)."""
    target = np.zeros((size, size), np.int64)
    pred = np.zeros((size, size), np.int64)
    target[10:20, 10:20] = 1
    pred[10 + shift_rows:20 + shift_rows, 10 + shift_cols:20 + shift_cols] = 1
    return pred, target


def test_hd95_and_nsd_of_two_squares_offset_by_3_px() -> None:
    from nakt_ray.metrics import boundary_per_class

    pred, target = _squares()
    at2 = boundary_per_class(pred, target, 2, nsd_tolerance=2.0)
    at3 = boundary_per_class(pred, target, 2, nsd_tolerance=3.0)
    assert at2["hd95"][1] == pytest.approx(3.0) and at3["hd95"][1] == pytest.approx(3.0)
    # pred boundary: 36 pixels, 14 of them 3 px from the target's (its far side and 4 middle pixels of its near
    # side); the target's likewise: (36 - 14) * 2 / 72 within 2 px
    assert at2["nsd"][1] == pytest.approx(44 / 72) and at2["nsd"][1] < 1.0
    assert at3["nsd"][1] == 1.0
    assert np.isnan(at2["hd95"][0]) and np.isnan(at2["nsd"][0])  # background is not scored
    swapped = boundary_per_class(target, pred, 2, nsd_tolerance=2.0)  # symmetric
    np.testing.assert_allclose(swapped["hd95"], at2["hd95"])
    np.testing.assert_allclose(swapped["nsd"], at2["nsd"])
    same = boundary_per_class(target, target, 2)
    assert (same["hd95"][1], same["nsd"][1]) == (0.0, 1.0)


def test_boundary_metrics_in_mm_with_a_pixel_spacing() -> None:
    from nakt_ray.metrics import boundary_per_class

    pred, target = _squares(shift_cols=3)  # 3 columns of 0.5 mm: 1.5 mm
    mm = boundary_per_class(pred, target, 2, nsd_tolerance=1.5, spacing=(2.0, 0.5))
    assert mm["hd95"][1] == pytest.approx(1.5) and mm["nsd"][1] == 1.0
    assert boundary_per_class(pred, target, 2, nsd_tolerance=1.0, spacing=(2.0, 0.5))["nsd"][1] < 1.0
    pred, target = _squares(shift_rows=3, shift_cols=0)  # 3 rows of 2 mm: 6 mm
    assert boundary_per_class(pred, target, 2, spacing=(2.0, 0.5))["hd95"][1] == pytest.approx(6.0)


def test_boundary_metrics_of_absent_classes() -> None:
    """Absent from both: HD95 0, NSD 1 (as Dice 1); from one of them: HD95 undefined (NaN), NSD 0."""
    from nakt_ray.metrics import boundary_per_class, foreground_nanmean

    pred, target = _squares()
    empty = np.zeros_like(pred)
    target3 = target.copy()
    target3[30:35, 30:35] = 2  # class 2 only in the target
    s = boundary_per_class(np.stack([pred, pred, empty]), np.stack([target, target3, empty]), 3)
    np.testing.assert_allclose(s["hd95"][:, 1:], [[3.0, 0.0], [3.0, np.nan], [0.0, 0.0]])
    np.testing.assert_allclose(s["nsd"][:, 1:], [[44 / 72, 1.0], [44 / 72, 0.0], [1.0, 1.0]])
    missed = boundary_per_class(empty, target, 2)
    assert np.isnan(missed["hd95"][1]) and missed["nsd"][1] == 0.0
    # the case's mean over foreground classes leaves an undefined HD95 out; NaN only if every class is undefined
    np.testing.assert_allclose(foreground_nanmean(s["hd95"]), [1.5, 3.0, 0.0])
    assert np.isnan(foreground_nanmean(missed["hd95"]))
    assert foreground_nanmean(np.array([0.0, 0.4, 0.8])) == pytest.approx(0.6)


@pytest.mark.parametrize("spacing", [None, (0.7, 1.3)])
def test_boundary_metrics_agree_with_monai(spacing) -> None:
    import warnings

    from monai.metrics import compute_hausdorff_distance, compute_surface_dice
    from scipy.ndimage import gaussian_filter

    from nakt_ray.metrics import boundary_per_class

    rng = np.random.default_rng(5)

    def blobs() -> np.ndarray:  # smooth random regions of classes 1 and 2, each present
        a = (gaussian_filter(rng.random((3, 48, 56)), (0, 4, 4)) > 0.5).astype(np.int64)
        return np.maximum(a, 2 * (gaussian_filter(rng.random((3, 48, 56)), (0, 4, 4)) > 0.52))

    pred, target = blobs(), blobs()
    assert all(set(np.unique(x[b])) == {0, 1, 2} for x in (pred, target) for b in range(3))
    mine = boundary_per_class(pred, target, 3, nsd_tolerance=1.5, spacing=spacing)
    y_pred, y = _one_hot_tensor(pred, 3), _one_hot_tensor(target, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = compute_hausdorff_distance(y_pred, y, include_background=False, percentile=95, spacing=spacing)
        nsd = compute_surface_dice(y_pred, y, [1.5, 1.5], include_background=False, spacing=spacing)
    np.testing.assert_allclose(mine["hd95"][:, 1:], hd.numpy(), rtol=1e-5)
    np.testing.assert_allclose(mine["nsd"][:, 1:], nsd.numpy(), rtol=1e-5)


def test_class_scores_and_boundary_errors() -> None:
    from nakt_ray.metrics import boundary_per_class, class_scores

    pred, target = _squares()
    scores = class_scores(pred, target, 2)
    assert set(scores) == {"dice", "iou", "hd95", "nsd"} and all(v.shape == (2,) for v in scores.values())
    assert scores["dice"][1] == pytest.approx(2 * 70 / 200)
    for kwargs, message in [({"spacing": (1.0,)}, "spacing"), ({"spacing": (0.0, 1.0)}, "spacing"),
                            ({"nsd_tolerance": 0.0}, "nsd_tolerance"), ({"nsd_tolerance": float("nan")}, "nsd")]:
        with pytest.raises(ValueError, match=message):
            boundary_per_class(pred, target, 2, **kwargs)
    with pytest.raises(ValueError, match="expected 0 .. 1"):
        boundary_per_class(pred * 2, target, 2)


# ---------------------------------------------------------------------------------------------------------------
# Volumes (spatial_dims=3): Dice / IoU over every voxel, HD95 and NSD on 3D surfaces with anisotropic voxels


def _blobs_3d(rng: np.random.Generator, shape=(12, 14, 16)) -> np.ndarray:
    """Smooth random regions of classes 1 and 2 in a small volume, both present."""
    from scipy.ndimage import gaussian_filter

    a = (gaussian_filter(rng.random(shape), 2.0) > 0.5).astype(np.int64)
    return np.maximum(a, 2 * (gaussian_filter(rng.random(shape), 2.0) > 0.52))


def _brute_surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` [D, H, W] with a 6-neighbour outside it (or outside the volume), by plain loops."""
    out = []
    for idx in map(tuple, np.argwhere(mask)):
        for axis in range(3):
            for step in (-1, 1):
                n = list(idx)
                n[axis] += step
                if not 0 <= n[axis] < mask.shape[axis] or not mask[tuple(n)]:
                    out.append(idx)
                    break
            else:
                continue
            break
    return np.array(out, dtype=float).reshape(-1, 3)


def _brute_hd95_nsd(pred: np.ndarray, target: np.ndarray, spacing, tol: float) -> tuple[float, float]:
    """The definitions, by every pairwise distance between the two surfaces (mm)."""
    from scipy.spatial.distance import cdist

    p, t = _brute_surface(pred) * spacing, _brute_surface(target) * spacing
    d = cdist(p, t)
    d_pt, d_tp = d.min(1), d.min(0)
    hd95 = max(np.percentile(d_pt, 95), np.percentile(d_tp, 95))
    return hd95, ((d_pt <= tol).sum() + (d_tp <= tol).sum()) / (len(d_pt) + len(d_tp))


@pytest.mark.parametrize("spacing", [None, (2.5, 0.7, 1.1)])
def test_boundary_metrics_of_volumes_match_a_brute_force_reference(spacing) -> None:
    from nakt_ray.metrics import boundary_per_class, class_scores

    rng = np.random.default_rng(11)
    pred, target = _blobs_3d(rng), _blobs_3d(rng)
    step = np.ones(3) if spacing is None else np.asarray(spacing)
    tol = 2.0
    mine = boundary_per_class(pred, target, 3, nsd_tolerance=tol, spacing=spacing, spatial_dims=3)
    assert mine["hd95"].shape == (3,)  # one volume, one score per class (not one per slice)
    for c in (1, 2):
        hd95, nsd = _brute_hd95_nsd(pred == c, target == c, step, tol)
        assert mine["hd95"][c] == pytest.approx(hd95, rel=1e-9)
        assert mine["nsd"][c] == pytest.approx(nsd, rel=1e-9)
    # a batch of volumes gives the same per volume
    batch = boundary_per_class(np.stack([pred, target]), np.stack([target, target]), 3, tol, spacing, spatial_dims=3)
    np.testing.assert_allclose(batch["hd95"][0], mine["hd95"])
    assert batch["hd95"][1, 1] == 0.0 and batch["nsd"][1, 2] == 1.0
    scores = class_scores(pred, target, 3, tol, spacing, spatial_dims=3)
    assert set(scores) == {"dice", "iou", "hd95", "nsd"} and all(v.shape == (3,) for v in scores.values())


def test_boundary_metrics_of_volumes_agree_with_monai_with_anisotropic_spacing() -> None:
    import warnings

    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    from nakt_ray.metrics import boundary_per_class

    rng = np.random.default_rng(3)
    pred, target = np.stack([_blobs_3d(rng) for _ in range(2)]), np.stack([_blobs_3d(rng) for _ in range(2)])
    spacing = (3.0, 0.8, 1.2)
    mine = boundary_per_class(pred, target, 3, nsd_tolerance=2.5, spacing=spacing, spatial_dims=3)

    def one_hot(a: np.ndarray) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.from_numpy(a).long(), 3).permute(0, 4, 1, 2, 3).float()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = compute_hausdorff_distance(one_hot(pred), one_hot(target), include_background=False, percentile=95,
                                        spacing=spacing)
        nsd = compute_surface_dice(one_hot(pred), one_hot(target), [2.5, 2.5], include_background=False,
                                   spacing=spacing)
    np.testing.assert_allclose(mine["hd95"][:, 1:], hd.numpy(), rtol=1e-5)
    np.testing.assert_allclose(mine["nsd"][:, 1:], nsd.numpy(), rtol=1e-5)


def test_a_cube_shifted_along_the_thick_axis_is_measured_in_mm() -> None:
    from nakt_ray.metrics import boundary_per_class

    target = np.zeros((16, 16, 16), np.int64)
    target[4:10, 4:10, 4:10] = 1
    pred = np.roll(target, 2, axis=0)  # 2 slices of 3 mm: 6 mm
    s = boundary_per_class(pred, target, 2, nsd_tolerance=5.0, spacing=(3.0, 0.5, 0.5), spatial_dims=3)
    assert s["hd95"][1] == pytest.approx(6.0) and 0 < s["nsd"][1] < 1
    assert boundary_per_class(pred, target, 2, nsd_tolerance=6.0, spacing=(3.0, 0.5, 0.5),
                              spatial_dims=3)["nsd"][1] == 1.0
    sideways = np.roll(target, 2, axis=2)  # 2 columns of 0.5 mm: 1 mm
    assert boundary_per_class(sideways, target, 2, spacing=(3.0, 0.5, 0.5), spatial_dims=3)["hd95"][1] == \
        pytest.approx(1.0)
    with pytest.raises(ValueError, match="three finite positive voxel sizes"):
        boundary_per_class(pred, target, 2, spacing=(3.0, 0.5), spatial_dims=3)
    with pytest.raises(ValueError, match="spatial_dims"):
        boundary_per_class(pred, target, 2, spatial_dims=4)


def test_dice_and_iou_of_a_volume_count_every_voxel() -> None:
    rng = np.random.default_rng(2)
    pred, target = _blobs_3d(rng), _blobs_3d(rng)
    dice = dice_per_class(pred, target, 3, spatial_dims=3)
    iou = iou_per_class(pred, target, 3, spatial_dims=3)
    assert dice.shape == (3,) and iou.shape == (3,)
    for c in range(3):
        p, t = pred == c, target == c
        assert dice[c] == pytest.approx(2 * (p & t).sum() / (p.sum() + t.sum()))
        assert iou[c] == pytest.approx((p & t).sum() / (p | t).sum())
    # a batch of volumes [B, D, H, W]; the 2D default would score each slice instead
    assert dice_per_class(np.stack([pred, pred]), np.stack([target, pred]), 3, spatial_dims=3).shape == (2, 3)
    assert dice_per_class(pred, target, 3).shape == (12, 3)

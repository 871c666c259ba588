"""Segmentation metrics over integer label maps, and a bootstrap confidence interval over cases.

Pure NumPy, no I/O. Label maps are integer arrays ``[H, W]`` or batched ``[..., H, W]`` (usually ``[B, H, W]``)
with values in ``0 .. num_classes - 1``; class 0 is background. Per-class scores come back with the class axis
last: ``[C]`` for one map, ``[..., C]`` for a batch.

Empty-class convention (the same for Dice and IoU): a class absent from both prediction and target scores 1.0
(nothing to find, nothing found); a class present in exactly one of them scores 0.0.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

__all__ = ["dice_per_class", "iou_per_class", "foreground_mean", "surface_scores", "case_scores", "bootstrap_ci"]


def _check_label_maps(pred: np.ndarray, target: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate a prediction/target pair of integer label maps and return them as arrays."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}")
    pred = np.asarray(pred)
    target = np.asarray(target)
    for name, arr in (("pred", pred), ("target", target)):
        if arr.ndim < 2:
            raise ValueError(f"{name} must be a label map [H, W] or a batch [..., H, W]; got shape {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise ValueError(
                f"{name} must be an integer label map; got dtype {arr.dtype} "
                "(take the argmax over classes first, e.g. nakt_ray.fusion.hard_label)"
            )
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(
                f"{name} has labels in [{arr.min()}, {arr.max()}]; expected 0 .. {num_classes - 1} "
                f"for num_classes={num_classes}"
            )
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} does not match target shape {target.shape}")
    return pred, target


def _overlap_counts(
    pred: np.ndarray, target: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class |P ∩ T|, |P| and |T| summed over H, W; each ``[..., C]`` int64."""
    classes = np.arange(num_classes)
    # one-hot with the class axis last: [..., H, W, C]; the maps are 2D so this stays small
    pred_1h = pred[..., None] == classes
    target_1h = target[..., None] == classes
    intersection = np.sum(pred_1h & target_1h, axis=(-3, -2), dtype=np.int64)
    pred_size = np.sum(pred_1h, axis=(-3, -2), dtype=np.int64)
    target_size = np.sum(target_1h, axis=(-3, -2), dtype=np.int64)
    return intersection, pred_size, target_size


def dice_per_class(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice coefficient per class, ``2 |P ∩ T| / (|P| + |T|)``.

    Args:
        pred: predicted label map ``[H, W]`` or ``[..., H, W]`` (e.g. ``[B, H, W]``), integers in
            ``0 .. num_classes - 1``.
        target: reference label map, same shape as ``pred``.
        num_classes: C, the number of classes including background (class 0).

    Returns:
        float64 ``[C]`` for one map or ``[..., C]`` for a batch, for classes ``0 .. C - 1``. A class empty in
        both maps scores 1.0; a class empty in exactly one scores 0.0.
    """
    pred, target = _check_label_maps(pred, target, num_classes)
    intersection, pred_size, target_size = _overlap_counts(pred, target, num_classes)
    denominator = pred_size + target_size
    # both empty -> denominator 0 -> 1.0; one empty -> intersection 0 -> 0.0
    return np.where(denominator == 0, 1.0, 2.0 * intersection / np.maximum(denominator, 1))


def iou_per_class(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Intersection over union (Jaccard) per class, ``|P ∩ T| / |P ∪ T|``.

    Same arguments, shapes and empty-class convention as :func:`dice_per_class`.
    """
    pred, target = _check_label_maps(pred, target, num_classes)
    intersection, pred_size, target_size = _overlap_counts(pred, target, num_classes)
    union = pred_size + target_size - intersection
    return np.where(union == 0, 1.0, intersection / np.maximum(union, 1))


def foreground_mean(scores: np.ndarray) -> float | np.ndarray:
    """Mean of per-class scores over the foreground classes ``1 .. C - 1``.

    Args:
        scores: per-class scores with the class axis last, ``[C]`` or ``[..., C]`` (the output of
            :func:`dice_per_class` / :func:`iou_per_class`); C >= 2.

    Returns:
        a float for ``[C]`` input, else a float64 array ``[...]``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim < 1 or scores.shape[-1] < 2:
        raise ValueError(
            f"scores must have a class axis last with at least 2 classes (background + foreground); "
            f"got shape {scores.shape}"
        )
    result = scores[..., 1:].mean(axis=-1)
    return float(result) if result.ndim == 0 else result


def surface_scores(pred: np.ndarray, target: np.ndarray, num_classes: int, metrics: Sequence[str],
                   nsd_tolerance: float = 2.0) -> dict[str, np.ndarray]:
    """Boundary metrics per case via MONAI: ``hd95`` (95th-percentile Hausdorff distance, pixels) and ``nsd``
    (normalised surface Dice at ``nsd_tolerance`` pixels), each the mean over foreground classes, ``[B]``.

    A class missing from the prediction or the target has no boundary distance: its HD95 is NaN (left out of
    the class mean, and of later means: use ``np.nanmean``); NSD follows MONAI (NaN when both are empty).
    """
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    pred, target = _check_label_maps(pred, target, num_classes)
    if pred.ndim != 3:
        raise ValueError(f"surface_scores needs a batch of label maps [B, H, W]; got shape {pred.shape}")
    unknown = sorted(set(metrics) - {"hd95", "nsd"})
    if unknown:
        raise ValueError(f"unknown surface metrics {unknown}; expected hd95 and/or nsd")

    def one_hot(a: np.ndarray) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.from_numpy(a.astype(np.int64)), num_classes).permute(0, 3, 1, 2)

    p, t = one_hot(pred), one_hot(target)
    out = {}
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns for every empty class
        if "hd95" in metrics:
            hd = compute_hausdorff_distance(p, t, include_background=False, percentile=95).numpy().astype(np.float64)
            hd[~np.isfinite(hd)] = np.nan
            out["hd95"] = _nanmean_rows(hd)
        if "nsd" in metrics:
            nsd = compute_surface_dice(p, t, class_thresholds=[nsd_tolerance] * (num_classes - 1),
                                       include_background=False).numpy().astype(np.float64)
            out["nsd"] = _nanmean_rows(nsd)
    return out


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    ok = np.isfinite(a)
    return np.where(ok.any(1), np.where(ok, a, 0).sum(1) / np.maximum(ok.sum(1), 1), np.nan)


def case_scores(pred: np.ndarray, target: np.ndarray, num_classes: int, metrics: Sequence[str] = (),
                nsd_tolerance: float = 2.0) -> dict[str, np.ndarray]:
    """Per-case foreground ``dice`` and ``iou`` ``[B]``, plus the boundary ``metrics`` of :func:`surface_scores`."""
    out = {"dice": foreground_mean(dice_per_class(pred, target, num_classes)),
           "iou": foreground_mean(iou_per_class(pred, target, num_classes))}
    if metrics:
        out.update(surface_scores(pred, target, num_classes, metrics, nsd_tolerance))
    return out


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """Percentile bootstrap confidence interval of the mean over cases.

    Args:
        values: one score per case ``[N]`` (e.g. per-case foreground Dice), N >= 1, all finite.
        n_boot: number of bootstrap resamples (each draws N cases with replacement).
        alpha: the interval covers ``1 - alpha`` (0.05 -> 95 %); the bounds are the ``alpha / 2`` and
            ``1 - alpha / 2`` quantiles of the resampled means.
        seed: seed of the NumPy generator, so the interval is reproducible.

    Returns:
        ``(mean, low, high)``: the sample mean of ``values`` and the interval bounds.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence of per-case scores; got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"values must be finite; got {int(np.sum(~np.isfinite(values)))} NaN/inf entries")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer; got {n_boot!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha!r}")
    rng = np.random.default_rng(seed)
    n = values.size
    # resample in chunks so memory stays ~n_boot_chunk * n whatever the number of cases
    chunk = max(1, min(n_boot, 2**22 // n))
    boot_means = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        idx = rng.integers(0, n, size=(stop - start, n))
        boot_means[start:stop] = values[idx].mean(axis=1)
    low, high = np.quantile(boot_means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(values.mean()), float(low), float(high)

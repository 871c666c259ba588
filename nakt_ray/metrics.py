"""Segmentation metrics over integer label maps, and a bootstrap confidence interval over cases.

Pure NumPy, no I/O. Label maps are integer arrays ``[H, W]`` or batched ``[..., H, W]`` (usually ``[B, H, W]``)
with values in ``0 .. num_classes - 1``; class 0 is background. Per-class scores come back with the class axis
last: ``[C]`` for one map, ``[..., C]`` for a batch. With ``spatial_dims=3`` a map is a volume ``[D, H, W]`` (or a
batch ``[..., D, H, W]``), scored over all its voxels at once, and a spacing is ``(d, h, w)`` in mm
(``nakt_ray/data/volumes.py``).

Empty-class convention (the same for Dice and IoU): a class absent from both prediction and target scores 1.0
(nothing to find, nothing found); a class present in exactly one of them scores 0.0.

Boundary metrics (:func:`boundary_per_class`, used by evaluation): HD95 and NSD per class, in pixels (voxels) or,
given a pixel (voxel) spacing, in mm. The same convention for a class absent from both maps (HD95 0, NSD 1); a
class present in exactly one of them has no boundary distance: HD95 NaN (callers leave it out of means and count
it), NSD 0.
:func:`surface_scores` (training's validation metrics, via MONAI) keeps MONAI's own conventions.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

__all__ = ["bootstrap_ci", "boundary_per_class", "case_scores", "class_scores", "dice_per_class", "foreground_mean",
           "foreground_nanmean", "iou_per_class", "surface_scores"]


_AXES = {2: "H, W", 3: "D, H, W"}


def _check_spatial_dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
        raise ValueError(f"spatial_dims must be 2 (images) or 3 (volumes); got {spatial_dims!r}")
    return int(spatial_dims)


def _check_label_maps(pred: np.ndarray, target: np.ndarray, num_classes: int,
                      spatial_dims: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Validate a prediction/target pair of integer label maps and return them as arrays."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}")
    axes = _AXES[_check_spatial_dims(spatial_dims)]
    pred = np.asarray(pred)
    target = np.asarray(target)
    for name, arr in (("pred", pred), ("target", target)):
        if arr.ndim < spatial_dims:
            raise ValueError(f"{name} must be a label map [{axes}] or a batch [..., {axes}]; got shape {arr.shape}")
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
    pred: np.ndarray, target: np.ndarray, num_classes: int, spatial_dims: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class |P ∩ T|, |P| and |T| summed over the spatial axes; each ``[..., C]`` int64."""
    lead = pred.shape[:-spatial_dims]
    maps = int(np.prod(lead))
    # one pass: a confusion matrix per map from a bincount of (map, pred, target) codes; a one-hot [..., H, W, C]
    # costs C passes and was the evaluation's slowest step on full-size images
    codes = (np.arange(maps)[:, None] * num_classes + pred.reshape(maps, -1).astype(np.int64)) * num_classes
    codes += target.reshape(maps, -1)
    confusion = np.bincount(codes.ravel(), minlength=maps * num_classes**2).reshape(*lead, num_classes, num_classes)
    intersection = np.diagonal(confusion, axis1=-2, axis2=-1).astype(np.int64)
    return intersection, confusion.sum(axis=-1, dtype=np.int64), confusion.sum(axis=-2, dtype=np.int64)


def dice_per_class(pred: np.ndarray, target: np.ndarray, num_classes: int, spatial_dims: int = 2) -> np.ndarray:
    """Dice coefficient per class, ``2 |P ∩ T| / (|P| + |T|)``.

    Args:
        pred: predicted label map ``[H, W]`` or ``[..., H, W]`` (e.g. ``[B, H, W]``), integers in
            ``0 .. num_classes - 1``.
        target: reference label map, same shape as ``pred``.
        num_classes: C, the number of classes including background (class 0).
        spatial_dims: 2 (maps ``[..., H, W]``) or 3 (volumes ``[..., D, H, W]``, each scored as a whole).

    Returns:
        float64 ``[C]`` for one map or ``[..., C]`` for a batch, for classes ``0 .. C - 1``. A class empty in
        both maps scores 1.0; a class empty in exactly one scores 0.0.
    """
    pred, target = _check_label_maps(pred, target, num_classes, spatial_dims)
    intersection, pred_size, target_size = _overlap_counts(pred, target, num_classes, spatial_dims)
    denominator = pred_size + target_size
    # both empty -> denominator 0 -> 1.0; one empty -> intersection 0 -> 0.0
    return np.where(denominator == 0, 1.0, 2.0 * intersection / np.maximum(denominator, 1))


def iou_per_class(pred: np.ndarray, target: np.ndarray, num_classes: int, spatial_dims: int = 2) -> np.ndarray:
    """Intersection over union (Jaccard) per class, ``|P ∩ T| / |P ∪ T|``.

    Same arguments, shapes and empty-class convention as :func:`dice_per_class`.
    """
    pred, target = _check_label_maps(pred, target, num_classes, spatial_dims)
    intersection, pred_size, target_size = _overlap_counts(pred, target, num_classes, spatial_dims)
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


def foreground_nanmean(scores: np.ndarray) -> float | np.ndarray:
    """Mean over the foreground classes ``1 .. C - 1`` of the finite scores only (for HD95, NaN where undefined).

    Args:
        scores: per-class scores with the class axis last, ``[C]`` or ``[..., C]``; C >= 2.

    Returns:
        a float for ``[C]`` input, else a float64 array ``[...]``; NaN where no foreground class is finite.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim < 1 or scores.shape[-1] < 2:
        raise ValueError(
            f"scores must have a class axis last with at least 2 classes (background + foreground); "
            f"got shape {scores.shape}"
        )
    fg = scores[..., 1:]
    ok = np.isfinite(fg)
    count = ok.sum(axis=-1)
    result = np.where(count > 0, np.where(ok, fg, 0.0).sum(axis=-1) / np.maximum(count, 1), np.nan)
    return float(result) if result.ndim == 0 else result


def _check_spacing(spacing: Sequence[float] | None, spatial_dims: int = 2) -> np.ndarray:
    if spacing is None:
        return np.ones(spatial_dims)
    arr = np.asarray(spacing, dtype=np.float64)
    if arr.shape != (spatial_dims,) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        what = "two finite positive pixel sizes (rows, columns)" if spatial_dims == 2 else \
            "three finite positive voxel sizes (d, h, w)"
        raise ValueError(f"spacing must be {what}; got {spacing!r}")
    return arr


def _edges(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Boundary pixels (voxels) of each foreground class of one map ``[H, W]`` or ``[D, H, W]``: ``[C - 1, ...]``
    bool, class ``c`` at ``c - 1``. A boundary pixel belongs to the class and has a face neighbour (4 in 2D, 6 in
    3D) that does not (the border counts as outside): the mask minus its erosion by a cross, as MONAI's
    ``get_mask_edges``."""
    from scipy.ndimage import binary_erosion, generate_binary_structure

    masks = labels[None] == np.arange(1, num_classes).reshape(-1, *[1] * labels.ndim)
    # one erosion for every class at once, classes kept apart: the cross only in the middle of the class axis
    cross = np.zeros((3,) * (labels.ndim + 1), bool)
    cross[1] = generate_binary_structure(labels.ndim, 1)
    return masks & ~binary_erosion(masks, structure=cross, border_value=0)


def _hd95_nsd(pred_edge: np.ndarray, target_edge: np.ndarray, spacing: np.ndarray,
              tolerance: float) -> tuple[float, float]:
    """HD95 and NSD of one class from its boundary pixels (voxels) in prediction and target."""
    from scipy.spatial import cKDTree

    has_pred, has_target = bool(pred_edge.any()), bool(target_edge.any())
    if not has_pred and not has_target:
        return 0.0, 1.0
    if not (has_pred and has_target):
        return float("nan"), 0.0
    # Nearest-boundary distances by KD-tree over the boundary points only (what MONAI does on CPU): the
    # boundaries are sparse, so this costs far less than a distance transform of the whole image.
    p = np.argwhere(pred_edge) * spacing
    t = np.argwhere(target_edge) * spacing
    d_pt = cKDTree(t).query(p)[0]
    d_tp = cKDTree(p).query(t)[0]
    hd95 = max(np.percentile(d_pt, 95), np.percentile(d_tp, 95))
    tol = tolerance * (1 + 1e-9)  # a distance of exactly tau (e.g. 0.3 mm * 10 px) counts as within tau
    nsd = (np.count_nonzero(d_pt <= tol) + np.count_nonzero(d_tp <= tol)) / (d_pt.size + d_tp.size)
    return float(hd95), float(nsd)


def boundary_per_class(pred: np.ndarray, target: np.ndarray, num_classes: int, nsd_tolerance: float = 2.0,
                       spacing: Sequence[float] | None = None, spatial_dims: int = 2) -> dict[str, np.ndarray]:
    """HD95 and NSD per class (background not scored: NaN at class 0).

    Definitions (those of MONAI's ``compute_hausdorff_distance(percentile=95)`` and ``compute_surface_dice``,
    and of DeepMind's surface-distance): a class's boundary is its pixels with a 4-neighbour outside it.
    ``hd95`` is the larger of the two directed 95th percentiles (linear interpolation) of the distances from
    each boundary pixel of one map to the nearest boundary pixel of the other. ``nsd`` (normalised surface Dice
    at tolerance tau) is the share of the boundary pixels of both maps that lie within tau of the other map's
    boundary. A class absent from both maps: HD95 0, NSD 1; present in exactly one: HD95 NaN (undefined), NSD 0.
    In 3D (``spatial_dims=3``) the same on surfaces: a class's surface is its voxels with a 6-neighbour outside
    it, and distances are between voxel centres, each axis scaled by its spacing (anisotropic voxels measured
    in mm).

    Args:
        pred: predicted label map ``[H, W]`` or ``[..., H, W]`` (``[..., D, H, W]`` in 3D), integers in
            ``0 .. num_classes - 1``.
        target: reference label map, same shape as ``pred``.
        num_classes: C, the number of classes including background (class 0).
        nsd_tolerance: tau, in the unit of the distances (pixels, or mm with ``spacing``), > 0.
        spacing: pixel size ``(rows, columns)`` in mm, or voxel size ``(d, h, w)`` in 3D; None measures in
            pixels (voxels).
        spatial_dims: 2 (images) or 3 (volumes).

    Returns:
        ``{"hd95": [..., C], "nsd": [..., C]}`` float64, in pixels or mm.
    """
    pred, target = _check_label_maps(pred, target, num_classes, spatial_dims)
    step = _check_spacing(spacing, spatial_dims)
    if isinstance(nsd_tolerance, bool) or not np.isfinite(nsd_tolerance) or nsd_tolerance <= 0:
        raise ValueError(f"nsd_tolerance must be a finite number > 0; got {nsd_tolerance!r}")
    lead = pred.shape[:-spatial_dims]
    hd95 = np.full((*lead, num_classes), np.nan)
    nsd = np.full((*lead, num_classes), np.nan)
    for idx in np.ndindex(*lead):
        where = np.nonzero((pred[idx] > 0) | (target[idx] > 0))
        if where[0].size == 0:  # no foreground anywhere: every class absent from both
            hd95[(*idx, slice(1, None))], nsd[(*idx, slice(1, None))] = 0.0, 1.0
            continue
        # the boundaries lie inside the foreground's bounding box: erode only that, with a margin of one pixel
        # (or the image border, which counts as outside either way); distances do not depend on the offset
        box = tuple(slice(max(int(a.min()) - 1, 0), int(a.max()) + 2) for a in where)
        pred_edges, target_edges = _edges(pred[idx][box], num_classes), _edges(target[idx][box], num_classes)
        for c in range(1, num_classes):
            hd95[(*idx, c)], nsd[(*idx, c)] = _hd95_nsd(pred_edges[c - 1], target_edges[c - 1], step,
                                                        float(nsd_tolerance))
    return {"hd95": hd95, "nsd": nsd}


def class_scores(pred: np.ndarray, target: np.ndarray, num_classes: int, nsd_tolerance: float = 2.0,
                 spacing: Sequence[float] | None = None, spatial_dims: int = 2) -> dict[str, np.ndarray]:
    """Every evaluation score per class: ``dice``, ``iou`` (:func:`dice_per_class`), ``hd95`` and ``nsd``
    (:func:`boundary_per_class`), each ``[C]`` or ``[..., C]`` float64 (HD95 and NSD NaN at class 0); volumes
    ``[D, H, W]`` with ``spatial_dims=3`` and a voxel ``spacing`` ``(d, h, w)`` in mm."""
    return {"dice": dice_per_class(pred, target, num_classes, spatial_dims),
            "iou": iou_per_class(pred, target, num_classes, spatial_dims),
            **boundary_per_class(pred, target, num_classes, nsd_tolerance, spacing, spatial_dims)}


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

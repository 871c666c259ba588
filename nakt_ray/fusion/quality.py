"""Quality figures of a case's annotation: how much the teachers agree (:func:`pairwise_dice`), how uncertain
the fused soft label is (:func:`entropy`, normalised to [0, 1] by log C by default), and its hard label.

Pure NumPy over ``[..., T, C, H, W]`` teacher probabilities or ``[..., C, H, W]`` soft labels, as in
:mod:`nakt_ray.fusion.rules`.
"""
from __future__ import annotations

import numpy as np

from nakt_ray.fusion.rules import _validate_probs, _validate_soft_label

__all__ = ["agreement_from_labels", "entropy", "hard_label", "pairwise_dice"]


def agreement_from_labels(labels: np.ndarray, coverage: np.ndarray, spatial_dims: int = 2) -> np.ndarray:
    """Mean pairwise foreground Dice of T label maps, every pair at once (the kernel of :func:`pairwise_dice`
    and :func:`nakt_ray.fusion.partial.pairwise_dice_partial`).

    For each foreground class k, the teachers' indicators ``[..., T, N]`` give every pair's overlap in one matrix
    product (``[..., T, T]``), so the cost is ``K`` products of ``T x N`` by ``N x T`` in BLAS instead of
    ``T (T - 1) / 2`` Python-level passes over the pixels. Pair (a, b) scores the mean Dice over the foreground
    classes both cover (a class empty in both: 1.0); pairs that share none are left out; with none left: 1.0.

    Args:
        labels: ``[..., T, *spatial]`` union class indices (a teacher never names a class it does not cover).
        coverage: bool ``[T, K+1]``.
        spatial_dims: 2 or 3, the trailing axes of ``labels`` that are pixels / voxels.

    Returns:
        float64 ``[...]``.
    """
    labels = np.asarray(labels)
    cov = np.asarray(coverage, dtype=bool)
    n_teachers, n_classes = cov.shape
    lead = labels.shape[:-(spatial_dims + 1)]
    flat = labels.reshape(*lead, n_teachers, -1)
    if n_teachers < 2:
        return np.ones(lead)
    # counts are exact in float32 below 2^24 pixels per map; above, float64
    dtype = np.float32 if flat.shape[-1] < 2 ** 24 else np.float64
    upper = np.triu(np.ones((n_teachers, n_teachers), bool), k=1)
    total = np.zeros((*lead, n_teachers, n_teachers))
    shared = np.zeros((n_teachers, n_teachers))
    for k in range(1, n_classes):
        both = np.outer(cov[:, k], cov[:, k]) & upper   # pairs that both cover k
        if not both.any():
            continue
        ind = (flat == k).astype(dtype)                    # [..., T, N]
        inter = (ind @ np.swapaxes(ind, -1, -2)).astype(np.float64)  # [..., T, T]: |A_a ∩ A_b|, exact counts
        size = np.diagonal(inter, axis1=-2, axis2=-1)      # [..., T]: |A_t|
        denom = size[..., :, None] + size[..., None, :]
        dice = np.where(denom > 0, 2.0 * inter / np.maximum(denom, 1), 1.0)
        total += np.where(both, dice, 0.0)
        shared += both
    pairs = shared > 0
    if not pairs.any():
        return np.ones(lead)
    return (total[..., pairs] / shared[pairs]).mean(axis=-1)


def pairwise_dice(probs: np.ndarray) -> float | np.ndarray:
    """Teacher agreement: mean over teacher pairs of the foreground Dice between their argmax labels.

    For each pair of teachers the Dice of classes ``1 .. C - 1`` is averaged (a class empty in both labels
    counts as 1.0); the result is the mean over all ``T (T - 1) / 2`` pairs. A single teacher agrees with
    itself: 1.0.

    Args:
        probs: ``[T, C, H, W]`` or ``[..., T, C, H, W]`` per-teacher class probabilities.

    Returns:
        a float in [0, 1] for ``[T, C, H, W]``, else a float64 array of shape ``[...]``.
    """
    arr = _validate_probs(probs)
    n_teachers, n_classes = arr.shape[-4], arr.shape[-3]
    result = agreement_from_labels(arr.argmax(axis=-3), np.ones((n_teachers, n_classes), bool))
    return float(result) if np.ndim(result) == 0 else np.asarray(result, dtype=np.float64)


def entropy(soft_label: np.ndarray, normalized: bool = True) -> float | np.ndarray:
    """Mean per-pixel Shannon entropy of a soft label.

    ``H(p) = -sum_c p_c log p_c`` in nats (``0 log 0 = 0``), averaged over H, W. By default it is divided by
    ``log C`` so 0 means every pixel is certain and 1 means every pixel is uniform, whatever the number of
    classes; pass ``normalized=False`` for nats.

    Args:
        soft_label: ``[C, H, W]`` or ``[..., C, H, W]`` class probabilities summing to 1 over C.
        normalized: divide by log C (default) or return nats.

    Returns:
        a float for ``[C, H, W]``, else a float64 array of shape ``[...]``.
    """
    arr = np.clip(_validate_soft_label(soft_label), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(arr > 0, arr * np.log(arr), 0.0)
    per_pixel = -plogp.sum(axis=-3)  # [..., H, W]
    result = per_pixel.mean(axis=(-2, -1))
    if normalized:
        result = result / np.log(arr.shape[-3])
    return float(result) if np.ndim(result) == 0 else np.asarray(result, dtype=np.float64)


def hard_label(soft_label: np.ndarray) -> np.ndarray:
    """Argmax over classes: ``[C, H, W]`` / ``[..., C, H, W]`` -> uint8 ``[H, W]`` / ``[..., H, W]``.

    On an exact tie the lower class index wins (``np.argmax``). C must be at most 256.
    """
    arr = np.asarray(soft_label)
    if arr.ndim < 3:
        raise ValueError(
            f"soft_label must have shape [C, H, W] or [..., C, H, W]; got {arr.ndim} dims, shape {arr.shape}"
        )
    if arr.shape[-3] > 256:
        raise ValueError(f"hard_label returns uint8, so at most 256 classes; got C={arr.shape[-3]}")
    if np.issubdtype(arr.dtype, np.floating) and np.isnan(arr).any():
        raise ValueError("soft_label contains NaN values")
    return arr.argmax(axis=-3).astype(np.uint8)

"""Quality figures of a case's annotation: how much the teachers agree (:func:`pairwise_dice`), how uncertain
the fused soft label is (:func:`entropy`, normalised to [0, 1] by log C by default), and its hard label.

Pure NumPy over ``[..., T, C, H, W]`` teacher probabilities or ``[..., C, H, W]`` soft labels, as in
:mod:`nakt_ray.fusion.rules`.
"""
from __future__ import annotations

import itertools

import numpy as np

from nakt_ray.fusion.rules import _validate_probs, _validate_soft_label
from nakt_ray.metrics import dice_per_class

__all__ = ["entropy", "hard_label", "pairwise_dice"]


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
    labels = arr.argmax(axis=-3)  # [..., T, H, W]
    batch_shape = arr.shape[:-4]
    if n_teachers == 1:
        result = np.ones(batch_shape)
    else:
        pair_scores = [
            dice_per_class(labels[..., a, :, :], labels[..., b, :, :], n_classes)[..., 1:].mean(axis=-1)
            for a, b in itertools.combinations(range(n_teachers), 2)
        ]
        result = np.mean(pair_scores, axis=0)
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

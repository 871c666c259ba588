"""Specialist weighting: how much each teacher counts in a case, from how sure it is there compared with its own
certainty over the set's other cases.

Teachers trained on one site's contrast or scanner are specialists: sure of themselves on cases like their training
data, less so elsewhere. Per-voxel confidence (``rules.confidence_weighted``) compares teachers with one another, so
a network that is sure of itself everywhere takes every case. Here each teacher is compared with itself:

    c[i, t]  = teacher t's mean voxel confidence (1 - H / log C) in case i, over the voxels any teacher labels
               foreground (:func:`foreground_confidence`);
    z[i, t]  = (c[i, t] - mean_i c[i, t]) / std_i c[i, t]           (over the set's cases);
    w[i, t] ∝ prior[t] * exp(z[i, t] / temperature)                  (summing to 1 over teachers).

A case then gets the teacher for which it is most typical; a low temperature picks one teacher, a high one gives
the prior weights. The standardisation needs the whole set's confidences, so this is a re-fusion of stored maps
(``nakt fuse --specialist``, ``annotation.re_fuse``), not a rule of the annotation stream. Measured in E5
(docs/results.md): three single-contrast teachers of 3D brain MR. Pure NumPy, as the rest of ``fusion``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def foreground_confidence(probs: Sequence[np.ndarray]) -> tuple[np.ndarray, int]:
    """Per teacher, the sum of its voxel confidence ``1 - H / log C_t`` over the voxels where any teacher's argmax
    is not background (class 0 of its own classes), and the count of those voxels.

    Sums, so a case read slab by slab adds its slabs up: the mean is ``sums / count``.

    Args:
        probs: T arrays ``[C_t, ...]`` of one case (or one slab of it), each teacher's class probabilities.

    Returns:
        ``(sums [T] float64, count)``.
    """
    maps = [np.asarray(p, dtype=np.float64) for p in probs]
    if not maps:
        raise ValueError("foreground_confidence needs at least one teacher's map")
    if len({m.shape[1:] for m in maps}) != 1:
        raise ValueError(f"teachers' maps cover different grids: {[m.shape for m in maps]}")
    foreground = np.zeros(maps[0].shape[1:], bool)
    for m in maps:
        foreground |= m.argmax(axis=0) != 0
    count = int(foreground.sum())
    sums = np.zeros(len(maps))
    if count:
        for t, m in enumerate(maps):
            p = m[:, foreground]
            entropy = -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=0)
            sums[t] = (1.0 - entropy / np.log(max(m.shape[0], 2))).sum()
    return sums, count


def specialist_weights(confidence: np.ndarray, temperature: float,
                       prior: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Per case and teacher, the teacher's weight in that case (the module docstring's ``w``).

    Args:
        confidence: ``[N, T]``: each case's mean foreground confidence per teacher.
        temperature: > 0; the softmax temperature over the standardised confidences.
        prior: optional ``[T]`` non-negative per-teacher weights multiplied in (``None``: equal).

    Returns:
        ``[N, T]`` float64, each row summing to 1. A teacher whose confidence is the same in every case (or a set of
        one case) gets ``z = 0`` everywhere: the prior decides.
    """
    c = np.asarray(confidence, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] == 0 or c.shape[1] == 0:
        raise ValueError(f"confidence must be [cases, teachers] with at least one of each, got shape {c.shape}")
    if not np.isfinite(c).all():
        raise ValueError("confidence holds NaN or infinity")
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"specialist temperature must be a positive number, got {temperature}")
    p = np.ones(c.shape[1]) if prior is None else np.asarray(prior, dtype=np.float64)
    if p.shape != (c.shape[1],) or not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"prior must be {c.shape[1]} finite non-negative weights, not all zero; got {prior}")
    std = c.std(axis=0)
    z = np.where(std > 1e-9, (c - c.mean(axis=0)) / np.where(std > 1e-9, std, 1.0), 0.0)
    logits = z / float(temperature)
    w = np.exp(logits - logits.max(axis=1, keepdims=True)) * p
    total = w.sum(axis=1, keepdims=True)
    # a case where every teacher with prior weight has underflowed: the prior alone
    return np.where(total > 0, w / np.where(total > 0, total, 1.0), p / p.sum())

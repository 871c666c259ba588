"""Fusion under partial coverage: teachers that predict different subsets of the union's classes.

Pure NumPy, no Ray and no I/O; the maths, with a worked example, is in ``docs/fusion.md``.

The run's union classes are ``0..K`` (0 = background of the union). Teacher ``t`` covers a set ``S_t`` of union
foreground classes and outputs probabilities over its *own* classes ``{bg_t} ∪ S_t``: its background first, then
its classes in union order. ``bg_t`` means "none of my classes": union background or any union class outside
``S_t``. So a teacher observes a *coarsening* of the union classes: its cells are ``{k}`` for ``k`` in ``S_t`` and
``bg_t = {0} ∪ (classes it does not cover)``.

Representation:

- ``coverage``: bool ``[T, K+1]``, ``coverage[t, k]`` true if teacher ``t`` predicts union class ``k``; column 0 is
  always true (every teacher has its own background). :func:`coverage_from_classes` builds it from class lists.
- ``teacher_cells(coverage)``: int ``[T, K+1]``, the index among teacher ``t``'s own classes of the cell that holds
  union class ``k`` (0 = its background). ``~coverage`` with column 0 set is the set its background absorbs.
- A teacher's maps come either as its own classes ``[..., C_t, H, W]`` or in the *union layout* ``[..., K+1, H, W]``
  (:func:`expand_to_union`: its background at 0, zeros at the classes it does not cover).

:func:`fuse_partial` fuses with every rule of :mod:`nakt_ray.fusion.rules`. The linear pools (``mean``,
``weighted_mean``, ``confidence_weighted``) return, per pixel, the union distribution ``q`` that minimises
``sum_t w_t KL(p_t || coarsen_t(q))``, found by EM; ``majority_vote`` is the same on one-hot votes; ``staple`` is
Warfield's EM with a confusion matrix per teacher from union true classes to its own labels. With full coverage each
equals :func:`nakt_ray.fusion.rules.fuse`.
"""
from __future__ import annotations

import difflib
from collections.abc import Sequence

import numpy as np

from nakt_ray.fusion.quality import agreement_from_labels
from nakt_ray.fusion.rules import (
    FUSION_RULES,
    STAPLE_PER_CLASS,
    _as_float_array,
    _check_probabilities,
    _finish,
    _validate_class_weights,
    _validate_weights,
    fuse,
    per_class,
    teacher_confidence,
)

__all__ = [
    "check_coverage",
    "check_rule",
    "coarsen_to_teacher",
    "coverage_from_classes",
    "expand_to_union",
    "fuse_partial",
    "fuse_teachers",
    "pairwise_dice_partial",
    "pixel_agreement",
    "teacher_cells",
    "union_labels",
]

# Linear-pool EM (per pixel): stop a pixel when no class moves by more than _POOL_TOL, or after _POOL_MAX_ITER
# steps. With full coverage, or teachers that agree on a union distribution, the first step is the answer. Where
# they contradict each other EM is slow (sublinear where a class heads to 0, and along flat ridges of the
# likelihood); measured on random contradicting teachers, 99 % of pixels end within 1e-5 of the maximiser and the
# worst within ~1e-3, below the uint8 storage step of 1/255. Teachers *sure* of contradicting things can leave a
# ridge where the likelihood is flat to 1e-4 nats: the data do not decide there (docs/fusion.md, "Precision").
_POOL_TOL = 1e-7
_POOL_MAX_ITER = 1000
# Union background's starting mass where the covering teachers' claims already sum to 1 or more: multiplicative EM
# cannot grow a class from exactly 0, and background may still get mass once the claims are weighed together.
_BACKGROUND_START = 1e-3
# Pixels per EM block: bounds memory at T * (K+1) * _CHUNK floats per temporary; results do not depend on it.
_CHUNK = 1 << 16
# STAPLE's EM settings, as rules.staple's defaults (used by rules.fuse).
_STAPLE_MAX_ITER = 100
_STAPLE_TOL = 1e-6


# --------------------------------------------------------------------------------------------------------------
# coverage
# --------------------------------------------------------------------------------------------------------------
def check_coverage(coverage: np.ndarray | Sequence[Sequence[bool]]) -> np.ndarray:
    """Validate a coverage matrix and return it as bool ``[T, K+1]``.

    Every teacher has its own background (column 0 true) and covers at least one foreground class; every union
    foreground class is covered by at least one teacher. 0/1 integers are accepted for bools.
    """
    cov = np.asarray(coverage)
    if cov.ndim != 2 or cov.shape[0] < 1 or cov.shape[1] < 2:
        raise ValueError(f"coverage must have shape [T, K+1] (T >= 1 teachers, K >= 1 union foreground classes); "
                         f"got shape {cov.shape}")
    if cov.dtype != np.bool_:
        if not (np.issubdtype(cov.dtype, np.integer) and np.isin(cov, (0, 1)).all()):
            raise ValueError(f"coverage must be a bool array (or 0/1); got dtype {cov.dtype} with values "
                             f"{sorted(np.unique(cov).tolist())[:5]}")
        cov = cov.astype(bool)
    for t in range(cov.shape[0]):
        if not cov[t, 0]:
            raise ValueError(f"teacher {t}: coverage[{t}, 0] must be True (column 0 is the teacher's own "
                             "background, which every teacher has)")
        if not cov[t, 1:].any():
            raise ValueError(f"teacher {t} covers no foreground class (coverage[{t}, 1:] is all False); a teacher "
                             "must predict at least one union class")
    for k in range(1, cov.shape[1]):
        if not cov[:, k].any():
            raise ValueError(f"union class {k} is covered by no teacher; every union class needs a teacher that "
                             "predicts it")
    return cov


def coverage_from_classes(teacher_classes: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """The coverage matrix bool ``[T, num_classes]`` from each teacher's union foreground classes (``1..K``)."""
    cov = np.zeros((len(teacher_classes), int(num_classes)), dtype=bool)
    cov[:, 0] = True
    for t, classes in enumerate(teacher_classes):
        for k in classes:
            if not 1 <= int(k) < num_classes:
                raise ValueError(f"teacher {t}: union class {k} is not in 1..{num_classes - 1}")
            if cov[t, int(k)]:
                raise ValueError(f"teacher {t} lists union class {k} twice")
            cov[t, int(k)] = True
    return check_coverage(cov)


def teacher_cells(coverage: np.ndarray) -> np.ndarray:
    """int ``[T, K+1]``: for union class ``k``, the index among teacher ``t``'s own classes of the cell holding it
    (0 = its background, which holds union background and every class it does not cover)."""
    cov = check_coverage(coverage)
    return np.where(cov, np.cumsum(cov, axis=1) - 1, 0)


def _check_row(covered: np.ndarray | Sequence[bool]) -> np.ndarray:
    row = np.asarray(covered)
    if row.ndim != 1:
        raise ValueError(f"covered must be one row of the coverage matrix, bool [K+1]; got shape {row.shape}")
    # one teacher need not cover the whole union: check it together with a teacher that covers everything
    return check_coverage(np.stack([row, np.ones_like(row)]))[0]


def expand_to_union(own_probs: np.ndarray, covered: np.ndarray | Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """A teacher's own-class maps in the union layout.

    Args:
        own_probs: ``[..., C_t, H, W]``, its background first, then its classes in union order.
        covered: its row of the coverage matrix, bool ``[K+1]``.

    Returns:
        ``(union_probs, absorbed)``: ``[..., K+1, H, W]`` with its background's mass at 0, its classes in place and
        zeros at the classes it does not cover; and bool ``[K+1]``, the union classes its background absorbs
        (0 and every uncovered class).
    """
    row = _check_row(covered)
    own = np.asarray(own_probs)
    if own.ndim < 3 or own.shape[-3] != row.sum():
        raise ValueError(f"own_probs must have shape [..., C_t, H, W] with C_t = {int(row.sum())} (its background + "
                         f"{int(row.sum()) - 1} covered classes); got shape {own.shape}")
    dtype = own.dtype if np.issubdtype(own.dtype, np.floating) else np.float64
    union = np.zeros(own.shape[:-3] + (row.size,) + own.shape[-2:], dtype=dtype)
    union[..., row, :, :] = own
    absorbed = ~row
    absorbed[0] = True
    return union, absorbed


def coarsen_to_teacher(union_probs: np.ndarray, covered: np.ndarray | Sequence[bool]) -> np.ndarray:
    """What a teacher sees of a union distribution: ``[..., K+1, H, W] -> [..., C_t, H, W]``, the mass of union
    background and of every class it does not cover merged into its background (own class 0)."""
    row = _check_row(covered)
    union = np.asarray(union_probs)
    if union.ndim < 3 or union.shape[-3] != row.size:
        raise ValueError(f"union_probs must have shape [..., K+1, H, W] with K+1 = {row.size}; got {union.shape}")
    own = union[..., row, :, :].copy()
    absorbed = ~row
    absorbed[0] = True
    own[..., 0, :, :] = union[..., absorbed, :, :].sum(axis=-3)
    return own


# --------------------------------------------------------------------------------------------------------------
# input
# --------------------------------------------------------------------------------------------------------------
def _own_probs(probs: Sequence[np.ndarray] | np.ndarray, cov: np.ndarray) -> list[np.ndarray]:
    """Each teacher's own-class probabilities float64 ``[..., C_t, H, W]``, checked against ``cov``."""
    n_teachers, n_classes = cov.shape
    if isinstance(probs, np.ndarray):  # union layout [..., T, K+1, H, W]
        arr = _as_float_array(probs, "probs")
        if arr.ndim < 4:
            raise ValueError(f"probs as one array must be in the union layout [..., T, K+1, H, W]; got shape "
                             f"{arr.shape}")
        if arr.shape[-4] != n_teachers:
            raise ValueError(f"probs has {arr.shape[-4]} teachers (axis -4) but coverage has {n_teachers} rows")
        if arr.shape[-3] != n_classes:
            raise ValueError(f"probs (union layout) axis -3 has {arr.shape[-3]} classes but coverage has "
                             f"{n_classes} (K+1)")
        own = []
        for t in range(n_teachers):
            union = arr[..., t, :, :, :]
            for k in np.flatnonzero(~cov[t]):
                stray = float(np.max(np.abs(union[..., k, :, :]))) if union[..., k, :, :].size else 0.0
                if stray > 1e-3:  # rules._RANGE_TOL: rounding slack, no more
                    raise ValueError(f"teacher {t} puts probability {stray:.4g} on union class {k}, which it does not "
                                     "cover (coverage); in the union layout its uncovered classes must be 0")
            own.append(union[..., cov[t], :, :])
    else:
        own = [_as_float_array(p, f"probs of teacher {t}") for t, p in enumerate(probs)]
        if not own:
            raise ValueError("probs needs at least one teacher")
        if len(own) != n_teachers:
            raise ValueError(f"probs has {len(own)} teachers but coverage has {n_teachers} rows")
        for t, p in enumerate(own):
            n_own = int(cov[t].sum())
            if p.ndim < 3 or p.shape[-3] != n_own:
                raise ValueError(
                    f"teacher {t}: its probabilities have {p.shape[-3] if p.ndim >= 3 else 'no'} classes on axis -3 "
                    f"(shape {p.shape}); coverage gives it {n_own}: its background + union classes "
                    f"{np.flatnonzero(cov[t])[1:].tolist()}")
            if p.shape[:-3] + p.shape[-2:] != own[0].shape[:-3] + own[0].shape[-2:]:
                raise ValueError(f"teacher {t}: shape {p.shape} does not fit teacher 0's {own[0].shape} "
                                 "(the same batch and spatial axes are expected)")
    for t, p in enumerate(own):
        _check_probabilities(p, f"teacher {t}: its probabilities", "its own classes, axis -3")
    return own


def check_rule(rule: str, weights: Sequence[float] | np.ndarray | None, n_teachers: int | None = None,
               n_classes: int | None = None) -> None:
    """As :func:`nakt_ray.fusion.rules.fuse` checks its rule and weights (and, given the numbers of teachers and
    union classes, the weights' shape and values): ValueError naming what is wrong."""
    if rule not in FUSION_RULES:
        valid = sorted(FUSION_RULES)
        close = difflib.get_close_matches(str(rule), valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown fusion rule {rule!r}; valid rules are {valid}{hint}")
    if rule == "mean" and weights is not None:
        raise ValueError('fusion rule "mean" takes no weights; use rule "weighted_mean" to weight teachers')
    if rule == "weighted_mean" and weights is None:
        raise ValueError('fusion rule "weighted_mean" needs weights (one per teacher); use "mean" for equal weights')
    if rule == "staple" and per_class(weights):
        raise ValueError(STAPLE_PER_CLASS)
    if weights is not None and n_teachers is not None:
        if per_class(weights):
            _validate_class_weights(weights, n_teachers, n_classes)
        else:
            _validate_weights(weights, n_teachers)


# --------------------------------------------------------------------------------------------------------------
# the linear pool on a coarsening: EM per pixel
# --------------------------------------------------------------------------------------------------------------
def _pool(cell_probs: np.ndarray, absorbed: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """argmin_q sum_t w_t KL(p_t || coarsen_t(q)) per pixel.

    Args:
        cell_probs: ``[T, K+1, M]``, ``p_t(cell_t(k))``: the probability teacher t gives the cell holding k.
        absorbed: bool ``[T, K+1]``, the union classes in teacher t's background cell.
        weights: ``[T, M]``, non-negative, summing to 1 over T at every pixel.

    Returns:
        ``q`` ``[K+1, M]`` float64, summing to 1 over K+1.
    """
    out = np.empty(cell_probs.shape[1:])
    for start in range(0, out.shape[1], _CHUNK):
        block = slice(start, start + _CHUNK)
        out[:, block] = _pool_block(cell_probs[:, :, block], absorbed, weights[:, block])
    return out


def _pool_block(cell_probs: np.ndarray, absorbed: np.ndarray, weights: np.ndarray) -> np.ndarray:
    # Start: each foreground class at the weighted mean of the teachers that cover it, background the rest. When
    # the teachers agree on some q this *is* q (a fixed point); a class no weighted teacher covers starts, and stays,
    # at 0 (nothing speaks for it, and moving its mass to background never lowers the likelihood).
    alone = ~absorbed[:, :, None]  # [T, K+1, 1]: class k is alone in its cell of teacher t (a covered class)
    covering = weights[:, None, :] * alone
    den = covering.sum(axis=0)
    q = np.divide((covering * cell_probs).sum(axis=0), den, out=np.zeros(cell_probs.shape[1:]), where=den > 0)
    rest = 1.0 - q[1:].sum(axis=0)
    q[0] = np.where(rest > 0, rest, _BACKGROUND_START)
    q /= q.sum(axis=0)

    # EM: responsibility of union class k for teacher t's observed cell = q_k / q(cell_t(k)); then
    # q_k <- sum_t w_t p_t(cell_t(k)) q_k / q(cell_t(k)). A covered class is alone in its cell, so with full
    # coverage the responsibility is exactly 1 and the first step is the weighted mean. Each pixel stops on its own
    # (so a slab fused alone gets the same answer as within the whole volume).
    bg_cell = absorbed[:, :, None]
    weighted = weights[:, None, :] * cell_probs  # [T, K+1, M]
    active = np.arange(q.shape[1])
    for _ in range(_POOL_MAX_ITER):
        q_a = q[:, active]
        bg_mass = (q_a[None] * bg_cell).sum(axis=1, keepdims=True)  # [T, 1, M]: q of teacher t's background cell
        q_cell = np.where(bg_cell, bg_mass, q_a[None])
        resp = np.divide(q_a[None], q_cell, out=np.zeros(q_cell.shape), where=q_cell > 0)
        new = (weighted[:, :, active] * resp).sum(axis=0)
        new /= np.maximum(new.sum(axis=0), np.finfo(np.float64).tiny)
        change = np.abs(new - q_a).max(axis=0)
        q[:, active] = new
        active = active[change > _POOL_TOL]
        if active.size == 0:
            break
    return q


# --------------------------------------------------------------------------------------------------------------
# STAPLE with rater-specific label sets
# --------------------------------------------------------------------------------------------------------------
def _staple_partial_case(labels: np.ndarray, cells: np.ndarray, reliability: np.ndarray,
                         max_iter: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Multi-class STAPLE for one case, each teacher deciding among its own classes.

    Written as :func:`nakt_ray.fusion.rules._staple_case`, which it equals under full coverage.

    Args:
        labels: ``[T, N]`` each teacher's decision per pixel, an index among its own classes.
        cells: ``[T, K+1]`` from :func:`teacher_cells`.
        reliability: ``[T]`` exponents on each teacher's likelihood, max 1.

    Returns:
        posterior ``[K+1, N]`` over union true classes, and ``theta [T, K+1, K+1]`` with
        ``theta[t, j, k] = P(teacher t says own class j | true union class k)``; rows ``j >= C_t`` are 0.
    """
    n_teachers, n_classes = cells.shape
    patterns, inverse, counts = np.unique(labels.T, axis=0, return_inverse=True, return_counts=True)
    patterns = patterns.T  # [T, P] distinct decision vectors
    inverse = inverse.reshape(-1)
    counts = counts.astype(np.float64)
    teacher_idx = np.arange(n_teachers)[:, None]

    # Priors: the linear pool of the teachers' decision frequencies (the same coarsening view as the other rules),
    # reliability-weighted; with full coverage that is the weighted label frequency of rules._staple_case.
    freq = np.stack([np.bincount(labels[t], minlength=n_classes) for t in range(n_teachers)]) / labels.shape[1]
    w = reliability / reliability.sum()
    prior = _pool(np.take_along_axis(freq, cells, axis=1)[:, :, None], cells == 0, w[:, None])[:, 0]
    with np.errstate(divide="ignore"):
        log_prior = np.log(prior)  # -inf for a class nobody (with weight) predicts: its posterior is exactly 0

    # Start: each teacher says the own class whose cell holds the truth 99 % of the time (its background for
    # union background and for every class it does not cover), the rest spread over its other own classes.
    n_own = cells.max(axis=1) + 1
    valid = (np.arange(n_classes)[None, :] < n_own[:, None])[:, :, None]  # [T, K+1 (own j), 1]
    theta = np.where(valid, ((1.0 - 0.99) / (n_own - 1))[:, None, None], 0.0) * np.ones((1, 1, n_classes))
    theta[teacher_idx, cells, np.arange(n_classes)[None, :]] = 0.99
    floor = 1e-8  # as rules._staple_case: no teacher can veto a class with log 0

    def e_step(theta: np.ndarray) -> np.ndarray:
        log_lik = np.einsum("t,tkc->kc", reliability, np.log(theta[teacher_idx, patterns, :]))
        log_post = log_lik + log_prior
        log_post -= log_post.max(axis=1, keepdims=True)
        post = np.exp(log_post)
        return post / post.sum(axis=1, keepdims=True)  # [P, K+1]

    for _ in range(max_iter):
        weighted = e_step(theta) * counts[:, None]
        new_theta = np.zeros_like(theta)
        for j in range(n_teachers):
            np.add.at(new_theta[j], patterns[j], weighted)
        mass = weighted.sum(axis=0)
        has_mass = mass > 0
        new_theta[:, :, has_mass] /= mass[has_mass]
        new_theta[:, :, ~has_mass] = theta[:, :, ~has_mass]
        new_theta = np.where(valid, np.maximum(new_theta, floor), 0.0)  # a teacher cannot say a class it lacks
        new_theta /= new_theta.sum(axis=1, keepdims=True)
        delta = float(np.max(np.abs(new_theta - theta)))
        theta = new_theta
        if delta < tol:
            break
    return e_step(theta)[inverse].T, theta


# --------------------------------------------------------------------------------------------------------------
# the rules
# --------------------------------------------------------------------------------------------------------------
def fuse_partial(probs: Sequence[np.ndarray] | np.ndarray, coverage: np.ndarray, rule: str,
                 weights: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Fuse teachers that cover different union classes into one soft label over the union.

    Args:
        probs: either a list of T arrays ``[..., C_t, H, W]``, each teacher's own classes (its background, then its
            classes in union order), or one array ``[..., T, K+1, H, W]`` in the union layout
            (:func:`expand_to_union`; zeros at the classes a teacher does not cover).
        coverage: bool ``[T, K+1]``, see :func:`check_coverage`.
        rule: a name in :data:`nakt_ray.fusion.rules.FUSION_RULES`.
        weights: ``[T]`` per-teacher weights, as for :func:`nakt_ray.fusion.rules.fuse` (required by
            ``weighted_mean``, refused by ``mean``), or ``[T, K+1]`` per-class weights over the union's classes
            (not for ``staple``): teacher t's weight at a pixel is ``sum_j W[t, k_j] p_t(j)`` over its own classes
            ``j`` (``k_j`` the union class of own class j; its background takes ``W[t, 0]``); the weights of the
            classes it does not cover are unused.

    Returns:
        soft label ``[..., K+1, H, W]`` float32 summing to 1 over K+1. A class is fused over the teachers that
        cover it; a teacher's background counts for the whole cell it stands for (union background and the classes
        it does not cover), never for union background alone. A class that only weight-0 teachers cover gets 0.
        With full coverage this is ``rules.fuse(probs, rule, weights)``. Every rule but ``staple`` is per pixel.
    """
    check_rule(rule, weights)
    cov = check_coverage(coverage)
    own = _own_probs(probs, cov)
    n_teachers, n_classes = cov.shape
    class_w = _validate_class_weights(weights, n_teachers, n_classes) if per_class(weights) else None
    if class_w is not None:
        w = np.full(n_teachers, 1.0 / n_teachers)  # unused: the per-pixel weights below replace it
    else:
        w = np.full(n_teachers, 1.0 / n_teachers) if weights is None else _validate_weights(weights, n_teachers)
    cells = teacher_cells(cov)
    lead, spatial = own[0].shape[:-3], own[0].shape[-2:]

    if rule == "staple":
        reliability = w / w.max()
        decisions = np.stack([p.argmax(axis=-3).reshape(-1, spatial[0] * spatial[1]) for p in own], axis=1)
        out = np.empty((decisions.shape[0], n_classes, decisions.shape[2]))
        for b in range(decisions.shape[0]):  # [B, T, N]: each case its own EM
            out[b], _ = _staple_partial_case(decisions[b], cells, reliability, _STAPLE_MAX_ITER, _STAPLE_TOL)
        return _finish(out.reshape(*lead, n_classes, *spatial))

    if rule == "majority_vote":  # each teacher's vote is its argmax own class: a one-hot on its coarsening
        own = [(p.argmax(axis=-3)[..., None, :, :] == np.arange(p.shape[-3])[:, None, None]).astype(np.float64)
               for p in own]
    flat = [np.moveaxis(p, -3, 0).reshape(p.shape[-3], -1) for p in own]  # [C_t, M], M = batch * H * W
    cell_probs = np.stack([f[cells[t]] for t, f in enumerate(flat)])  # [T, K+1, M]
    if class_w is None:
        pixel_w = np.broadcast_to(w[:, None], (n_teachers, cell_probs.shape[2]))
    else:  # sum over own classes j of W[t, union class of j] * p_t(j), then normalised over teachers
        pixel_w = np.stack([class_w[t, np.flatnonzero(cov[t])] @ f for t, f in enumerate(flat)])
        total = pixel_w.sum(axis=0)
        pixel_w = np.where(total > 0, pixel_w / np.where(total > 0, total, 1.0), 1.0 / n_teachers)
    if rule == "confidence_weighted":  # the teacher's confidence over its own classes, as rules.teacher_confidence
        conf = np.stack([teacher_confidence(p[..., None, :, :, :]).reshape(-1) for p in own])
        pixel_w = conf * pixel_w
        pixel_w = pixel_w / pixel_w.sum(axis=0)
    q = _pool(cell_probs, cells == 0, pixel_w)
    return _finish(np.moveaxis(q.reshape(n_classes, *lead, *spatial), 0, -3))


# --------------------------------------------------------------------------------------------------------------
# the pipeline's entry points: stored maps, full coverage or not
# --------------------------------------------------------------------------------------------------------------
def fuse_teachers(probs: Sequence[np.ndarray], coverage: np.ndarray | None, rule: str,
                  weights: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Fuse T teachers' maps ``[..., C_t, H, W]`` (each its own classes, as stored): :func:`rules.fuse` on the
    stacked maps when every teacher covers every class (``coverage`` None or all true; the common case, and the
    fast one), else :func:`fuse_partial`. Returns ``[..., K+1, H, W]``."""
    if coverage is None or np.asarray(coverage).all():
        return fuse(np.stack(list(probs), axis=-4), rule, weights)
    return fuse_partial(list(probs), coverage, rule, weights)


def union_labels(own_labels: np.ndarray, covered: np.ndarray | Sequence[bool]) -> np.ndarray:
    """A teacher's hard labels over its own classes (its background 0, then its covered classes in union order)
    -> union class indices (its background -> 0)."""
    return np.flatnonzero(_check_row(covered)).astype(np.uint8)[np.asarray(own_labels)]


def pairwise_dice_partial(probs: Sequence[np.ndarray], coverage: np.ndarray | None) -> float | np.ndarray:
    """Teacher agreement under partial coverage: for each pair of teachers that share at least one union
    foreground class, the mean Dice over the classes both cover, between their argmax labels with every other class
    seen as background; the mean over those pairs. A class empty in both counts as 1.0 (as
    :func:`nakt_ray.fusion.quality.pairwise_dice`, which this equals under full coverage); with no pair sharing a
    class there is nothing to disagree on: 1.0.

    Args:
        probs: T arrays ``[..., C_t, H, W]``, each teacher's own classes; ``coverage`` bool ``[T, K+1]`` (None:
            every teacher covers every class).

    Returns:
        a float for ``[C_t, H, W]`` inputs, else a float64 array of shape ``[...]``.
    """
    arrays = [np.asarray(p) for p in probs]
    cov = (np.ones((len(arrays), arrays[0].shape[-3]), bool) if coverage is None else check_coverage(coverage))
    labels = np.stack([union_labels(p.argmax(axis=-3), cov[t]) for t, p in enumerate(arrays)], axis=-3)
    result = agreement_from_labels(labels, cov)  # every pair at once (quality.agreement_from_labels)
    return float(result) if np.ndim(result) == 0 else np.asarray(result, dtype=np.float64)


def pixel_agreement(probs: Sequence[np.ndarray], target_labels: np.ndarray, coverage: np.ndarray | None,
                    class_axis: int = -3) -> np.ndarray:
    """Per pixel, the share of teachers whose arg-max (over its own classes) is the cell that holds the target's
    union class: the teacher agrees when it names the target's class, or, for a class it does not cover, when it
    says background. Under full coverage, the share whose arg-max equals the target's.

    Args:
        probs: T arrays with each teacher's own classes on ``class_axis``; ``target_labels``: union class indices,
            the shape of one of them without that axis; ``coverage`` bool ``[T, K+1]`` or None (all cover all).
    """
    arrays = [np.asarray(p) for p in probs]
    cov = (np.ones((len(arrays), arrays[0].shape[class_axis]), bool) if coverage is None
           else check_coverage(coverage))
    cells = teacher_cells(cov)
    target = np.asarray(target_labels)
    return np.mean([cells[t][target] == p.argmax(axis=class_axis) for t, p in enumerate(arrays)], axis=0)

"""Fusion rules: turn several teachers' class probabilities into one soft label per image.

Pure NumPy, no Ray and no I/O. Every rule takes ``probs`` of shape ``[T, C, H, W]`` (T teachers, C classes
including background = class 0, per-pixel probabilities that sum to 1 over C) and returns a soft label
``[C, H, W]`` float32 that sums to 1 over C. Extra leading batch axes are allowed: ``[..., T, C, H, W] ->
[..., C, H, W]``. The class axis is therefore always axis ``-3`` and the teacher axis ``-4``.

Rules (``FUSION_RULES``):

- ``mean``: the plain average of the teachers' probabilities.
- ``weighted_mean``: the average with per-teacher weights (non-negative, not all zero, normalised here).
- ``majority_vote``: each teacher votes for its argmax class; the soft label is the (weighted) vote fraction
  per class, so a 2-2 tie stays 0.5/0.5 rather than being broken.
- ``staple``: multi-class STAPLE (Warfield, Zou & Wells, IEEE TMI 2004) by expectation-maximisation over the
  teachers' argmax labels; the soft label is the posterior probability of each true class per pixel.
  Weights, when given, scale each teacher's log-likelihood (see :func:`staple`).
- ``confidence_weighted``: the average with per-pixel weights, each teacher's confidence there (one minus its
  normalised entropy, to the power :data:`CONFIDENCE_SHARPNESS`), times its weight when given. A teacher that is
  unsure where another is sure (e.g. on a contrast or scanner it never saw) yields there, with no labels needed.

Weights are per teacher (``[T]``) or per teacher and class (``[T, C]``, ``weighted_mean``, ``majority_vote`` and
``confidence_weighted``). A per-class weight ``W[t, c]`` is teacher t's weight *where it says class c*: at a pixel
its weight is ``sum_c W[t, c] p_t(c)`` (the weight of its vote's class for ``majority_vote``), and the rule is then
the per-pixel weighted one. Constant rows give the per-teacher rule; a teacher good at one structure and poor at
another counts where it claims the first. STAPLE learns a per-class confusion matrix per teacher itself and takes
per-teacher weights only (``docs/fusion.md``, "Per-class weights").

The quality figures of a case (agreement, entropy, hard label) are in :mod:`nakt_ray.fusion.quality`.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "FUSION_RULES",
    "fuse",
    "mean",
    "weighted_mean",
    "majority_vote",
    "staple",
    "confidence_weighted",
    "teacher_confidence",
    "per_class",
    "CONFIDENCE_SHARPNESS",
]

# Tolerances for input checks: probabilities may leave [0, 1] or miss a sum of 1 by float rounding
# (float16 teacher outputs, softmax in low precision), but not by more than this.
_RANGE_TOL = 1e-3
_SUM_TOL = 1e-2
# confidence_weighted: a teacher's weight at a pixel is (1 - H / log C) ** this. 1 is linear in the entropy; higher
# lets the surest teacher dominate. 4 was the best of 1, 2, 4, 8, 16 in Dice of the fused label on E5's validation
# volumes (3D brain MR, three teachers each trained on one contrast; docs/decisions.md 55), 8 and 16 within 0.01.
CONFIDENCE_SHARPNESS = 4.0
STAPLE_PER_CLASS = ("fusion rule \"staple\" takes per-teacher weights only ([T]); it learns each teacher's per-class "
                    "reliability itself (a confusion matrix). Per-class weights ([T, C]) are for weighted_mean, "
                    "majority_vote and confidence_weighted")


# --------------------------------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------------------------------
def _as_float_array(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise ValueError(f"{name} must be a real-valued numeric array; got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _check_probabilities(arr: np.ndarray, name: str, axis_desc: str) -> None:
    """NaN/inf, range [0, 1] and sum-to-one over the class axis (-3)."""
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if not np.all(np.isfinite(arr)):
        n_bad = int(np.sum(~np.isfinite(arr)))
        raise ValueError(f"{name} contains {n_bad} NaN/inf values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -_RANGE_TOL or hi > 1.0 + _RANGE_TOL:
        raise ValueError(
            f"{name} must be probabilities in [0, 1]; got values in [{lo:.4g}, {hi:.4g}] "
            "(were logits passed instead of softmax outputs?)"
        )
    sums = arr.sum(axis=-3)
    if np.any(np.abs(sums - 1.0) > _SUM_TOL):
        raise ValueError(
            f"{name} must sum to 1 over the class axis ({axis_desc}); got sums in "
            f"[{float(sums.min()):.4g}, {float(sums.max()):.4g}]"
        )


def _validate_probs(probs: np.ndarray) -> np.ndarray:
    """Check teacher probabilities ``[..., T, C, H, W]`` and return them as float64."""
    arr = _as_float_array(probs, "probs")
    if arr.ndim < 4:
        raise ValueError(
            f"probs must have shape [T, C, H, W] or [..., T, C, H, W] (T teachers, C classes); "
            f"got {arr.ndim} dims, shape {arr.shape}"
        )
    if arr.shape[-3] < 2:
        raise ValueError(f"probs needs at least 2 classes on axis -3 (background + foreground); got shape {arr.shape}")
    _check_probabilities(arr, "probs", "axis -3 of [..., T, C, H, W]")
    return arr


def _validate_soft_label(soft_label: np.ndarray) -> np.ndarray:
    """Check a soft label ``[..., C, H, W]`` and return it as float64."""
    arr = _as_float_array(soft_label, "soft_label")
    if arr.ndim < 3:
        raise ValueError(
            f"soft_label must have shape [C, H, W] or [..., C, H, W]; got {arr.ndim} dims, shape {arr.shape}"
        )
    if arr.shape[-3] < 2:
        raise ValueError(f"soft_label needs at least 2 classes on axis -3; got shape {arr.shape}")
    _check_probabilities(arr, "soft_label", "axis -3 of [..., C, H, W]")
    return arr


def _validate_weights(weights: Sequence[float] | np.ndarray, n_teachers: int) -> np.ndarray:
    """Check per-teacher weights and return them as float64 ``[T]`` normalised to sum 1."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1:
        raise ValueError(f"weights must be a 1-D sequence with one weight per teacher; got shape {w.shape}")
    if w.size != n_teachers:
        raise ValueError(
            f"weights has {w.size} entries but probs has {n_teachers} teachers (axis -4); give one weight per teacher"
        )
    _check_weight_values(w)
    return w / w.sum()


def _check_weight_values(w: np.ndarray) -> None:
    """Weights of any shape: finite, non-negative, not all zero."""
    if not np.all(np.isfinite(w)):
        raise ValueError(f"weights must be finite; got {w.tolist()}")
    if np.any(w < 0):
        raise ValueError(f"weights must be non-negative; got {w.tolist()}")
    if w.sum() <= 0:
        raise ValueError(f"weights must not all be zero; got {w.tolist()}")


def _validate_class_weights(weights: Sequence[Sequence[float]] | np.ndarray, n_teachers: int,
                            n_classes: int) -> np.ndarray:
    """Check per-teacher, per-class weights and return them as float64 ``[T, C]`` (not normalised: only the
    per-pixel weights they give are, in :func:`_pixel_weights`)."""
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"per-class weights must be {n_teachers} rows (one per teacher) of {n_classes} numbers (one "
                         f"per class, background first); got {weights!r}") from None
    if w.shape != (n_teachers, n_classes):
        raise ValueError(f"per-class weights must have shape [T, C] = [{n_teachers}, {n_classes}] (one row per "
                         f"teacher, one weight per class, background first); got shape {w.shape}")
    _check_weight_values(w)
    return w


def per_class(weights: Sequence[float] | Sequence[Sequence[float]] | np.ndarray | None) -> bool:
    """Whether ``weights`` are per teacher and class (rows of weights) rather than per teacher or absent."""
    if weights is None:
        return False
    if isinstance(weights, np.ndarray):
        return weights.ndim >= 2
    return any(isinstance(r, (list, tuple, np.ndarray)) for r in weights)


def _pixel_weights(per_teacher_probs: np.ndarray, class_weights: np.ndarray) -> np.ndarray:
    """Per-pixel teacher weights ``[..., T, 1, H, W]`` from ``[T, C]`` per-class weights: ``sum_c W[t, c] p_t(c)``,
    normalised to sum 1 over T at every pixel; a pixel where every teacher's weight is 0 (each claims only classes
    it is weighted 0 for) falls back to equal weights."""
    pw = np.einsum("tc,...tchw->...thw", class_weights, per_teacher_probs)[..., None, :, :]
    total = pw.sum(axis=-4, keepdims=True)
    n_teachers = per_teacher_probs.shape[-4]
    return np.where(total > 0, pw / np.where(total > 0, total, 1.0), 1.0 / n_teachers)


def _finish(soft: np.ndarray) -> np.ndarray:
    """Renormalise over the class axis (removes the input's rounding slack) and cast to float32."""
    soft = np.clip(soft, 0.0, None)
    soft = soft / np.maximum(soft.sum(axis=-3, keepdims=True), np.finfo(np.float64).tiny)
    return soft.astype(np.float32)


def _one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Integer labels ``[..., H, W]`` -> float64 one-hot ``[..., C, H, W]``."""
    classes = np.arange(num_classes).reshape(num_classes, 1, 1)
    return (labels[..., None, :, :] == classes).astype(np.float64)


# --------------------------------------------------------------------------------------------------------------
# rules
# --------------------------------------------------------------------------------------------------------------
def mean(probs: np.ndarray) -> np.ndarray:
    """Average the teachers' probabilities.

    Args:
        probs: ``[T, C, H, W]`` or ``[..., T, C, H, W]`` per-teacher class probabilities.

    Returns:
        soft label ``[C, H, W]`` / ``[..., C, H, W]`` float32, summing to 1 over C.
    """
    arr = _validate_probs(probs)
    return _finish(arr.mean(axis=-4))


def weighted_mean(probs: np.ndarray, weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """Weighted average of the teachers' probabilities.

    Args:
        probs: ``[T, C, H, W]`` or ``[..., T, C, H, W]`` per-teacher class probabilities.
        weights: ``[T]`` non-negative, not all zero; normalised to sum 1 here, so only ratios matter.
            ``[1, 0, 0]`` returns teacher 0's probabilities. Or ``[T, C]`` per-class weights (module docstring).

    Returns:
        soft label ``[C, H, W]`` / ``[..., C, H, W]`` float32, summing to 1 over C.
    """
    arr = _validate_probs(probs)
    if per_class(weights):
        pw = _pixel_weights(arr, _validate_class_weights(weights, arr.shape[-4], arr.shape[-3]))
        return _finish((arr * pw).sum(axis=-4))
    w = _validate_weights(weights, arr.shape[-4])
    return _finish(np.einsum("t,...tchw->...chw", w, arr))


def majority_vote(probs: np.ndarray, weights: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Soft majority vote: the (weighted) fraction of teachers whose argmax is each class.

    A teacher's vote is the argmax over C of its probabilities (on an exact tie the lower class index wins,
    as in ``np.argmax``). Ties *between teachers* are kept soft: two teachers voting 1 and two voting 0 give
    0.5 / 0.5.

    Args:
        probs: ``[T, C, H, W]`` or ``[..., T, C, H, W]`` per-teacher class probabilities.
        weights: optional ``[T]`` non-negative vote weights (normalised here); ``None`` = one vote each. Or
            ``[T, C]``: a teacher's vote for class c weighs ``W[t, c]``.

    Returns:
        soft label ``[C, H, W]`` / ``[..., C, H, W]`` float32, summing to 1 over C; values are multiples
        of 1/T when unweighted.
    """
    arr = _validate_probs(probs)
    n_teachers, n_classes = arr.shape[-4], arr.shape[-3]
    votes = _one_hot(arr.argmax(axis=-3), n_classes)  # [..., T, C, H, W]
    if per_class(weights):
        pw = _pixel_weights(votes, _validate_class_weights(weights, n_teachers, n_classes))
        return _finish((votes * pw).sum(axis=-4))
    w = np.full(n_teachers, 1.0 / n_teachers) if weights is None else _validate_weights(weights, n_teachers)
    return _finish(np.einsum("t,...tchw->...chw", w, votes))


def _staple_case(
    labels: np.ndarray, num_classes: int, reliability: np.ndarray, max_iter: int, tol: float
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-class STAPLE for one case.

    Args:
        labels: ``[T, N]`` integer decisions of T teachers over N pixels.
        num_classes: C.
        reliability: ``[T]`` exponents on each teacher's likelihood, max 1 (all ones = classic STAPLE).
        max_iter, tol: EM stopping rule (max absolute change of any confusion-matrix entry).

    Returns:
        posterior ``[C, N]`` (sums to 1 over C) and confusion matrices ``[T, C, C]`` where
        ``theta[j, d, s] = P(teacher j says d | true class s)`` (columns sum to 1).
    """
    n_teachers = labels.shape[0]
    # Pixels with the same decision vector have the same posterior, so EM runs over the distinct vectors
    # (at most C**T, usually a handful) weighted by how many pixels share each: cost stops depending on H*W.
    patterns, inverse, counts = np.unique(labels.T, axis=0, return_inverse=True, return_counts=True)
    patterns = patterns.T  # [T, K]
    inverse = inverse.reshape(-1)
    counts = counts.astype(np.float64)  # [K]
    teacher_idx = np.arange(n_teachers)[:, None]

    # Priors: the (reliability-weighted) frequency of each label over all teachers' decisions in this case.
    label_freq = np.zeros(num_classes)
    for j in range(n_teachers):
        label_freq += reliability[j] * np.bincount(labels[j], minlength=num_classes)
    prior = label_freq / label_freq.sum()
    with np.errstate(divide="ignore"):
        log_prior = np.log(prior)  # -inf for a class nobody predicts: its posterior is exactly 0

    # Start from confident, equally reliable teachers (0.99 on the diagonal); the first E-step is then close
    # to a (weighted) majority vote.
    diag = 0.99
    off = (1.0 - diag) / (num_classes - 1)
    theta = np.full((n_teachers, num_classes, num_classes), off)
    theta[:, np.arange(num_classes), np.arange(num_classes)] = diag
    # Floor on confusion entries: keeps logs finite when a teacher never outputs some class (an all-background
    # teacher), so one teacher cannot veto a class with log 0 = -inf.
    floor = 1e-8

    def e_step(theta: np.ndarray) -> np.ndarray:
        # log P(decisions of pattern k | true s) = sum_j r_j * log theta[j, d_jk, s]  -> [K, C]
        log_lik = np.einsum("t,tkc->kc", reliability, np.log(theta[teacher_idx, patterns, :]))
        log_post = log_lik + log_prior
        log_post -= log_post.max(axis=1, keepdims=True)
        post = np.exp(log_post)
        return post / post.sum(axis=1, keepdims=True)  # [K, C]

    for _ in range(max_iter):
        post = e_step(theta)
        weighted = post * counts[:, None]  # expected number of pixels of true class s in pattern k: [K, C]
        new_theta = np.zeros_like(theta)
        for j in range(n_teachers):
            # theta[j, d, s] = sum over patterns where teacher j said d of W[k, s], per true class s
            np.add.at(new_theta[j], patterns[j], weighted)
        mass = weighted.sum(axis=0)  # [C] expected pixels per true class
        has_mass = mass > 0
        new_theta[:, :, has_mass] /= mass[has_mass]
        # a true class with no expected pixels keeps its previous column (it does not affect the posterior)
        new_theta[:, :, ~has_mass] = theta[:, :, ~has_mass]
        new_theta = np.maximum(new_theta, floor)
        new_theta /= new_theta.sum(axis=1, keepdims=True)
        delta = float(np.max(np.abs(new_theta - theta)))
        theta = new_theta
        if delta < tol:
            break

    post = e_step(theta)  # [K, C]
    return post[inverse].T, theta


def staple(
    probs: np.ndarray,
    weights: Sequence[float] | np.ndarray | None = None,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> np.ndarray:
    """Multi-class STAPLE (Warfield et al. 2004) over the teachers' argmax labels.

    Expectation-maximisation estimates, per case, a confusion matrix per teacher
    ``theta[j, d, s] = P(teacher j labels d | true class s)`` and returns the posterior probability of each
    true class per pixel. Class priors are the label frequencies over all teachers' decisions in the case
    (fixed during EM). EM starts from teachers that are right 99 % of the time and stops when no confusion
    entry moves by more than ``tol`` or after ``max_iter`` iterations. Confusion entries are floored at 1e-8 so
    a teacher that never outputs a class (e.g. an all-background teacher) lowers, but cannot veto, that class.
    A teacher that is systematically wrong relative to the others gets a confusion matrix that says so and
    its votes count for less than in :func:`majority_vote`. Being a generative model of *independent*
    raters, STAPLE counts identical teachers as independent evidence.

    Weights: used as prior reliability. Each teacher's log-likelihood is multiplied by
    ``w_j / max(w)`` (a power likelihood), and the class priors are the weighted label frequencies. Equal
    weights therefore give classic STAPLE, weight 0 leaves a teacher out, and a smaller weight tempers a
    teacher's evidence in every EM step (not just the starting point, which EM would forget).

    Args:
        probs: ``[T, C, H, W]`` or ``[..., T, C, H, W]`` per-teacher class probabilities (only the argmax
            over C is used). Batched input is fused case by case, each case with its own EM.
        weights: optional ``[T]`` non-negative reliability weights, not all zero.
        max_iter: maximum EM iterations per case (>= 1).
        tol: convergence threshold on the largest change of a confusion-matrix entry.

    Returns:
        soft label ``[C, H, W]`` / ``[..., C, H, W]`` float32, the per-pixel posterior over true classes,
        summing to 1 over C.
    """
    arr = _validate_probs(probs)
    if per_class(weights):
        raise ValueError(STAPLE_PER_CLASS)
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer; got {max_iter!r}")
    if not (np.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a non-negative number; got {tol!r}")
    n_teachers, n_classes, height, width = arr.shape[-4:]
    if weights is None:
        reliability = np.ones(n_teachers)
    else:
        w = _validate_weights(weights, n_teachers)
        reliability = w / w.max()

    batch_shape = arr.shape[:-4]
    labels = arr.argmax(axis=-3).reshape(-1, n_teachers, height * width)  # [B, T, N]
    out = np.empty((labels.shape[0], n_classes, height * width))
    for b in range(labels.shape[0]):
        out[b], _ = _staple_case(labels[b], n_classes, reliability, int(max_iter), float(tol))
    return _finish(out.reshape(*batch_shape, n_classes, height, width))


def teacher_confidence(probs: np.ndarray, sharpness: float = CONFIDENCE_SHARPNESS) -> np.ndarray:
    """Per teacher and pixel, ``(1 - H / log C) ** sharpness`` (floored at 1e-6): ``[..., T, 1, H, W]`` float64.
    The weights of :func:`confidence_weighted`; they do not depend on the per-teacher weights, so a search over
    those can compute them once per case."""
    arr = _validate_probs(probs)
    plogp = arr * np.log(np.clip(arr, 1e-12, None))
    confidence = np.clip(1.0 + plogp.sum(axis=-3, keepdims=True) / np.log(max(arr.shape[-3], 2)), 1e-6, 1.0)
    return confidence ** float(sharpness)


def confidence_weighted(probs: np.ndarray, weights: Sequence[float] | np.ndarray | None = None,
                        sharpness: float = CONFIDENCE_SHARPNESS, confidence: np.ndarray | None = None) -> np.ndarray:
    """Average of the teachers' probabilities, each weighted per pixel by its confidence there.

    A teacher's confidence at a pixel is ``(1 - H / log C) ** sharpness`` with ``H`` the entropy of its class
    probabilities there (1 for a one-hot prediction, 0 for a uniform one; floored at 1e-6 so a pixel where every
    teacher is uniform gets their mean). Per pixel, so a volume fused slab by slab equals the volume fused at once.

    Args:
        probs: ``[T, C, H, W]`` or ``[..., T, C, H, W]`` per-teacher class probabilities.
        weights: optional ``[T]`` non-negative per-teacher weights (normalised here), multiplied into the
            confidences; ``None`` = equal. Or ``[T, C]`` per-class weights, whose per-pixel weights (module
            docstring) are multiplied in.
        sharpness: the exponent; 0 gives :func:`weighted_mean` (or :func:`mean`).
        confidence: :func:`teacher_confidence` of ``probs`` when already computed (``sharpness`` is then unused).

    Returns:
        soft label ``[C, H, W]`` / ``[..., C, H, W]`` float32, summing to 1 over C.
    """
    arr = _validate_probs(probs)
    n_teachers = arr.shape[-4]
    confidence = teacher_confidence(arr, sharpness) if confidence is None else confidence
    if per_class(weights):
        per_pixel = confidence * _pixel_weights(arr, _validate_class_weights(weights, n_teachers, arr.shape[-3]))
    else:
        w = np.full(n_teachers, 1.0 / n_teachers) if weights is None else _validate_weights(weights, n_teachers)
        per_pixel = confidence * w[:, None, None, None]  # [..., T, 1, H, W]
    return _finish((arr * per_pixel).sum(axis=-4) / per_pixel.sum(axis=-4))


FUSION_RULES: dict[str, Callable[..., np.ndarray]] = {
    "mean": mean,
    "weighted_mean": weighted_mean,
    "majority_vote": majority_vote,
    "staple": staple,
    "confidence_weighted": confidence_weighted,
}


def fuse(
    probs: np.ndarray, rule: str, weights: Sequence[float] | np.ndarray | None = None
) -> np.ndarray:
    """Fuse teacher probabilities with a rule named in :data:`FUSION_RULES`.

    Args:
        probs: ``[T, C, H, W]`` or ``[..., T, C, H, W]`` per-teacher class probabilities.
        rule: one of ``"mean"``, ``"weighted_mean"``, ``"majority_vote"``, ``"staple"``, ``"confidence_weighted"``.
        weights: ``[T]`` per-teacher weights, or ``[T, C]`` per-class weights (not for ``staple``). Required by
            ``weighted_mean``, optional for ``majority_vote``, ``staple`` and ``confidence_weighted``, refused by
            ``mean`` (use ``weighted_mean`` instead).

    Returns:
        soft label ``[C, H, W]`` / ``[..., C, H, W]`` float32, summing to 1 over C.
    """
    if rule not in FUSION_RULES:
        valid = sorted(FUSION_RULES)
        close = difflib.get_close_matches(str(rule), valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown fusion rule {rule!r}; valid rules are {valid}{hint}")
    if rule == "mean":
        if weights is not None:
            raise ValueError('fusion rule "mean" takes no weights; use rule "weighted_mean" to weight teachers')
        return mean(probs)
    if rule == "weighted_mean" and weights is None:
        raise ValueError('fusion rule "weighted_mean" needs weights (one per teacher); use "mean" for equal weights')
    return FUSION_RULES[rule](probs, weights)


# --------------------------------------------------------------------------------------------------------------
# quality figures
# --------------------------------------------------------------------------------------------------------------

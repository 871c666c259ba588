"""Student losses against fused soft labels, as pure torch functions.

Shapes: ``logits`` are the student's raw outputs ``[B, C, H, W]`` (class axis 1, class 0 = background), or
``[B, C, D, H, W]`` for volumes: every function works over any number of spatial axes ``[B, C, *spatial]``, and
"pixel" below means a voxel there; ``target`` is a per-pixel class distribution of the same shape (a fused soft
label or a one-hot hard label); ``pixel_weight`` is an optional ``[B, *spatial]`` non-negative weight per pixel
(e.g. teacher agreement).

:func:`segmentation_loss` combines the parts and returns a dict of named tensors (``loss``, ``dice``, ``ce``,
``kl``, ``hard``) that go straight to the metrics logger. :func:`partial_label_loss` is its counterpart for
teachers that predict different subsets of the student's classes (issue 17; maths in ``docs/fusion.md``,
"Partial-label loss").
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["LOG_PARTS_EVERY", "kl_distillation", "partial_label_loss", "segmentation_loss", "soft_cross_entropy",
           "soft_dice_loss"]


LOG_PARTS_EVERY = 8  # the training loop computes the loss parts of weight 0, to log them, every 8th step


def _check_pair(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.shape != target.shape:
        raise ValueError(
            f"logits shape {tuple(logits.shape)} does not match target shape {tuple(target.shape)}; "
            "target must be per-class probabilities [B, C, H, W] (one-hot encode integer label maps)"
        )
    if logits.ndim not in (4, 5):
        raise ValueError(f"logits and target must be [B, C, H, W] or [B, C, D, H, W]; got shape "
                         f"{tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError(
            f"need at least 2 classes on axis 1 (background + foreground); got shape {tuple(logits.shape)}"
        )


def _check_pixel_weight(pixel_weight: torch.Tensor | None, logits: torch.Tensor) -> None:
    if pixel_weight is None:
        return
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(pixel_weight.shape) != expected:
        raise ValueError(
            f"pixel_weight shape {tuple(pixel_weight.shape)} does not match [B, *spatial] = {expected} "
            f"of logits {tuple(logits.shape)}"
        )


def _pixel_mean(per_pixel: torch.Tensor, pixel_weight: torch.Tensor | None) -> torch.Tensor:
    """Mean over all pixels of ``per_pixel`` ``[B, *spatial]``, each pixel multiplied by its weight."""
    if pixel_weight is not None:
        per_pixel = per_pixel * pixel_weight.to(per_pixel.dtype)
    return per_pixel.mean()


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, include_background: bool = False, eps: float = 1e-5
) -> torch.Tensor:
    """Soft Dice loss ``1 - mean Dice`` between ``softmax(logits)`` and a soft or one-hot target.

    Dice per sample b and class c over the pixels:
    ``(2 sum_hw p t + eps) / (sum_hw p + sum_hw t + eps)``; the loss is 1 minus its mean over samples and
    classes. ``eps`` in numerator and denominator makes a class absent from both prediction and target score
    Dice 1 (no penalty).

    Args:
        logits: ``[B, C, H, W]`` raw student outputs.
        target: ``[B, C, H, W]`` class probabilities.
        include_background: also average class 0 (default: foreground classes 1..C-1 only).
        eps: smoothing, > 0.

    Returns:
        scalar tensor in [0, 1].
    """
    _check_pair(logits, target)
    return _dice_of(torch.softmax(logits, dim=1), target, include_background, eps)


def _dice_of(prob: torch.Tensor, target: torch.Tensor, include_background: bool = False,
             eps: float = 1e-5) -> torch.Tensor:
    """:func:`soft_dice_loss` from the softmax ``prob`` (checked shapes)."""
    target = target.to(prob.dtype)
    if not include_background:
        prob, target = prob[:, 1:], target[:, 1:]
    spatial = tuple(range(2, prob.ndim))  # (2, 3) for images, (2, 3, 4) for volumes
    intersection = (prob * target).sum(dim=spatial)
    denominator = prob.sum(dim=spatial) + target.sum(dim=spatial)
    dice = (2.0 * intersection + eps) / (denominator + eps)  # [B, C']
    return 1.0 - dice.mean()


def soft_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, pixel_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy with soft targets, ``-sum_c target_c * log_softmax(logits)_c``, mean over pixels.

    Args:
        logits: ``[B, C, H, W]`` raw student outputs.
        target: ``[B, C, H, W]`` class probabilities.
        pixel_weight: optional ``[B, H, W]`` non-negative weights. Each pixel's CE is multiplied by its weight
            and the result is averaged over all B*H*W pixels (not divided by the sum of weights), so weights of
            1 give the unweighted loss and low-confidence pixels/images contribute less in absolute terms.

    Returns:
        scalar tensor (nats). A uniform prediction against a one-hot target gives log C.
    """
    _check_pair(logits, target)
    _check_pixel_weight(pixel_weight, logits)
    return _cross_entropy_of(F.log_softmax(logits, dim=1), target, pixel_weight)


def _cross_entropy_of(log_prob: torch.Tensor, target: torch.Tensor,
                      pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`soft_cross_entropy` from the log-softmax ``log_prob`` (checked shapes)."""
    per_pixel = -(target.to(log_prob.dtype) * log_prob).sum(dim=1)  # [B, H, W]
    return _pixel_mean(per_pixel, pixel_weight)


def kl_distillation(
    logits: torch.Tensor,
    target: torch.Tensor,
    temperature: float,
    pixel_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hinton distillation: ``T^2 * KL(q_T || softmax(logits / T))``, summed over C, mean over pixels.

    The soft target is tempered in probability space: ``q_T = target^(1/T) / sum_c target^(1/T)``, computed
    as ``softmax(log(target) / T)`` over C (classes with target 0 stay exactly 0). When ``target`` is
    ``softmax(z)`` of teacher logits ``z`` this equals ``softmax(z / T)``, Hinton's tempered teacher, so a
    student whose logits equal the teacher's (or ``log(target)``) has zero loss at every temperature.
    ``T > 1`` softens the target, ``T < 1`` sharpens it, ``T = 1`` leaves it unchanged. The ``T^2`` factor
    keeps gradient magnitudes comparable across temperatures (Hinton et al. 2015).

    Args:
        logits: ``[B, C, H, W]`` raw student outputs.
        target: ``[B, C, H, W]`` class probabilities (the fused soft label); treated as a constant (detached).
        temperature: T > 0.
        pixel_weight: optional ``[B, H, W]`` non-negative per-pixel weights, applied as in
            :func:`soft_cross_entropy`.

    Returns:
        scalar tensor (nats * T^2), >= 0.
    """
    _check_pair(logits, target)
    _check_pixel_weight(pixel_weight, logits)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature!r}")
    return _kl_of(F.log_softmax(logits / temperature, dim=1), target, temperature, pixel_weight)


def _kl_of(log_student: torch.Tensor, target: torch.Tensor, temperature: float,
           pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`kl_distillation` from the student's tempered log-softmax ``log_softmax(logits / T)`` (checked)."""
    # log(0) = -inf gives an exact 0 after the softmax; a pixel whose target is all zeros (not a distribution)
    # would give NaN, which nan_to_num turns into "no target" (zero loss at that pixel).
    # The target is a constant here (detached): gradients through log(0) would be NaN.
    log_target = torch.log(target.detach().to(log_student.dtype))
    tempered = torch.nan_to_num(torch.softmax(log_target / temperature, dim=1), nan=0.0)
    # xlogy(0, 0) = 0, so classes with q = 0 contribute nothing
    per_pixel = (torch.xlogy(tempered, tempered) - tempered * log_student).sum(dim=1)  # [B, H, W]
    return _pixel_mean(per_pixel, pixel_weight) * temperature**2


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    dice_weight: float = 1.0,
    ce_weight: float = 1.0,
    kl_weight: float = 0.0,
    temperature: float = 1.0,
    pixel_weight: torch.Tensor | None = None,
    hard_weight: float = 0.0,
    log_parts: bool = True,
) -> dict[str, torch.Tensor]:
    """Weighted sum of soft Dice, soft cross-entropy, KL distillation and hard-label Dice + CE, every part returned.

    ``loss = dice_weight * dice + ce_weight * ce + kl_weight * kl + hard_weight * hard``, where ``hard`` is Dice
    plus cross-entropy against the one-hot arg-max of ``target`` (the fused hard label). All parts are computed
    and returned even when their weight is 0, so they can be logged; a part of weight 0 is computed without
    gradient (it is not in ``loss``), and not at all with ``log_parts`` False (the training loop logs them from
    one step in :data:`LOG_PARTS_EVERY`: the KL alone costs about a quarter of a 3D student's step).
    ``pixel_weight`` applies to the per-pixel terms (ce and kl); Dice is a region overlap and ignores it. Dice
    excludes the background class. One log-softmax serves every part (two when the KL temperature is not 1), so
    each part has the value of its own function (:func:`soft_dice_loss`, :func:`soft_cross_entropy`,
    :func:`kl_distillation`).

    Args:
        logits: ``[B, C, H, W]`` raw student outputs.
        target: ``[B, C, H, W]`` class probabilities.
        dice_weight, ce_weight, kl_weight, hard_weight: non-negative weights of the parts.
        temperature: T > 0 for the KL part (see :func:`kl_distillation`).
        pixel_weight: optional ``[B, H, W]`` non-negative per-pixel weights.
        log_parts: also compute the parts of weight 0.

    Returns:
        ``{"loss": total, "dice": ..., "ce": ..., "kl": ..., "hard": ...}``, each a scalar tensor (``loss``
        carries the gradient; the parts are not detached); without ``log_parts``, only the weighted parts.
    """
    weights = {"dice": dice_weight, "ce": ce_weight, "kl": kl_weight, "hard": hard_weight}
    for name, value in weights.items():
        if not value >= 0:
            raise ValueError(f"{name}_weight must be >= 0; got {value!r}")
    _check_pair(logits, target)
    _check_pixel_weight(pixel_weight, logits)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature!r}")
    target = target.to(logits.dtype)
    weighted = [name for name, value in weights.items() if value > 0] or list(weights)
    parts = _loss_parts(logits, target, weighted, temperature, pixel_weight)
    rest = [name for name in weights if name not in parts] if log_parts else []
    if rest:  # logged only: no gradient to keep or compute
        with torch.no_grad():
            parts.update(_loss_parts(logits.detach(), target, rest, temperature, pixel_weight))
    total = sum(weights[name] * parts[name] for name in weighted)
    return {"loss": total, **{name: parts[name] for name in weights if name in parts}}


def _one_hot_argmax(target: torch.Tensor) -> torch.Tensor:
    """The one-hot arg-max over the class axis 1 (the first class on ties), contiguous, in ``target``'s dtype: from
    ``max``'s indices (``argmax`` over axis 1 is ~5x slower on the CPU), scattered (``one_hot(...).movedim`` is a
    strided view, slow to read)."""
    return torch.zeros_like(target).scatter_(1, target.max(1, keepdim=True).indices, 1.0)


def _loss_parts(logits: torch.Tensor, target: torch.Tensor, names: list[str], temperature: float,
                pixel_weight: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The parts ``names`` of :func:`segmentation_loss` (checked arguments), sharing one log-softmax."""
    log_prob = F.log_softmax(logits, dim=1)
    prob = log_prob.exp()
    parts = {}
    if "dice" in names:
        parts["dice"] = _dice_of(prob, target)
    if "ce" in names:
        parts["ce"] = _cross_entropy_of(log_prob, target, pixel_weight)
    if "kl" in names:
        log_student = log_prob if temperature == 1 else F.log_softmax(logits / temperature, dim=1)
        parts["kl"] = _kl_of(log_student, target, temperature, pixel_weight)
    if "hard" in names:
        hard = _one_hot_argmax(target)
        parts["hard"] = _dice_of(prob, hard) + _cross_entropy_of(log_prob, hard, pixel_weight)
    return parts


# --------------------------------------------------------------------------------------------------------------
# partial labels: teachers that cover different subsets of the student's classes (issue 17)
# --------------------------------------------------------------------------------------------------------------
def _partial_coverage(coverage: Any, logits: torch.Tensor, n_targets: int) -> torch.Tensor:
    """``coverage`` as bool ``[T, K+1]`` on the CPU, checked as ``nakt_ray.fusion.partial.check_coverage`` does
    (that module is a layer above this one, see ``tests/test_layers.py``), and against ``logits`` and ``targets``."""
    try:
        cov = torch.as_tensor(coverage).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"coverage must be a bool [T, K+1] array or tensor; got {type(coverage).__name__}: {err}"
                         ) from None
    if cov.ndim != 2:
        raise ValueError(f"coverage must have shape [T, K+1]; got shape {tuple(cov.shape)}")
    if cov.dtype != torch.bool:
        if cov.is_floating_point() or cov.is_complex() or not bool(((cov == 0) | (cov == 1)).all()):
            raise ValueError(f"coverage must be bool (or 0/1 integers); got dtype {cov.dtype}")
        cov = cov.bool()
    n_teachers, n_classes = cov.shape
    if n_classes != logits.shape[1]:
        raise ValueError(f"coverage has {n_classes} columns but logits have {logits.shape[1]} classes on axis 1 "
                         f"(shape {tuple(logits.shape)}); coverage must be [T, K+1] over the student's classes")
    if n_teachers != n_targets:
        raise ValueError(f"targets has {n_targets} tensors but coverage has {n_teachers} rows; give one target "
                         "and one coverage row per teacher")
    for t in range(n_teachers):
        if not cov[t, 0]:
            raise ValueError(f"coverage[{t}, 0] must be True: column 0 is teacher {t}'s own background, which every "
                             "teacher has")
        if not cov[t, 1:].any():
            raise ValueError(f"coverage[{t}, 1:] is all False: teacher {t} covers no student class")
    uncovered = [k for k in range(1, n_classes) if not cov[:, k].any()]
    if uncovered:
        raise ValueError(f"coverage: student classes {uncovered} are covered by no teacher; every class needs a "
                         "teacher that predicts it")
    return cov


def _partial_weights(weights: Any, cov: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Weights as ``[T, K+1]`` float64 per teacher and class, and the normaliser ``Z = sum_t mean_j a_tj`` over each
    teacher's cells (its background is column 0; columns of classes a teacher does not cover are unused)."""
    n_teachers, n_classes = cov.shape
    if weights is None:
        w = torch.ones(n_teachers, n_classes, dtype=torch.float64)
    else:
        w = torch.as_tensor(weights).detach().cpu().to(torch.float64)
        if tuple(w.shape) == (n_teachers,):
            w = w[:, None].expand(n_teachers, n_classes)
        elif tuple(w.shape) != (n_teachers, n_classes):
            raise ValueError(f"weights must have shape [T] = ({n_teachers},) (per teacher) or [T, K+1] = "
                             f"({n_teachers}, {n_classes}) (per teacher and class); got shape {tuple(w.shape)}")
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError(f"weights must be finite and non-negative; got {w.tolist()}")
    norm = float(sum(w[t][cov[t]].mean() for t in range(n_teachers)))
    if not norm > 0:
        raise ValueError(f"weights are zero on every class the teachers cover; got {w.tolist()}")
    return w, norm


def _marginal_log_prob(logits: torch.Tensor, log_norm: torch.Tensor, bg: torch.Tensor,
                       fg: torch.Tensor) -> torch.Tensor:
    """``log m`` over a teacher's cells ``[B, C_t, *spatial]``: its background cell holds union classes ``bg``,
    its other cells ``fg`` one each. logsumexp of the logits over a cell, never the log of a sum of softmaxes, which
    is -inf where those probabilities underflow."""
    background = torch.logsumexp(logits.index_select(1, bg), dim=1, keepdim=True)
    return torch.cat([background, logits.index_select(1, fg)], dim=1) - log_norm


def _cell_dice_ce(log_m: torch.Tensor, target: torch.Tensor, a: torch.Tensor, pixel_weight: torch.Tensor | None,
                  eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """One teacher's Dice and CE parts (as :func:`soft_dice_loss` and :func:`soft_cross_entropy` on the marginal
    ``exp(log_m)``), each cell ``j`` weighted by ``a[j]``."""
    a_view = a.view(1, -1, *([1] * (log_m.ndim - 2)))
    ce = _pixel_mean(-(a_view * target * log_m).sum(dim=1), pixel_weight)
    prob = log_m.exp()[:, 1:]
    spatial = tuple(range(2, prob.ndim))
    intersection = (prob * target[:, 1:]).sum(dim=spatial)
    dice = (2.0 * intersection + eps) / (prob.sum(dim=spatial) + target[:, 1:].sum(dim=spatial) + eps)  # [B, C_t-1]
    return ((1.0 - dice) * a[1:]).mean(), ce


def partial_label_loss(
    logits: torch.Tensor,
    targets: Sequence[torch.Tensor],
    coverage: Any,
    weights: Any = None,
    *,
    dice_weight: float = 1.0,
    ce_weight: float = 1.0,
    kl_weight: float = 0.0,
    temperature: float = 1.0,
    hard_weight: float = 0.0,
    pixel_weight: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """:func:`segmentation_loss` against teachers that each cover some of the student's classes.

    Teacher ``t`` covers the union classes ``S_t`` (``coverage[t]``) and its target is a distribution over its own
    cells: ``bg_t = {0} ∪ (classes it does not cover)``, then ``{k}`` for each ``k`` in ``S_t``. The student's
    softmax ``p`` over ``0..K`` is *marginalised* onto those cells, ``m_t(bg_t) = p_0 + sum_{k not in S_t} p_k`` and
    ``m_t({k}) = p_k``, computed as ``log m_t(cell) = logsumexp_{k in cell} z_k - logsumexp_k z_k``. So a teacher
    that says "none of my classes" is satisfied by any class it does not predict (the marginal loss of Shi et al.
    2021, "Marginal loss and exclusion loss for partially supervised multi-organ segmentation"), where putting its
    map in the union layout with zeros elsewhere would punish the student for every class the teacher never saw.

    Each part is the one of :func:`segmentation_loss` between ``m_t`` and ``y_t``, with every cell ``j`` weighted by
    ``a_tj`` (the weight of teacher ``t`` and the union class of cell ``j``; column 0 for its background):
    ``ce_t = mean_pixels(pixel_weight * -sum_j a_tj y_tj log m_tj)``; ``dice_t = mean_{b, j>=1} a_tj (1 - Dice(m_tj,
    y_tj))`` over its foreground cells; ``kl_t`` likewise against the tempered target (the student tempered before
    marginalising, ``softmax(z / T)``), times ``T^2``; ``hard_t`` is Dice + CE against the one-hot arg-max of
    ``y_t`` over its own cells. Every part is ``sum_t part_t / Z`` with ``Z = sum_t mean_j a_tj``, which for per-
    teacher weights is the weighted mean of the teachers' terms. With one teacher covering every class this is
    :func:`segmentation_loss` exactly.

    Args:
        logits: ``[B, K+1, *spatial]`` raw student outputs (2D or 3D).
        targets: T tensors, teacher ``t``'s ``[B, C_t, *spatial]`` probabilities over its own cells (its background
            first, then its classes in union order; ``C_t = coverage[t].sum()``).
        coverage: bool ``[T, K+1]`` (array, tensor or nested lists): ``coverage[t, k]`` if teacher ``t`` predicts
            union class ``k``; column 0 true; every class covered by some teacher.
        weights: ``[T]`` per teacher (default equal) or ``[T, K+1]`` per teacher and class; non-negative. A teacher
            of weight 0 has no effect.
        dice_weight, ce_weight, kl_weight, hard_weight: non-negative weights of the parts.
        temperature: T > 0 for the KL part.
        pixel_weight: optional ``[B, *spatial]`` non-negative weights of the per-pixel parts (ce, kl, hard's ce).

    Returns:
        ``{"loss", "dice", "ce", "kl", "hard"}`` as :func:`segmentation_loss`, each a scalar tensor.
    """
    for name, value in (("dice_weight", dice_weight), ("ce_weight", ce_weight), ("kl_weight", kl_weight),
                        ("hard_weight", hard_weight)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0; got {value!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature!r}")
    if logits.ndim not in (4, 5) or logits.shape[1] < 2:
        raise ValueError(f"logits must be [B, K+1, H, W] or [B, K+1, D, H, W] with K+1 >= 2; got shape "
                         f"{tuple(logits.shape)}")
    if isinstance(targets, torch.Tensor):  # a stacked [T, ...] tensor; ValueError as for every other argument
        raise ValueError(  # noqa: TRY004
            "targets must be a sequence of T tensors, one per teacher (each with its own classes); got one tensor "
            f"of shape {tuple(targets.shape)}")
    targets = list(targets)
    cov = _partial_coverage(coverage, logits, len(targets))
    w, norm = _partial_weights(weights, cov)
    _check_pixel_weight(pixel_weight, logits)
    log_norm = torch.logsumexp(logits, dim=1, keepdim=True)
    tempered = logits / temperature
    log_norm_t = torch.logsumexp(tempered, dim=1, keepdim=True)
    parts = {name: logits.new_zeros(()) for name in ("dice", "ce", "kl", "hard")}
    for t, target in enumerate(targets):
        covered = cov[t].nonzero().flatten()
        expected = (logits.shape[0], len(covered), *logits.shape[2:])
        if not isinstance(target, torch.Tensor) or tuple(target.shape) != expected:
            found = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
            raise ValueError(f"targets[{t}] has shape {found}; expected [B, C_t, *spatial] = {expected}: teacher "
                             f"{t} covers its background and classes {covered[1:].tolist()}")
        bg = torch.cat([cov.new_zeros(1, dtype=torch.long), (~cov[t]).nonzero().flatten()]).to(logits.device)
        fg = covered[1:].to(logits.device)
        a = w[t][covered].to(device=logits.device, dtype=logits.dtype)        # [C_t], cell j's weight
        y = target.to(device=logits.device, dtype=logits.dtype)
        # 1. Dice and CE on the marginal of the student's softmax over this teacher's cells.
        log_m = _marginal_log_prob(logits, log_norm, bg, fg)
        dice, ce = _cell_dice_ce(log_m, y, a, pixel_weight)
        # 2. KL: the tempered target against the marginal of the tempered student (kl_distillation's convention).
        log_m_t = _marginal_log_prob(tempered, log_norm_t, bg, fg)
        q = torch.nan_to_num(torch.softmax(torch.log(y.detach()) / temperature, dim=1), nan=0.0)
        a_view = a.view(1, -1, *([1] * (logits.ndim - 2)))
        kl = _pixel_mean((a_view * (torch.xlogy(q, q) - q * log_m_t)).sum(dim=1), pixel_weight) * temperature**2
        # 3. Hard: Dice + CE against the teacher's own arg-max.
        hard_y = _one_hot_argmax(y)
        hard_dice, hard_ce = _cell_dice_ce(log_m, hard_y, a, pixel_weight)
        hard = hard_dice + hard_ce
        for name, value in (("dice", dice), ("ce", ce), ("kl", kl), ("hard", hard)):
            parts[name] = parts[name] + value / norm
    total = (dice_weight * parts["dice"] + ce_weight * parts["ce"] + kl_weight * parts["kl"]
             + hard_weight * parts["hard"])
    return {"loss": total, **parts}

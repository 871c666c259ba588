"""Student losses against fused soft labels, as pure torch functions.

Shapes: ``logits`` are the student's raw outputs ``[B, C, H, W]`` (class axis 1, class 0 = background), or
``[B, C, D, H, W]`` for volumes: every function works over any number of spatial axes ``[B, C, *spatial]``, and
"pixel" below means a voxel there; ``target`` is a per-pixel class distribution of the same shape (a fused soft
label or a one-hot hard label); ``pixel_weight`` is an optional ``[B, *spatial]`` non-negative weight per pixel
(e.g. teacher agreement).

:func:`segmentation_loss` combines the parts and returns a dict of named tensors (``loss``, ``dice``, ``ce``,
``kl``, ``hard``) that go straight to the metrics logger.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["soft_dice_loss", "soft_cross_entropy", "kl_distillation", "segmentation_loss"]


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
    prob = torch.softmax(logits, dim=1)
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
    log_prob = F.log_softmax(logits, dim=1)
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
    log_student = F.log_softmax(logits / temperature, dim=1)
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
) -> dict[str, torch.Tensor]:
    """Weighted sum of soft Dice, soft cross-entropy, KL distillation and hard-label Dice + CE, every part returned.

    ``loss = dice_weight * dice + ce_weight * ce + kl_weight * kl + hard_weight * hard``, where ``hard`` is Dice
    plus cross-entropy against the one-hot arg-max of ``target`` (the fused hard label). All parts are computed
    and returned even when their weight is 0, so they can be logged. ``pixel_weight`` applies to the per-pixel
    terms (ce and kl); Dice is a region overlap and ignores it. Dice excludes the background class.

    Args:
        logits: ``[B, C, H, W]`` raw student outputs.
        target: ``[B, C, H, W]`` class probabilities.
        dice_weight, ce_weight, kl_weight, hard_weight: non-negative weights of the parts.
        temperature: T > 0 for the KL part (see :func:`kl_distillation`).
        pixel_weight: optional ``[B, H, W]`` non-negative per-pixel weights.

    Returns:
        ``{"loss": total, "dice": ..., "ce": ..., "kl": ..., "hard": ...}``, each a scalar tensor (``loss``
        carries the gradient; the parts are not detached).
    """
    for name, value in (("dice_weight", dice_weight), ("ce_weight", ce_weight), ("kl_weight", kl_weight),
                        ("hard_weight", hard_weight)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0; got {value!r}")
    dice = soft_dice_loss(logits, target)
    ce = soft_cross_entropy(logits, target, pixel_weight=pixel_weight)
    kl = kl_distillation(logits, target, temperature, pixel_weight=pixel_weight)
    hard_target = F.one_hot(target.argmax(1), target.shape[1]).movedim(-1, 1).to(logits.dtype)
    hard = soft_dice_loss(logits, hard_target) + soft_cross_entropy(logits, hard_target, pixel_weight=pixel_weight)
    total = dice_weight * dice + ce_weight * ce + kl_weight * kl + hard_weight * hard
    return {"loss": total, "dice": dice, "ce": ce, "kl": kl, "hard": hard}

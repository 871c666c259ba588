"""Student losses on tiny hand-made tensors with known values."""
from __future__ import annotations

import math

import pytest
import torch

from nakt_ray.losses import kl_distillation, segmentation_loss, soft_cross_entropy, soft_dice_loss


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[B, H, W] integer labels -> float one-hot [B, C, H, W]."""
    return torch.nn.functional.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).float()


def random_labels(num_classes: int, seed: int = 0, shape: tuple[int, int, int] = (2, 4, 5)) -> torch.Tensor:
    return torch.randint(0, num_classes, shape, generator=torch.Generator().manual_seed(seed))


def random_soft(num_classes: int, seed: int = 0, shape: tuple[int, int, int] = (2, 4, 5)) -> torch.Tensor:
    logits = torch.randn(shape[0], num_classes, *shape[1:], generator=torch.Generator().manual_seed(seed))
    return torch.softmax(logits, dim=1)


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_perfect_prediction_gives_near_zero_dice_and_ce(num_classes: int) -> None:
    target = one_hot(random_labels(num_classes), num_classes)
    logits = 30.0 * target  # confident and right
    assert soft_dice_loss(logits, target).item() < 1e-4
    assert soft_dice_loss(logits, target, include_background=True).item() < 1e-4
    assert soft_cross_entropy(logits, target).item() < 1e-4


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_uniform_prediction_gives_log_c(num_classes: int) -> None:
    logits = torch.zeros(2, num_classes, 4, 5)
    target = one_hot(random_labels(num_classes), num_classes)
    assert soft_cross_entropy(logits, target).item() == pytest.approx(math.log(num_classes), rel=1e-6)
    # against a uniform prediction every target costs log C
    assert soft_cross_entropy(logits, random_soft(num_classes)).item() == pytest.approx(math.log(num_classes), rel=1e-6)


def test_dice_known_value() -> None:
    # one image, 2x2, one foreground pixel; uniform prediction p = 0.5 everywhere
    target = one_hot(torch.tensor([[[1, 0], [0, 0]]]), 2)
    logits = torch.zeros(1, 2, 2, 2)
    # foreground: 2 * 0.5 / (2 + 1) = 1/3 -> loss 2/3
    assert soft_dice_loss(logits, target, eps=0.0).item() == pytest.approx(2 / 3, rel=1e-6)
    # background: 2 * 1.5 / (2 + 3) = 3/5; mean with 1/3 = 7/15 -> loss 8/15
    assert soft_dice_loss(logits, target, include_background=True, eps=0.0).item() == pytest.approx(8 / 15, rel=1e-6)


def test_dice_class_empty_in_prediction_and_target_costs_nothing() -> None:
    target = one_hot(torch.zeros(1, 3, 3), 2)  # all background
    logits = 30.0 * target
    assert soft_dice_loss(logits, target).item() < 1e-4


def test_wrong_prediction_costs_more_than_right() -> None:
    target = one_hot(random_labels(3), 3)
    right, wrong = 5.0 * target, 5.0 * target.roll(1, dims=1)
    assert soft_dice_loss(wrong, target) > soft_dice_loss(right, target) + 0.5
    assert soft_cross_entropy(wrong, target) > soft_cross_entropy(right, target) + 1.0


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0])
def test_kl_is_zero_when_student_matches_tempered_target(temperature: float) -> None:
    teacher_logits = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    target = torch.softmax(teacher_logits, dim=1)
    # softmax(z / T) is exactly the tempered target target^(1/T) / sum
    assert abs(kl_distillation(teacher_logits, target, temperature).item()) < 1e-5
    assert abs(kl_distillation(torch.log(target), target, temperature).item()) < 1e-5
    # any other student pays
    assert kl_distillation(torch.zeros_like(teacher_logits), target, temperature).item() > 1e-3


def test_kl_known_value_with_temperature() -> None:
    target = torch.tensor([0.8, 0.2]).reshape(1, 2, 1, 1)
    logits = torch.zeros(1, 2, 1, 1)  # student 0.5 / 0.5 at any temperature
    # T = 2: tempered target = sqrt(p) / sum = (2/3, 1/3); KL against (1/2, 1/2), times T^2 = 4
    expected = 4 * (2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3))
    assert kl_distillation(logits, target, 2.0).item() == pytest.approx(expected, rel=1e-5)


def test_kl_at_temperature_one_is_ce_minus_target_entropy() -> None:
    target, logits = random_soft(3, seed=2), torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(3))
    target_entropy = -(target * target.log()).sum(dim=1).mean()
    expected = soft_cross_entropy(logits, target) - target_entropy
    assert kl_distillation(logits, target, 1.0).item() == pytest.approx(expected.item(), abs=1e-5)


def test_kl_handles_exact_zeros_in_target() -> None:
    target = one_hot(random_labels(3), 3)  # hard target, two zeros per pixel
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    loss = kl_distillation(logits, target, 2.0)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert torch.isfinite(logits.grad).all()


def test_gradient_flows_through_every_part() -> None:
    target = random_soft(3)
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    parts = segmentation_loss(logits, target, dice_weight=1.0, ce_weight=1.0, kl_weight=0.5, temperature=2.0)
    parts["loss"].backward(retain_graph=True)
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    for name in ("dice", "ce", "kl", "hard"):
        (grad,) = torch.autograd.grad(parts[name], logits, retain_graph=True)
        assert grad.abs().sum() > 0, name


def test_segmentation_loss_parts_and_total() -> None:
    target, logits = random_soft(3), torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(4))
    parts = segmentation_loss(logits, target, dice_weight=0.5, ce_weight=2.0, kl_weight=0.0, temperature=3.0)
    assert set(parts) == {"loss", "dice", "ce", "kl", "hard"}
    assert all(p.ndim == 0 for p in parts.values())
    assert parts["dice"].item() == pytest.approx(soft_dice_loss(logits, target).item())
    assert parts["ce"].item() == pytest.approx(soft_cross_entropy(logits, target).item())
    # kl is reported even with weight 0, and does not enter the total
    assert parts["kl"].item() == pytest.approx(kl_distillation(logits, target, 3.0).item())
    assert parts["kl"].item() > 0
    assert parts["loss"].item() == pytest.approx(0.5 * parts["dice"].item() + 2.0 * parts["ce"].item(), rel=1e-6)
    with_kl = segmentation_loss(logits, target, dice_weight=0.5, ce_weight=2.0, kl_weight=1.0, temperature=3.0)
    assert with_kl["loss"].item() == pytest.approx(parts["loss"].item() + parts["kl"].item(), rel=1e-6)


def test_hard_part_is_dice_plus_ce_against_the_argmax() -> None:
    target, logits = random_soft(3), torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(5))
    hard_target = one_hot(target.argmax(1), 3)
    parts = segmentation_loss(logits, target, hard_weight=0.7)
    expected = soft_dice_loss(logits, hard_target) + soft_cross_entropy(logits, hard_target)
    assert parts["hard"].item() == pytest.approx(expected.item(), rel=1e-6)
    # a soft target is not its own arg-max: the hard part differs from the soft parts
    assert parts["hard"].item() != pytest.approx((parts["dice"] + parts["ce"]).item(), rel=1e-3)
    base = segmentation_loss(logits, target)
    assert parts["loss"].item() == pytest.approx(base["loss"].item() + 0.7 * expected.item(), rel=1e-6)


def test_pixel_weights_change_the_loss() -> None:
    target = one_hot(torch.tensor([[[1, 0], [0, 0]]]), 2)
    logits = 3.0 * one_hot(torch.tensor([[[0, 0], [0, 0]]]), 2)  # wrong only at the foreground pixel
    plain = soft_cross_entropy(logits, target)
    ones = torch.ones(1, 2, 2)
    on_error = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    off_error = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    assert soft_cross_entropy(logits, target, ones).item() == pytest.approx(plain.item())
    assert soft_cross_entropy(logits, target, 2 * ones).item() == pytest.approx(2 * plain.item())
    assert soft_cross_entropy(logits, target, on_error).item() == pytest.approx(plain.item(), rel=0.1)
    assert soft_cross_entropy(logits, target, off_error).item() < 0.05 * plain.item()
    # the same weights reach ce and kl through segmentation_loss, not dice
    weighted = segmentation_loss(logits, target, kl_weight=1.0, pixel_weight=off_error)
    unweighted = segmentation_loss(logits, target, kl_weight=1.0)
    assert weighted["ce"] < unweighted["ce"]
    assert weighted["kl"] < unweighted["kl"]
    assert weighted["dice"].item() == pytest.approx(unweighted["dice"].item())


# (call, expected message fragment)
LOGITS = torch.zeros(2, 3, 4, 5)
TARGET = random_soft(3)
ERRORS = [
    (
        lambda: soft_dice_loss(LOGITS, TARGET[:, :2]),
        "logits shape (2, 3, 4, 5) does not match target shape (2, 2, 4, 5)",
    ),
    (
        lambda: soft_cross_entropy(LOGITS, TARGET.argmax(dim=1)),
        "logits shape (2, 3, 4, 5) does not match target shape (2, 4, 5)",
    ),
    (lambda: kl_distillation(LOGITS, TARGET[:1], 1.0), "target shape (1, 3, 4, 5)"),
    (lambda: segmentation_loss(LOGITS, TARGET[..., :3]), "target shape (2, 3, 4, 3)"),
    (lambda: soft_cross_entropy(LOGITS[0], TARGET[0]), "[B, C, H, W]"),
    (lambda: soft_dice_loss(LOGITS[:, :1], TARGET[:, :1]), "at least 2 classes"),
    (lambda: soft_cross_entropy(LOGITS, TARGET, torch.ones(2, 4)), "pixel_weight shape (2, 4)"),
    (lambda: kl_distillation(LOGITS, TARGET, 0.0), "temperature"),
    (lambda: segmentation_loss(LOGITS, TARGET, temperature=-1.0), "temperature"),
    (lambda: segmentation_loss(LOGITS, TARGET, ce_weight=-1.0), "ce_weight"),
]


@pytest.mark.parametrize("call, message", ERRORS)
def test_errors(call, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        call()
    assert message in str(excinfo.value)


def test_every_part_works_on_volumes_as_on_their_voxels_laid_out_as_an_image() -> None:
    """[B, C, D, H, W]: Dice sums over the whole volume and CE / KL / weights average over its voxels, so a
    volume gives what the same voxels give as one [B, C, D * H, W] image."""
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 3, 4, 5, 6, generator=g, requires_grad=True)
    target = torch.softmax(torch.randn(2, 3, 4, 5, 6, generator=g), 1)
    weight = torch.rand(2, 4, 5, 6, generator=g)
    volume = segmentation_loss(logits, target, kl_weight=0.5, hard_weight=0.5, temperature=2.0, pixel_weight=weight)
    image = segmentation_loss(logits.reshape(2, 3, 20, 6), target.reshape(2, 3, 20, 6), kl_weight=0.5,
                              hard_weight=0.5, temperature=2.0, pixel_weight=weight.reshape(2, 20, 6))
    for part in ("loss", "dice", "ce", "kl", "hard"):
        assert volume[part].item() == pytest.approx(image[part].item(), rel=1e-6), part
    volume["loss"].backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="pixel_weight shape"):
        soft_cross_entropy(logits, target, weight[:, 0])

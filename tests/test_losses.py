"""Student losses on tiny hand-made tensors with known values."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nakt_ray.losses import (
    kl_distillation,
    partial_label_loss,
    segmentation_loss,
    soft_cross_entropy,
    soft_dice_loss,
)


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


def test_gradient_flows_through_every_weighted_part_and_none_through_a_logged_one() -> None:
    target = random_soft(3)
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    parts = segmentation_loss(logits, target, dice_weight=1.0, ce_weight=1.0, kl_weight=0.5, temperature=2.0,
                              hard_weight=0.5)
    parts["loss"].backward(retain_graph=True)
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    for name in ("dice", "ce", "kl", "hard"):
        (grad,) = torch.autograd.grad(parts[name], logits, retain_graph=True)
        assert grad.abs().sum() > 0, name
    # a part of weight 0 is logged, not trained: its value without a graph, the same value as when it is weighted
    logged = segmentation_loss(logits, target, kl_weight=0.0, temperature=2.0)
    assert not logged["kl"].requires_grad and not logged["hard"].requires_grad and logged["loss"].requires_grad
    assert logged["kl"].item() == pytest.approx(parts["kl"].item(), rel=1e-6)
    assert logged["hard"].item() == pytest.approx(parts["hard"].item(), rel=1e-6)
    # without log_parts they are not computed at all; the total is the same
    lean = segmentation_loss(logits, target, kl_weight=0.0, temperature=2.0, log_parts=False)
    assert set(lean) == {"loss", "dice", "ce"}
    assert lean["loss"].item() == pytest.approx(logged["loss"].item(), rel=1e-6)


def test_hard_part_takes_the_first_class_of_a_tie_as_argmax_does() -> None:
    """The hard label comes from max's indices (faster than argmax over the class axis): on ties, as in quantised
    targets, it must name the same class as argmax."""
    target = torch.zeros(1, 3, 2, 2)
    target[0, :, 0, 0] = torch.tensor([0.5, 0.5, 0.0])
    target[0, :, 0, 1] = torch.tensor([0.0, 0.5, 0.5])
    target[0, :, 1, :] = torch.tensor([0.2, 0.4, 0.4])[:, None]
    logits = torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    expected = F.one_hot(target.argmax(1), 3).movedim(-1, 1).float()
    hard = segmentation_loss(logits, target)["hard"]
    want = soft_dice_loss(logits, expected) + soft_cross_entropy(logits, expected)
    assert hard.item() == pytest.approx(want.item(), rel=1e-6)


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


# ----------------------------------------------------------------------------------------------------------------
# partial_label_loss: teachers that cover different subsets of the student's classes
# ----------------------------------------------------------------------------------------------------------------
def one_hot_nd(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[B, *spatial] integer labels -> float one-hot [B, C, *spatial] (2D or 3D)."""
    return torch.nn.functional.one_hot(labels.long(), num_classes).movedim(-1, 1).float()


def liver_kidney_truth(spatial_dims: int) -> torch.Tensor:
    """[1, *spatial] union truth: 0 background, 1 liver, 2 kidney, each a block."""
    shape = (1,) + (4,) * (spatial_dims - 2) + (6, 6)
    truth = torch.zeros(shape, dtype=torch.long)
    truth[..., 0:3, 0:3] = 1
    truth[..., 3:6, 3:6] = 2
    return truth


def single_organ_targets(truth: torch.Tensor) -> list[torch.Tensor]:
    """Teacher A covers liver only, B kidney only; each says 'none of mine' everywhere else (own classes)."""
    return [one_hot_nd((truth == 1).long(), 2), one_hot_nd((truth == 2).long(), 2)]


SINGLE_ORGAN = [[True, True, False], [True, False, True]]


def naive_loss(logits: torch.Tensor, targets: list[torch.Tensor], coverage) -> torch.Tensor:
    """Each teacher's map in the union layout (zeros at classes it does not cover), then the usual CE + Dice."""
    total = logits.new_zeros(())
    for target, row in zip(targets, coverage):
        union = torch.zeros(target.shape[0], len(row), *target.shape[2:])
        union[:, torch.tensor(row)] = target
        parts = segmentation_loss(logits, union)
        total = total + parts["loss"] / len(targets)
    return total


@pytest.mark.parametrize("spatial", [(4, 5), (3, 4, 5)])
def test_partial_loss_with_full_coverage_is_segmentation_loss(spatial) -> None:
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(2, 4, *spatial, generator=g)
    target = torch.softmax(torch.randn(2, 4, *spatial, generator=g), 1)
    weight = torch.rand(2, *spatial, generator=g)
    kw = {"dice_weight": 0.7, "ce_weight": 1.3, "kl_weight": 0.4, "temperature": 2.0, "hard_weight": 0.3,
          "pixel_weight": weight}
    partial = partial_label_loss(logits, [target], [[True] * 4], **kw)
    full = segmentation_loss(logits, target, **kw)
    assert set(partial) == set(full) == {"loss", "dice", "ce", "kl", "hard"}
    for part in full:
        assert partial[part].item() == pytest.approx(full[part].item(), rel=1e-5, abs=1e-6), part
    # two identical full-coverage teachers with any weights are the same as one
    twice = partial_label_loss(logits, [target, target], [[True] * 4] * 2, [3.0, 1.0], **kw)
    assert twice["loss"].item() == pytest.approx(full["loss"].item(), rel=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_partial_loss_is_right_where_the_naive_loss_is_wrong(spatial_dims: int) -> None:
    truth = liver_kidney_truth(spatial_dims)
    targets = single_organ_targets(truth)
    right = 20.0 * one_hot_nd(truth, 3)  # exactly right on the union truth, confidently
    # the right student is (near) the minimum of the partial loss and far from it for the naive one
    assert partial_label_loss(right, targets, SINGLE_ORGAN)["loss"].item() < 1e-4
    assert naive_loss(right, targets, SINGLE_ORGAN).item() > 5.0
    all_background, kidney_as_liver = torch.zeros_like(truth), torch.where(truth == 2, 1, truth)
    for wrong in (20.0 * one_hot_nd(all_background, 3), 20.0 * one_hot_nd(kidney_as_liver, 3)):
        assert partial_label_loss(wrong, targets, SINGLE_ORGAN)["loss"].item() > 1.0
    # gradients at a right but unsure student: the naive loss pushes the kidney logit down on kidney pixels (teacher
    # A's zero at kidney says "background"); the partial loss pushes it up (A's background holds kidney)
    unsure = (2.0 * one_hot_nd(truth, 3)).requires_grad_(True)
    (naive_grad,) = torch.autograd.grad(naive_loss(unsure, targets, SINGLE_ORGAN), unsure)
    (partial_grad,) = torch.autograd.grad(partial_label_loss(unsure, targets, SINGLE_ORGAN)["loss"], unsure)
    kidney = truth == 2
    assert (naive_grad[:, 2][kidney] > 0).all()    # gradient descent lowers the right class
    assert (partial_grad[:, 2][kidney] < 0).all()  # and raises it here
    liver = truth == 1
    assert (naive_grad[:, 1][liver] > 0).all() and (partial_grad[:, 1][liver] < 0).all()


def test_partial_loss_is_finite_where_the_marginal_underflows() -> None:
    # teacher A (liver) says "mine: none" where the student is sure of liver (logit 200): the student's
    # background + kidney probability is e^-200, 0 in float32, yet log m = log 2 - 200 through logsumexp
    truth = torch.ones(1, 2, 2, dtype=torch.long)
    logits = (200.0 * one_hot_nd(truth, 3)).requires_grad_(True)
    targets = [one_hot_nd(torch.zeros_like(truth), 2), one_hot_nd(torch.zeros_like(truth), 2)]
    parts = partial_label_loss(logits, targets, SINGLE_ORGAN, [1.0, 0.0], dice_weight=0.0, kl_weight=1.0)
    assert parts["ce"].item() == pytest.approx(200.0 - math.log(2.0), rel=1e-5)
    parts["loss"].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[:, 1].sum() > 0


def test_a_teacher_of_weight_zero_has_no_effect() -> None:
    truth = liver_kidney_truth(2)
    targets = single_organ_targets(truth)
    other = [targets[0], torch.softmax(torch.randn(targets[1].shape, generator=torch.Generator().manual_seed(3)), 1)]
    logits = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(4), requires_grad=True)

    def grad(tgts, weights):
        (g,) = torch.autograd.grad(partial_label_loss(logits, tgts, SINGLE_ORGAN, weights, kl_weight=0.5,
                                                      hard_weight=0.5)["loss"], logits)
        return g

    assert not torch.allclose(grad(targets, [1.0, 1.0]), grad(other, [1.0, 1.0]))  # teacher B matters...
    assert torch.allclose(grad(targets, [1.0, 0.0]), grad(other, [1.0, 0.0]))      # ...unless its weight is 0
    per_class = torch.tensor([[1.0, 1.0, 5.0], [0.0, 0.0, 0.0]])  # [T, K+1]; A's kidney column is unused
    assert torch.allclose(grad(targets, per_class), grad(other, per_class))
    assert torch.allclose(grad(targets, per_class), grad(targets, [1.0, 0.0]))
    # constant rows of [T, K+1] are per-teacher weights
    rows = partial_label_loss(logits, targets, SINGLE_ORGAN, [[2.0] * 3, [0.5] * 3])["loss"]
    assert rows.item() == pytest.approx(partial_label_loss(logits, targets, SINGLE_ORGAN, [2.0, 0.5])["loss"].item())
    # a class weight of 0 drops that class's evidence from the teacher's term
    no_liver = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    assert grad(targets, no_liver)[:, 1].abs().sum() < grad(targets, None)[:, 1].abs().sum()


def test_partial_loss_errors_name_the_argument() -> None:
    logits = torch.zeros(1, 3, 6, 6)
    targets = single_organ_targets(liver_kidney_truth(2))
    cases = [
        (lambda: partial_label_loss(logits, targets[:1], SINGLE_ORGAN), "targets has 1 tensors but coverage has 2"),
        (lambda: partial_label_loss(logits, [targets[0], torch.zeros(1, 3, 6, 6)], SINGLE_ORGAN),
         "targets[1] has shape (1, 3, 6, 6); expected [B, C_t, *spatial] = (1, 2, 6, 6)"),
        (lambda: partial_label_loss(logits, [targets[0], targets[1][..., :5]], SINGLE_ORGAN), "targets[1]"),
        (lambda: partial_label_loss(logits, torch.stack(targets), SINGLE_ORGAN), "sequence of T tensors"),
        (lambda: partial_label_loss(torch.zeros(1, 4, 6, 6), targets, SINGLE_ORGAN), "coverage has 3 columns"),
        (lambda: partial_label_loss(logits, targets, [[False, True, False], [True, False, True]]), "coverage[0, 0]"),
        (lambda: partial_label_loss(logits, targets, [[True, False, False], [True, False, True]]), "coverage[0, 1:]"),
        (lambda: partial_label_loss(logits, targets, [[True, True, False], [True, True, False]]),
         "classes [2] are covered by no teacher"),
        (lambda: partial_label_loss(logits, targets, [[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]]), "coverage must be bool"),
        (lambda: partial_label_loss(logits, targets, [True, True, False]), "coverage must have shape [T, K+1]"),
        (lambda: partial_label_loss(logits, targets, SINGLE_ORGAN, [1.0, 1.0, 1.0]), "weights must have shape"),
        (lambda: partial_label_loss(logits, targets, SINGLE_ORGAN, [1.0, -1.0]), "non-negative"),
        (lambda: partial_label_loss(logits, targets, SINGLE_ORGAN, [0.0, 0.0]), "weights are zero"),
        (lambda: partial_label_loss(logits, targets, SINGLE_ORGAN, pixel_weight=torch.ones(1, 6)), "pixel_weight"),
        (lambda: partial_label_loss(logits[0], targets, SINGLE_ORGAN), "logits must be"),
        (lambda: partial_label_loss(logits, targets, SINGLE_ORGAN, ce_weight=-1.0), "ce_weight"),
        (lambda: partial_label_loss(logits, targets, SINGLE_ORGAN, temperature=0.0), "temperature"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError) as excinfo:
            call()
        assert message in str(excinfo.value), (message, str(excinfo.value))
    # a numpy coverage and 0/1 integers are accepted
    import numpy as np

    expected = partial_label_loss(logits, targets, SINGLE_ORGAN)["loss"].item()
    assert partial_label_loss(logits, targets, np.array(SINGLE_ORGAN))["loss"].item() == pytest.approx(expected)
    as_ints = np.array(SINGLE_ORGAN, dtype=int)
    assert partial_label_loss(logits, targets, as_ints)["loss"].item() == pytest.approx(expected)

"""Fusion rules on tiny hand-made teacher probabilities with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from nakt_ray.fusion import (
    FUSION_RULES,
    confidence_weighted,
    entropy,
    fuse,
    hard_label,
    majority_vote,
    mean,
    pairwise_dice,
    staple,
    weighted_mean,
)
from nakt_ray.fusion import rules as fusion_rules


def one_hot(labels: list | np.ndarray, num_classes: int) -> np.ndarray:
    """Integer map [H, W] -> float32 one-hot [C, H, W]."""
    labels = np.asarray(labels)
    return (labels[None] == np.arange(num_classes)[:, None, None]).astype(np.float32)


def binary(fg: list) -> np.ndarray:
    """Foreground probability map [H, W] -> [2, H, W] (background, foreground)."""
    fg = np.asarray(fg, dtype=np.float64)
    return np.stack([1.0 - fg, fg])


# Three teachers, two classes, 2x2 images. Argmax labels (fg > 0.5; teacher 2's 0.5 is a tie -> background):
#   teacher 0: [[1, 0], [1, 0]]   teacher 1: [[1, 0], [0, 0]]   teacher 2: [[1, 1], [0, 0]]
FG = [
    [[0.9, 0.2], [0.6, 0.0]],
    [[0.7, 0.4], [0.2, 0.1]],
    [[0.8, 0.6], [0.1, 0.5]],
]
PROBS = np.stack([binary(fg) for fg in FG])  # [T=3, C=2, H=2, W=2]

# (rule, weights, expected foreground probability [H, W])
KNOWN_ANSWERS = [
    ("mean", None, [[0.8, 0.4], [0.3, 0.2]]),
    ("weighted_mean", [1, 0, 0], FG[0]),
    ("weighted_mean", [0, 0, 5], FG[2]),
    ("weighted_mean", [1, 1, 2], [[0.8, 0.45], [0.25, 0.275]]),
    ("weighted_mean", [2, 2, 4], [[0.8, 0.45], [0.25, 0.275]]),  # only ratios matter
    ("weighted_mean", [1, 1, 1], [[0.8, 0.4], [0.3, 0.2]]),
    ("majority_vote", None, [[1.0, 1 / 3], [1 / 3, 0.0]]),
    ("majority_vote", [1, 0, 0], [[1.0, 0.0], [1.0, 0.0]]),
    ("majority_vote", [2, 1, 1], [[1.0, 0.25], [0.5, 0.0]]),
]


@pytest.mark.parametrize("rule, weights, expected_fg", KNOWN_ANSWERS)
def test_known_answers(rule: str, weights: list | None, expected_fg: list) -> None:
    soft = fuse(PROBS, rule, weights)
    assert soft.shape == (2, 2, 2)
    assert soft.dtype == np.float32
    np.testing.assert_allclose(soft[1], expected_fg, atol=1e-6)
    np.testing.assert_allclose(soft.sum(axis=0), 1.0, atol=1e-6)


def test_direct_calls_match_fuse() -> None:
    np.testing.assert_array_equal(mean(PROBS), fuse(PROBS, "mean"))
    np.testing.assert_array_equal(weighted_mean(PROBS, [1, 2, 3]), fuse(PROBS, "weighted_mean", [1, 2, 3]))
    np.testing.assert_array_equal(majority_vote(PROBS), fuse(PROBS, "majority_vote"))
    np.testing.assert_array_equal(staple(PROBS), fuse(PROBS, "staple"))


def test_registry_names() -> None:
    assert set(FUSION_RULES) == {"mean", "weighted_mean", "majority_vote", "staple", "confidence_weighted"}


def test_confidence_weighted_lets_the_sure_teacher_decide() -> None:
    sure, unsure = binary([[1.0, 0.0]]), binary([[0.5, 0.5]])  # confidences 1 and 0 (floored at 1e-6)
    np.testing.assert_allclose(confidence_weighted(np.stack([sure, unsure]))[1], [[1.0, 0.0]], atol=1e-5)
    # by hand, pixel (0, 0) of PROBS: confidence 1 - H(p) / log 2 of fg 0.9, 0.7, 0.8, to the 4th power
    fg = np.array([0.9, 0.7, 0.8])
    conf = (1 + (fg * np.log(fg) + (1 - fg) * np.log(1 - fg)) / np.log(2)) ** 4
    np.testing.assert_allclose(fuse(PROBS, "confidence_weighted")[1, 0, 0], (conf * fg).sum() / conf.sum(), atol=1e-6)
    assert fuse(PROBS, "confidence_weighted")[1, 0, 0] > mean(PROBS)[1, 0, 0]  # the surest (0.9) pulls up
    # weights multiply in; sharpness 0 is the weighted mean
    np.testing.assert_allclose(confidence_weighted(PROBS, [1, 0, 0]), PROBS[0], atol=1e-6)
    np.testing.assert_allclose(confidence_weighted(PROBS, [1, 1, 2], sharpness=0),
                               weighted_mean(PROBS, [1, 1, 2]), atol=1e-6)


def test_majority_vote_keeps_ties_soft() -> None:
    # four teachers split 2-2 on every pixel
    probs = np.stack([one_hot([[1, 0]], 2), one_hot([[1, 0]], 2), one_hot([[0, 1]], 2), one_hot([[0, 1]], 2)])
    np.testing.assert_allclose(majority_vote(probs), 0.5)


def test_majority_vote_three_classes() -> None:
    probs = np.stack([one_hot([[0, 1, 2]], 3), one_hot([[0, 2, 2]], 3), one_hot([[1, 1, 2]], 3)])
    expected = np.array([[[2 / 3, 0, 0]], [[1 / 3, 2 / 3, 0]], [[0, 1 / 3, 1]]])
    np.testing.assert_allclose(majority_vote(probs), expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# STAPLE
# ---------------------------------------------------------------------------------------------------------------
TRUTH = np.zeros((4, 4), dtype=int)
TRUTH[1:3, 1:3] = 1
OVER = TRUTH.copy()
OVER[0, :] = 1  # a teacher that systematically over-segments the top row
ALL_BACKGROUND = np.zeros((4, 4), dtype=int)


def test_staple_down_weights_systematically_wrong_teacher() -> None:
    probs = np.stack([one_hot(TRUTH, 2), one_hot(TRUTH, 2), one_hot(OVER, 2)])
    soft = staple(probs)
    vote = majority_vote(probs)
    disputed = OVER != TRUTH
    # the vote gives the over-segmenting teacher 1/3 of the say; STAPLE learns it is unreliable there
    np.testing.assert_allclose(vote[1][disputed], 1 / 3, atol=1e-6)
    assert np.all(soft[1][disputed] < 0.05)
    assert np.all(soft[1][TRUTH == 1] > 0.99)
    np.testing.assert_array_equal(hard_label(soft), TRUTH)
    np.testing.assert_allclose(soft.sum(axis=0), 1.0, atol=1e-6)


def test_staple_confusion_matrix_of_wrong_teacher() -> None:
    labels = np.stack([TRUTH, TRUTH, OVER]).reshape(3, -1)
    _, theta = fusion_rules._staple_case(labels, 2, np.ones(3), max_iter=100, tol=1e-8)
    # theta[j, d, s] = P(teacher j says d | true s): the good teachers are near-perfect, the third says
    # "foreground" for a third of the true background (4 of 12 pixels)
    assert theta[0, 1, 1] > 0.99 and theta[1, 0, 0] > 0.99
    assert theta[2, 1, 0] == pytest.approx(4 / 12, abs=1e-3)
    np.testing.assert_allclose(theta.sum(axis=1), 1.0)


@pytest.mark.parametrize(
    "teachers",
    [
        pytest.param([TRUTH, TRUTH, ALL_BACKGROUND], id="all-background-teacher"),
        pytest.param([TRUTH, TRUTH, TRUTH], id="identical-teachers"),
        pytest.param([TRUTH], id="single-teacher"),
        pytest.param([TRUTH, TRUTH, OVER, ALL_BACKGROUND], id="mixed"),
    ],
)
def test_staple_edge_cases_recover_the_agreed_label(teachers: list[np.ndarray]) -> None:
    soft = staple(np.stack([one_hot(t, 2) for t in teachers]))
    assert soft.shape == (2, 4, 4)
    assert np.all(np.isfinite(soft))
    np.testing.assert_allclose(soft.sum(axis=0), 1.0, atol=1e-6)
    np.testing.assert_array_equal(hard_label(soft), TRUTH)


def test_staple_all_teachers_background_only() -> None:
    soft = staple(np.stack([one_hot(ALL_BACKGROUND, 2)] * 3))
    np.testing.assert_allclose(soft[0], 1.0, atol=1e-6)


def test_staple_three_classes() -> None:
    truth = np.array([[0, 1, 2, 2], [0, 1, 2, 2], [0, 0, 1, 1], [2, 2, 1, 0]])
    confused = truth.copy()
    confused[truth == 2] = 1  # a teacher that cannot tell class 2 from class 1
    probs = np.stack([one_hot(truth, 3), one_hot(truth, 3), one_hot(confused, 3)])
    soft = staple(probs)
    assert soft.shape == (3, 4, 4)
    np.testing.assert_allclose(soft.sum(axis=0), 1.0, atol=1e-6)
    np.testing.assert_array_equal(hard_label(soft), truth)
    # where the confused teacher says 1 for a true 2, STAPLE trusts the pair more than a 2-of-3 vote does
    assert np.all(soft[2][truth == 2] > 0.9)
    assert np.all(majority_vote(probs)[2][truth == 2] < 0.7)


def test_staple_weights() -> None:
    probs = np.stack([one_hot(OVER, 2), one_hot(TRUTH, 2), one_hot(TRUTH, 2)])
    # a weight of 0 leaves a teacher out: only teacher 0 counts
    np.testing.assert_array_equal(hard_label(staple(probs, weights=[1, 0, 0])), OVER)
    # equal weights are classic STAPLE, whatever their scale
    np.testing.assert_allclose(staple(probs, weights=[2, 2, 2]), staple(probs), atol=1e-6)
    # two teachers that disagree on the top row: a tie without weights, tilted towards the heavier teacher
    pair = np.stack([one_hot(TRUTH, 2), one_hot(OVER, 2)])
    disputed = OVER != TRUTH
    np.testing.assert_allclose(staple(pair)[1][disputed], 0.5, atol=1e-3)
    assert np.all(staple(pair, weights=[1, 0.5])[1][disputed] < 0.01)
    assert np.all(staple(pair, weights=[0.5, 1])[1][disputed] > 0.99)


def test_staple_uses_argmax_of_soft_probabilities() -> None:
    # soft inputs with the same argmax give the same STAPLE result
    soft_in = np.stack([binary(np.where(TRUTH == 1, 0.7, 0.2)), binary(np.where(TRUTH == 1, 0.9, 0.4)),
                        binary(np.where(OVER == 1, 0.6, 0.1))])
    hard_in = np.stack([one_hot(TRUTH, 2), one_hot(TRUTH, 2), one_hot(OVER, 2)])
    np.testing.assert_allclose(staple(soft_in), staple(hard_in), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# batch form
# ---------------------------------------------------------------------------------------------------------------
def _batch_probs() -> np.ndarray:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4, 3, 5, 6))  # [B1=2, B2=3, T=4, C=3, H=5, W=6]
    e = np.exp(logits)
    return e / e.sum(axis=-3, keepdims=True)


@pytest.mark.parametrize(
    "rule, weights",
    [("mean", None), ("weighted_mean", [1, 2, 0, 1]), ("majority_vote", None), ("majority_vote", [1, 1, 2, 0]),
     ("staple", None), ("staple", [1, 1, 2, 0.5]), ("confidence_weighted", None),
     ("confidence_weighted", [1, 2, 0, 1])],
)
def test_batch_form_matches_per_case(rule: str, weights: list | None) -> None:
    probs = _batch_probs()
    soft = fuse(probs, rule, weights)
    assert soft.shape == (2, 3, 3, 5, 6)
    assert soft.dtype == np.float32
    np.testing.assert_allclose(soft.sum(axis=-3), 1.0, atol=1e-5)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(soft[i, j], fuse(probs[i, j], rule, weights), atol=1e-6)


def test_batch_quality_figures() -> None:
    probs = _batch_probs()
    agreement = pairwise_dice(probs)
    assert isinstance(agreement, np.ndarray) and agreement.shape == (2, 3)
    assert agreement[1, 2] == pytest.approx(pairwise_dice(probs[1, 2]))
    soft = mean(probs)
    h = entropy(soft)
    assert isinstance(h, np.ndarray) and h.shape == (2, 3)
    assert h[0, 1] == pytest.approx(entropy(soft[0, 1]))
    labels = hard_label(soft)
    assert labels.shape == (2, 3, 5, 6) and labels.dtype == np.uint8


# ---------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------
def _with(value_at_00: float) -> np.ndarray:
    bad = PROBS.astype(np.float64).copy()
    bad[0, 1, 0, 0] = value_at_00
    bad[0, 0, 0, 0] = 1.0 - value_at_00 if np.isfinite(value_at_00) else 0.0
    return bad


# (probs, rule, weights, expected message fragment)
ERRORS = [
    (PROBS[0], "mean", None, "[T, C, H, W]"),  # 3 dims
    (np.ones((3, 1, 2, 2)), "mean", None, "at least 2 classes"),
    (_with(1.5), "mean", None, "[0, 1]"),
    (_with(-0.2), "majority_vote", None, "[0, 1]"),
    (_with(np.nan), "staple", None, "NaN"),
    (_with(np.inf), "mean", None, "NaN/inf"),
    (np.full((3, 2, 2, 2), 0.3), "mean", None, "sum to 1"),
    (np.zeros((3, 2, 0, 2)), "mean", None, "empty"),
    (PROBS, "mean", [1, 1, 1], "weighted_mean"),
    (PROBS, "weighted_mean", None, "needs weights"),
    (PROBS, "weighted_mean", [1, 1], "2 entries but probs has 3 teachers"),
    (PROBS, "majority_vote", [1, 1, 1, 1], "4 entries but probs has 3 teachers"),
    (PROBS, "staple", [1, 1], "2 entries but probs has 3 teachers"),
    (PROBS, "weighted_mean", [1, -1, 1], "non-negative"),
    (PROBS, "staple", [1, -1, 1], "non-negative"),
    (PROBS, "majority_vote", [0, 0, 0], "all be zero"),
    (PROBS, "weighted_mean", [[1, 1, 1]], "per-class weights must have shape [T, C] = [3, 2]"),
    (np.zeros((3, 2, 2, 2, 2)) + 0.5, "weighted_mean", np.ones((3, 2, 2)), "shape [T, C]"),
    (PROBS, "weighted_mean", [1, np.nan, 1], "finite"),
    (PROBS, "staples", None, "did you mean 'staple'"),
    (PROBS, "median", None,
     "valid rules are ['confidence_weighted', 'majority_vote', 'mean', 'staple', 'weighted_mean']"),
]


@pytest.mark.parametrize("probs, rule, weights, message", ERRORS)
def test_errors(probs: np.ndarray, rule: str, weights: list | None, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        fuse(probs, rule, weights)
    assert message in str(excinfo.value)


def test_probabilities_within_rounding_slack_are_accepted() -> None:
    soft = mean(_with(1.0005))
    np.testing.assert_allclose(soft.sum(axis=0), 1.0, atol=1e-6)
    assert soft.max() <= 1.0


@pytest.mark.parametrize("kwargs", [{"max_iter": 0}, {"max_iter": 2.5}, {"tol": -1.0}])
def test_staple_rejects_bad_em_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        staple(PROBS, **kwargs)


def test_quality_figure_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        entropy(np.ones((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        entropy(np.full((2, 2, 2), np.nan))
    with pytest.raises(ValueError, match="shape"):
        hard_label(np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"\[T, C, H, W\]"):
        pairwise_dice(np.ones((2, 2, 2)))


# ---------------------------------------------------------------------------------------------------------------
# quality figures
# ---------------------------------------------------------------------------------------------------------------
A = [[1, 1], [0, 0]]
B = [[1, 0], [0, 0]]
EMPTY = [[0, 0], [0, 0]]

# (teacher label maps, num classes, expected mean pairwise foreground Dice)
PAIRWISE = [
    ([A, B], 2, 2 / 3),  # 2 * 1 / (2 + 1)
    ([A, A], 2, 1.0),
    ([A, B, A], 2, (2 / 3 + 1.0 + 2 / 3) / 3),
    ([A], 2, 1.0),  # one teacher agrees with itself
    ([EMPTY, EMPTY], 2, 1.0),  # empty vs empty counts as agreement
    ([A, EMPTY], 2, 0.0),
    ([A, B], 3, (2 / 3 + 1.0) / 2),  # class 2 empty in both -> 1
    ([[[1, 2], [0, 0]], [[2, 1], [0, 0]]], 3, 0.0),
]


@pytest.mark.parametrize("labels, num_classes, expected", PAIRWISE)
def test_pairwise_dice(labels: list, num_classes: int, expected: float) -> None:
    probs = np.stack([one_hot(lab, num_classes) for lab in labels])
    result = pairwise_dice(probs)
    assert isinstance(result, float)
    assert result == pytest.approx(expected)


UNIFORM2 = np.full((2, 2, 2), 0.5)
UNIFORM4 = np.full((4, 2, 2), 0.25)
HALF = np.stack([[[0.5, 1.0], [1.0, 0.5]], [[0.5, 0.0], [0.0, 0.5]]])  # two uniform pixels, two certain

# (soft label, normalized, expected mean entropy)
ENTROPIES = [
    (UNIFORM2, True, 1.0),
    (UNIFORM2, False, np.log(2)),
    (UNIFORM4, True, 1.0),
    (UNIFORM4, False, np.log(4)),
    (one_hot(A, 2), True, 0.0),
    (one_hot(A, 3), False, 0.0),
    (HALF, True, 0.5),
    (HALF, False, 0.5 * np.log(2)),
    (binary([[0.9]]), False, -(0.9 * np.log(0.9) + 0.1 * np.log(0.1))),
]


@pytest.mark.parametrize("soft_label, normalized, expected", ENTROPIES)
def test_entropy(soft_label: np.ndarray, normalized: bool, expected: float) -> None:
    result = entropy(soft_label, normalized=normalized)
    assert isinstance(result, float)
    assert result == pytest.approx(expected)


def test_entropy_default_is_normalised() -> None:
    assert entropy(UNIFORM4) == pytest.approx(1.0)


def test_hard_label() -> None:
    soft = np.stack([[[0.2, 0.5]], [[0.3, 0.5]], [[0.5, 0.0]]])  # second pixel: tie between classes 0 and 1
    labels = hard_label(soft)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, [[2, 0]])

"""Fusion under partial coverage (nakt_ray/fusion/partial.py) on hand-made arrays with known answers.

Union classes in these tests: 0 background, 1 liver, 2 spleen, 3 kidney. A teacher's own classes are its
background first, then the union classes it covers in union order; its background means "none of MY classes".
"""
from __future__ import annotations

import numpy as np
import pytest

from nakt_ray.fusion import fuse, hard_label, pairwise_dice
from nakt_ray.fusion import rules as fusion_rules
from nakt_ray.fusion.partial import (
    check_coverage,
    coarsen_to_teacher,
    coverage_from_classes,
    expand_to_union,
    fuse_partial,
    fuse_teachers,
    pairwise_dice_partial,
    pixel_agreement,
    teacher_cells,
    union_labels,
)

BG, LIVER, SPLEEN, KIDNEY = 0, 1, 2, 3
ALL_RULES = ["mean", "weighted_mean", "majority_vote", "staple", "confidence_weighted"]
LINEAR_RULES = ["mean", "weighted_mean", "confidence_weighted"]  # the rules that take every probability, not argmax


def weights_for(rule: str, n_teachers: int) -> list[float] | None:
    """weighted_mean needs weights; the other rules run unweighted here."""
    return [1.0 + t for t in range(n_teachers)] if rule == "weighted_mean" else None


def own(*class_maps: list) -> np.ndarray:
    """A teacher's own probabilities ``[C_t, H, W]`` from one map per own class (its background first)."""
    return np.stack([np.asarray(m, dtype=np.float64) for m in class_maps])


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return (np.asarray(labels)[None] == np.arange(num_classes)[:, None, None]).astype(np.float64)


def random_probs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Softmax of normal logits over axis -3."""
    e = np.exp(2.0 * rng.normal(size=shape))
    return e / e.sum(axis=-3, keepdims=True)


# A covers liver, B covers spleen, C covers spleen and kidney: liver is covered by one teacher, spleen by two.
COVERAGE_ABC = coverage_from_classes([[LIVER], [SPLEEN], [SPLEEN, KIDNEY]], num_classes=4)


# --------------------------------------------------------------------------------------------------------------
# the coverage description and the layout helpers
# --------------------------------------------------------------------------------------------------------------
def test_coverage_matrix_and_cells() -> None:
    np.testing.assert_array_equal(COVERAGE_ABC, [[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1]])
    assert COVERAGE_ABC.dtype == np.bool_
    # cells[t, k]: the own class of teacher t whose cell holds union class k (0 = its background)
    np.testing.assert_array_equal(teacher_cells(COVERAGE_ABC), [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 2]])
    np.testing.assert_array_equal(check_coverage(COVERAGE_ABC.astype(int)), COVERAGE_ABC)


def test_expand_and_coarsen_round_trip() -> None:
    c_probs = own([[0.2]], [[0.5]], [[0.3]])  # teacher C: its background, spleen, kidney
    union, absorbed = expand_to_union(c_probs, COVERAGE_ABC[2])
    np.testing.assert_allclose(union[:, 0, 0], [0.2, 0.0, 0.5, 0.3])  # its background at 0, liver absent
    np.testing.assert_array_equal(absorbed, [True, True, False, False])  # its background absorbs 0 and liver
    np.testing.assert_allclose(coarsen_to_teacher(union, COVERAGE_ABC[2]), c_probs)
    # coarsening a union distribution merges the uncovered classes into the teacher's background
    q = np.array([0.1, 0.4, 0.2, 0.3]).reshape(4, 1, 1)
    np.testing.assert_allclose(coarsen_to_teacher(q, COVERAGE_ABC[0])[:, 0, 0], [0.6, 0.4])  # bg_A = {0, 2, 3}
    np.testing.assert_allclose(coarsen_to_teacher(q, COVERAGE_ABC[2])[:, 0, 0], [0.5, 0.2, 0.3])


# --------------------------------------------------------------------------------------------------------------
# overlapping claims of teachers of different classes
# --------------------------------------------------------------------------------------------------------------
# Teacher A covers liver, teacher B covers spleen; two pixels.
#   pixel 0: A says liver 0.9, B says "its background" 0.95 (which absorbs liver): the union label is liver.
#   pixel 1: A says "its background" 0.9 (absorbs spleen), B says spleen 0.8: the union label is spleen.
# The two teachers are consistent with q0 = (bg .05, liver .9, spleen .05) and q1 = (bg .1, liver .1, spleen .8),
# so the linear pools recover exactly these.
A_LIVER = own([[0.1, 0.9]], [[0.9, 0.1]])
B_SPLEEN = own([[0.95, 0.2]], [[0.05, 0.8]])
COVERAGE_AB = coverage_from_classes([[LIVER], [SPLEEN]], num_classes=3)
EXPECTED_AB = np.array([[[0.05, 0.1]], [[0.9, 0.1]], [[0.05, 0.8]]])


@pytest.mark.parametrize("rule", ALL_RULES)
def test_background_of_a_teacher_is_not_evidence_against_classes_it_does_not_cover(rule: str) -> None:
    soft = fuse_partial([A_LIVER, B_SPLEEN], COVERAGE_AB, rule, weights_for(rule, 2))
    assert soft.shape == (3, 1, 2) and soft.dtype == np.float32
    np.testing.assert_allclose(soft.sum(axis=0), 1.0, atol=1e-6)
    np.testing.assert_array_equal(hard_label(soft), [[LIVER, SPLEEN]])
    # the naive union (each teacher's background put on union background) calls pixel 0 background
    naive = fuse(np.stack([expand_to_union(p, c)[0] for p, c in zip([A_LIVER, B_SPLEEN], COVERAGE_AB)]), "mean")
    assert hard_label(naive)[0, 0] == BG


@pytest.mark.parametrize("rule", ["mean", "weighted_mean", "confidence_weighted"])
def test_consistent_teachers_give_the_union_distribution(rule: str) -> None:
    np.testing.assert_allclose(fuse_partial([A_LIVER, B_SPLEEN], COVERAGE_AB, rule, weights_for(rule, 2)),
                               EXPECTED_AB, atol=1e-6)


def test_consistent_teachers_random_union_distribution() -> None:
    # draw a union distribution, show each teacher its coarsening: every linear pool recovers it, whatever weights
    rng = np.random.default_rng(1)
    q = random_probs(rng, (4, 6, 5))
    views = [coarsen_to_teacher(q, row) for row in COVERAGE_ABC]
    for rule, weights in [("mean", None), ("weighted_mean", [3, 1, 0.5]), ("confidence_weighted", None)]:
        np.testing.assert_allclose(fuse_partial(views, COVERAGE_ABC, rule, weights), q, atol=1e-5)


def test_worked_example_of_docs_fusion_md() -> None:
    # docs/fusion.md: A covers liver, B spleen, C both; the teachers do not agree on any union distribution.
    # Weights 1, 1, 2: the maximum-likelihood union is (1/6, 1/3, 1/2), checked by hand there via the optimality
    # conditions; equal weights give (0.1424, 0.3886, 0.4689) and a vote gives (0, 2/3, 1/3).
    coverage = coverage_from_classes([[LIVER], [SPLEEN], [LIVER, SPLEEN]], num_classes=3)
    teachers = [own([[0.4]], [[0.6]]), own([[0.5]], [[0.5]]), own([[0.2]], [[0.2]], [[0.6]])]
    np.testing.assert_allclose(fuse_partial(teachers, coverage, "weighted_mean", [1, 1, 2])[:, 0, 0],
                               [1 / 6, 1 / 3, 1 / 2], atol=1e-5)
    np.testing.assert_allclose(fuse_partial(teachers, coverage, "mean")[:, 0, 0], [0.1424, 0.3886, 0.4689], atol=1e-4)
    np.testing.assert_allclose(fuse_partial(teachers, coverage, "majority_vote")[:, 0, 0], [0, 2 / 3, 1 / 3],
                               atol=1e-5)


def test_contradicting_claims_split_by_weight() -> None:
    # A is sure of liver and B sure of spleen at the same pixel: the pool splits by weight and nothing is background
    a, b = own([[0.0]], [[1.0]]), own([[0.0]], [[1.0]])
    np.testing.assert_allclose(fuse_partial([a, b], COVERAGE_AB, "mean")[:, 0, 0], [0, 0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(fuse_partial([a, b], COVERAGE_AB, "weighted_mean", [3, 1])[:, 0, 0],
                               [0, 0.75, 0.25], atol=1e-6)


# --------------------------------------------------------------------------------------------------------------
# a class covered by one teacher, by some, by all
# --------------------------------------------------------------------------------------------------------------
def test_class_covered_by_one_teacher_is_that_teachers_claim() -> None:
    # liver only by A (0.8); spleen by B and C (both 0.1); kidney by C (0): consistent with (0.1, 0.8, 0.1, 0)
    a = own([[0.2]], [[0.8]])
    b = own([[0.9]], [[0.1]])
    c = own([[0.9]], [[0.1]], [[0.0]])
    soft = fuse_partial([a, b, c], COVERAGE_ABC, "mean")
    np.testing.assert_allclose(soft[:, 0, 0], [0.1, 0.8, 0.1, 0.0], atol=1e-6)
    # the naive mean over the union divides A's liver by three teachers
    naive = fuse(np.stack([expand_to_union(p, r)[0] for p, r in zip([a, b, c], COVERAGE_ABC)]), "mean")
    assert naive[LIVER, 0, 0] == pytest.approx(0.8 / 3)


@pytest.mark.parametrize("rule, weights", [("mean", None), ("weighted_mean", [1, 2, 5]), ("confidence_weighted", None)])
def test_class_covered_by_all_is_the_weighted_mean_of_its_probabilities(rule: str, weights: list | None) -> None:
    # every teacher covers kidney (3), the rest is partial and the teachers contradict each other: the maximum-
    # likelihood pool still gives kidney exactly the (per-pixel) weighted mean of the teachers' kidney probabilities
    coverage = coverage_from_classes([[LIVER, KIDNEY], [SPLEEN, KIDNEY], [LIVER, SPLEEN, KIDNEY]], num_classes=4)
    rng = np.random.default_rng(2)
    teachers = [random_probs(rng, (int(row.sum()), 4, 5)) for row in coverage]
    soft = fuse_partial(teachers, coverage, rule, weights)
    stacked = np.stack([t[-1] for t in teachers])  # each teacher's kidney is its last own class
    if rule == "confidence_weighted":
        w = np.concatenate([fusion_rules.teacher_confidence(t[None]) for t in teachers])[:, 0]
    else:
        w = np.broadcast_to(np.asarray(weights or [1, 1, 1], dtype=float)[:, None, None], stacked.shape)
    np.testing.assert_allclose(soft[KIDNEY], (w * stacked).sum(0) / w.sum(0), atol=1e-5)


@pytest.mark.parametrize("rule, weights", [("mean", None), ("weighted_mean", [1, 2, 5]), ("confidence_weighted", None)])
def test_linear_pools_are_the_maximum_likelihood_union(rule: str, weights: list | None) -> None:
    # optimality (KKT) of q for sum_t w_t KL(p_t || coarsen_t(q)) on inconsistent teachers: for every union class k,
    # sum_t w_t p_t(cell_t(k)) / q(cell_t(k)) is 1 where q_k > 0 and at most 1 where q_k = 0
    rng = np.random.default_rng(3)
    teachers = [random_probs(rng, (int(row.sum()), 3, 4)) for row in COVERAGE_ABC]
    q = fuse_partial(teachers, COVERAGE_ABC, rule, weights).astype(np.float64)
    if rule == "confidence_weighted":
        w = np.concatenate([fusion_rules.teacher_confidence(t[None]) for t in teachers])[:, 0]
    else:
        w = np.broadcast_to(np.asarray(weights or [1, 1, 1], dtype=float)[:, None, None], (3, 3, 4))
    w = w / w.sum(0)
    cells = teacher_cells(COVERAGE_ABC)
    score = np.zeros_like(q)
    for t, p in enumerate(teachers):
        q_own = coarsen_to_teacher(q, COVERAGE_ABC[t])
        score += w[t] * (p / q_own)[cells[t]]
    positive = q > 1e-4
    np.testing.assert_allclose(score[positive], 1.0, atol=1e-3)
    assert np.all(score[~positive] <= 1.0 + 1e-3)


def test_weight_zero_leaves_a_class_without_evidence() -> None:
    # only A counts: liver is A's claim, spleen and kidney (covered by weight-0 teachers only) get nothing
    a = own([[0.3]], [[0.7]])
    b, c = own([[0.2]], [[0.8]]), own([[0.1]], [[0.5]], [[0.4]])
    soft = fuse_partial([a, b, c], COVERAGE_ABC, "weighted_mean", [1, 0, 0])
    np.testing.assert_allclose(soft[:, 0, 0], [0.3, 0.7, 0.0, 0.0], atol=1e-6)


# --------------------------------------------------------------------------------------------------------------
# majority vote and STAPLE on votes
# --------------------------------------------------------------------------------------------------------------
def test_majority_vote_known_answers() -> None:
    # A covers liver, B spleen, C both. Own-class votes per pixel (0 = the teacher's own background):
    #   pixel 0: A liver, B bg (absorbs liver), C liver    -> all consistent with liver: 1 (a naive vote: 2/3)
    #   pixel 1: A liver, B spleen, C spleen               -> liver 1/3, spleen 2/3 (as a full-coverage vote)
    #   pixel 2: A bg, B bg, C bg                          -> background 1
    #   pixel 3: A bg (absorbs spleen), B spleen, C bg     -> maximise log(q0 + qs) + log qs + log q0: 1/2, 1/2
    coverage = coverage_from_classes([[LIVER], [SPLEEN], [LIVER, SPLEEN]], num_classes=3)
    a = one_hot([[1, 1, 0, 0]], 2)
    b = one_hot([[0, 1, 0, 1]], 2)
    c = one_hot([[1, 2, 0, 0]], 3)
    soft = fuse_partial([a, b, c], coverage, "majority_vote")
    expected = np.array([[[0, 0, 1, 0.5]], [[1, 1 / 3, 0, 0]], [[0, 2 / 3, 0, 0.5]]])
    np.testing.assert_allclose(soft, expected, atol=1e-5)


def test_staple_with_rater_specific_label_sets() -> None:
    # a liver teacher A, a spleen teacher B, and two that cover both: C right, D over-segmenting spleen into the top
    # row. On the top row A's background absorbs spleen (no evidence either way), B and C say "not spleen", D says
    # spleen: STAPLE learns that D over-segments and returns the truth.
    truth = np.zeros((6, 6), dtype=int)
    truth[1:3, 1:4] = LIVER
    truth[4:6, 2:5] = SPLEEN
    coverage = coverage_from_classes([[LIVER], [SPLEEN], [LIVER, SPLEEN], [LIVER, SPLEEN]], num_classes=3)
    over = truth.copy()
    over[0, :] = SPLEEN
    a = one_hot(np.where(truth == LIVER, 1, 0), 2)
    b = one_hot(np.where(truth == SPLEEN, 1, 0), 2)
    soft = fuse_partial([a, b, one_hot(truth, 3), one_hot(over, 3)], coverage, "staple")
    np.testing.assert_allclose(soft.sum(axis=0), 1.0, atol=1e-6)
    np.testing.assert_array_equal(hard_label(soft), truth)
    assert np.all(soft[SPLEEN, 0] < 0.05)
    assert np.all(soft[LIVER][truth == LIVER] > 0.95) and np.all(soft[SPLEEN][truth == SPLEEN] > 0.95)


def test_staple_two_single_organ_teachers() -> None:
    # a liver-only and a spleen-only teacher, each right: where one says its organ the other says its background,
    # which absorbs that organ, so there is no disagreement and STAPLE returns the truth
    truth = np.zeros((8, 8), dtype=int)
    truth[1:3, 1:4] = LIVER
    truth[5:7, 3:7] = SPLEEN
    a = one_hot(np.where(truth == LIVER, 1, 0), 2)
    b = one_hot(np.where(truth == SPLEEN, 1, 0), 2)
    soft = fuse_partial([a, b], COVERAGE_AB, "staple")
    np.testing.assert_array_equal(hard_label(soft), truth)
    # 0.98 on the organs within STAPLE's 100 EM steps (as rules.staple); the naive union gives them 0.53
    assert np.all(soft.max(axis=0) > 0.95)


# --------------------------------------------------------------------------------------------------------------
# full coverage is rules.fuse
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ALL_RULES)
@pytest.mark.parametrize("weights", [None, [1.0, 3.0, 0.5]])
def test_full_coverage_equals_rules_fuse(rule: str, weights: list | None) -> None:
    if rule == "mean" and weights is not None:
        return  # refused by both
    if rule == "weighted_mean" and weights is None:
        weights = [1.0, 1.0, 2.0]
    rng = np.random.default_rng(4)
    probs = random_probs(rng, (2, 3, 4, 5, 6))  # [B=2, T=3, C=4, H, W]
    coverage = np.ones((3, 4), dtype=bool)
    expected = fuse(probs, rule, weights)
    np.testing.assert_allclose(fuse_partial(probs, coverage, rule, weights), expected, atol=1e-6)
    as_list = [probs[:, t] for t in range(3)]
    np.testing.assert_allclose(fuse_partial(as_list, coverage, rule, weights), expected, atol=1e-6)


def test_full_coverage_staple_has_the_same_em_result() -> None:
    truth = np.array([[0, 1, 2, 2], [0, 1, 2, 2], [0, 0, 1, 1], [2, 2, 1, 0]])
    confused = truth.copy()
    confused[truth == 2] = 1
    probs = np.stack([one_hot(truth, 3), one_hot(truth, 3), one_hot(confused, 3)])
    coverage = np.ones((3, 3), dtype=bool)
    for weights in (None, [1, 0.5, 1]):
        np.testing.assert_allclose(fuse_partial(probs, coverage, "staple", weights), fuse(probs, "staple", weights),
                                   atol=1e-6)


# --------------------------------------------------------------------------------------------------------------
# layouts, batches, slabs
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ALL_RULES)
def test_union_layout_array_equals_own_class_list(rule: str) -> None:
    rng = np.random.default_rng(5)
    teachers = [random_probs(rng, (int(row.sum()), 4, 4)) for row in COVERAGE_ABC]
    union = np.stack([expand_to_union(t, row)[0] for t, row in zip(teachers, COVERAGE_ABC)])  # [T, K+1, H, W]
    np.testing.assert_array_equal(fuse_partial(union, COVERAGE_ABC, rule, weights_for(rule, 3)),
                                  fuse_partial(teachers, COVERAGE_ABC, rule, weights_for(rule, 3)))


@pytest.mark.parametrize("rule", ALL_RULES)
def test_batch_form_matches_per_case(rule: str) -> None:
    rng = np.random.default_rng(6)
    teachers = [random_probs(rng, (2, int(row.sum()), 4, 5)) for row in COVERAGE_ABC]  # [B=2, C_t, H, W]
    soft = fuse_partial(teachers, COVERAGE_ABC, rule, weights_for(rule, 3))
    assert soft.shape == (2, 4, 4, 5)
    for b in range(2):
        np.testing.assert_allclose(soft[b], fuse_partial([t[b] for t in teachers], COVERAGE_ABC, rule,
                                                         weights_for(rule, 3)), atol=1e-7)


@pytest.mark.parametrize("rule", ["mean", "weighted_mean", "majority_vote", "confidence_weighted"])
def test_per_pixel_rules_fuse_slab_by_slab_exactly(rule: str) -> None:
    rng = np.random.default_rng(7)
    teachers = [random_probs(rng, (int(row.sum()), 8, 5)) for row in COVERAGE_ABC]
    whole = fuse_partial(teachers, COVERAGE_ABC, rule, weights_for(rule, 3))
    slabs = [fuse_partial([t[:, rows] for t in teachers], COVERAGE_ABC, rule, weights_for(rule, 3))
             for rows in (slice(0, 3), slice(3, 8))]
    np.testing.assert_array_equal(whole, np.concatenate(slabs, axis=1))


# --------------------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------------------
PIXEL_A, PIXEL_B = own([[0.5]], [[0.5]]), own([[0.5]], [[0.5]])

# (probs, coverage, rule, weights, message fragment)
ERRORS = [
    ([PIXEL_A, PIXEL_B], [[1, 1, 0], [1, 0, 0]], "mean", None, "teacher 1 covers no foreground class"),
    ([PIXEL_A, PIXEL_B], [[1, 1, 0, 0], [1, 0, 1, 0]], "mean", None, "union class 3 is covered by no teacher"),
    ([PIXEL_A, PIXEL_B], [[1, 1, 0], [0, 0, 1]], "mean", None, "teacher 1: coverage[1, 0]"),
    ([PIXEL_A, PIXEL_B], [[1, 1, 1]], "mean", None, "2 teachers but coverage has 1 row"),
    ([PIXEL_A, PIXEL_B], [[1, 1], [1, 1], [1, 1]], "mean", None, "2 teachers but coverage has 3 rows"),
    ([PIXEL_A, PIXEL_B], [[[1, 1]]], "mean", None, "[T, K+1]"),
    ([PIXEL_A, PIXEL_B], [[1, 1, 0], [1, 0, 2]], "mean", None, "bool"),
    ([PIXEL_A, own([[0.2]], [[0.3]], [[0.5]])], COVERAGE_AB, "mean", None,
     "teacher 1: its probabilities have 3 classes on axis -3"),
    ([PIXEL_A, own([[0.5, 0.5]], [[0.5, 0.5]])], COVERAGE_AB, "mean", None, "teacher 1: shape (2, 1, 2)"),
    ([PIXEL_A, own([[0.5]], [[0.9]])], COVERAGE_AB, "mean", None, "teacher 1: its probabilities must sum to 1"),
    (np.stack([expand_to_union(PIXEL_A, COVERAGE_AB[0])[0], np.full((3, 1, 1), 1 / 3)]), COVERAGE_AB, "mean", None,
     "teacher 1 puts probability 0.3333 on union class 1"),
    (np.ones((2, 4, 1, 1)) / 4, COVERAGE_AB, "mean", None, "axis -3 has 4 classes but coverage has 3"),
    ([PIXEL_A, PIXEL_B], COVERAGE_AB, "staples", None, "did you mean 'staple'"),
    ([PIXEL_A, PIXEL_B], COVERAGE_AB, "mean", [1, 1], "weighted_mean"),
    ([PIXEL_A, PIXEL_B], COVERAGE_AB, "weighted_mean", None, "needs weights"),
    ([PIXEL_A, PIXEL_B], COVERAGE_AB, "weighted_mean", [1, 1, 1], "3 entries but probs has 2 teachers"),
    ([PIXEL_A, PIXEL_B], COVERAGE_AB, "staple", [1, -1], "non-negative"),
    ([], COVERAGE_AB, "mean", None, "at least one teacher"),
]


@pytest.mark.parametrize("probs, coverage, rule, weights, message", ERRORS)
def test_errors(probs: object, coverage: object, rule: str, weights: list | None, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        fuse_partial(probs, np.asarray(coverage), rule, weights)
    assert message in str(excinfo.value)


@pytest.mark.parametrize("classes, num_classes, message", [
    ([[1], [2, 2]], 3, "teacher 1 lists union class 2 twice"),
    ([[1], [3]], 3, "teacher 1: union class 3 is not in 1..2"),
    ([[1], [0]], 3, "teacher 1: union class 0 is not in 1..2"),
    ([[1], []], 3, "teacher 1 covers no foreground class"),
])
def test_coverage_from_classes_errors(classes: list, num_classes: int, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        coverage_from_classes(classes, num_classes)
    assert message in str(excinfo.value)


# --------------------------------------------------------------------------------------------------------------
# the pipeline's entry points: fuse_teachers, union_labels, pairwise_dice_partial, pixel_agreement
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ALL_RULES)
def test_fuse_teachers_under_full_coverage_is_rules_fuse_on_the_stack(rule: str) -> None:
    rng = np.random.default_rng(11)
    maps = [random_probs(rng, (2, 4, 5, 6)) for _ in range(3)]  # T x [B, C, H, W]
    expected = fuse(np.stack(maps, axis=-4), rule, weights_for(rule, 3))
    for coverage in (None, np.ones((3, 4), dtype=bool)):
        np.testing.assert_array_equal(fuse_teachers(maps, coverage, rule, weights_for(rule, 3)), expected)


@pytest.mark.parametrize("rule", ALL_RULES)
def test_fuse_teachers_under_partial_coverage_is_fuse_partial(rule: str) -> None:
    rng = np.random.default_rng(12)
    maps = [random_probs(rng, (2, int(row.sum()), 4, 5)) for row in COVERAGE_ABC]
    soft = fuse_teachers(maps, COVERAGE_ABC, rule, weights_for(rule, 3))
    assert soft.shape == (2, 4, 4, 5)
    np.testing.assert_array_equal(soft, fuse_partial(maps, COVERAGE_ABC, rule, weights_for(rule, 3)))


def test_union_labels_maps_own_indices_to_union_classes() -> None:
    # COVERAGE_ABC's teacher C covers spleen (2) and kidney (3): own 0 -> 0, own 1 -> 2, own 2 -> 3
    own_labels = np.array([[0, 1, 2], [2, 1, 0]])
    np.testing.assert_array_equal(union_labels(own_labels, COVERAGE_ABC[2]), [[0, 2, 3], [3, 2, 0]])
    np.testing.assert_array_equal(union_labels(np.array([1, 0]), COVERAGE_ABC[0]), [LIVER, BG])
    with pytest.raises(ValueError, match="covered must be one row"):
        union_labels(own_labels, COVERAGE_ABC)


@pytest.mark.parametrize("lead", [(), (3,)])
def test_pairwise_dice_partial_under_full_coverage_is_pairwise_dice(lead: tuple) -> None:
    rng = np.random.default_rng(13)
    maps = [random_probs(rng, (*lead, 4, 6, 7)) for _ in range(3)]
    expected = pairwise_dice(np.stack(maps, axis=-4))
    for coverage in (None, np.ones((3, 4), dtype=bool)):
        got = pairwise_dice_partial(maps, coverage)
        if lead:
            assert isinstance(got, np.ndarray) and got.shape == lead
        else:
            assert isinstance(got, float)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_pairwise_dice_partial_hand_made() -> None:
    # union 0..4. A covers 1, 2; B covers 2, 3; C covers 4 (shares nothing, so no pair with it counts).
    coverage = coverage_from_classes([[1, 2], [2, 3], [4]], 5)
    a_union = np.array([[1, 2, 2, 0], [0, 2, 0, 0]])   # A's class 2 at (0,1), (0,2), (1,1)
    b_union = np.array([[2, 2, 3, 0], [0, 0, 0, 2]])   # B's class 2 at (0,0), (0,1), (1,3)
    c_union = np.array([[4, 0, 0, 4], [4, 4, 0, 0]])
    a = one_hot(np.select([a_union == 1, a_union == 2], [1, 2], 0), 3)  # own classes: bg, 1, 2
    b = one_hot(np.select([b_union == 2, b_union == 3], [1, 2], 0), 3)  # own classes: bg, 2, 3
    c = one_hot((c_union == 4).astype(int), 2)                          # own classes: bg, 4
    # the one pair that shares a class (A, B) on that class (2): overlap (0,1) only -> Dice 2 * 1 / (3 + 3)
    assert pairwise_dice_partial([a, b, c], coverage) == pytest.approx(1 / 3)
    # A's liver where B says spleen, B's kidney where A says background: classes they do not share do not count
    # (the union-layout Dice over every class would count them as disagreement)
    naive = pairwise_dice(np.stack([expand_to_union(m, row)[0] for m, row in zip([a, b, c], coverage)]))
    assert naive < 1 / 3
    # batch form: the same per case
    np.testing.assert_allclose(pairwise_dice_partial([np.stack([m, m]) for m in (a, b, c)], coverage), [1 / 3] * 2)


def test_pairwise_dice_partial_is_one_when_no_pair_shares_a_class() -> None:
    coverage = coverage_from_classes([[LIVER], [SPLEEN, KIDNEY]], 4)
    a = one_hot(np.array([[1, 1], [0, 0]]), 2)
    b = one_hot(np.array([[1, 2], [2, 1]]), 3)  # disagrees with A everywhere it could, but on other classes
    assert pairwise_dice_partial([a, b], coverage) == 1.0
    batch = pairwise_dice_partial([np.stack([a, a]), np.stack([b, b])], coverage)
    np.testing.assert_array_equal(batch, [1.0, 1.0])


def test_pixel_agreement_under_full_coverage_is_the_share_of_equal_argmax() -> None:
    rng = np.random.default_rng(14)
    maps = [random_probs(rng, (2, 4, 5, 6)) for _ in range(3)]  # T x [B, C, H, W]
    target = fuse(np.stack(maps, axis=1), "mean").argmax(1)     # [B, H, W]
    old = (np.stack(maps, axis=1).argmax(2) == target[:, None]).mean(1)  # the formula before label sets
    for coverage in (None, np.ones((3, 4), dtype=bool)):
        np.testing.assert_array_equal(pixel_agreement(maps, target, coverage, class_axis=1), old)
    # class axis first (a volume [C, D, H, W])
    vol = [np.moveaxis(random_probs(rng, (3, 4, 5, 6)), 1, 0) for _ in range(2)]  # 2 x [C=4, D=3, H, W]
    target = np.stack(vol).mean(0).argmax(0)
    np.testing.assert_array_equal(pixel_agreement(vol, target, None, class_axis=0),
                                  (np.stack(vol).argmax(1) == target).mean(0))


def test_pixel_agreement_counts_background_for_an_uncovered_class_as_agreement() -> None:
    coverage = coverage_from_classes([[LIVER], [SPLEEN]], 3)  # A: bg, liver; B: bg, spleen
    a = one_hot(np.array([[0, 1, 1, 1]]), 2)   # A says: bg, liver, liver, liver
    b = one_hot(np.array([[0, 0, 1, 1]]), 2)   # B says: bg, bg,    spleen, spleen
    target = np.array([[BG, LIVER, SPLEEN, LIVER]])
    # pixel 0: both say background of bg -> 1; pixel 1: A liver, B its background (liver is not B's) -> 1;
    # pixel 2: A liver (spleen is in A's background: disagrees), B spleen -> 0.5; pixel 3: A liver, B spleen -> 0.5
    np.testing.assert_array_equal(pixel_agreement([a, b], target, coverage), [[1.0, 1.0, 0.5, 0.5]])


def _agreement_pair_by_pair(arrays: list[np.ndarray], cov: np.ndarray) -> np.ndarray:
    """The definition, one pair of teachers at a time (what the vectorised kernel replaces)."""
    from nakt_ray.fusion.partial import union_labels
    from nakt_ray.metrics import dice_per_class

    labels = [union_labels(p.argmax(axis=-3), cov[t]) for t, p in enumerate(arrays)]
    scores = []
    for a in range(len(arrays)):
        for b in range(a + 1, len(arrays)):
            shared = cov[a] & cov[b]
            shared[0] = False
            if shared.any():
                la = np.where(shared[labels[a]], labels[a], 0)
                lb = np.where(shared[labels[b]], labels[b], 0)
                scores.append(dice_per_class(la, lb, cov.shape[1])[..., shared].mean(axis=-1))
    return np.mean(scores, axis=0) if scores else np.ones(arrays[0].shape[:-3])


def test_agreement_of_all_pairs_at_once_equals_the_pair_by_pair_definition() -> None:
    """Random teachers (1-6), classes (2-5), coverages, batches and sizes, empty classes included."""
    from nakt_ray.fusion import pairwise_dice_partial

    rng = np.random.default_rng(0)
    for _ in range(150):
        t, c, b = int(rng.integers(1, 7)), int(rng.integers(2, 6)), int(rng.integers(1, 4))
        h, w = int(rng.integers(1, 9)), int(rng.integers(1, 9))
        full = rng.random((b, t, c, h, w)) ** 4
        full /= full.sum(axis=2, keepdims=True)
        every = np.ones((t, c), bool)
        np.testing.assert_allclose(pairwise_dice(full), _agreement_pair_by_pair(list(full.swapaxes(0, 1)), every))
        cov = rng.random((t, c)) < 0.6
        cov[:, 0] = True
        for i in range(t):
            cov[i, rng.integers(1, c)] |= not cov[i, 1:].any()
        for k in range(1, c):
            cov[rng.integers(0, t), k] |= not cov[:, k].any()
        arrays = [rng.random((b, int(cov[i].sum()), h, w)) for i in range(t)]
        np.testing.assert_allclose(pairwise_dice_partial(arrays, cov), _agreement_pair_by_pair(arrays, cov))

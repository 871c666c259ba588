"""Specialist weighting (``fusion.specialist``): each teacher weighed per case by its confidence there against its
own confidence over the set."""
from __future__ import annotations

import numpy as np
import pytest

from nakt_ray.fusion.specialist import foreground_confidence, specialist_weights


def _probs(fg: float, size: int = 6) -> np.ndarray:
    """[2, size, size]: class 1 with probability ``fg`` in the left half, background sure in the right half."""
    p = np.zeros((2, size, size))
    p[1, :, : size // 2], p[0, :, : size // 2] = fg, 1 - fg
    p[0, :, size // 2:] = 1.0
    return p


def test_foreground_confidence_counts_only_voxels_some_teacher_calls_foreground() -> None:
    sure, unsure = _probs(1.0), _probs(0.6)
    sums, count = foreground_confidence([sure, unsure])
    assert count == 18  # the left half; the background half, where both are sure, does not dilute the figure
    h = -(0.6 * np.log(0.6) + 0.4 * np.log(0.4)) / np.log(2)
    np.testing.assert_allclose(sums / count, [1.0, 1.0 - h])
    nothing, n = foreground_confidence([_probs(0.0), _probs(0.0)])  # no foreground anywhere: nothing to count
    assert n == 0 and (nothing == 0).all()


def test_foreground_confidence_of_slabs_adds_up_to_the_volume() -> None:
    rng = np.random.default_rng(0)
    maps = [rng.dirichlet(np.ones(3), size=(5, 4, 4)).transpose(3, 0, 1, 2) for _ in range(2)]  # [3, 5, 4, 4]
    whole, n = foreground_confidence(maps)
    parts = [foreground_confidence([m[:, z0:z1] for m in maps]) for z0, z1 in ((0, 2), (2, 5))]
    np.testing.assert_allclose(whole, sum(p[0] for p in parts))
    assert n == sum(p[1] for p in parts)
    with pytest.raises(ValueError, match="different grids"):
        foreground_confidence([maps[0], maps[1][:, :4]])


def test_each_case_goes_to_the_teacher_for_which_it_is_most_typical() -> None:
    # Teacher 0 is sure everywhere (0.95-0.99); teacher 1 is less sure everywhere, but much surer on cases 2-3 (its
    # own contrast). Compared with each other, teacher 0 wins every case; compared with themselves, 2-3 go to 1.
    confidence = np.array([[0.99, 0.50], [0.98, 0.52], [0.95, 0.80], [0.96, 0.82]])
    w = specialist_weights(confidence, temperature=0.25)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert (w[:2, 0] > 0.9).all() and (w[2:, 1] > 0.9).all()
    flat = specialist_weights(confidence, temperature=1e3)  # a high temperature: the prior (equal weights)
    np.testing.assert_allclose(flat, 0.5, atol=1e-2)
    prior = specialist_weights(confidence, temperature=1e3, prior=[3.0, 1.0])
    np.testing.assert_allclose(prior[:, 0], 0.75, atol=1e-2)
    np.testing.assert_allclose(specialist_weights(confidence, 0.25, prior=[1.0, 0.0])[:, 1], 0.0)


def test_degenerate_sets_fall_back_to_the_prior() -> None:
    one_case = specialist_weights(np.array([[0.9, 0.2, 0.5]]), temperature=0.1, prior=[1.0, 1.0, 2.0])
    np.testing.assert_allclose(one_case, [[0.25, 0.25, 0.5]])  # no spread to standardise by: z = 0
    constant = specialist_weights(np.array([[0.9, 0.1], [0.9, 0.9]]), temperature=0.1)
    assert constant[1, 1] > 0.99 and constant[0, 0] > 0.99  # teacher 0 never varies: z = 0 for it


@pytest.mark.parametrize("confidence, temperature, prior, match", [
    (np.ones((0, 2)), 1.0, None, "at least one"),
    (np.array([[np.nan, 1.0]]), 1.0, None, "NaN"),
    (np.ones((2, 2)), 0.0, None, "positive"),
    (np.ones((2, 2)), 1.0, [1.0], "2 finite non-negative"),
    (np.ones((2, 2)), 1.0, [-1.0, 2.0], "non-negative"),
])
def test_bad_arguments_are_refused(confidence, temperature, prior, match) -> None:
    with pytest.raises(ValueError, match=match):
        specialist_weights(confidence, temperature, prior)

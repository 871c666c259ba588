"""The small-data warning (issue 21, point 4): where E7 says the configuration a run has falls short (a small set
without the step floor, or a set below any E7 measured), a run says so with the study's figure; at the sizes and
steps E7 showed safe, and for 3D runs (E7 is 2D), it says nothing."""
from __future__ import annotations

import warnings

import pytest

from nakt_ray import config
from nakt_ray.training.loop import total_steps
from nakt_ray.training.small_data import (
    SAFE_LABELED_CASES,
    SAFE_TRANSFERAL_CASES,
    SMALLEST_LABELED_CASES,
    SMALLEST_TRANSFERAL_CASES,
    STUDENT_STEPS,
    TEACHER_STEPS,
    SmallDataWarning,
    check_labeled_size,
    check_transferal_size,
)


def test_a_small_transferal_set_without_the_floor_warns_with_the_study_figure() -> None:
    with pytest.warns(SmallDataWarning, match=r"transferal set 'runs/x/annotations' holds 36 cases.*trains 120 steps"
                                              r".*0\.028 below.*docs/results.md"):
        message = check_transferal_size(36, "runs/x/annotations", steps=120)
    assert str(SAFE_TRANSFERAL_CASES) in message and "training.min_steps" in message
    with pytest.warns(SmallDataWarning, match=r"labeled set 'site_a' holds 12 cases.*trains 80 steps.*320"):
        check_labeled_size(12, "site_a", steps=80)


def test_sets_below_the_smallest_measured_warn_whatever_the_steps() -> None:
    with pytest.warns(SmallDataWarning, match=rf"holds 20 cases, fewer than {SMALLEST_TRANSFERAL_CASES}, the smallest"):
        check_transferal_size(20, "t", steps=10_000)
    with pytest.warns(SmallDataWarning, match=rf"holds 6 cases, fewer than {SMALLEST_LABELED_CASES}, the smallest"):
        check_labeled_size(6, "l", steps=10_000)


def test_the_default_floor_safe_sizes_and_volumes_do_not_warn() -> None:
    defaults = config.from_dict({"teachers": [{"name": "t", "arch": "unet"}]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # E7's smallest regime with today's default student: the floor gives it its steps
        assert total_steps(defaults.training, SMALLEST_TRANSFERAL_CASES) >= STUDENT_STEPS
        assert check_transferal_size(36, "t", steps=total_steps(defaults.training, 36)) is None
        assert check_transferal_size(SAFE_TRANSFERAL_CASES, "t", steps=1) is None
        assert check_labeled_size(12, "l", steps=TEACHER_STEPS) is None
        assert check_labeled_size(SAFE_LABELED_CASES, "l", steps=1) is None
        assert check_transferal_size(4, "volumes", spatial_dims=3, steps=1) is None
        assert check_labeled_size(4, "volumes", spatial_dims=3, steps=1) is None
    # and without the floor the same student warns
    no_floor = config.TrainingConfig(epochs=defaults.training.epochs, batch_size=defaults.training.batch_size)
    with pytest.warns(SmallDataWarning, match="fewer than the default floor of 550"):
        check_transferal_size(36, "t", steps=total_steps(no_floor, 36))

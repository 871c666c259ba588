"""The small-data warning (issue 21, point 4): below the sizes E7 showed safe for the default configuration, a run
says so with the study's figure; at or above them, and for 3D runs (E7 is 2D), it says nothing."""
from __future__ import annotations

import warnings

import pytest

from nakt_ray.training.small_data import (
    SAFE_LABELED_CASES,
    SAFE_TRANSFERAL_CASES,
    SmallDataWarning,
    check_labeled_size,
    check_transferal_size,
)


def test_small_sets_warn_with_the_study_figure() -> None:
    with pytest.warns(SmallDataWarning, match=r"transferal set 'runs/x/annotations' holds 36 cases.*docs/results.md"):
        message = check_transferal_size(36, "runs/x/annotations")
    assert str(SAFE_TRANSFERAL_CASES) in message and "E7" in message
    with pytest.warns(SmallDataWarning, match=r"labeled set 'site_a' holds 12 cases, fewer than"):
        check_labeled_size(12, "site_a")


def test_sets_at_the_safe_size_and_volumes_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_transferal_size(SAFE_TRANSFERAL_CASES, "t") is None
        assert check_labeled_size(SAFE_LABELED_CASES, "l") is None
        assert check_transferal_size(4, "volumes", spatial_dims=3) is None
        assert check_labeled_size(4, "volumes", spatial_dims=3) is None

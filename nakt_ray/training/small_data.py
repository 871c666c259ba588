"""Small data: the set sizes below which the default student was measured to fall short of its teachers, and the
warning a run gets there (issue 21; the studies are E3 and E7, ``jobs/experiments/``, ``docs/results.md``).

On HC18 (96x96, three teachers of 60-image sites, 178 transferal images) E3's default student matched the
teachers' ensemble; in E7's smallest regime (sites of 12 images, 36 transferal images; seed 0) it was 0.029 below
the ensemble (paired CI -0.039 to -0.019), and a floor of 550 optimisation steps (``training.min_steps``) brought it
to 0.003 below (CI -0.012 to +0.005). Below those sizes a 2D run therefore warns, naming the figure and the knob. A
guide measured on one dataset and one seed so far, not a law, and the warning says so. 3D runs do not warn: E7 is 2D,
and a volume gives a student many patches.
"""
from __future__ import annotations

import warnings

# The smallest sizes measured safe with the defaults (E3: 60-image sites, 178 transferal images).
SAFE_TRANSFERAL_CASES = 178
SAFE_LABELED_CASES = 60
FIGURE = ("in E7 (HC18, sites of 12 images, 36 transferal images, seed 0) the default student was 0.029 below the "
          "teachers' ensemble, and 0.003 below with training.min_steps: 550")


class SmallDataWarning(UserWarning):
    """A set is smaller than the studies showed safe for the default configuration."""


def check_transferal_size(cases: int, where: str, spatial_dims: int = 2) -> str | None:
    """Warn (and return the message) when a 2D student's transferal set has fewer cases than shown safe."""
    if spatial_dims != 2 or cases >= SAFE_TRANSFERAL_CASES:
        return None
    return _warn(f"the transferal set {where!r} holds {cases} cases, fewer than {SAFE_TRANSFERAL_CASES}, the "
                 "smallest at which the default student was measured to match its teachers' ensemble (E3)")


def check_labeled_size(cases: int, where: str, spatial_dims: int = 2) -> str | None:
    """Warn (and return the message) when a 2D teacher's labeled set has fewer cases than shown safe."""
    if spatial_dims != 2 or cases >= SAFE_LABELED_CASES:
        return None
    return _warn(f"the labeled set {where!r} holds {cases} cases, fewer than {SAFE_LABELED_CASES}, the smallest "
                 "site at which the default student was measured to match its teachers' ensemble (E3)")


def _warn(message: str) -> str:
    text = (f"small data: {message}; {FIGURE} (docs/results.md, E7; one dataset: a guide). Consider "
            "training.min_steps (about 550 steps for a student).")
    warnings.warn(text, SmallDataWarning, stacklevel=3)
    return text

"""Small data: where the studies say the default student falls short of its teachers, and the warning a run gets
there (issue 21; the studies are E3 and E7, ``jobs/experiments/``, ``docs/results.md``).

On HC18 (96x96, three teachers), E3's student, with 178 transferal images and 552 optimisation steps, matched the
teachers' ensemble. E7 cut the sets to 12/36 and 24/90 images (site/transferal). With one pass an epoch the student
fell short there: 0.028 and 0.006 below the ensemble, over three seeds. With a floor of 550 steps
(``training.min_steps``, the default since decision 74) it came within 0.003 of it in both. So a 2D run warns:

- when its transferal set is below E3's size and the student trains fewer steps than the floor (the floor was
  turned off or lowered): it names the figure without the floor;
- when its transferal set, or a teacher's labeled set, is below the smallest E7 measured (36 and 12 images): no
  study covers that size;
- when a teacher's labeled set is below E3's 60 images and the teacher trains fewer steps than E7's teachers had
  (``teacher_training.min_steps: 320``).

A guide measured on one dataset, not a law, and the warning says so. 3D runs do not warn: E7 is 2D, and a volume
gives a model many patches.
"""
from __future__ import annotations

import warnings

from nakt_ray.config import STUDENT_MIN_STEPS

# Sizes the studies measured safe (E3: sites of 60, 178 transferal images), and the smallest E7 measured.
SAFE_TRANSFERAL_CASES = 178
SAFE_LABELED_CASES = 60
SMALLEST_TRANSFERAL_CASES = 36
SMALLEST_LABELED_CASES = 12
# The steps E7 gave its students (the default floor) and its teachers.
STUDENT_STEPS = STUDENT_MIN_STEPS
TEACHER_STEPS = 320
FIGURE = ("in E7 (HC18, sites of 12 images and 36 transferal images, three seeds) a student of one pass an epoch "
          "was 0.028 below the teachers' ensemble, and 0.003 below with the default floor of 550 steps")


class SmallDataWarning(UserWarning):
    """A set is smaller than the studies showed safe for the configuration a run has."""


def check_transferal_size(cases: int, where: str, spatial_dims: int = 2, steps: int | None = None) -> str | None:
    """Warn (and return the message) when a 2D student's transferal set is small for its ``steps`` (its total
    optimisation steps; None: unknown, taken as the floor's)."""
    if spatial_dims != 2 or cases >= SAFE_TRANSFERAL_CASES:
        return None
    if cases < SMALLEST_TRANSFERAL_CASES:
        return _warn(f"the transferal set {where!r} holds {cases} cases, fewer than {SMALLEST_TRANSFERAL_CASES}, "
                     "the smallest set E7 measured: no study says how a student fares here", FIGURE)
    if steps is not None and steps < STUDENT_STEPS:
        return _warn(f"the transferal set {where!r} holds {cases} cases, fewer than {SAFE_TRANSFERAL_CASES}, and "
                     f"the student trains {steps} steps, fewer than the default floor of {STUDENT_STEPS} "
                     "(training.min_steps)", FIGURE)
    return None


def check_labeled_size(cases: int, where: str, spatial_dims: int = 2, steps: int | None = None) -> str | None:
    """Warn (and return the message) when a 2D teacher's labeled set is small for its ``steps`` (None: unknown,
    taken as enough)."""
    if spatial_dims != 2 or cases >= SAFE_LABELED_CASES:
        return None
    if cases < SMALLEST_LABELED_CASES:
        return _warn(f"the labeled set {where!r} holds {cases} cases, fewer than {SMALLEST_LABELED_CASES}, the "
                     "smallest site E7 measured: no study says how its teacher, and a student of it, fare here",
                     FIGURE)
    if steps is not None and steps < TEACHER_STEPS:
        return _warn(f"the labeled set {where!r} holds {cases} cases, fewer than {SAFE_LABELED_CASES}, and the "
                     f"teacher trains {steps} steps, fewer than E7's small-site teachers had ({TEACHER_STEPS}: "
                     "teacher_training.min_steps)", FIGURE)
    return None


def _warn(message: str, figure: str) -> str:
    text = f"small data: {message}; {figure} (docs/results.md, E7; one dataset: a guide)."
    warnings.warn(text, SmallDataWarning, stacklevel=3)
    return text

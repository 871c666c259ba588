"""The ``fusion`` section of the run config: the rule, per-teacher and per-class weights, and what the student learns
from (the maths is ``docs/fusion.md``, the rules ``nakt_ray/fusion/``). Kept apart from ``schema.py`` as ``data.py``
and ``volume.py`` are; the checks that need the whole run (a row per teacher, a weight per label) stay in
``RunConfig``."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from nakt_ray.errors import ConfigError, error, expected


@dataclass(frozen=True)
class FusionConfig:
    """How teachers' probabilities become one soft label. ``weights``: one per teacher, for weighted rules.

    ``class_weights``: optional per-class weights, one row per teacher, each one weight per student label
    (``data.labels``, background first), for ``weighted_mean``, ``majority_vote`` and ``confidence_weighted``:
    teacher t's weight at a pixel is ``sum_c weights[t] * class_weights[t][c] * p_t(c)``, so a teacher counts where
    it claims a class it is good at (``docs/fusion.md``, "Per-class weights"). A row's entries for classes the
    teacher does not predict are unused. Not for ``staple`` (it learns per-class reliability itself). With
    ``target: teachers`` they weigh each teacher's partial-label loss per class (``a_tj`` of docs/fusion.md).

    ``target``: what the student learns from. ``fused``: the fused soft label. ``teachers``: every teacher's own
    stored map, each through the partial-label loss (``losses.partial_label_loss``: the student's probabilities of
    the classes a teacher does not predict merged into that teacher's background), weighted by ``weights`` when
    given; for teachers with different label sets, no fusion between them is needed at all. ``auto`` (the default):
    ``teachers`` when the annotation set's teachers predict different label sets, ``fused`` when they all predict
    the student's labels (E4: 0.585 against 0.372 mean Dice over 7 classes; docs/decisions.md 69).
    """

    rule: Literal["mean", "weighted_mean", "majority_vote", "staple", "confidence_weighted"] = "mean"
    weights: tuple[float, ...] | None = None
    class_weights: tuple[tuple[float, ...], ...] | None = None
    target: Literal["auto", "fused", "teachers"] = "auto"

    def effective_weights(self) -> list[float] | list[list[float]] | None:
        """The weights fusion takes: None, one per teacher, or ``[T][C]`` (``weights[t] * class_weights[t][c]``)
        when ``class_weights`` are given."""
        if self.class_weights is None:
            return list(self.weights) if self.weights is not None else None
        scale = self.weights if self.weights is not None else (1.0,) * len(self.class_weights)
        return [[float(s) * float(c) for c in row] for s, row in zip(scale, self.class_weights)]

    def _validate(self, p: str) -> None:
        # `w >= 0` is False for NaN, so NaN fails here too; infinity would make every fused map NaN (inf / inf).
        if self.weights is not None and (not all(math.isfinite(w) and w >= 0 for w in self.weights)
                                         or sum(self.weights) <= 0):
            raise error(ConfigError, f"config key '{p}weights'",
                        expected(list(self.weights), "finite non-negative numbers, not all zero, one per teacher"))
        if self.rule == "weighted_mean" and self.weights is None and self.class_weights is None:
            raise error(ConfigError, f"config key '{p}weights'",
                        expected(None, "a list of weights, one per teacher, for rule 'weighted_mean'"))
        if self.class_weights is not None:
            flat = [w for row in self.class_weights for w in row]
            if not all(math.isfinite(w) and w >= 0 for w in flat) or sum(flat) <= 0:
                raise error(ConfigError, f"config key '{p}class_weights'", expected(
                    [list(r) for r in self.class_weights], "finite non-negative numbers, not all zero"))
            if self.rule in ("mean", "staple"):
                raise error(ConfigError, f"config key '{p}class_weights'", expected(
                    self.rule, "rule weighted_mean, majority_vote or confidence_weighted: 'mean' takes no weights "
                               "and 'staple' learns each teacher's per-class reliability itself"))

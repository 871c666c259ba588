"""Fusion: several teachers' probability maps of one case -> one soft label, and the figures that say how much the
teachers agree. Pure NumPy over arrays ``[T, C, H, W]`` (T teachers, C classes, probabilities); no Ray, nothing of
the pipeline. The annotation stage applies it per batch; re-fusion and student training apply it again to the
stored per-teacher maps. Teachers that cover different subsets of the run's classes are fused by ``fuse_partial``
(``partial.py``, maths in ``docs/fusion.md``).
"""
from nakt_ray.fusion.partial import (
    check_coverage,
    coarsen_to_teacher,
    coverage_from_classes,
    expand_to_union,
    fuse_partial,
    teacher_cells,
)
from nakt_ray.fusion.quality import entropy, hard_label, pairwise_dice
from nakt_ray.fusion.rules import (
    FUSION_RULES,
    confidence_weighted,
    fuse,
    majority_vote,
    mean,
    staple,
    weighted_mean,
)

__all__ = ["FUSION_RULES", "check_coverage", "coarsen_to_teacher", "confidence_weighted", "coverage_from_classes",
           "entropy", "expand_to_union", "fuse", "fuse_partial", "hard_label", "majority_vote", "mean",
           "pairwise_dice", "staple", "teacher_cells", "weighted_mean"]

"""Fusion: several teachers' probability maps of one case -> one soft label, and the figures that say how much the
teachers agree. Pure NumPy over arrays ``[T, C, H, W]`` (T teachers, C classes, probabilities); no Ray, nothing of
the pipeline. The annotation stage applies it per batch; re-fusion and student training apply it again to the
stored per-teacher maps. Teachers that cover different subsets of the run's classes are fused by ``fuse_partial``
(``partial.py``, maths in ``docs/fusion.md``), after ``labels.py`` has matched their label names to the run's.
"""
from nakt_ray.fusion.labels import (
    LabelMap,
    fold_channels,
    map_label_spaces,
    normalise_label,
)
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

__all__ = ["FUSION_RULES", "LabelMap", "check_coverage", "coarsen_to_teacher", "confidence_weighted",
           "coverage_from_classes", "entropy", "expand_to_union", "fold_channels", "fuse", "fuse_partial",
           "fuse_teachers", "hard_label", "majority_vote", "map_label_spaces", "mean", "normalise_label",
           "pairwise_dice", "pairwise_dice_partial", "pixel_agreement", "staple", "teacher_cells", "union_labels",
           "weighted_mean"]

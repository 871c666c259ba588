"""How volumes are preprocessed: one frozen definition shared by teachers and students (the `volume` section).

Example::

    volume:
      spacing: [3.0, 0.8, 0.8]     # (d, h, w) mm; null keeps each volume's own spacing
      orientation: RAS             # axes (W, H, D) pointing Right, Anterior, Superior; null keeps the stored order
      modality: ct                 # ct: clip + dataset z-score; mri: per-volume z-score; none: raw intensities
      clip: [0.5, 99.5]            # CT: foreground percentiles the intensities are clipped to
      ct_stats: {mean: 60.2, std: 140.1, p_low: -958.0, p_high: 1320.0}   # from volume_preprocess.ct_statistics
      crop_nonzero: true
      patch_size: [64, 64, 64]     # (d, h, w) voxels: the 3D models' training patch and sliding window
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from nakt_ray.errors import ConfigError, error, expected

SPACING_RANGE_MM = (0.01, 50.0)   # as the volume readers accept (nakt_ray/data/volumes.py)


@dataclass(frozen=True)
class CTStatistics:
    """A CT dataset's foreground intensity statistics (HU): ``mean``, ``std`` and the ``p_low`` / ``p_high``
    percentiles named by ``clip`` (nnU-Net's CTNormalization). Computed by ``ct_statistics`` once per dataset."""

    mean: float
    std: float
    p_low: float
    p_high: float

    def _validate(self, p: str) -> None:
        for key in ("mean", "std", "p_low", "p_high"):
            if not math.isfinite(getattr(self, key)):
                raise error(ConfigError, f"config key '{p}{key}'", expected(getattr(self, key), "a finite number"))
        if self.std <= 0:
            raise error(ConfigError, f"config key '{p}std'", expected(self.std, "a standard deviation > 0"))
        if self.p_low >= self.p_high:
            raise error(ConfigError, f"config key '{p}p_high'",
                        expected(self.p_high, f"an intensity above p_low ({self.p_low})"))


@dataclass(frozen=True)
class VolumePreprocessConfig:
    """The one preprocessing definition for volumes ``[D, H, W]`` (axis conventions: nakt_ray/data/volumes.py).

    ``spacing``: target voxel spacing ``(d, h, w)`` in mm; volumes are resampled to it (images linearly, labels by
    nearest neighbour; sizes ``round(shape * spacing / target)``), null keeps each volume's spacing.
    ``orientation``: ``RAS`` or ``LPS``, the directions of the axes ``(W, H, D)`` after reorientation (permutes and
    flips only, never an interpolation); null keeps the stored axis order. ``modality``: ``ct`` clips to the
    dataset's foreground percentiles ``clip`` and z-scores with the dataset's mean and std (``ct_stats``, required
    for CT and computed once per dataset); ``mri`` z-scores each volume over its non-zero voxels (over all when
    ``crop_nonzero`` is off); ``none`` keeps the intensities. ``crop_nonzero`` crops to the bounding box of the
    non-zero voxels (the inverse pads with background). ``patch_size``: ``(d, h, w)`` voxels a 3D model sees, its
    training patch and its sliding window at inference (nnU-Net's plans pair a spacing with a patch size alike).
    """

    spacing: tuple[float, float, float] | None = None
    orientation: Literal["RAS", "LPS"] | None = "RAS"
    modality: Literal["ct", "mri", "none"] = "mri"
    clip: tuple[float, float] = (0.5, 99.5)
    ct_stats: CTStatistics | None = None
    crop_nonzero: bool = True
    patch_size: tuple[int, int, int] = (64, 64, 64)

    def _validate(self, p: str) -> None:
        lo, hi = SPACING_RANGE_MM
        if self.spacing is not None and (len(self.spacing) != 3 or not all(
                isinstance(s, (int, float)) and math.isfinite(s) and lo <= s <= hi for s in self.spacing)):
            raise error(ConfigError, f"config key '{p}spacing'", expected(list(self.spacing), f"three spacings "
                        f"(d, h, w) in mm between {lo} and {hi}, or null to keep each volume's spacing"))
        if self.orientation not in ("RAS", "LPS", None):
            raise error(ConfigError, f"config key '{p}orientation'", expected(self.orientation, "'RAS', 'LPS' or null "
                        "(keep the stored axis order)"))
        if self.modality not in ("ct", "mri", "none"):
            raise error(ConfigError, f"config key '{p}modality'", expected(self.modality, "one of 'ct', 'mri', 'none'"))
        if len(self.clip) != 2 or not 0 <= self.clip[0] < self.clip[1] <= 100:
            raise error(ConfigError, f"config key '{p}clip'", expected(list(self.clip), "two percentiles "
                        "[low, high] with 0 <= low < high <= 100"))
        if len(self.patch_size) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and 8 <= s <= 1024
                                                 for s in self.patch_size):
            raise error(ConfigError, f"config key '{p}patch_size'", expected(list(self.patch_size), "three sizes "
                        "(d, h, w) in voxels between 8 and 1024"))
        if self.ct_stats is not None:
            self.ct_stats._validate(f"{p}ct_stats.")

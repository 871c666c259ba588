"""On-the-fly augmentation for training: MONAI random transforms applied alike to image, target and weight.

The image ``[C_in, H, W]``, the soft target ``[C, H, W]`` (class probabilities) and an optional per-pixel weight
``[H, W]`` are stacked on the channel axis and go through the same random flip and affine, so a soft label stays
aligned with its image; intensity changes then touch the image channels only. Targets are resampled bilinearly
(probabilities stay probabilities) and renormalised; borders are replicated, so no pixel loses its class.
"""
from __future__ import annotations

import math

import torch


def _plain(t: torch.Tensor) -> torch.Tensor:
    """MONAI returns MetaTensors; training wants plain tensors."""
    return t.as_tensor() if hasattr(t, "as_tensor") else t


class Augmenter:
    """Random left-right flip, small affine (rotation, scale) and intensity scale/shift; one per worker.

    Args:
        strength: scales the affine and intensity ranges (1: rotation up to 15 degrees, scale and intensity up
            to 10 %); 0 leaves only the flip.
        seed: seeds MONAI's random state (give each worker its own).
    """

    def __init__(self, strength: float = 1.0, seed: int = 0):
        from monai.transforms import RandAffine, RandFlip, RandScaleIntensity, RandShiftIntensity

        self.strength = strength
        self.flip = RandFlip(prob=0.5, spatial_axis=1)  # axis 1 of [H, W]: left-right
        self.affine = RandAffine(prob=0.5, rotate_range=(math.pi / 12 * strength,),
                                 scale_range=(0.1 * strength, 0.1 * strength), mode="bilinear",
                                 padding_mode="border") if strength > 0 else None
        self.scale = RandScaleIntensity(factors=0.1 * strength, prob=0.5) if strength > 0 else None
        self.shift = RandShiftIntensity(offsets=0.1 * strength, prob=0.5) if strength > 0 else None
        for i, t in enumerate((self.flip, self.affine, self.scale, self.shift)):
            if t is not None:
                t.set_random_state(seed + i)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Augment a batch: ``x [B, C_in, H, W]``, ``y [B, C, H, W]``, optional ``w [B, H, W]``."""
        c_in, c = x.shape[1], y.shape[1]
        xs, ys, ws = [], [], []
        for i in range(x.shape[0]):
            parts = [x[i], y[i]] + ([w[i][None]] if w is not None else [])
            z = _plain(self.flip(torch.cat(parts, 0)))
            if self.affine is not None:
                z = _plain(self.affine(z))
            xi, yi = z[:c_in], z[c_in:c_in + c]
            if self.scale is not None:
                xi = _plain(self.shift(self.scale(xi)))
            xs.append(xi)
            ys.append(yi.clamp_min(0) / yi.clamp_min(0).sum(0, keepdim=True).clamp_min(1e-6))
            if w is not None:
                ws.append(z[c_in + c])
        return torch.stack(xs), torch.stack(ys), (torch.stack(ws) if w is not None else None)

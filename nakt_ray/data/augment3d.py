"""On-the-fly augmentation of volume patches: random flips over the three axes, intensity scale and shift, noise.

The 3D counterpart of :class:`nakt_ray.data.augment.Augmenter` (which stays the 2D one, unchanged): a patch's image
``[C_in, D, H, W]``, soft target ``[C, D, H, W]`` and optional weight ``[D, H, W]`` are flipped alike, so a soft
label stays aligned with its image; intensity changes and noise touch the image only. Flips move voxels without
interpolating, so targets stay exact distributions. Rotations and scaling are left out: on 2 CPU cores a 3D
resampling of every patch costs about as much as the training step (nnU-Net does them, on many cores), and
flips plus intensity are what the patch-based students here need first.

Plain torch with a seeded ``torch.Generator``: the draws are reproducible and the tensors may live on the GPU
(only the random numbers are drawn on the CPU).
"""
from __future__ import annotations

import torch

__all__ = ["VolumeAugmenter"]

FLIP_PROB = 0.5    # per spatial axis, as the 2D flip
INTENSITY_PROB = 0.5
NOISE_PROB = 0.15  # nnU-Net's Gaussian noise is applied to about one patch in ten


class VolumeAugmenter:
    """Random flips (each of the axes D, H, W with probability 1/2), intensity scale and shift (up to 10 % x
    ``strength``, each with probability 1/2) and Gaussian noise (std up to 0.1 x ``strength`` of the normalised
    intensities, probability 0.15); one per worker.

    Args:
        strength: scales the intensity and noise ranges; 0 leaves only the flips.
        seed: seeds the draws (give each worker its own).
    """

    def __init__(self, strength: float = 1.0, seed: int = 0):
        self.strength = float(strength)
        self.generator = torch.Generator().manual_seed(int(seed))

    def _uniform(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.generator, dtype=torch.float64)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Augment a batch: ``x [B, C_in, D, H, W]``, ``y [B, C, D, H, W]``, optional ``w [B, D, H, W]``."""
        if x.ndim != 5 or y.ndim != 5 or (w is not None and w.ndim != 4):
            raise ValueError(f"volume augmentation takes x [B, C_in, D, H, W], y [B, C, D, H, W] and w [B, D, H, W]; "
                             f"got {tuple(x.shape)}, {tuple(y.shape)}, {None if w is None else tuple(w.shape)}")
        xs, ys, ws = [], [], []
        for i in range(x.shape[0]):
            flips = [axis for axis, u in zip((1, 2, 3), self._uniform(3).tolist()) if u < FLIP_PROB]
            xi, yi = x[i], y[i]
            wi = w[i] if w is not None else None
            if flips:
                xi, yi = xi.flip(flips), yi.flip(flips)
                wi = wi.flip([a - 1 for a in flips]) if wi is not None else None
            if self.strength > 0:
                scale_on, scale, shift_on, shift, noise_on, noise = self._uniform(6).tolist()
                if scale_on < INTENSITY_PROB:
                    xi = xi * (1.0 + (2 * scale - 1) * 0.1 * self.strength)
                if shift_on < INTENSITY_PROB:
                    xi = xi + (2 * shift - 1) * 0.1 * self.strength
                if noise_on < NOISE_PROB:
                    std = noise * 0.1 * self.strength
                    xi = xi + (std * torch.randn(xi.shape, generator=self.generator)).to(xi.device, xi.dtype)
            xs.append(xi)
            ys.append(yi)
            if wi is not None:
                ws.append(wi)
        return torch.stack(xs), torch.stack(ys), (torch.stack(ws) if w is not None else None)

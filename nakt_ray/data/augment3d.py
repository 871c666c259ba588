"""On-the-fly augmentation of volume patches: random flips over the three axes, intensity scale and shift, contrast,
gamma, noise.

The 3D counterpart of :class:`nakt_ray.data.augment.Augmenter` (which stays the 2D one, unchanged): a patch's image
``[C_in, D, H, W]``, soft target ``[C, D, H, W]`` and optional weight ``[D, H, W]`` are flipped alike, so a soft
label stays aligned with its image; intensity changes and noise touch the image only. Flips move voxels without
interpolating, so targets stay exact distributions. Rotations and scaling are left out: on 2 CPU cores a 3D
resampling of every patch costs about as much as the training step (nnU-Net does them, on many cores), and
flips plus intensity are what the patch-based students here need first. Contrast and gamma follow nnU-Net v2's
default training transforms (``nnUNetTrainer.get_training_transforms``): contrast x U(0.75, 1.25) about the patch's
mean with its range kept (p 0.15); gamma U(0.7, 1.5) on the patch rescaled to [0, 1], its mean and std restored
(p 0.3), and the same on the negated patch (p 0.1; nnU-Net's ``p_invert_image``: the gamma bends the other tail,
the image is not inverted). Gamma and contrast are what make a model trained on one scanner's intensity profile
hold up on another's; the range of gamma scales with ``strength`` (1 = nnU-Net's).

Plain torch with a seeded ``torch.Generator``: the draws are reproducible and the tensors may live on the GPU
(only the random numbers are drawn on the CPU).
"""
from __future__ import annotations

import torch

__all__ = ["VolumeAugmenter"]

FLIP_PROB = 0.5    # per spatial axis, as the 2D flip
INTENSITY_PROB = 0.5
NOISE_PROB = 0.15  # nnU-Net's Gaussian noise is applied to about one patch in ten
CONTRAST_PROB = 0.15  # nnU-Net v2's ContrastTransform
GAMMA_PROB = 0.3  # nnU-Net v2's GammaTransform, retain_stats
INVERTED_GAMMA_PROB = 0.1  # the same on the negated patch


def _gamma(x: torch.Tensor, gamma: float, negate: bool) -> torch.Tensor:
    """nnU-Net's gamma: rescale to [0, 1], raise to ``gamma``, rescale back; keep the mean and std of ``x``."""
    x = -x if negate else x
    mean, std = x.mean(), x.std()
    low, span = x.min(), x.max() - x.min()
    y = ((x - low) / (span + 1e-7)).pow(gamma) * (span + 1e-7) + low
    y = (y - y.mean()) / (y.std() + 1e-8) * std + mean
    return -y if negate else y


def _contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    """nnU-Net's contrast: scale the deviation from the mean by ``factor``, clipped to the patch's range."""
    mean = x.mean()
    return ((x - mean) * factor + mean).clamp(x.min(), x.max())


class VolumeAugmenter:
    """Random flips (each of the axes D, H, W with probability 1/2), intensity scale and shift (up to 10 % x
    ``strength``, each with probability 1/2), contrast (factor 1 +- 0.25 x ``strength``, p 0.15), gamma (nnU-Net's
    0.7-1.5 at strength 1, p 0.3; on the negated patch p 0.1) and Gaussian noise (std up to 0.1 x ``strength`` of
    the normalised intensities, probability 0.15); one per worker.

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
                contrast_on, contrast, gamma_on, gamma, negate = self._uniform(5).tolist()
                if contrast_on < CONTRAST_PROB:
                    xi = _contrast(xi, 1.0 + (2 * contrast - 1) * 0.25 * self.strength)
                if gamma_on < GAMMA_PROB + INVERTED_GAMMA_PROB:
                    # 0.7 .. 1 .. 1.5 at strength 1, half the draws below 1 (as nnU-Net's gamma range)
                    g = 1 - 0.3 * self.strength * (1 - 2 * gamma) if gamma < 0.5 else 1 + 0.5 * self.strength * (
                        2 * gamma - 1)
                    xi = _gamma(xi, max(g, 0.1), negate=gamma_on >= GAMMA_PROB)
                if noise_on < NOISE_PROB:
                    std = noise * 0.1 * self.strength
                    xi = xi + (std * torch.randn(xi.shape, generator=self.generator)).to(xi.device, xi.dtype)
            xs.append(xi)
            ys.append(yi)
            if wi is not None:
                ws.append(wi)
        return torch.stack(xs), torch.stack(ys), (torch.stack(ws) if w is not None else None)

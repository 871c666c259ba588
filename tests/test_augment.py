"""Augmentation keeps image, soft target and weight aligned, and targets valid distributions."""
from __future__ import annotations

import torch

from nakt_ray.data.augment import Augmenter


def _disc_batch(b: int = 6, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    fg = torch.stack([((yy - 12 - i) ** 2 + (xx - 10 - 2 * i) ** 2 < 49).float() for i in range(b)])
    return fg[:, None], torch.stack([1 - fg, fg], 1)


def test_geometry_is_applied_alike_to_image_target_and_weight() -> None:
    fg, y = _disc_batch()
    aug = Augmenter(strength=2.0, seed=1)
    aug.scale = aug.shift = None  # geometry only, so the image channel must equal the target's foreground
    changed = 0
    for _ in range(4):
        x2, y2, w2 = aug(fg.clone(), y.clone(), fg[:, 0].clone())
        assert torch.allclose(x2[:, 0], y2[:, 1], atol=1e-5)
        assert torch.allclose(w2, y2[:, 1], atol=1e-5)
        changed += int(not torch.allclose(x2, fg))
    assert changed > 0  # it does augment


def test_targets_stay_distributions_and_intensity_touches_the_image_only() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(4, 1, 32, 32), torch.softmax(torch.randn(4, 3, 32, 32), 1)
    x2, y2, w2 = Augmenter(strength=1.0, seed=0)(x, y)
    assert w2 is None and type(x2) is torch.Tensor and x2.shape == x.shape and y2.shape == y.shape
    assert torch.allclose(y2.sum(1), torch.ones(4, 32, 32), atol=1e-5) and y2.min() >= 0


def test_strength_zero_only_flips() -> None:
    fg, y = _disc_batch(4)
    x2, y2, _ = Augmenter(strength=0.0, seed=2)(fg.clone(), y.clone())
    for i in range(4):
        assert torch.equal(x2[i], fg[i]) or torch.equal(x2[i], fg[i].flip(-1))

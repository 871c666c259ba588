"""Augmentation keeps image, soft target and weight aligned, and targets valid distributions."""
from __future__ import annotations

import pytest
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


def _ball_batch(b: int = 4, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    zz, yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), torch.arange(size), indexing="ij")
    fg = torch.stack([((zz - 4 - i) ** 2 + (yy - 6) ** 2 + (xx - 9 - i) ** 2 < 16).float() for i in range(b)])
    return fg[:, None], torch.stack([1 - fg, fg], 1)


def test_volume_flips_move_image_target_and_weight_alike_over_all_three_axes() -> None:
    from nakt_ray.data.augment3d import VolumeAugmenter

    fg, y = _ball_batch()
    aug = VolumeAugmenter(strength=0.0, seed=3)  # flips only: the image channel must equal the target's foreground
    seen = set()
    for _ in range(8):
        x2, y2, w2 = aug(fg.clone(), y.clone(), fg[:, 0].clone())
        assert torch.equal(x2[:, 0], y2[:, 1]) and torch.equal(w2, y2[:, 1])
        assert torch.equal(y2.sum(1), torch.ones_like(y2[:, 0]))  # flips move voxels: still exact distributions
        for i in range(fg.shape[0]):
            flips = [dims for dims in ((), (1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3))
                     if torch.equal(x2[i], fg[i].flip(dims) if dims else fg[i])]
            assert flips
            seen.update(flips)
    assert {(1,), (2,), (3,)} <= seen | {d[:1] for d in seen} and len(seen) > 3


def test_volume_intensity_and_noise_touch_the_image_only_and_are_seeded() -> None:
    from nakt_ray.data.augment3d import VolumeAugmenter

    torch.manual_seed(0)
    x, y = torch.randn(6, 1, 8, 8, 8), torch.softmax(torch.randn(6, 3, 8, 8, 8), 1)
    a = VolumeAugmenter(strength=2.0, seed=5)(x, y)
    b = VolumeAugmenter(strength=2.0, seed=5)(x, y)
    assert all(torch.equal(p, q) for p, q in zip(a[:2], b[:2])) and a[2] is None
    x2, y2, _ = a
    assert torch.allclose(y2.sum(1), torch.ones(6, 8, 8, 8), atol=1e-6)
    changed = [not any(torch.allclose(x2[i], x[i].flip(d) if d else x[i]) for d in
                       ((), (1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3))) for i in range(6)]
    assert any(changed)  # some intensity change or noise beyond the flips
    with pytest.raises(ValueError, match=r"\[B, C_in, D, H, W\]"):
        VolumeAugmenter()(x[:, :, 0], y[:, :, 0])


def test_volume_gamma_and_contrast_keep_statistics_and_order_as_nnunet() -> None:
    from nakt_ray.data.augment3d import _contrast, _gamma

    torch.manual_seed(1)
    x = torch.randn(1, 6, 6, 6, dtype=torch.float64) * 2 + 3
    order = x.flatten().argsort()
    for g, negate in ((0.7, False), (1.5, False), (0.7, True), (1.5, True)):
        y = _gamma(x, g, negate)
        assert torch.allclose(y.mean(), x.mean()) and torch.allclose(y.std(), x.std())  # retain_stats
        assert torch.equal(y.flatten().argsort(), order)  # monotone: no voxel swaps rank
        assert not torch.allclose(y, x, atol=1e-3)
    # gamma < 1 on the image lifts the dark tail; on the negated image it lowers the bright one instead
    low = x.flatten() < x.median()
    assert (_gamma(x, 0.7, False) - x).flatten()[low].mean() > 0 > (_gamma(x, 0.7, True) - x).flatten()[~low].mean()
    c = _contrast(x, 1.25)
    assert c.min() >= x.min() and c.max() <= x.max() and c.std() > x.std()
    assert torch.allclose(_contrast(x, 1.0), x)

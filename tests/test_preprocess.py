from __future__ import annotations

import numpy as np
import pytest

from nakt_ray.config import PreprocessConfig
from nakt_ray.data.preprocess import geometry_for, preprocess_image, preprocess_mask, restore


def disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


@pytest.mark.parametrize("mode", ["resize", "letterbox"])
@pytest.mark.parametrize("shape", [(1, 60, 90), (3, 90, 60), (1, 32, 32)])
def test_output_shape_and_normalisation(mode, shape):
    cfg = PreprocessConfig(size=(32, 32), mode=mode, normalize="zscore", in_channels=1)
    image = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
    x, geom = preprocess_image(image, cfg)
    assert x.shape == (1, 32, 32) and x.dtype == np.float32
    inner = x[:, geom.top:geom.top + geom.inner_h, geom.left:geom.left + geom.inner_w]
    assert abs(float(inner.mean())) < 0.2
    if mode == "letterbox" and shape[1] != shape[2]:
        assert (geom.inner_h, geom.inner_w) != (32, 32)  # aspect ratio kept, the rest padded


def test_channels_are_converted():
    rgb = np.stack([np.full((8, 8), v, np.float32) for v in (10, 20, 30)])
    x, _ = preprocess_image(rgb, PreprocessConfig(size=(16, 16), normalize="none", in_channels=1))
    np.testing.assert_allclose(x, 0.299 * 10 + 0.587 * 20 + 0.114 * 30, rtol=1e-5)
    grey = np.full((1, 8, 8), 5, np.float32)
    x3, _ = preprocess_image(grey, PreprocessConfig(size=(16, 16), normalize="none", in_channels=3))
    assert x3.shape == (3, 16, 16) and np.allclose(x3, 5)


def test_minmax_range():
    x, _ = preprocess_image(np.arange(64, dtype=np.float32).reshape(1, 8, 8),
                            PreprocessConfig(size=(8, 8), normalize="minmax"))
    assert x.min() == pytest.approx(0) and x.max() == pytest.approx(1)


@pytest.mark.parametrize("mode", ["resize", "letterbox"])
def test_mask_geometry_and_restore_round_trip(mode):
    h, w = 90, 140
    mask = disc(h, w, 45, 80, 30)
    cfg = PreprocessConfig(size=(64, 64), mode=mode)
    geom = geometry_for(h, w, cfg)
    small = preprocess_mask(mask, geom)
    assert small.shape == (64, 64) and set(np.unique(small)) == {0, 1}
    probs = np.stack([1.0 - small, small]).astype(np.float32)
    back = restore(probs, geom).argmax(0)
    assert back.shape == (h, w)
    dice = 2 * (back & mask).sum() / (back.sum() + mask.sum())
    assert dice > 0.95

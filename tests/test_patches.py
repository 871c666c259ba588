"""Patch sampling for 3D training: boxes read chunk-wise from zarr, foreground-forced share, padding."""
from __future__ import annotations

import numpy as np
import pytest

from nakt_ray.annotation import volume_store as vs
from nakt_ray.training.patches import (
    choose_patch,
    class_locations,
    one_hot,
    padding_of_probabilities,
    read_patch,
)


def _counting_group(path):
    """The zarr group at ``path`` through a store that records every key it reads."""
    import zarr
    from zarr.storage import LocalStore

    keys: list[str] = []

    class CountingStore(LocalStore):
        async def get(self, key, prototype=None, byte_range=None):
            keys.append(key)
            return await super().get(key, prototype, byte_range)

    return zarr.open_group(store=CountingStore(str(path), read_only=True), mode="r"), keys


def test_a_patch_reads_only_the_chunks_its_box_touches(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 80, 70, 64)).astype(np.float32)  # 3 x 3 x 2 chunks of 32
    probs = rng.integers(0, 256, size=(3, 80, 70, 64), dtype=np.uint8)
    group = vs.create_case(tmp_path, "case.zarr", image, {"case_id": "case"})
    vs.write_map(group, "soft_label", probs)
    counted, keys = _counting_group(tmp_path / vs.STORES / "case.zarr")
    start, size = (20, 40, 10), (16, 16, 16)  # d 20..36 crosses a chunk border, h 40..56 does not, w 10..26 not
    keys.clear()
    patch = read_patch(counted["image"], start, size)
    target = read_patch(counted["soft_label"], start, size, padding_of_probabilities(3, np.uint8))
    np.testing.assert_array_equal(patch, image[:, 20:36, 40:56, 10:26].astype(np.float16))
    np.testing.assert_array_equal(target, probs[:, 20:36, 40:56, 10:26])
    chunks = sorted(k for k in keys if "/c/" in k)
    assert chunks == ["image/c/0/0/1/0", "image/c/0/1/1/0", "soft_label/c/0/0/1/0", "soft_label/c/0/1/1/0"]
    keys.clear()
    np.asarray(counted["image"][...])  # the whole volume: all 18 chunks
    assert len([k for k in keys if "/c/" in k]) == 18


def test_a_volume_smaller_than_the_patch_is_padded_with_zero_image_and_certain_background():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(1, 10, 12, 8)).astype(np.float32) + 5  # no zero inside, so padding shows
    label = rng.integers(1, 3, size=(10, 12, 8)).astype(np.uint8)     # no background inside either
    target = one_hot(label, 3)
    for _ in range(20):
        start, _ = choose_patch(label.shape, (16, 16, 16), None, rng, 0.0)
        assert all(s - 16 <= a <= 0 for a, s in zip(start, label.shape))  # the volume lies inside the box
        x = read_patch(image, start, (16, 16, 16), 0)
        y = read_patch(target, start, (16, 16, 16), padding_of_probabilities(3, np.uint8))
        inside = tuple(slice(-a, -a + s) for a, s in zip(start, label.shape))
        assert x.shape == (1, 16, 16, 16) and y.shape == (3, 16, 16, 16)
        np.testing.assert_array_equal(x[(slice(None), *inside)], image)
        np.testing.assert_array_equal(y[(slice(None), *inside)], target)
        outside = np.ones((16, 16, 16), bool)
        outside[inside] = False
        assert outside.sum() == 16**3 - label.size
        assert (x[0][outside] == 0).all()
        assert (y[0][outside] == 255).all() and (y[1:, outside] == 0).all()
    assert padding_of_probabilities(3, np.float16).tolist() == [1.0, 0.0, 0.0]


def test_a_box_partly_outside_the_volume_is_padded_where_it_leaves_it():
    image = np.arange(8 * 8 * 8, dtype=np.float32).reshape(1, 8, 8, 8) + 1
    patch = read_patch(image, (-2, 4, 0), (6, 6, 6), 0)
    np.testing.assert_array_equal(patch[:, 2:, :4], image[:, 0:4, 4:8, 0:6])
    assert (patch[:, :2] == 0).all() and (patch[:, :, 4:] == 0).all()


def _blob_volume():
    label = np.zeros((48, 48, 48), np.uint8)
    label[4:8, 4:8, 4:8] = 1      # class 1: 64 voxels in a corner
    label[40:41, 30:32, 20:21] = 2  # class 2: 2 voxels
    return label


@pytest.mark.parametrize("share", [0.0, 0.33, 1.0])
def test_the_foreground_share_holds_and_a_forced_patch_holds_its_voxel(share):
    label = _blob_volume()
    rng = np.random.default_rng(2)
    locations = class_locations(label, 3, rng)
    n, forced, contains, classes = 3000, 0, 0, []
    for _ in range(n):
        start, was_forced = choose_patch(label.shape, (16, 16, 16), locations, rng, share)
        assert all(0 <= a <= s - 16 for a, s in zip(start, label.shape))  # inside a volume larger than the patch
        box = label[tuple(slice(a, a + 16) for a in start)]
        forced += was_forced
        if was_forced:
            present = set(np.unique(box).tolist()) - {0}
            contains += bool(present)
            classes.append(2 if 2 in present else 1)
    assert abs(forced / n - share) < 0.035  # binomial sd ~0.009 at 0.33
    assert contains == forced  # every forced box holds foreground
    if share:  # a random present class, then a random voxel of it: the 2-voxel class is as likely as the big one
        assert 0.4 < classes.count(2) / len(classes) < 0.6


def test_a_case_without_foreground_gets_uniform_patches():
    rng = np.random.default_rng(3)
    empty = class_locations(np.zeros((20, 20, 20), np.uint8), 2, rng)
    assert empty.shape == (0, 4) and empty.dtype == np.int32
    starts = [choose_patch((20, 20, 20), (16, 16, 16), empty, rng, 1.0) for _ in range(200)]
    assert not any(f for _, f in starts)
    assert {tuple(s) for s, _ in starts} > {(0, 0, 0)}  # several places, not one
    with pytest.raises(ValueError, match="foreground_share"):
        choose_patch((20, 20, 20), (16, 16, 16), empty, rng, 1.5)


def test_class_locations_are_the_foreground_voxels_capped_per_class():
    label = _blob_volume()
    rng = np.random.default_rng(4)
    found = class_locations(label, 3, rng)
    assert len(found) == 66 and set(found[:, 0].tolist()) == {1, 2}
    assert (label[found[:, 1], found[:, 2], found[:, 3]] == found[:, 0]).all()
    capped = class_locations(label, 3, rng, per_class=10)
    assert (capped[:, 0] == 1).sum() == 10 and (capped[:, 0] == 2).sum() == 2


def test_class_argmax_is_numpy_argmax_over_the_class_axis_ties_included():
    from nakt_ray.training.patches import class_argmax

    rng = np.random.default_rng(5)
    for dtype in (np.uint8, np.float16):
        maps = (rng.integers(0, 4, size=(3, 4, 6, 7, 8)) * 60).astype(dtype)  # many ties
        np.testing.assert_array_equal(class_argmax(maps), maps.argmax(1))
        np.testing.assert_array_equal(class_argmax(maps[0]), maps[0].argmax(0))

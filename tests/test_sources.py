from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from nakt_ray.sources import DataError, list_cases, read_image, read_mask


def write(path, array, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)
    return path


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "src"
    for name, shape in (("a", (20, 30)), ("b", (25, 18))):
        write(root / "images" / f"{name}.png", rng.integers(0, 255, shape, dtype=np.uint8))
        mask = np.zeros(shape, np.uint8)
        mask[5:10, 5:10] = 255
        write(root / "masks" / f"{name}.png", mask)
    return root


def test_cases_are_matched_by_name_with_stable_ids(folder):
    write(folder / "images" / "sub" / "c.bmp", np.zeros((8, 8), np.uint8))
    cases = list_cases(folder)
    assert [c.case_id for c in cases] == ["a", "b", "sub/c"]
    assert cases[0].mask_path.endswith("masks/a.png") and cases[2].mask_path is None
    assert list_cases(folder) == cases  # stable across calls


@pytest.mark.parametrize("fmt, ext, shape", [
    ("PNG", "png", (12, 16)), ("JPEG", "jpg", (12, 16, 3)), ("TIFF", "tif", (12, 16)), ("BMP", "bmp", (12, 16, 3)),
])
def test_read_image_formats_grey_and_rgb(tmp_path, fmt, ext, shape):
    arr = (np.arange(np.prod(shape)) % 200).astype(np.uint8).reshape(shape)
    img = read_image(str(write(tmp_path / f"x.{ext}", arr, fmt)))
    assert img.dtype == np.float32
    assert img.shape == ((3 if len(shape) == 3 else 1), 12, 16)
    if fmt != "JPEG":
        np.testing.assert_array_equal(img[0], arr if arr.ndim == 2 else arr[..., 0])


def test_read_16bit_png_keeps_depth(tmp_path):
    arr = np.full((8, 8), 40000, np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    assert read_image(str(path)).max() == 40000


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list_cases(tmp_path / "nope")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no image files"):
        list_cases(tmp_path / "empty")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="no images/ sub-folder"):
        list_cases(tmp_path / "nothing")


def test_image_without_mask_where_masks_are_required(folder):
    write(folder / "images" / "orphan.png", np.zeros((8, 8), np.uint8))
    assert len(list_cases(folder)) == 3  # fine when masks are optional
    with pytest.raises(DataError, match=r"1 image\(s\).*have no mask.*orphan"):
        list_cases(folder, require_masks=True)


def test_duplicate_case_ids_are_refused(folder):
    write(folder / "images" / "a.bmp", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match="two images share case id 'a'"):
        list_cases(folder)


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="cannot read image file .*broken.png"):
        read_image(str(bad))
    with pytest.raises(DataError, match="does not exist"):
        read_image(str(tmp_path / "gone.png"))


def test_masks_binary_multiclass_and_mapped(tmp_path):
    m = np.array([[0, 255], [255, 0]], np.uint8)
    assert read_mask(str(write(tmp_path / "b.png", m)), 2).tolist() == [[0, 1], [1, 0]]
    m3 = np.array([[0, 1], [2, 1]], np.uint8)
    assert read_mask(str(write(tmp_path / "m.png", m3)), 3).tolist() == m3.tolist()
    with pytest.raises(DataError, match=r"holds pixel values \[2\].*mask_values"):
        read_mask(str(write(tmp_path / "m2.png", m3)), 2, (0, 1))
    mapped = np.array([[0, 128], [255, 128]], np.uint8)
    assert read_mask(str(write(tmp_path / "v.png", mapped)), 3, (0, 128, 255)).tolist() == [[0, 1], [2, 1]]
    with pytest.raises(DataError, match=r"values \[7\].*3 classes"):
        read_mask(str(write(tmp_path / "w.png", np.array([[0, 7]], np.uint8))), 3)

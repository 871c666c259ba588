from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from nakt_ray.data.readers import DataError, list_cases, read_image, read_mask, read_pixel_spacing


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


# --- NIfTI and DICOM -------------------------------------------------------------------------------------------

def write_nifti(path, array):
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4)), str(path))
    return path


def write_dicom(path, pixels, photometric="MONOCHROME2", bits_stored=16, slope=None, intercept=None):
    """A minimal valid DICOM file: ``pixels`` is [H, W] or [F, H, W] uint16 (grey) or [H, W, 3] uint8 (RGB)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = np.asarray(pixels)
    rgb = photometric == "RGB"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if rgb else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = photometric
    if rgb:
        ds.PlanarConfiguration = 0
    if pixels.ndim == (4 if rgb else 3):
        ds.NumberOfFrames = pixels.shape[0]
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored if not rgb else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_nifti_2d_image_and_mask_round_trip(tmp_path):
    root = tmp_path / "src"
    image = (np.arange(12 * 7, dtype=np.float32).reshape(12, 7) - 20) * 1.5  # not symmetric: catches a transpose
    mask = np.zeros((12, 7), np.int16)
    mask[2:5, 1:3], mask[8:, 4:] = 1, 2
    write_nifti(root / "images" / "a.nii.gz", image)
    write_nifti(root / "masks" / "a.nii", mask)
    write_nifti(root / "images" / "b.nii", image[..., None])  # (X, Y, 1) is a 2D image
    write(root / "masks" / "b.png", (mask * 100).astype(np.uint8))  # .nii image, .png mask: paired by stem
    cases = list_cases(root, require_masks=True)
    assert [(c.case_id, c.slice_index) for c in cases] == [("a", None), ("b", None)]
    assert cases[0].mask_path.endswith("masks/a.nii") and cases[1].mask_path.endswith("masks/b.png")
    for case in cases:
        img = read_image(case.image_path)
        assert img.shape == (1, 12, 7) and img.dtype == np.float32
        np.testing.assert_array_equal(img[0], image)  # rows = first stored axis, no reorientation
    np.testing.assert_array_equal(read_mask(cases[0].mask_path, 3), mask)
    np.testing.assert_array_equal(read_mask(cases[1].mask_path, 3, (0, 100, 200)), mask)


def test_nifti_volume_expands_into_one_case_per_slice(tmp_path):
    root = tmp_path / "src"
    volume = np.stack([np.full((6, 5), 10.0 * k) + np.arange(5) for k in range(3)], axis=-1)  # (X, Y, Z)
    labels = np.zeros((6, 5, 3), np.uint8)
    for k in range(3):
        labels[k, : k + 1, k] = 1
    write_nifti(root / "images" / "vol.nii.gz", volume)
    write_nifti(root / "masks" / "vol.nii.gz", labels)
    cases = list_cases(root, require_masks=True)
    assert [c.case_id for c in cases] == ["vol#0000", "vol#0001", "vol#0002"]
    for k, case in enumerate(cases):
        assert case.slice_index == k and case.mask_path.endswith("masks/vol.nii.gz")
        np.testing.assert_array_equal(read_image(case.image_path, case.slice_index)[0], volume[:, :, k])
        np.testing.assert_array_equal(read_mask(case.mask_path, 2, slice_index=case.slice_index), labels[:, :, k])
    with pytest.raises(DataError, match=r"vol.nii.gz' is a volume of 3 slices; expected a slice index 0..2"):
        read_image(cases[0].image_path)
    with pytest.raises(DataError, match=r"slice index 3 is out of range .*vol.nii.gz"):
        read_image(cases[0].image_path, 3)
    (root / "masks" / "vol.nii.gz").unlink()
    write(root / "masks" / "vol.png", np.zeros((6, 5), np.uint8))
    with pytest.raises(DataError, match=r"vol.png' has 1 slice\(s\) but its image .*vol.nii.gz' has 3"):
        list_cases(root)


def test_nifti_mask_must_hold_whole_numbers(tmp_path):
    path = write_nifti(tmp_path / "soft.nii", np.array([[0.0, 1.0000001], [0.5, 2.0]], np.float32))
    with pytest.raises(DataError, match=r"soft.nii' holds non-integer values \[0.5\]"):
        read_mask(str(path), 3)


def test_dicom_grey_rescale_and_dicom_mask(tmp_path):
    root = tmp_path / "src"
    stored = (np.arange(4 * 6, dtype=np.uint16).reshape(4, 6) * 100)
    write_dicom(root / "images" / "ct.dcm", stored, slope="2", intercept="-1024")
    write_dicom(root / "masks" / "ct.dicom", (stored > 1000).astype(np.uint16))
    (case,) = list_cases(root, require_masks=True)
    assert (case.case_id, case.slice_index) == ("ct", None)
    np.testing.assert_array_equal(read_image(case.image_path)[0], stored * 2.0 - 1024)
    np.testing.assert_array_equal(read_mask(case.mask_path, 2), stored > 1000)


def test_dicom_monochrome1_is_inverted_and_rgb_kept(tmp_path):
    stored = np.array([[0, 100], [4000, 4095]], np.uint16)
    path = str(write_dicom(tmp_path / "cr.dcm", stored, photometric="MONOCHROME1", bits_stored=12))
    np.testing.assert_array_equal(read_image(path)[0], 4095 - stored)  # within the 12-bit stored range
    assert read_mask(path, 4, (0, 100, 4000, 4095)).tolist() == [[0, 1], [2, 3]]  # masks are not inverted
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    img = read_image(str(write_dicom(tmp_path / "photo.dcm", rgb, photometric="RGB")))
    np.testing.assert_array_equal(img, rgb.transpose(2, 0, 1))


def test_multiframe_dicom_expands_into_one_case_per_frame(tmp_path):
    frames = np.stack([np.full((3, 4), 7 * k, np.uint16) + np.arange(4, dtype=np.uint16) for k in range(3)])
    write_dicom(tmp_path / "src" / "images" / "mf.dcm", frames, slope="1", intercept="-5")
    cases = list_cases(tmp_path / "src")
    assert [(c.case_id, c.slice_index) for c in cases] == [("mf#0000", 0), ("mf#0001", 1), ("mf#0002", 2)]
    for k, case in enumerate(cases):
        np.testing.assert_array_equal(read_image(case.image_path, case.slice_index)[0], frames[k] - 5.0)


@pytest.mark.parametrize("name, content, reason", [
    ("bad.dcm", b"this is not a DICOM file" * 10, "cannot read DICOM file .*bad.dcm.*not a valid DICOM file"),
    ("bad.nii", b"\x00garbage" * 50, "cannot read NIfTI file .*bad.nii"),
    ("bad.nii.gz", b"\x1f\x8b\x08 truncated gzip", "cannot read NIfTI file .*bad.nii.gz"),
])
def test_corrupt_medical_files_name_the_file(tmp_path, name, content, reason):
    bad = tmp_path / "src" / "images" / name
    bad.parent.mkdir(parents=True)
    bad.write_bytes(content)
    (case,) = list_cases(tmp_path / "src")  # listed as one case; the reader reports it when it is decoded
    assert case.case_id == "bad" and case.slice_index is None
    with pytest.raises(DataError, match=reason):
        read_image(case.image_path)


def test_dicom_without_pixel_data_is_refused(tmp_path):
    from pydicom import dcmread

    path = write_dicom(tmp_path / "sr.dcm", np.zeros((2, 2), np.uint16))
    ds = dcmread(path)
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DataError, match=r"sr.dcm' has no pixel data"):
        read_image(str(path))


def test_binary_mask_values_rule(tmp_path):
    """2 classes: 0/1 and 0/255 as stored; {0, 1, 2} refused by name; JPEG noise thresholded at 128 with a warning."""
    three = np.array([[0, 1], [2, 1]], np.uint8)
    path = write(tmp_path / "three.png", three)
    with pytest.raises(DataError, match=r"three.png' holds pixel values \[0, 1, 2\].*0/1 or 0/255.*mask_values"):
        read_mask(str(path), 2)
    with pytest.raises(DataError, match=r"values \[1\] that are not in mask_values"):
        read_mask(str(path), 2, (0, 2))
    assert read_mask(str(write(tmp_path / "ok01.png", three.clip(0, 1))), 2).tolist() == [[0, 1], [1, 1]]
    grey = write(tmp_path / "grey.png", np.array([[0, 128, 255]], np.uint8))
    assert read_mask(str(grey), 3, (0, 128, 255)).tolist() == [[0, 1, 2]]  # fine where the classes say so
    with pytest.raises(DataError, match=r"grey.png' holds pixel values \[0, 128, 255\]"):
        read_mask(str(grey), 2)

    truth = np.zeros((64, 64), np.uint8)
    truth[16:48, 20:44] = 255
    jpeg = write(tmp_path / "noisy.jpg", truth, fmt="JPEG")
    stored = np.asarray(Image.open(jpeg))
    assert not set(np.unique(stored).tolist()) <= {0, 255}  # the JPEG really is noisy
    with pytest.warns(UserWarning, match=r"noisy.jpg' is a JPEG with values other than 0 and 255.*at 128"):
        mask = read_mask(str(jpeg), 2)
    np.testing.assert_array_equal(mask, stored >= 128)
    assert np.mean(mask != (truth > 0)) < 0.01  # noise near 0 stays background (`> 0` made it foreground)


def test_pixel_spacing_from_nifti_and_dicom_headers_and_none_for_png(tmp_path):
    import nibabel as nib
    import pydicom

    nib.save(nib.Nifti1Image(np.zeros((6, 8, 3), np.float32), np.diag([0.7, 0.9, 3.0, 1.0])), tmp_path / "v.nii.gz")
    assert read_pixel_spacing(str(tmp_path / "v.nii.gz"), 1) == pytest.approx((0.7, 0.9))
    write_dicom(tmp_path / "ct.dcm", np.zeros((4, 6), np.uint16))
    assert read_pixel_spacing(str(tmp_path / "ct.dcm")) is None  # no PixelSpacing in the header
    ds = pydicom.dcmread(tmp_path / "ct.dcm")
    ds.PixelSpacing = ["0.5", "0.25"]
    ds.save_as(tmp_path / "ct.dcm")
    assert read_pixel_spacing(str(tmp_path / "ct.dcm")) == (0.5, 0.25)
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "a.png")
    assert read_pixel_spacing(str(tmp_path / "a.png")) is None


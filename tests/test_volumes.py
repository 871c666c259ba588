"""Volumes read and written with their geometry (nakt_ray/data/volumes.py): formats, DICOM series, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nakt_ray.data.volumes import (
    VolumeGeometry,
    check_pair,
    read_label_volume,
    read_volume,
    to_sitk_image,
    write_volume,
)
from nakt_ray.errors import DataError


def rotation(deg_x: float, deg_y: float) -> np.ndarray:
    ax, ay = np.radians(deg_x), np.radians(deg_y)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    return rx @ ry


def oblique_nifti_affine() -> np.ndarray:
    """RAS affine of an anisotropic (0.7 x 0.9 x 3.0 mm along i, j, k), oblique (20 degrees about x and y),
    off-origin volume stored as DICOM converters write it (i towards Left, j Posterior, k Superior)."""
    aff = np.eye(4)
    aff[:3, :3] = rotation(20, 20) @ np.diag([-0.7, -0.9, 3.0])
    aff[:3, 3] = [12.5, -30.25, 41.0]
    return aff


def write_nifti(path: Path, data_ijk: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data_ijk, affine), str(path))
    return path


def write_mhd(path: Path, dims: str, spacing: str, raw: bool = True) -> Path:
    """A MetaImage header (and its raw data unless ``raw`` is False) with the given DimSize / ElementSpacing."""
    path.write_text(f"ObjectType = Image\nNDims = {len(dims.split())}\nDimSize = {dims}\nElementSpacing = {spacing}\n"
                    f"ElementType = MET_FLOAT\nElementDataFile = {path.stem}.raw\n")
    if raw:
        np.zeros(int(np.prod([int(d) for d in dims.split()])), np.float32).tofile(path.with_suffix(".raw"))
    return path


def write_dicom_series(folder: Path, volume: np.ndarray, geometry: VolumeGeometry, series_uid: str,
                       names=None, positions=None) -> list[Path]:
    """One DICOM file per slice of ``volume [D, H, W]`` (int16). ``names`` (file names, default in slice order)
    and ``positions`` (slice index whose position each file gets, default its own) make broken series."""
    folder.mkdir(parents=True, exist_ok=True)
    image = to_sitk_image(volume.astype(np.int16), geometry)
    d = image.GetDirection()
    iop = "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    positions = positions or list(range(volume.shape[0]))
    names = names or [f"slice{k:03d}.dcm" for k in range(len(positions))]
    out = []
    for n, (k, name) in enumerate(zip(positions, names)):
        s = image[:, :, k]
        ipp = image.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in {"0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
                           "0020|000d": "1.2.826.0.1.3680043.8.498.7", "0020|000e": series_uid,
                           "0008|0018": f"{series_uid}.{n + 1}", "0020|0013": str(n + 1),
                           "0020|0032": "\\".join(f"{v:.6f}" for v in ipp), "0020|0037": iop,
                           "0010|0010": "Doe^Jane"}.items():
            s.SetMetaData(tag, value)
        writer.SetFileName(str(folder / name))
        writer.Execute(s)
        out.append(folder / name)
    return out


def smooth_volume(shape=(8, 16, 16)) -> np.ndarray:
    d, h, w = np.mgrid[:shape[0], :shape[1], :shape[2]]
    return (100 * np.sin(d / 3.0) + 10 * h - 5 * w).astype(np.float32)


DICOM_GEOMETRY = VolumeGeometry.create((8, 16, 16), (2.5, 0.8, 0.75), (-20.0, 10.0, 35.0), rotation(10, 0)[:, ::-1])


# ------------------------------------------------------------------------------------------------ geometry, formats


def test_nifti_round_trip_keeps_the_affine_of_an_oblique_anisotropic_volume(tmp_path):
    affine = oblique_nifti_affine()
    data = np.random.default_rng(0).normal(size=(20, 24, 10)).astype(np.float32)   # (i, j, k) = (W, H, D)
    array, geometry = read_volume(write_nifti(tmp_path / "in.nii.gz", data, affine))
    assert array.dtype == np.float32 and array.shape == (10, 24, 20)
    np.testing.assert_array_equal(array, data.transpose(2, 1, 0))                   # [D, H, W] = (k, j, i)
    np.testing.assert_allclose(geometry.spacing, (3.0, 0.9, 0.7), atol=1e-5)         # (d, h, w)
    assert np.allclose(geometry.nifti_affine(), affine, atol=1e-4)
    # RAS (12.5, -30.25, 41) is LPS (-12.5, 30.25, 41)
    np.testing.assert_allclose(geometry.origin, (-12.5, 30.25, 41.0), atol=1e-4)

    out = write_volume(tmp_path / "out" / "pred.nii.gz", (array > 0).astype(np.uint8), geometry)
    written = nib.load(str(out))
    assert written.shape == data.shape
    assert np.allclose(written.affine, affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(written.dataobj), (data > 0).astype(np.uint8))


def test_affine_maps_voxels_where_simpleitk_puts_them():
    g = VolumeGeometry.create((5, 6, 7), (3.0, 0.9, 0.7), (1.0, -2.0, 3.5), rotation(20, 20))
    image = to_sitk_image(np.zeros(g.shape, np.float32), g)
    for dhw in [(0, 0, 0), (4, 5, 6), (2, 1, 3)]:
        expect = image.TransformIndexToPhysicalPoint(tuple(int(i) for i in dhw[::-1]))   # ITK index (i, j, k)
        np.testing.assert_allclose((g.affine() @ np.append(dhw, 1))[:3], expect, atol=1e-9)


def test_geometry_is_json_able():
    g = VolumeGeometry.create((5, 6, 7), (3.0, 0.9, 0.7), (1.0, -2.0, 3.5), rotation(20, 20))
    assert VolumeGeometry.from_dict(json.loads(json.dumps(g.to_dict()))) == g


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz", "v.nrrd", "v.mha", "v.mhd"])
def test_every_format_round_trips_array_and_geometry(tmp_path, name):
    g = VolumeGeometry.create((6, 7, 8), (3.0, 0.9, 0.7), (10.0, -20.0, 30.0), rotation(20, 20))
    array = smooth_volume(g.shape)
    back, g2 = read_volume(write_volume(tmp_path / name, array, g))
    np.testing.assert_allclose(back, array, rtol=0, atol=1e-4)
    np.testing.assert_allclose(g2.affine(), g.affine(), atol=1e-4)
    assert g2.shape == g.shape


def test_dicom_series_is_read_in_position_order_with_its_geometry(tmp_path):
    volume = smooth_volume(DICOM_GEOMETRY.shape)
    # file names in reverse slice order: the reader must sort by position, not by name
    write_dicom_series(tmp_path / "ct", volume, DICOM_GEOMETRY, "1.2.3.4.1",
                       names=[f"f{7 - k}.dcm" for k in range(8)])
    array, geometry = read_volume(tmp_path / "ct")
    np.testing.assert_array_equal(array, volume.astype(np.int16).astype(np.float32))
    np.testing.assert_allclose(geometry.affine(), DICOM_GEOMETRY.affine(), atol=1e-4)


def test_label_volume_is_an_integer_class_map(tmp_path):
    g = VolumeGeometry.create((4, 5, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    labels = (np.arange(120).reshape(g.shape) % 3).astype(np.float32)   # labels stored as float, as some tools do
    array, g2 = read_label_volume(write_volume(tmp_path / "m.nii.gz", labels, g))
    assert array.dtype == np.uint8 and np.array_equal(array, labels.astype(np.uint8)) and g2 == g
    big, _ = read_label_volume(write_volume(tmp_path / "big.nrrd", (labels * 200).astype(np.int32), g))
    assert big.dtype == np.int32 and big.max() == 400


def test_mask_on_the_image_grid_passes_check_pair():
    g = VolumeGeometry.create((4, 5, 6), (3.0, 0.9, 0.7), (1.0, 2.0, 3.0), rotation(20, 20))
    nudged = VolumeGeometry.create(g.shape, g.spacing, np.add(g.origin, 5e-5), g.direction)   # below 1e-4 mm
    check_pair(g, nudged, "img.nii.gz", "mask.nii.gz")


# ------------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("mask_geometry,problem", [
    (VolumeGeometry.create((4, 5, 7), (3.0, 0.9, 0.7), (1.0, 2.0, 3.0)), "shape (4, 5, 7) against (4, 5, 6)"),
    (VolumeGeometry.create((4, 5, 6), (3.0, 0.9, 0.7), (1.0, 2.5, 3.0)), "origin"),
    (VolumeGeometry.create((4, 5, 6), (3.0, 0.9, 0.8), (1.0, 2.0, 3.0)), "spacing"),
    (VolumeGeometry.create((4, 5, 6), (3.0, 0.9, 0.7), (1.0, 2.0, 3.0), rotation(1, 0)), "direction"),
])
def test_mask_off_the_image_grid_is_refused_naming_both_files(mask_geometry, problem):
    image = VolumeGeometry.create((4, 5, 6), (3.0, 0.9, 0.7), (1.0, 2.0, 3.0))
    with pytest.raises(DataError) as err:
        check_pair(image, mask_geometry, "/data/img_01.nii.gz", "/data/img_01_mask.nii.gz")
    msg = str(err.value)
    assert "img_01.nii.gz" in msg and "img_01_mask.nii.gz" in msg and problem in msg and "expected" in msg


def test_a_4d_volume_is_refused(tmp_path):
    path = write_nifti(tmp_path / "fmri.nii.gz", np.zeros((4, 5, 6, 3), np.float32), np.eye(4))
    with pytest.raises(DataError, match=r"fmri\.nii\.gz.*is 4D with size \(4, 5, 6, 3\).*expected a 3D volume"):
        read_volume(path)


def test_a_vector_volume_is_refused(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.float32), isVector=True)
    sitk.WriteImage(image, str(tmp_path / "rgb.mha"))
    with pytest.raises(DataError, match=r"rgb\.mha.*3 values per voxel.*expected one intensity"):
        read_volume(tmp_path / "rgb.mha")


@pytest.mark.parametrize("spacing,problem", [
    ("0 1 1", r"spacing \(1\.0, 1\.0, 0\.0\)"),       # ITK order (x, y, z) in the file, (d, h, w) in the message
    ("1 1 -2", r"spacing \(-2\.0, 1\.0, 1\.0\)"),
    ("1 1 120", r"spacing \(120\.0, 1\.0, 1\.0\)"),
    ("0.001 1 1", r"spacing \(1\.0, 1\.0, 0\.001\)"),
])
def test_bad_spacing_is_refused(tmp_path, spacing, problem):
    path = write_mhd(tmp_path / "bad.mhd", "4 4 4", spacing)
    with pytest.raises(DataError, match=rf"bad\.mhd.*{problem} mm.*expected finite spacings between 0\.01 and 50"):
        read_volume(path)


def test_a_volume_over_max_voxels_is_refused_from_its_header(tmp_path):
    # 4000^3 voxels declared, and no raw file at all: reading the pixels would fail differently.
    path = write_mhd(tmp_path / "huge.mhd", "4000 4000 4000", "1 1 1", raw=False)
    assert not (tmp_path / "huge.raw").exists()
    with pytest.raises(DataError, match=r"huge\.mhd.*declares 64000000000 voxels.*at most max_voxels=268435456 "
                                        r"\(checked from the header"):
        read_volume(path)
    small = write_mhd(tmp_path / "small.mhd", "8 8 8", "1 1 1")
    with pytest.raises(DataError, match="declares 512 voxels"):
        read_volume(small, max_voxels=511)
    assert read_volume(small, max_voxels=512)[0].shape == (8, 8, 8)


def test_dicom_folder_with_two_series_is_refused(tmp_path):
    volume = smooth_volume(DICOM_GEOMETRY.shape)
    write_dicom_series(tmp_path / "mixed", volume, DICOM_GEOMETRY, "1.2.3.4.1")
    write_dicom_series(tmp_path / "mixed", volume, DICOM_GEOMETRY, "1.2.3.4.2", names=[f"b{k}.dcm" for k in range(8)])
    with pytest.raises(DataError, match=r"mixed.*holds 2 DICOM series \(SeriesInstanceUID 1\.2\.3\.4\.1, "
                                        r"1\.2\.3\.4\.2\); expected one series per folder"):
        read_volume(tmp_path / "mixed")


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path):
    files = write_dicom_series(tmp_path / "gap", smooth_volume(DICOM_GEOMETRY.shape), DICOM_GEOMETRY, "1.2.3.4.1")
    files[4].unlink()
    with pytest.raises(DataError, match=r"gap.*is missing slices: a gap of 5 mm between 'slice003\.dcm'.*"
                                        r"'slice005\.dcm'.*step is 2\.5 mm.*expected equally spaced slices"):
        read_volume(tmp_path / "gap")


def test_dicom_series_with_a_duplicated_slice_is_refused(tmp_path):
    positions = [0, 1, 2, 3, 3, 4, 5, 6, 7]           # slice 3's position twice, in two files
    write_dicom_series(tmp_path / "dup", smooth_volume(DICOM_GEOMETRY.shape), DICOM_GEOMETRY, "1.2.3.4.1",
                       positions=positions)
    with pytest.raises(DataError, match=r"dup.*has 1 duplicated slice position\(s\), e.g\. 'slice003\.dcm' and "
                                        r"'slice004\.dcm'.*expected one slice per position"):
        read_volume(tmp_path / "dup")


@pytest.mark.parametrize("name,make,match", [
    ("broken.nii.gz", lambda p: p.write_bytes(b"not a nifti file at all"),
     r"broken\.nii\.gz.*cannot be read: .*expected a readable"),
    ("scan.png", lambda p: p.write_bytes(b"\x89PNG"), r"scan\.png.*got '\.png'; expected a volume file"),
    ("empty", lambda p: p.mkdir(), r"empty'?: is a folder holding no DICOM series"),
    ("absent.nii.gz", lambda p: None, r"absent\.nii\.gz.*does not exist"),
])
def test_unreadable_inputs_name_the_file(tmp_path, name, make, match):
    make(tmp_path / name)
    with pytest.raises(DataError, match=match):
        read_volume(tmp_path / name)


def test_dicom_folder_with_a_single_slice_is_refused(tmp_path):
    write_dicom_series(tmp_path / "one", smooth_volume(DICOM_GEOMETRY.shape), DICOM_GEOMETRY, "1.2.3.4.1",
                       positions=[3])
    with pytest.raises(DataError, match=r"one.*holds a single DICOM file \('slice000\.dcm'\); expected one slice "
                                        r"per file, several slices"):
        read_volume(tmp_path / "one")


def test_raw_file_missing_behind_a_small_header_is_an_unreadable_volume(tmp_path):
    path = write_mhd(tmp_path / "lost.mhd", "4 4 4", "1 1 1", raw=False)
    with pytest.raises(DataError, match=r"lost\.mhd.*has a readable header but its voxels cannot be read"):
        read_volume(path)


@pytest.mark.parametrize("values,match", [
    (np.full((3, 4, 5), 0.5, np.float32), r"non-integral values such as 0\.5"),
    (np.full((3, 4, 5), -1, np.int16), r"negative values \(min -1\)"),
])
def test_label_volume_with_non_class_values_is_refused(tmp_path, values, match):
    path = write_volume(tmp_path / "mask.nii.gz", values, VolumeGeometry.create(values.shape, (1, 1, 1), (0, 0, 0)))
    with pytest.raises(DataError, match=rf"label volume .*mask\.nii\.gz.*{match}"):
        read_label_volume(path)


def test_write_refuses_an_array_off_its_geometry(tmp_path):
    g = VolumeGeometry.create((3, 4, 5), (1, 1, 1), (0, 0, 0))
    with pytest.raises(DataError, match=r"out\.nii\.gz.*shape \(5, 4, 3\).*geometry's shape \(3, 4, 5\)"):
        write_volume(tmp_path / "out.nii.gz", np.zeros((5, 4, 3), np.float32), g)


def test_dicom_reader_parses_no_patient_tag(tmp_path, monkeypatch):
    import pydicom

    write_dicom_series(tmp_path / "ct", smooth_volume(DICOM_GEOMETRY.shape), DICOM_GEOMETRY, "1.2.3.4.1")
    seen = []
    real = pydicom.dcmread

    def spy(*args, **kwargs):
        ds = real(*args, **kwargs)
        seen.append(ds)
        return ds

    monkeypatch.setattr(pydicom, "dcmread", spy)
    read_volume(tmp_path / "ct")
    assert seen and all("PatientName" not in ds for ds in seen)

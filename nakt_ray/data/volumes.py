"""3D volumes read and written with their geometry: NIfTI, NRRD, MetaImage and DICOM series (SimpleITK).

Axis order, declared once for every volume in nakt-ray:

* an array is ``[D, H, W]`` (SimpleITK's numpy order ``z, y, x``: ``array[k, j, i]`` is ITK's voxel ``(i, j, k)``);
  a stack of maps is channel-first, ``[C, D, H, W]``;
* ``spacing`` is ``(d, h, w)`` in mm, in the array's axis order;
* the physical frame is LPS (x towards the patient's Left, y Posterior, z Superior), as in ITK and DICOM; a NIfTI
  file's RAS affine is converted by SimpleITK at the reader and back at the writer, nowhere else;
* ``origin`` is the physical position ``(x, y, z)`` in mm of the centre of voxel ``[0, 0, 0]``;
* ``direction`` is a 3x3 matrix whose column ``a`` is the unit vector (LPS) along which array axis ``a`` (``d``,
  ``h``, ``w``) runs, so ``physical = origin + direction @ (spacing * [d, h, w])``: :meth:`VolumeGeometry.affine`.

The geometry travels with the array as one :class:`VolumeGeometry`; readers return ``(array, geometry)`` and
writers take both. Orientation codes such as ``"RAS"`` name the directions of the axes ``(W, H, D)`` = ITK's
``(x, y, z)``, in the convention of nibabel and SimpleITK's ``DICOMOrient``: the letter says where the axis points.

Bad files raise :class:`~nakt_ray.errors.DataError` naming the file or folder, what was found and what was
expected, before any pixel is read where the header can tell (size, spacing, dimension, DICOM slice positions).
DICOM headers are read for geometry only (positions, orientation, pixel spacing, size): no patient tag is loaded.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from nakt_ray.errors import DataError, error, expected

__all__ = [
    "MAX_VOXELS",
    "VOLUME_EXTENSIONS",
    "VolumeGeometry",
    "check_pair",
    "geometry_from_sitk",
    "grid_difference",
    "read_label_volume",
    "read_volume",
    "to_sitk_image",
    "write_volume",
]

VOLUME_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
# 2**28 voxels: 1 GiB as float32, a 512 x 512 x 1024 CT; preprocessing holds a few copies of it.
MAX_VOXELS = 2**28
SPACING_RANGE_MM = (0.01, 50.0)
# Two grids are the same grid when origins and spacings agree to 1e-4 mm and directions to 1e-5.
GRID_TOLERANCE_MM = 1e-4
DIRECTION_TOLERANCE = 1e-5

Matrix3 = tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]]


@dataclass(frozen=True)
class VolumeGeometry:
    """Where a ``[D, H, W]`` array sits in the patient: see the module docstring for the axis conventions.

    ``shape`` in voxels ``(D, H, W)``; ``spacing`` ``(d, h, w)`` in mm; ``origin`` ``(x, y, z)`` in mm (LPS) of the
    centre of voxel ``[0, 0, 0]``; ``direction`` row-major 3x3, column ``a`` = LPS unit vector of array axis ``a``.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: Matrix3

    @classmethod
    def create(cls, shape: Sequence[int], spacing: Sequence[float], origin: Sequence[float],
               direction: Any = None) -> VolumeGeometry:
        """From plain sequences (``direction``: any 3x3 array-like; identity when None)."""
        d = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
        return cls(tuple(int(s) for s in shape), tuple(float(s) for s in spacing),  # type: ignore[arg-type]
                   tuple(float(o) for o in origin),  # type: ignore[arg-type]
                   tuple(tuple(float(v) for v in row) for row in d))  # type: ignore[arg-type]

    @property
    def direction_matrix(self) -> np.ndarray:
        """``direction`` as a float64 ``(3, 3)`` array."""
        return np.asarray(self.direction, dtype=float)

    def affine(self) -> np.ndarray:
        """The 4x4 matrix mapping a voxel index ``(d, h, w, 1)`` to its physical position ``(x, y, z, 1)`` (mm, LPS)."""
        out = np.eye(4)
        out[:3, :3] = self.direction_matrix * np.asarray(self.spacing)[None, :]
        out[:3, 3] = self.origin
        return out

    def nifti_affine(self) -> np.ndarray:
        """The affine nibabel reports for this volume written as NIfTI: voxel ``(i, j, k)`` = ``(w, h, d)`` to
        RAS mm."""
        swap = np.eye(4)[[2, 1, 0, 3]].T            # (w, h, d, 1) -> (d, h, w, 1)
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine() @ swap   # LPS -> RAS

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers (JSON-able); :meth:`from_dict` reverses it."""
        return {"shape": list(self.shape), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": [list(r) for r in self.direction]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VolumeGeometry:
        return cls.create(data["shape"], data["spacing"], data["origin"], data["direction"])

    @property
    def voxels(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def geometry_from_sitk(size: Sequence[int], spacing: Sequence[float], origin: Sequence[float],
                       direction: Sequence[float]) -> VolumeGeometry:
    """ITK's ``(x, y, z)`` size/spacing and row-major direction (columns = index axes ``i, j, k``) as a geometry."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    return VolumeGeometry.create(tuple(size)[::-1], tuple(spacing)[::-1], origin, d[:, ::-1])


def _geometry_of(image: sitk.Image) -> VolumeGeometry:
    return geometry_from_sitk(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())


def to_sitk_image(array: np.ndarray, geometry: VolumeGeometry) -> sitk.Image:
    """A ``[D, H, W]`` array on ``geometry`` as a SimpleITK image (bool becomes uint8)."""
    if array.dtype == bool:
        array = array.astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=False)
    image.SetSpacing(geometry.spacing[::-1])
    image.SetOrigin(geometry.origin)
    image.SetDirection(tuple(geometry.direction_matrix[:, ::-1].ravel()))
    return image


# ----------------------------------------------------------------------------------------------------------------
# Checks


def _check_geometry(geometry: VolumeGeometry, where: str) -> None:
    spacing = np.asarray(geometry.spacing)
    lo, hi = SPACING_RANGE_MM
    if not np.all(np.isfinite(spacing)) or np.any(spacing < lo) or np.any(spacing > hi):
        raise error(DataError, where, f"has voxel spacing {geometry.spacing} mm (d, h, w); expected finite "
                                      f"spacings between {lo} and {hi} mm: the file's header is wrong")
    d = geometry.direction_matrix
    if not np.all(np.isfinite(d)) or not np.all(np.isfinite(geometry.origin)) \
            or np.abs(d.T @ d - np.eye(3)).max() > 1e-3:
        raise error(DataError, where, f"has origin {geometry.origin} and direction {geometry.direction}; expected "
                                      "a finite origin and orthonormal direction cosines")


def _check_size(geometry: VolumeGeometry, max_voxels: int, where: str) -> None:
    if geometry.voxels > max_voxels:
        raise error(DataError, where, f"declares {geometry.voxels} voxels (shape {geometry.shape}, D x H x W); "
                                      f"expected at most max_voxels={max_voxels} (checked from the header, nothing "
                                      "was read): crop or downsample it, or raise max_voxels")


def grid_difference(a: VolumeGeometry, b: VolumeGeometry) -> str | None:
    """How grid ``b`` differs from grid ``a`` in words (shape, spacing, origin, direction), or None if they match
    (origin and spacing within 1e-4 mm, direction within 1e-5)."""
    if a.shape != b.shape:
        return f"shape {b.shape} against {a.shape} (D, H, W)"
    if not np.allclose(a.spacing, b.spacing, rtol=0, atol=GRID_TOLERANCE_MM):
        return f"spacing {b.spacing} mm against {a.spacing} mm (d, h, w)"
    if not np.allclose(a.origin, b.origin, rtol=0, atol=GRID_TOLERANCE_MM):
        return f"origin {b.origin} mm against {a.origin} mm (x, y, z, LPS)"
    if not np.allclose(a.direction_matrix, b.direction_matrix, rtol=0, atol=DIRECTION_TOLERANCE):
        return f"direction {b.direction} against {a.direction}"
    return None


def check_pair(image_geometry: VolumeGeometry, mask_geometry: VolumeGeometry, image_path: str | Path,
               mask_path: str | Path) -> None:
    """Raise DataError naming both files unless the mask lies on the image's grid (same shape and affine)."""
    diff = grid_difference(image_geometry, mask_geometry)
    if diff is not None:
        raise error(DataError, f"mask volume {str(mask_path)!r}",
                    f"has {diff} of image volume {str(image_path)!r}; expected the mask on the image's grid "
                    "(same shape, spacing, origin and direction): resample the mask onto the image")


# ----------------------------------------------------------------------------------------------------------------
# Reading


def _extension(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _reason(err: Exception) -> str:
    """SimpleITK's message without its source-file preamble: the last non-empty line."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def _read_file(path: Path, max_voxels: int, pixel_type: int) -> sitk.Image:
    where = f"volume {str(path)!r}"
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()  # the header only: size, spacing, origin, direction, pixel type
    except RuntimeError as err:
        raise error(DataError, where, f"cannot be read: {_reason(err)}; expected a readable "
                                      f"{'/'.join(VOLUME_EXTENSIONS)} file") from None
    size = reader.GetSize()
    if reader.GetNumberOfComponents() != 1:
        raise error(DataError, where, f"holds {reader.GetNumberOfComponents()} values per voxel (a vector or "
                                      "colour image); expected one intensity per voxel")
    if len(size) != 3:
        raise error(DataError, where, f"is {len(size)}D with size {tuple(size)} (x, y, z[, t]); expected a 3D "
                                      "volume: split a 4D series into one file per time point or channel")
    geometry = geometry_from_sitk(size, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
    _check_geometry(geometry, where)
    _check_size(geometry, max_voxels, where)
    reader.SetOutputPixelType(pixel_type)
    try:
        return reader.Execute()
    except RuntimeError as err:
        raise error(DataError, where, f"has a readable header but its voxels cannot be read: {_reason(err)}") \
            from None


# Only these DICOM attributes are parsed: geometry, never the patient.
_DICOM_GEOMETRY_TAGS = ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns",
                        "NumberOfFrames"]


def _dicom_geometry_tags(file: str, where: str) -> dict[str, Any]:
    import pydicom

    try:
        ds = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=_DICOM_GEOMETRY_TAGS)
    except Exception as err:  # pydicom raises many types for broken files
        raise error(DataError, where, f"has a DICOM file {Path(file).name!r} that cannot be read: "
                                      f"{type(err).__name__}: {err}") from None
    out = {k: ds.get(k) for k in _DICOM_GEOMETRY_TAGS}
    for key in ("ImagePositionPatient", "ImageOrientationPatient"):
        if out[key] is None or len(out[key]) != (3 if key == "ImagePositionPatient" else 6):
            raise error(DataError, where, f"has a slice {Path(file).name!r} without a valid {key}; expected the "
                                          "slices of a 3D series (each with its position and orientation)")
    if out["NumberOfFrames"] is not None and int(out["NumberOfFrames"]) > 1:
        raise error(DataError, where, f"has a multi-frame file {Path(file).name!r} "
                                      f"({int(out['NumberOfFrames'])} frames); expected one slice per file: convert "
                                      "a multi-frame DICOM to NIfTI first (e.g. dcm2niix)")
    return out


def _order_slices(files: Sequence[str], where: str) -> tuple[list[str], dict[str, Any], float]:
    """The series' files sorted along the slice normal, the first one's geometry tags and the median step (mm);
    DataError on a duplicated position, a missing slice (a gap > 1.5 x the median step) or slices of different
    orientations."""
    tags = [_dicom_geometry_tags(f, where) for f in files]
    iop = np.asarray([[float(v) for v in t["ImageOrientationPatient"]] for t in tags])
    if np.abs(iop - iop[0]).max() > 1e-4:
        raise error(DataError, where, "has slices of different orientations (ImageOrientationPatient); expected "
                                      "one orientation for the whole series")
    normal = np.cross(iop[0, :3], iop[0, 3:])
    position = np.asarray([[float(v) for v in t["ImagePositionPatient"]] for t in tags]) @ normal
    order = np.argsort(position, kind="stable")
    ordered = [files[i] for i in order]
    pos = position[order]
    steps = np.diff(pos)
    dup = np.flatnonzero(steps < 1e-3)
    if dup.size:
        i = int(dup[0])
        raise error(DataError, where, f"has {dup.size} duplicated slice position(s), e.g."
                                      f" {Path(ordered[i]).name!r} and {Path(ordered[i + 1]).name!r} "
                                      f"both at {pos[i]:.4g} mm along the slice normal; expected one slice per "
                                      "position: remove the copies")
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > 1.5 * median)
    if gaps.size:
        i = int(gaps[0])
        raise error(DataError, where, f"is missing slices: a gap of {steps[i]:.4g} mm between "
                                      f"{Path(ordered[i]).name!r} ({pos[i]:.4g} mm) and "
                                      f"{Path(ordered[i + 1]).name!r} ({pos[i + 1]:.4g} mm) along the slice normal, "
                                      f"where the series' step is {median:.4g} mm ({gaps.size} gap(s)); expected "
                                      "equally spaced slices with none missing")
    return ordered, tags[int(order[0])], median


def _read_dicom_series(folder: Path, max_voxels: int, pixel_type: int) -> sitk.Image:
    where = f"volume {str(folder)!r}"
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise error(DataError, where, "is a folder holding no DICOM series; expected a folder holding the slices "
                                      f"of one DICOM series, or a {'/'.join(VOLUME_EXTENSIONS)} file")
    if len(ids) > 1:
        raise error(DataError, where, f"holds {len(ids)} DICOM series (SeriesInstanceUID "
                                      f"{', '.join(sorted(ids))}); expected one series per folder: move each "
                                      "series into a folder of its own")
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]))
    if len(files) == 1:
        # Enhanced multi-frame DICOM keeps its geometry per frame; reading it is left to a converter for now.
        raise error(DataError, where, f"holds a single DICOM file ({Path(files[0]).name!r}); expected one slice "
                                      "per file, several slices: convert a multi-frame DICOM to NIfTI first "
                                      "(e.g. dcm2niix)")
    # The geometry a series will have, from the slices' headers, before any pixel is read.
    files, first, step = _order_slices(files, where)
    rows, cols = int(first["Rows"] or 0), int(first["Columns"] or 0)
    pixel = [float(v) for v in first["PixelSpacing"]] if first["PixelSpacing"] is not None else [1.0, 1.0]
    iop = np.asarray([float(v) for v in first["ImageOrientationPatient"]])
    direction = np.stack([np.cross(iop[:3], iop[3:]), iop[3:], iop[:3]], axis=1)   # columns: d, h, w
    header = VolumeGeometry.create((len(files), rows, cols), (step, pixel[0], pixel[1]),
                                   [float(v) for v in first["ImagePositionPatient"]], direction)
    _check_geometry(header, where)
    _check_size(header, max_voxels, where)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.SetOutputPixelType(pixel_type)
    try:
        return reader.Execute()
    except RuntimeError as err:
        raise error(DataError, where, f"holds a DICOM series whose voxels cannot be read: {_reason(err)}") from None


def _read(path: str | Path, max_voxels: int, pixel_type: int) -> tuple[np.ndarray, VolumeGeometry]:
    path = Path(path)
    where = f"volume {str(path)!r}"
    if path.is_dir():
        image = _read_dicom_series(path, max_voxels, pixel_type)
    elif not path.exists():
        raise error(DataError, where, f"does not exist; expected a {'/'.join(VOLUME_EXTENSIONS)} file or a folder "
                                      "holding one DICOM series")
    elif _extension(path) not in VOLUME_EXTENSIONS:
        raise error(DataError, where, expected(_extension(path) or path.name, f"a volume file "
                                               f"({', '.join(VOLUME_EXTENSIONS)}) or a folder of one DICOM series"))
    else:
        image = _read_file(path, max_voxels, pixel_type)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise error(DataError, where, f"reads as a {image.GetDimension()}D image of size {image.GetSize()} with "
                                      f"{image.GetNumberOfComponentsPerPixel()} value(s) per voxel; expected a 3D "
                                      "volume with one intensity per voxel")
    geometry = _geometry_of(image)
    _check_geometry(geometry, where)   # again after reading: a DICOM series' spacing comes from its positions
    _check_size(geometry, max_voxels, where)
    return sitk.GetArrayFromImage(image), geometry


def read_volume(path: str | Path, max_voxels: int = MAX_VOXELS) -> tuple[np.ndarray, VolumeGeometry]:
    """An image volume as ``(array [D, H, W] float32, geometry)``.

    ``path``: a ``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha`` or ``.mhd`` file, or a folder holding the slices of one
    DICOM series, one slice per file (ordered by position along the slice normal; rescale slope and intercept
    applied; a multi-frame file is refused: convert it to NIfTI). Raises DataError for an unreadable file, a 4D
    or vector volume, a spacing outside 0.01-50 mm, more than ``max_voxels`` voxels (refused from the header),
    and a DICOM folder with several series, a missing or a duplicated slice.
    """
    array, geometry = _read(path, max_voxels, sitk.sitkFloat32)
    return array.astype(np.float32, copy=False), geometry


def read_label_volume(path: str | Path, max_voxels: int = MAX_VOXELS) -> tuple[np.ndarray, VolumeGeometry]:
    """A label map as ``(array [D, H, W], geometry)``: uint8 when every value fits, else int32; class indices
    as stored. Same checks as :func:`read_volume`, plus: every value an integer >= 0."""
    where = f"label volume {str(path)!r}"
    array, geometry = _read(path, max_voxels, sitk.sitkUnknown)   # the stored type: no cast to float
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            bad = array[~np.isfinite(array) | (array != np.round(array))]
            raise error(DataError, where, f"holds non-integral values such as {float(bad.flat[0])!r}; expected "
                                          "integer class indices (a label map, not probabilities or an image)")
    elif array.dtype.kind not in "iu":
        raise error(DataError, where, expected(str(array.dtype), "integer class indices"))
    if array.size and array.min() < 0:
        raise error(DataError, where, f"holds negative values (min {array.min()}); expected class indices >= 0")
    top = int(array.max()) if array.size else 0
    return array.astype(np.uint8 if top <= 255 else np.int32), geometry


# ----------------------------------------------------------------------------------------------------------------
# Writing


def write_volume(path: str | Path, array: np.ndarray, geometry: VolumeGeometry) -> Path:
    """Write ``array [D, H, W]`` on ``geometry`` as NIfTI (``.nii.gz``, ``.nii``) or any format SimpleITK writes
    (``.nrrd``, ``.mha``, ...), in the array's dtype (bool as uint8); parent folders are created. A geometry read
    from a NIfTI file gives back that file's affine. Returns the path."""
    path = Path(path)
    where = f"volume {str(path)!r}"
    if array.ndim != 3 or tuple(array.shape) != geometry.shape:
        raise error(DataError, where, f"cannot be written from an array of shape {tuple(array.shape)}; expected "
                                      f"the geometry's shape {geometry.shape} (D, H, W)")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        sitk.WriteImage(to_sitk_image(array, geometry), str(path), useCompression=True)
    except RuntimeError as err:
        raise error(DataError, where, f"cannot be written: {_reason(err)}") from None
    return path

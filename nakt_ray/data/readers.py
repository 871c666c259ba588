"""Folder sources: find cases, read images and masks, with errors that name the file.

A folder source is ``<root>/images/`` with an optional ``<root>/masks/``; a mask belongs to the image whose file
stem (plus ``mask_suffix``) it shares, whatever its extension. A folder without ``images/`` that holds image files
itself is read as images without masks. Sub-folders of ``images/`` are searched too.

Every case gets a stable ``case_id``: the image path relative to ``images/`` without its extension, with ``/``
between folders (``000_HC``, ``site_a/0003``). It depends only on the file's place in the source, so it is the
same in every run and on every machine. Multi-part extensions are stripped whole: the stem of ``a.nii.gz`` is
``a``, so ``images/a.nii.gz`` pairs with ``masks/a.nii.gz`` or ``masks/a.png``.

Formats: PNG, JPEG, TIFF and BMP (Pillow, tifffile for TIFFs Pillow cannot decode), DICOM (``.dcm``,
``.dicom``; pydicom) and NIfTI (``.nii``, ``.nii.gz``; nibabel).

Volumes. nakt-ray is 2D, so a volume (a NIfTI file with a third axis longer than 1, a DICOM file with
``NumberOfFrames`` > 1) becomes one case per slice, with ``case_id`` ``<stem>#<slice:04d>`` (``case01#0012``) and
``Case.slice_index`` set; its mask must be a volume with the same number of slices, read at the same index. A file
with a single slice (NIfTI ``(X, Y)`` or ``(X, Y, 1)``, single-frame DICOM) is a plain 2D case with
``slice_index=None``. ``list_cases`` reads only headers to count slices; a file whose header cannot be read is
listed as one 2D case, so the reader reports it by name when the case is decoded and the run goes on.
A series stored as one DICOM file per slice is simply a folder of 2D cases.

Orientation. Arrays are returned as stored, with no reorientation to RAS or any other frame, and the first
stored axis is the image rows: a NIfTI array ``(x, y[, z])`` gives slice ``k`` as ``data[:, :, k]`` with rows =
x and columns = y (so ``nib.Nifti1Image(a, np.eye(4))`` of an ``(H, W)`` array ``a`` reads back as ``a``); a
DICOM frame is ``(Rows, Columns)`` and frame ``k`` is the ``k``-th frame in file order (frames are not sorted by
position). Images and their masks go through the same rule, so they always line up; a NIfTI volume may look
transposed next to a viewer's radiological display.

DICOM values. Grey images get ``RescaleSlope``/``RescaleIntercept`` applied (top level, else the frame's or the
shared functional group of an enhanced multi-frame file), so CT reads in Hounsfield units. ``MONOCHROME1``
images are inverted to the ``MONOCHROME2`` convention (high value = bright) within the stored value range given by
``BitsStored``/``PixelRepresentation`` (a header range, not the image's own min/max, so every file of a series
is inverted the same way). RGB (``SamplesPerPixel`` 3; YBR is converted to RGB by pydicom) is read as colour.
Masks are label maps: rescale is applied but ``MONOCHROME1`` is not inverted (it is a display convention, and
inverting would change class indices). DICOM SEG objects are not interpreted: their frames would be read as
slices; convert them to label-map NIfTI or PNG first.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nakt_ray.errors import DataError  # re-exported: callers import DataError from here too

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom", ".nii", ".nii.gz")
_DICOM_EXTENSIONS = (".dcm", ".dicom")
_NIFTI_EXTENSIONS = (".nii", ".nii.gz")
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# The only DICOM attributes read: what decoding pixels and their values needs. Patient and study attributes
# (PatientName, PatientID, ...) are never loaded, so no patient identifier can reach an output or a log.
_DICOM_TAGS = ("SOPClassUID", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
               "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames",
               "RescaleSlope", "RescaleIntercept", "PerFrameFunctionalGroupsSequence",
               "SharedFunctionalGroupsSequence", "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
               *_PIXEL_DATA_KEYWORDS)
_DICOM_SPACING_TAGS = ("PixelSpacing", "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")


@dataclass(frozen=True)
class Case:
    """One image (and its mask, if any) of a folder source.

    ``slice_index`` is the slice (NIfTI third axis) or frame (multi-frame DICOM) of a volume that this case is,
    read from both ``image_path`` and ``mask_path``; ``None`` for a 2D file. ``original_id`` is set when
    ``case_id`` is a pseudonym (``privacy.pseudonymize``): what leaves the input then names the case by its
    pseudonym only.
    """

    case_id: str
    image_path: str
    mask_path: str | None = None
    slice_index: int | None = None
    original_id: str | None = None


def _extension(path: str | Path) -> str | None:
    """The entry of ``IMAGE_EXTENSIONS`` that ``path`` ends with (lower case; ``.nii.gz`` whole), else None.

    ``Path.suffix`` of ``a.nii.gz`` is ``.gz``, hence matching the name's end, longest extension first.
    """
    name = Path(path).name.lower()
    for ext in sorted(IMAGE_EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext) and len(name) > len(ext):  # a bare ".png" is a hidden file, not an image
            return ext
    return None


def _without_extension(relative: Path) -> str:
    """``relative`` as a posix path without its image extension (``site/a.nii.gz`` -> ``site/a``)."""
    text, ext = relative.as_posix(), _extension(relative)
    return text[: len(text) - len(ext)] if ext else text


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and _extension(p) is not None)


def _slice_count(path: Path) -> int | None:
    """How many 2D slices ``path`` holds, from its header only; None when the header cannot be read.

    Unreadable files are left for the reader, which names them when the case is decoded.
    """
    ext = _extension(path)
    try:
        if ext in _NIFTI_EXTENSIONS:
            shape = _nifti_shape(_nibabel().load(str(path)).shape, str(path))
            return shape[2] if len(shape) == 3 else 1
        if ext in _DICOM_EXTENSIONS:
            return _dicom_frames(_pydicom().dcmread(str(path), stop_before_pixels=True,
                                                    specific_tags=["NumberOfFrames"]))
    except Exception:  # noqa: BLE001 - reported by the reader, per case, with the reason
        return None
    return 1


def list_cases(root: str | Path, require_masks: bool = False, mask_suffix: str = "") -> list[Case]:
    """List the cases of a folder source, sorted by ``case_id``; a volume gives one case per slice.

    Args:
        root: the source folder (holding ``images/`` and optionally ``masks/``).
        require_masks: raise if ``masks/`` is missing or any image has no mask.
        mask_suffix: appended to an image's stem to find its mask (``"_Annotation"`` for ``x.png`` ->
            ``masks/x_Annotation.png``).

    Raises:
        DataError: missing or empty folder, duplicate case ids, missing masks where they are required, a mask
            whose slice count differs from its image's.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise DataError(f"data source {str(root)!r} is not a folder (expected a folder with images/ and masks/)")
    images_dir = root / "images"
    if not images_dir.is_dir():
        if any(_extension(p) is not None for p in root.iterdir() if p.is_file()):
            images_dir = root  # a bare folder of images
        else:
            raise DataError(f"data folder {str(root)!r} has no images/ sub-folder and no image files "
                            f"({', '.join(IMAGE_EXTENSIONS)})")
    files = _image_files(images_dir)
    if not files:
        raise DataError(f"data folder {str(images_dir)!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")

    masks_dir = root / "masks"
    masks: dict[str, Path] = {}
    if masks_dir.is_dir() and images_dir != root:
        for p in _image_files(masks_dir):
            masks[_without_extension(p.relative_to(masks_dir))] = p
    elif require_masks:
        raise DataError(f"data folder {str(root)!r} has no masks/ sub-folder, but masks are required here")

    cases: dict[str, Case] = {}
    missing: list[str] = []
    for p in files:
        stem = _without_extension(p.relative_to(images_dir))
        mask = masks.get(stem + mask_suffix)
        if mask is None and require_masks:
            missing.append(stem)
        n_slices = _slice_count(p)
        if mask is not None and n_slices is not None:
            n_mask = _slice_count(mask)
            if n_mask is not None and n_mask != n_slices:
                raise DataError(f"mask {str(mask)!r} has {n_mask} slice(s) but its image {str(p)!r} has {n_slices}; "
                                "expected a mask with the same number of slices as its image")
        if n_slices is not None and n_slices > 1:
            entries = [(f"{stem}#{k:04d}", k) for k in range(n_slices)]
        else:
            entries = [(stem, None)]
        for case_id, slice_index in entries:
            if case_id in cases:
                raise DataError(f"two images share case id {case_id!r}: {cases[case_id].image_path} and {p}; "
                                "rename one (case ids are file paths without their extension, plus #<slice> for "
                                "the slices of a volume)")
            cases[case_id] = Case(case_id, str(p), str(mask) if mask else None, slice_index)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"{len(missing)} image(s) in {str(images_dir)!r} have no mask in {str(masks_dir)!r} "
                        f"(looked for <stem>{mask_suffix}.<ext>): {shown}")
    return list(cases.values())


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError:  # an optional format: say how to get it instead of failing on import
        raise DataError("reading DICOM files needs pydicom; install it (pip install pydicom)") from None
    return pydicom


def _nibabel() -> Any:
    try:
        import nibabel
    except ImportError:
        raise DataError("reading NIfTI files needs nibabel; install it (pip install nibabel)") from None
    return nibabel


def _check_slice(path: str, n_slices: int, slice_index: int | None) -> int | None:
    """Validate ``slice_index`` against a file of ``n_slices`` slices; returns it as a plain int (or None)."""
    if slice_index is not None:
        try:
            slice_index = operator.index(slice_index)  # numpy integers from Ray batches are fine
        except TypeError:
            raise DataError(f"slice index {slice_index!r} for image file {path!r} is not an integer") from None
    if n_slices == 1:
        if slice_index is not None:
            raise DataError(f"image file {path!r} is a 2D image, but slice {slice_index} was asked for; expected "
                            "no slice index")
    elif slice_index is None:
        raise DataError(f"image file {path!r} is a volume of {n_slices} slices; expected a slice index "
                        f"0..{n_slices - 1} (list_cases gives one case per slice)")
    elif not 0 <= slice_index < n_slices:
        raise DataError(f"slice index {slice_index} is out of range for image file {path!r}, which has {n_slices} "
                        f"slices (0..{n_slices - 1})")
    return slice_index


def _nifti_shape(shape: tuple[int, ...], path: str) -> tuple[int, ...]:
    """The NIfTI shape as ``(X, Y)`` (2D) or ``(X, Y, Z)`` (volume, Z > 1), dropping trailing length-1 axes."""
    dims = tuple(shape)
    while len(dims) > 2 and dims[-1] == 1:
        dims = dims[:-1]
    if len(dims) not in (2, 3) or 0 in dims:
        raise DataError(f"NIfTI file {path!r} has shape {tuple(shape)}; expected a 2D image (X, Y) or (X, Y, 1), "
                        "or a 3D volume (X, Y, Z)")
    return dims


def _read_nifti(path: str, slice_index: int | None) -> np.ndarray:
    """Slice ``slice_index`` (or the 2D image) of a NIfTI file as stored: ``[X, Y]`` = ``[H, W]``, scaling applied."""
    try:
        img = _nibabel().load(path)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for a bad file; all mean the same here
        raise DataError(f"cannot read NIfTI file {path!r}: {type(err).__name__}: {err}; expected a .nii or "
                        ".nii.gz image") from None
    shape = _nifti_shape(img.shape, path)
    slice_index = _check_slice(path, shape[2] if len(shape) == 3 else 1, slice_index)
    try:
        if slice_index is None:
            arr = np.asarray(img.dataobj).reshape(shape)
        else:  # read one slice through the proxy, not the whole volume
            arr = np.asarray(img.dataobj[(slice(None), slice(None), slice_index) + (0,) * (len(img.shape) - 3)])
    except Exception as err:  # noqa: BLE001 - truncated or corrupt data block
        raise DataError(f"cannot read the data of NIfTI file {path!r}: {type(err).__name__}: {err}") from None
    if arr.dtype.names:  # RGB24 / RGBA32 NIfTI: a structured array of named channels
        arr = np.stack([arr[name] for name in arr.dtype.names], axis=-1)
    if arr.dtype.kind not in "biuf":
        raise DataError(f"NIfTI file {path!r} holds {arr.dtype} data; expected integer or real intensities")
    return arr


def _dicom_frames(ds: Any) -> int:
    value = ds.get("NumberOfFrames")
    return int(value) if value not in (None, "") else 1


def _dicom_rescale(ds: Any, frame: int) -> tuple[float, float]:
    """``(slope, intercept)``: top level, else the frame's or the shared Pixel Value Transformation (enhanced MF)."""
    item = ds
    if "RescaleSlope" not in ds and "RescaleIntercept" not in ds:
        for keyword, i in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
            groups = ds.get(keyword)
            transform = groups[i].get("PixelValueTransformationSequence") if groups and len(groups) > i else None
            if transform:
                item = transform[0]
                break
    slope, intercept = item.get("RescaleSlope"), item.get("RescaleIntercept")
    return (1.0 if slope in (None, "") else float(slope)), (0.0 if intercept in (None, "") else float(intercept))


def _invert_monochrome1(arr: np.ndarray, ds: Any, path: str) -> np.ndarray:
    """Map MONOCHROME1 stored values to MONOCHROME2 within the header's value range (same for every file)."""
    if arr.dtype.kind not in "iu":
        raise DataError(f"DICOM file {path!r} is MONOCHROME1 with {arr.dtype} pixel data; expected integer pixel "
                        "data (float pixel data is MONOCHROME2 by the standard)")
    bits = int(ds.get("BitsStored") or arr.dtype.itemsize * 8)
    if int(ds.get("PixelRepresentation") or 0) == 1:
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        low, high = 0, 2**bits - 1
    return low + high - arr.astype(np.int64)


def _read_dicom(path: str, slice_index: int | None, invert_monochrome1: bool) -> np.ndarray:
    """Frame ``slice_index`` (or the only frame) of a DICOM file: ``[Rows, Columns]`` or ``[Rows, Columns, 3]``."""
    pydicom = _pydicom()
    try:
        # Defer large values (the pixel data) so a multi-frame file is not read whole for each of its slices.
        ds = pydicom.dcmread(path, defer_size="256 KB", specific_tags=list(_DICOM_TAGS))
    except Exception as err:  # noqa: BLE001 - InvalidDicomError, EOFError, OSError...: all mean "not DICOM"
        raise DataError(f"cannot read DICOM file {path!r}: not a valid DICOM file ({type(err).__name__}: {err}); "
                        "expected a DICOM Part 10 file with a 'DICM' header") from None
    if not any(keyword in ds for keyword in _PIXEL_DATA_KEYWORDS):
        raise DataError(f"DICOM file {path!r} has no pixel data (no PixelData element, SOP class "
                        f"{ds.get('SOPClassUID', 'unknown')}); expected an image")
    n_frames = _dicom_frames(ds)
    slice_index = _check_slice(path, n_frames, slice_index)
    try:
        if slice_index is None:
            arr = ds.pixel_array
        else:  # decode only this frame, reading it from the file
            from pydicom.pixels import pixel_array

            arr = pixel_array(path, index=slice_index)
    except Exception as err:  # noqa: BLE001 - missing decoder, truncated data, inconsistent header...
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        syntax_name = getattr(syntax, "name", syntax) or "unknown"
        raise DataError(f"cannot decode the pixel data of DICOM file {path!r} (transfer syntax {syntax_name}): "
                        f"{type(err).__name__}: {err}") from None
    if int(ds.get("SamplesPerPixel") or 1) == 1:  # rescale and MONOCHROME1 only mean something for grey data
        if invert_monochrome1 and str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
            arr = _invert_monochrome1(arr, ds, path)
        slope, intercept = _dicom_rescale(ds, slice_index or 0)
        if (slope, intercept) != (1.0, 0.0):
            arr = arr.astype(np.float64) * slope + intercept
    return arr


def _integral_labels(arr: np.ndarray, path: str) -> np.ndarray:
    """Round real-valued label data (NIfTI / rescaled DICOM stores labels as floats) and refuse fractions."""
    if arr.dtype.kind != "f":
        return arr
    if not np.isfinite(arr).all():
        raise DataError(f"mask file {path!r} holds NaN or infinite values; expected integer class labels")
    rounded = np.rint(arr)
    off = np.abs(arr - rounded) > 1e-3
    if off.any():
        bad = np.unique(arr[off])[:5].tolist()
        raise DataError(f"mask file {path!r} holds non-integer values {bad}; expected integer class labels "
                        "(was the mask resampled with interpolation?)")
    return rounded.astype(np.int64)


def _read_array(path: str, slice_index: int | None = None, invert_monochrome1: bool = True) -> np.ndarray:
    """Decode an image file (or one slice of a volume) into ``[H, W]`` or ``[H, W, C]``, keeping its bit depth."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"image file {path!r} does not exist")
    ext = _extension(p)
    if ext in _NIFTI_EXTENSIONS:
        arr = _read_nifti(path, slice_index)
    elif ext in _DICOM_EXTENSIONS:
        arr = _read_dicom(path, slice_index, invert_monochrome1)
    else:
        _check_slice(path, 1, slice_index)
        arr = _read_pillow(p, path)
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise DataError(f"image file {path!r} has shape {arr.shape}; expected a 2D image (H, W) or (H, W, C)")
    return arr


def _read_pillow(p: Path, path: str) -> np.ndarray:
    """PNG / JPEG / TIFF / BMP as ``[H, W]`` or ``[H, W, C]``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            im.load()
            if im.mode == "P":
                im = im.convert("RGB")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if p.suffix.lower() in (".tif", ".tiff"):
            try:  # multi-channel or float TIFFs that Pillow cannot decode
                import tifffile

                arr = tifffile.imread(p)
            except Exception as err2:  # noqa: BLE001 - report both decoders' reasons
                raise DataError(f"cannot read image file {path!r}: {err}; tifffile: {err2}") from None
        else:
            raise DataError(f"cannot read image file {path!r}: {err}") from None
    return arr


def read_image(path: str, slice_index: int | None = None) -> np.ndarray:
    """Read an image (or slice ``slice_index`` of a volume) as float32 ``[C, H, W]``, C = 1 (grey) or 3 (colour).

    Intensities are as stored (not scaled), except DICOM grey data, which gets its rescale (e.g. to Hounsfield
    units) and MONOCHROME1 inversion (see the module docstring). An alpha channel is dropped; 2-channel
    (grey + alpha) images become grey. ``slice_index`` must be given for a volume and left out for a 2D file.
    """
    arr = _read_array(path, slice_index)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        if arr.shape[-1] > 4 and arr.shape[0] <= 4:  # channel-first TIFF
            arr = np.moveaxis(arr, 0, -1)
        channels = arr.shape[-1]
        if channels in (2, 4):
            arr = arr[..., : channels - 1]
        elif channels not in (1, 3):
            raise DataError(f"image file {path!r} has {channels} channels; expected 1 (grey) or 3 (RGB), "
                            "optionally with alpha")
        arr = np.moveaxis(arr, -1, 0)
    return np.ascontiguousarray(arr, dtype=np.float32)


def read_mask(path: str, num_classes: int, mask_values: tuple[int, ...] | None = None,
              slice_index: int | None = None) -> np.ndarray:
    """Read a mask (or slice ``slice_index`` of a mask volume) as uint8 class indices ``[H, W]``.

    NIfTI and DICOM labels stored as real numbers are rounded; a value that is not a whole number is an error.

    With ``mask_values`` each listed pixel value maps to its class; any other value is an error. Without it, a
    multi-class task expects the class index in each pixel, and a binary task (2 classes) takes masks whose
    values are 0/1 or 0/255 (see :func:`_binary_mask` for JPEG noise; any other value is an error).
    """
    arr = _read_array(path, slice_index, invert_monochrome1=False)
    if _extension(path) in _NIFTI_EXTENSIONS + _DICOM_EXTENSIONS:
        arr = _integral_labels(arr, path)
    if arr.ndim == 3:
        if arr.shape[-1] in (2, 4):
            arr = arr[..., :-1]
        if not all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, arr.shape[-1])):
            raise DataError(f"mask file {path!r} is a colour image with differing channels; expected a "
                            "single-channel label map")
        arr = arr[..., 0]
    if mask_values is not None:
        out = np.full(arr.shape, 255, dtype=np.uint8)
        for cls, value in enumerate(mask_values):
            out[arr == value] = cls
        if (out == 255).any():
            bad = np.unique(arr[out == 255])[:10].tolist()
            raise DataError(f"mask file {path!r} holds pixel values {bad} that are not in mask_values "
                            f"{list(mask_values)}")
        return out
    if num_classes == 2:
        return _binary_mask(arr, path)
    if arr.max() >= num_classes or arr.min() < 0:
        bad = np.unique(arr[(arr >= num_classes) | (arr < 0)])[:10].tolist()
        raise DataError(f"mask file {path!r} holds pixel values {bad}, but there are {num_classes} classes "
                        f"(values 0..{num_classes - 1}); set data.mask_values to map pixel values to classes")
    return arr.astype(np.uint8)


# Binary masks saved as JPEG: lossy compression leaves values near 0 and 255 (and ramps at edges), never exact ones.
_LOSSY_EXTENSIONS = (".jpg", ".jpeg")


def _binary_mask(arr: np.ndarray, path: str) -> np.ndarray:
    """A 2-class mask without ``mask_values`` as class indices, by the rule of README "Data" (decision 48).

    Values within {0, 1} or within {0, 255}: as stored (non-zero is foreground). A JPEG file (lossy) whose largest
    value is at least 128 is a 0/255 mask with compression noise: thresholded at 128, with a warning naming the
    file. Anything else ({0, 1, 2}, {0, 128, 255}, a 0/1 JPEG) is an error naming the file and the values found:
    thresholding it silently would turn a third class or a soft mask into foreground.
    """
    values = np.unique(arr)
    if set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}:
        return (arr > 0).astype(np.uint8)
    if _extension(path) in _LOSSY_EXTENSIONS and arr.min() >= 0 and arr.max() >= 128:
        import warnings

        noisy = float(np.mean((arr != 0) & (arr != 255)))
        warnings.warn(f"mask file {path!r} is a JPEG with values other than 0 and 255 ({noisy:.1%} of its pixels, "
                      "compression noise); thresholded at 128. Save masks as PNG to keep them exact",
                      UserWarning, stacklevel=3)
        return (arr >= 128).astype(np.uint8)
    shown = values[:10].tolist() + (["..."] if len(values) > 10 else [])
    raise DataError(f"mask file {path!r} holds pixel values {shown}; a 2-class mask must hold 0/1 or 0/255 "
                    "(or set data.mask_values to the pixel value of each class, e.g. [0, 2], or give one label per "
                    "class if the mask holds more classes)")


def read_pixel_spacing(path: str, slice_index: int | None = None) -> tuple[float, float] | None:
    """The physical size of a pixel of the image ``read_image(path, slice_index)`` returns, ``(rows, columns)``
    in mm, from the file's header; ``None`` where the format has none (PNG, JPEG, TIFF, BMP) or the header does not
    say. NIfTI: the voxel sizes of the first two stored axes (the image's rows and columns, see Orientation);
    DICOM: ``PixelSpacing`` (top level, else the frame's or the shared functional group's ``PixelMeasures``).
    Reads the header only."""
    ext = _extension(path)
    try:
        if ext in _NIFTI_EXTENSIONS:
            zooms = _nibabel().load(path).header.get_zooms()
            spacing = (float(zooms[0]), float(zooms[1])) if len(zooms) >= 2 else None
        elif ext in _DICOM_EXTENSIONS:
            ds = _pydicom().dcmread(path, stop_before_pixels=True, specific_tags=list(_DICOM_SPACING_TAGS))
            value = ds.get("PixelSpacing")
            for keyword, i in (("PerFrameFunctionalGroupsSequence", slice_index or 0),
                               ("SharedFunctionalGroupsSequence", 0)):
                groups = ds.get(keyword)
                if value is None and groups and len(groups) > i and groups[i].get("PixelMeasuresSequence"):
                    value = groups[i].PixelMeasuresSequence[0].get("PixelSpacing")
            spacing = (float(value[0]), float(value[1])) if value is not None and len(value) == 2 else None
        else:
            return None
    except Exception:  # noqa: BLE001 - a header that cannot be read gives no spacing; read_image reports the file
        return None
    if spacing is None or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        return None
    return spacing

"""Folder sources: find cases, read images and masks, with errors that name the file.

A folder source is ``<root>/images/`` with an optional ``<root>/masks/``; a mask belongs to the image whose file
stem (plus ``mask_suffix``) it shares, whatever its extension. A folder without ``images/`` that holds image files
itself is read as images without masks. Sub-folders of ``images/`` are searched too.

Every case gets a stable ``case_id``: the image path relative to ``images/`` without its extension, with ``/``
between folders (``000_HC``, ``site_a/0003``). It depends only on the file's place in the source, so it is the
same in every run and on every machine.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class DataError(ValueError):
    """A data source or file that cannot be used; the message names the path and what was expected."""


@dataclass(frozen=True)
class Case:
    """One image (and its mask, if any) of a folder source."""

    case_id: str
    image_path: str
    mask_path: str | None = None


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def list_cases(root: str | Path, require_masks: bool = False, mask_suffix: str = "") -> list[Case]:
    """List the cases of a folder source, sorted by ``case_id``.

    Args:
        root: the source folder (holding ``images/`` and optionally ``masks/``).
        require_masks: raise if ``masks/`` is missing or any image has no mask.
        mask_suffix: appended to an image's stem to find its mask (``"_Annotation"`` for ``x.png`` ->
            ``masks/x_Annotation.png``).

    Raises:
        DataError: missing or empty folder, duplicate case ids, missing masks where they are required.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise DataError(f"data source {str(root)!r} is not a folder (expected a folder with images/ and masks/)")
    images_dir = root / "images"
    if not images_dir.is_dir():
        if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in root.iterdir() if p.is_file()):
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
            masks[p.relative_to(masks_dir).with_suffix("").as_posix()] = p
    elif require_masks:
        raise DataError(f"data folder {str(root)!r} has no masks/ sub-folder, but masks are required here")

    cases: dict[str, Case] = {}
    missing: list[str] = []
    for p in files:
        case_id = p.relative_to(images_dir).with_suffix("").as_posix()
        if case_id in cases:
            raise DataError(f"two images share case id {case_id!r}: {cases[case_id].image_path} and {p}; "
                            "rename one (case ids are file paths without their extension)")
        mask = masks.get(case_id + mask_suffix)
        if mask is None and require_masks:
            missing.append(case_id)
        cases[case_id] = Case(case_id, str(p), str(mask) if mask else None)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"{len(missing)} image(s) in {str(images_dir)!r} have no mask in {str(masks_dir)!r} "
                        f"(looked for <stem>{mask_suffix}.<ext>): {shown}")
    return list(cases.values())


def _read_array(path: str) -> np.ndarray:
    """Decode an image file into ``[H, W]`` or ``[H, W, C]`` numpy array, keeping its bit depth."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise DataError(f"image file {path!r} does not exist")
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
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise DataError(f"image file {path!r} has shape {arr.shape}; expected a 2D image (H, W) or (H, W, C)")
    return arr


def read_image(path: str) -> np.ndarray:
    """Read an image as float32 ``[C, H, W]``, C = 1 (grey) or 3 (colour), intensities as stored (not scaled).

    An alpha channel is dropped; 2-channel (grey + alpha) images become grey.
    """
    arr = _read_array(path)
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


def read_mask(path: str, num_classes: int, mask_values: tuple[int, ...] | None = None) -> np.ndarray:
    """Read a mask as uint8 class indices ``[H, W]``.

    With ``mask_values`` each listed pixel value maps to its class; any other value is an error. Without it, a
    binary task (2 classes) maps every non-zero pixel to 1 (so 0/1 and 0/255 masks both work) and a multi-class
    task expects the class index in each pixel.
    """
    arr = _read_array(path)
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
        return (arr > 0).astype(np.uint8)
    if arr.max() >= num_classes or arr.min() < 0:
        bad = np.unique(arr[(arr >= num_classes) | (arr < 0)])[:10].tolist()
        raise DataError(f"mask file {path!r} holds pixel values {bad}, but there are {num_classes} classes "
                        f"(values 0..{num_classes - 1}); set data.mask_values to map pixel values to classes")
    return arr.astype(np.uint8)

"""Folders of volumes as cases: one case per volume (never per slice), read and preprocessed with its geometry.

A folder source of volumes is laid out as one of images (``data/readers.py``): ``<root>/images/`` with an
optional ``<root>/masks/``. An entry of ``images/`` is a volume file (``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha``,
``.mhd``) or a sub-folder holding the slices of one DICOM series; its mask is the entry of ``masks/`` with the same
stem plus ``mask_suffix``. Cases are :class:`~nakt_ray.data.readers.Case` with ``slice_index`` None, so
pseudonymisation (``data/privacy.py``) applies unchanged.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nakt_ray.config.volume import VolumePreprocessConfig
from nakt_ray.data.readers import Case
from nakt_ray.data.volume_preprocess import VolumeTransform, preprocess_label_volume, preprocess_volume
from nakt_ray.data.volumes import MAX_VOXELS, VOLUME_EXTENSIONS, check_pair, read_label_volume, read_volume
from nakt_ray.errors import DataError, error

__all__ = ["list_volume_cases", "read_case_labels", "read_case_volume", "volume_stem"]


def volume_stem(path: Path) -> str | None:
    """The case name of an entry of ``images/``: a volume file's name without its extension, a DICOM series
    folder's name; None for anything else (a stray file)."""
    if path.is_dir():
        return path.name if any(p.is_file() for p in path.iterdir()) else None
    name = path.name.lower()
    for ext in sorted(VOLUME_EXTENSIONS, key=len, reverse=True):  # .nii.gz before .nii
        if name.endswith(ext):
            return path.name[: -len(ext)]
    return None


def _entries(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        stem = volume_stem(p)
        if stem is None or p.name.startswith("."):
            continue
        if stem in out:
            raise error(DataError, f"data folder {str(folder)!r}", f"two volumes share the case id {stem!r}: "
                                   f"{out[stem].name} and {p.name}; rename one")
        out[stem] = p
    return out


def list_volume_cases(root: str | Path, require_masks: bool = False, mask_suffix: str = "") -> list[Case]:
    """The volumes of a folder source, one case each, sorted by ``case_id``.

    Raises:
        DataError: a missing folder or ``images/``, no volume in it, two volumes with one stem, missing masks where
            they are required.
    """
    root = Path(root)
    images = root / "images"
    if not root.is_dir():
        raise error(DataError, f"data folder {str(root)!r}", "does not exist or is not a folder; expected a folder "
                                                             "with images/ (and masks/) of volumes")
    if not images.is_dir():
        images = root  # a bare folder of volumes
    found = _entries(images)
    if not found:
        raise error(DataError, f"data folder {str(images)!r}", f"holds no volumes; expected "
                    f"{', '.join(VOLUME_EXTENSIONS)} files or folders of one DICOM series each")
    masks_dir = root / "masks"
    masks = _entries(masks_dir) if masks_dir.is_dir() and images != root else {}
    if require_masks and not masks_dir.is_dir():
        raise error(DataError, f"data folder {str(root)!r}", "has no masks/ sub-folder, but masks are required here")
    missing = [stem for stem in found if stem + mask_suffix not in masks]
    if require_masks and missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise error(DataError, f"data folder {str(root)!r}", f"{len(missing)} volume(s) have no mask in masks/ "
                                                             f"(looked for <stem>{mask_suffix}): {shown}")
    return [Case(stem, str(path), str(masks[stem + mask_suffix]) if stem + mask_suffix in masks else None)
            for stem, path in sorted(found.items())]


def read_case_volume(case: Case, cfg: VolumePreprocessConfig,
                     max_voxels: int = MAX_VOXELS) -> tuple[np.ndarray, VolumeTransform]:
    """A case's image as the models' input ``[1, D', H', W']`` float32 and the transform that maps predictions
    back onto its original grid (:func:`~nakt_ray.data.volume_preprocess.restore_volume`)."""
    image, geometry = read_volume(case.image_path, max_voxels)
    return preprocess_volume(image, geometry, cfg)


def read_case_labels(case: Case, cfg: VolumePreprocessConfig, transform: VolumeTransform, num_classes: int,
                     max_voxels: int = MAX_VOXELS) -> np.ndarray:
    """A case's mask on its preprocessed grid ``[D', H', W']`` uint8, checked against its image's grid and against
    ``num_classes`` (labels are class indices ``0 .. num_classes - 1``)."""
    if case.mask_path is None:
        raise error(DataError, f"case {case.case_id!r}", "has no mask; expected one in masks/")
    mask, geometry = read_label_volume(case.mask_path, max_voxels)
    check_pair(transform.original, geometry, case.image_path, case.mask_path)
    top = int(mask.max()) if mask.size else 0
    if top >= num_classes:
        raise error(DataError, f"label volume {case.mask_path!r}", f"holds class {top}, but the run has "
                    f"{num_classes} classes (0 .. {num_classes - 1}); set data.labels to name every class")
    return preprocess_label_volume(mask, geometry, cfg, transform).astype(np.uint8)

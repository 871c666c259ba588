"""``nakt predict`` on volumes: a 3D model (or a 2D one, slice by slice) segments a folder of volumes and writes each
mask on the volume's ORIGINAL grid, with its affine and spacing.

Cases come from :func:`nakt_ray.data.volume_cases.list_volume_cases` (NIfTI, NRRD, MetaImage files or DICOM series
folders, one case per volume); each is preprocessed by the model's own volume preprocessing (``ModelSpec.volume``,
or the ``volume`` of its description), predicted whole (a 3D model by sliding window with its input size as window;
a 2D model slice by slice along ``slice_axis``, each slice resampled to its input size as a 2D image is), mapped back
with :func:`nakt_ray.data.volume_preprocess.restore_volume` and arg-maxed.

Outputs under ``out_dir``::

    <case_id>_mask.nii.gz   uint8 class indices (0 background), same shape, spacing, origin and direction as the
                            input (NIfTI: the same affine; a DICOM series gets the affine of its slices)
    <case_id>_overlay.png   axial, coronal and sagittal mid-slices with each class in colour and a legend of the
                            class names (``overlays.py``)
    predictions.json        as for images, with the volume preprocessing and per case its shape and spacing

One volume at a time in one process, no Ray: a volume's maps are the largest thing held.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from nakt_ray.config import VolumePreprocessConfig
    from nakt_ray.teachers.inference import LoadedTeacher

MASK_SUFFIX = "_mask.nii.gz"


def volume_teacher(teacher: LoadedTeacher, slice_axis: int) -> LoadedTeacher:
    """``teacher`` as it predicts volumes: a 3D model by sliding window (its input size is a patch, not the whole
    volume, as a student is validated); a 2D model slice by slice along ``slice_axis``, each slice resampled to
    its input size (as ``nakt predict`` feeds a 2D model images). Loaded again only when its options differ."""
    from dataclasses import replace

    from nakt_ray.teachers.registry import load_teacher

    three_d = teacher.spatial_dims == 3
    options = replace(teacher.options, sliding_window=three_d,
                      slice_axis=teacher.options.slice_axis if three_d else slice_axis)
    if options == teacher.options:
        return teacher
    return load_teacher(teacher.name, teacher.source, teacher.device, options)


def volume_preprocess(teacher: LoadedTeacher) -> tuple[VolumePreprocessConfig, bool]:
    """The model's own volume preprocessing, or (not declared: ``True``) the default one: RAS, per-volume z-score
    over the non-zero voxels, each volume's own spacing, the model's input size as patch for a 3D model."""
    from nakt_ray.config import VolumePreprocessConfig

    if teacher.volume is not None:
        return teacher.volume, False
    if teacher.spatial_dims == 3:
        return VolumePreprocessConfig(patch_size=tuple(teacher.input_size)), True  # type: ignore[arg-type]
    return VolumePreprocessConfig(), True


def predict_volume_folder(teacher: LoadedTeacher, images_dir: str | Path, out_dir: str | Path, *,
                          overlays: bool = True, slice_axis: int = 0,
                          progress: Callable[[int, int, int], None] | None = None, pseudonymize: bool = False,
                          volume: VolumePreprocessConfig | None = None, started: float | None = None) -> dict[str, Any]:
    """Segment every volume under ``images_dir`` with ``teacher`` (loaded by ``predict.predict_folder``); write masks,
    montages and ``predictions.json`` into ``out_dir``. ``volume`` overrides the model's volume preprocessing.

    Returns the ``predictions.json`` content: as for images (``predict.predict_folder``), with ``volumes: true``,
    ``spatial_dims`` (the model's), ``preprocess`` (the volume preprocessing used), ``inference`` (sliding window,
    slice axis), and per case ``size`` ``[D, H, W]``, ``spacing`` ``(d, h, w)`` mm and ``classes`` (voxels per class).
    A case that cannot be read, predicted or written is recorded with its reason and the run goes on.
    """
    import torch
    from PIL import Image

    from nakt_ray.config.convert import to_plain
    from nakt_ray.data.privacy import cases_for, scrub
    from nakt_ray.data.volume_cases import list_volume_cases
    from nakt_ray.data.volume_preprocess import preprocess_volume, restore_volume
    from nakt_ray.data.volumes import read_volume, write_volume
    from nakt_ray.inference.overlays import volume_montage

    t0 = time.perf_counter() if started is None else started
    teacher = volume_teacher(teacher, slice_axis)
    vcfg, assumed = (volume, False) if volume is not None else volume_preprocess(teacher)
    cases = cases_for(list_volume_cases(images_dir), pseudonymize)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    failed = 0
    for case in cases:
        record: dict[str, Any] = {"case_id": case.case_id, "source": case.case_id if case.original_id else
                                  case.image_path}
        stage = "decode"
        try:
            # 1. Read with its geometry and preprocess as the model was trained.
            image, geometry = read_volume(case.image_path)
            x, transform = preprocess_volume(image, geometry, vcfg)                  # [1, D', H', W']
            # 2. Predict the whole volume (with its grid's spacing: a whole-image teacher such as nnU-Net resamples
            # from it), then 3. back onto the original grid.
            stage = "predict"
            probs = teacher.predict(torch.from_numpy(x)[None], tuple(transform.geometry.spacing))[0].cpu().numpy()
            stage = "write"
            label = restore_volume(probs, transform).argmax(0).astype(np.uint8)     # [D, H, W] original grid
            del probs
            mask_path = write_volume(out / f"{case.case_id}{MASK_SUFFIX}", label, geometry)
            overlay_path = None
            if overlays:
                overlay_path = out / f"{case.case_id}_overlay.png"
                Image.fromarray(volume_montage(image, label, geometry, labels=teacher.labels)).save(overlay_path)
            counts = np.bincount(label.ravel(), minlength=teacher.num_classes)
            record.update(status="ok", mask=str(mask_path), overlay=str(overlay_path) if overlay_path else None,
                          size=list(geometry.shape), spacing=list(geometry.spacing),
                          classes={name: int(n) for name, n in zip(teacher.labels, counts)})
        except Exception as err:  # noqa: BLE001 - one bad volume must not stop the folder
            why = f"{stage}: {type(err).__name__}: {err}"
            failed += 1
            record.update(status="failed", reason=scrub(why, case.case_id, case.original_id, case.image_path)
                          if case.original_id else why)
        records.append(record)
        if progress is not None:
            progress(len(records), len(cases), failed)

    described = teacher.describe()
    inferred = list(teacher.details.get("inferred", [])) + (["volume"] if assumed else [])
    report = {
        "model": {**{k: described[k] for k in ("source", "kind", "fingerprint", "labels", "input_size", "outputs",
                                               "device")}, "inferred": inferred},
        "images": str(images_dir), "output": str(out), "volumes": True, "spatial_dims": teacher.spatial_dims,
        "mask_encoding": {"format": "nifti", "values": {name: k for k, name in enumerate(teacher.labels)},
                          "note": "voxel = class index, on the input volume's grid (shape, spacing, origin, "
                                  "direction: the same affine)"},
        "preprocess": to_plain(vcfg), "preprocess_assumed": assumed,
        "inference": {"sliding_window": teacher.options.sliding_window, "slice_axis": teacher.options.slice_axis},
        "counts": {"cases": len(records), "ok": len(records) - failed, "failed": failed},
        "wall_s": round(time.perf_counter() - t0, 3),
        "cases": records,
    }
    (out / "predictions.json").write_text(json.dumps(report, indent=2))
    return report

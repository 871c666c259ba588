"""``nakt predict``: segment a folder of images with any model and write masks and overlays at the original size.

The model is loaded with :func:`nakt_ray.teachers.registry.load_teacher`, so any source works: a nakt model file, an
exported TorchScript / ONNX file with its description YAML, or an MLflow URI. Cases come from
:func:`nakt_ray.data.readers.list_cases` (a folder with ``images/`` or a bare folder of images; a volume gives one case
per slice) and are decoded and preprocessed by :func:`nakt_ray.data.datasets.decode_batch`; probabilities are mapped
back to the original image size with :func:`nakt_ray.data.preprocess.restore` (as in evaluation) and arg-maxed.

Outputs under ``out_dir`` (a ``case_id`` with folders, ``site/a``, keeps them; slices are ``case#0012``)::

    <case_id>_mask.png      8-bit grey, pixel = class index x mask_scale, mask_scale = 255 // (K - 1):
                            0/255 for a binary model (like HC18 masks), 0/127/254 for three classes
    <case_id>_overlay.png   the image in grey with each foreground class in colour (40 % fill, solid contour),
                            at the original size, with a legend strip of the class names below it
    predictions.json        the model, the mask encoding, counts, and per case: status, files or the reason

A case that cannot be read or predicted is recorded with its reason and the run goes on. Plain PyTorch in one
process (no Ray): predicting a folder is one model on one device.

A 3D model (or a 2D one with ``volumes=True``) segments volumes instead: NIfTI masks on each volume's original grid
and a montage of mid-slices, in :mod:`nakt_ray.inference.predict_volumes`.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# Re-exported: the mask encoding and the overlays are part of this module's interface (demo, tests).
from nakt_ray.inference.overlays import FILL_ALPHA, PALETTE, mask_scale, overlay

__all__ = ["FILL_ALPHA", "PALETTE", "mask_scale", "overlay", "predict_folder"]


def _check_device(device: str) -> str:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: got {device!r}; expected 'cpu' or 'cuda' (or 'cuda:N')") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device: got {device!r}; expected 'cpu' or 'cuda' (or 'cuda:N')")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: got {device!r}, but CUDA is not available here; use 'cpu'")
    return str(dev)


def predict_folder(source: str | Path, images_dir: str | Path, out_dir: str | Path, batch_size: int = 8,
                   overlays: bool = True, device: str = "cpu",
                   progress: Callable[[int, int, int], None] | None = None,
                   pseudonymize: bool = False, volumes: bool | None = None, slice_axis: int = 0) -> dict[str, Any]:
    """Segment every case under ``images_dir`` with the model at ``source``; write masks, overlays and a report.

    Args:
        source: any teacher source (nakt model file, TorchScript / ONNX file with description YAML, MLflow URI).
        images_dir: a folder source (``images/`` inside, or image files directly; sub-folders are searched).
        out_dir: where ``<case_id>_mask.png``, ``<case_id>_overlay.png`` and ``predictions.json`` go.
        batch_size: images per forward pass.
        overlays: also write the overlay PNGs.
        device: ``cpu`` or ``cuda``.
        progress: called after each batch with (cases done, cases in total, cases failed so far).
        pseudonymize: name every case by a keyed hash of its id (file names, ``predictions.json``), with the key
            from the environment (``nakt_ray/data/privacy.py``).
        volumes: segment volumes (one case per volume, NIfTI masks on the original grid and a montage of
            mid-slices: ``inference/predict_volumes.py``) instead of images and slices. None (the default): volumes
            for a 3D model, images for a 2D one (which then predicts a NIfTI volume slice by slice as PNGs, as it
            always has); True with a 2D model predicts each volume slice by slice along ``slice_axis`` (0, 1 or 2
            of ``[D, H, W]``) into a NIfTI mask.

    Returns:
        The ``predictions.json`` content: ``{"model", "images", "output", "mask_encoding", "preprocess",
        "preprocess_assumed", "counts": {"cases", "ok", "failed"}, "wall_s", "cases": [...]}``; ``model.inferred``
        lists what the source did not declare. Each case has ``case_id``, ``source``, ``status`` (``ok`` /
        ``failed``) and either ``mask``, ``overlay`` (or None), ``size`` ``[H, W]`` and ``classes`` (pixels per
        class), or ``reason``.

    Raises:
        ValueError: a bad ``batch_size``, ``device`` or ``slice_axis``, or ``volumes=False`` for a 3D model;
        TeacherLoadError: a model that cannot be loaded; DataError: a missing or empty images folder.
    """
    import torch
    from PIL import Image

    from nakt_ray.config import PreprocessConfig
    from nakt_ray.data.datasets import decode_batch, geometry_of
    from nakt_ray.data.preprocess import restore
    from nakt_ray.data.privacy import cases_for
    from nakt_ray.data.readers import list_cases, read_image
    from nakt_ray.teachers.registry import load_teacher

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: got {batch_size!r}; expected an integer >= 1")
    device = _check_device(device)
    if slice_axis not in (0, 1, 2) or isinstance(slice_axis, bool):
        raise ValueError(f"slice_axis: got {slice_axis!r}; expected 0, 1 or 2 (an axis of a volume [D, H, W])")
    t0 = time.perf_counter()
    # 1. The model, and how to feed it: its own preprocessing, else a resize to its input size with z-score.
    teacher = load_teacher("model", str(source), device)
    if volumes is None:
        volumes = teacher.spatial_dims == 3
    if teacher.spatial_dims == 3 and not volumes:
        raise ValueError(f"model {str(source)!r} is a 3D model (input_size {list(teacher.input_size)}); it segments "
                         "volumes, not images (leave out --no-volumes)")
    if volumes:
        from nakt_ray.inference.predict_volumes import predict_volume_folder

        return predict_volume_folder(teacher, images_dir, out_dir, overlays=overlays, slice_axis=slice_axis,
                                     progress=progress, pseudonymize=pseudonymize, started=t0)
    pre = teacher.preprocess
    assumed = pre is None
    if pre is None:
        pre = PreprocessConfig(size=teacher.input_size, in_channels=teacher.in_channels)
    scale = mask_scale(teacher.num_classes)
    cases = cases_for(list_cases(images_dir), pseudonymize)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    records: list[dict[str, Any]] = []
    failed = 0
    for start in range(0, len(cases), batch_size):
        chunk = cases[start:start + batch_size]
        # 2. Decode and preprocess; a case that cannot be read keeps its row with the reason.
        batch = {"case_id": np.array([c.case_id for c in chunk], dtype=object),
                 "image_path": np.array([c.image_path for c in chunk], dtype=object),
                 "mask_path": np.array([""] * len(chunk), dtype=object),
                 "slice_index": np.array([-1 if c.slice_index is None else c.slice_index for c in chunk]),
                 "original_id": np.array([c.original_id or "" for c in chunk], dtype=object)}
        decoded = decode_batch(batch, preprocess=pre, num_classes=teacher.num_classes)
        reasons = [str(e) for e in decoded["error"]]
        ok = [i for i, r in enumerate(reasons) if not r]
        # 3. Predict the readable ones at the model's size.
        probs: np.ndarray | None = None
        if ok:
            try:
                probs = teacher.predict(torch.from_numpy(decoded["image"][ok])).cpu().numpy()
            except Exception as err:  # noqa: BLE001 - e.g. TeacherOutputError (NaN): record the batch's cases, go on
                for i in ok:
                    reasons[i] = f"predict: {type(err).__name__}: {err}"
        # 4. Back to the original size; write the mask and the overlay.
        for i, case in enumerate(chunk):
            record: dict[str, Any] = {"case_id": case.case_id, "source": str(decoded["source"][i])}
            if case.slice_index is not None:
                record["slice_index"] = case.slice_index
            if not reasons[i] and probs is not None:
                try:
                    geom = geometry_of(decoded["geometry"][i])
                    label = restore(probs[ok.index(i)], geom).argmax(0).astype(np.uint8)
                    mask_path = out / f"{case.case_id}_mask.png"
                    mask_path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(label * np.uint8(scale)).save(mask_path)
                    overlay_path = None
                    if overlays:
                        overlay_path = out / f"{case.case_id}_overlay.png"
                        Image.fromarray(overlay(read_image(case.image_path, case.slice_index), label,
                                                teacher.labels)).save(overlay_path)
                    counts = np.bincount(label.ravel(), minlength=teacher.num_classes)
                    record.update(status="ok", mask=str(mask_path),
                                  overlay=str(overlay_path) if overlay_path else None,
                                  size=[geom.orig_h, geom.orig_w],
                                  classes={name: int(n) for name, n in zip(teacher.labels, counts)})
                except Exception as err:  # noqa: BLE001 - one unwritable case must not stop the folder
                    reasons[i] = f"write: {type(err).__name__}: {err}"
            if reasons[i]:
                failed += 1
                record.update(status="failed", reason=reasons[i])
            records.append(record)
        if progress is not None:
            progress(len(records), len(cases), failed)

    described = teacher.describe()
    # What the source did not declare (MLflow models without nakt.* tags, descriptions without preprocess).
    inferred = list(teacher.details.get("inferred", [])) + (["preprocess"] if assumed else [])
    report = {
        "model": {**{k: described[k] for k in ("source", "kind", "fingerprint", "labels", "input_size", "outputs",
                                               "device")}, "inferred": inferred},
        "images": str(images_dir), "output": str(out),
        "mask_encoding": {"scale": scale, "values": {name: k * scale for k, name in enumerate(teacher.labels)},
                          "note": "pixel = class index x scale; read back with mask_values = the values above"},
        "preprocess": {"size": list(pre.size), "mode": pre.mode, "normalize": pre.normalize,
                       "in_channels": pre.in_channels},
        "preprocess_assumed": assumed,
        "counts": {"cases": len(records), "ok": len(records) - failed, "failed": failed},
        "wall_s": round(time.perf_counter() - t0, 3),
        "cases": records,
    }
    (out / "predictions.json").write_text(json.dumps(report, indent=2))
    return report

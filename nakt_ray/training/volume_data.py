"""The 3D training input: streamed Ray Datasets of patches, from an annotation set of volumes (students) or from a
labeled folder of volumes (teachers), and whole preprocessed volumes for validation.

Every patch row has the columns the shared loop (``training/loop.py``) reads, as in 2D: ``image`` float16
``[C_in, d, h, w]``, ``target`` ``[C, d, h, w]`` (probabilities in the stored form: uint8 p x 255, or float16; one-hot
x 255 for labels) and, with agreement weighting, ``weight`` uint8 ``[d, h, w]`` (x 255).

An epoch is ``patches_per_case`` patches of every case (nnU-Net draws a fixed number of patches per epoch too).
Each epoch draws new patches and a new case order, reproducibly from ``seed``: a Ray Data random column with
``reseed_after_execution`` gives each case one number per execution of the dataset (an epoch), which seeds the
case's patch generator, and the order of the blocks is a seeded ``randomize_block_order`` reseeded alike. A task
reads a block of cases (:data:`CASES_PER_BLOCK` from an annotation set; a held labeled volume is a block of its
own), opening each case's store once and reading only its patches' boxes (``training/patches.py``). Blocks of
several cases, because a Ray task costs ~0.25 s of scheduling on 2 cores: one case per task made the input of an
epoch of 96 patches of 48^3 cost 7.3 s against 1.6 s for the same draws in one process, 1.3-1.6 s with 12 cases a
block (docs/benchmarks.md, "Student training on patches (3D)").
A task's output leaves it in blocks of :data:`PATCH_BLOCK_BYTES` (about one case's patches: 16 patches of 48^3
with 8 classes are 18 MB), not Ray Data's default of 128 MiB: with that, the first batch of an epoch waited for a
whole task's cases, and E5's student waited 6.5 s of every 21 s epoch for its input; with 18 MiB blocks the first
batch of an epoch came 3-7x sooner and an epoch of its patches, iterated at 70 ms a step, took 26-28 s against
38-55 s (both measured beside another training job; ``docs/decisions.md``, 79).
A resumed run starts its executions again from 0, so it draws the patches of the first run's first epochs again
(the 2D file shuffle does the same).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nakt_ray.annotation import parquet as ann
from nakt_ray.annotation import volume_store as vs
from nakt_ray.errors import DataError, error
from nakt_ray.runtime.cluster import LIGHT_CPU
from nakt_ray.training.patches import (
    FOREGROUND_SHARE,
    choose_patch,
    class_argmax,
    class_locations,
    one_hot,
    padding_of_probabilities,
    read_patch,
)

__all__ = [
    "PATCHES_PER_CASE",
    "annotation_patch_dataset",
    "annotation_patches",
    "labeled_patch_dataset",
    "labeled_patches",
    "labeled_training_set",
    "labeled_volumes",
    "patch_options",
    "validation_dataset",
    "volume_cases",
]

PATCHES_PER_CASE = 4  # per case and epoch: the default of training.patches_per_case
DRAW = "draw"  # the random column: one number per case and epoch
PATCH_TASK_CPU = 0.25  # a patch task reads and decodes chunks: light, and must not starve the trainer
CASES_PER_BLOCK = 8  # cases of an annotation set read by one patch task (module docstring); at least 2 blocks
PATCH_BLOCK_BYTES = 16 * 2**20  # output blocks of a patch task: about one case's patches (module docstring)


def _case_rng(seed: int, draw: float) -> np.random.Generator:
    """A case's generator for one epoch: from the run's seed and the case's number for this epoch."""
    return np.random.default_rng([int(seed), int(float(draw) * 2**53)])


def _weights(agreement: str, target: np.ndarray, case_agreement: float, probs: list[np.ndarray],
             coverage: np.ndarray | None = None) -> np.ndarray | None:
    """The per-voxel loss weight ``[d, h, w]`` uint8 x 255 of a patch, as ``student_data.annotation_batch`` has it:
    ``case``, the case's agreement everywhere; ``pixel``, the share of teachers whose arg-max names the target's
    class (``fusion.pixel_agreement``: background for a class a teacher does not cover)."""
    if agreement == "case":  # float32 arithmetic, as the 2D column: the same agreement gives the same weight
        a = np.nan_to_num(np.asarray(case_agreement, dtype=np.float32), nan=1.0)
        return np.full(target.shape[1:], (np.clip(a, 0, 1) * 255).round().astype(np.uint8), dtype=np.uint8)
    if agreement == "pixel":
        if coverage is None:  # probs T x [C, d, h, w] stored form
            share = (class_argmax(np.stack(probs)) == class_argmax(target)[None]).mean(0)
        else:
            from nakt_ray.fusion import pixel_agreement

            share = pixel_agreement(probs, class_argmax(target), coverage, class_axis=0)
        return (share * 255).round().astype(np.uint8)
    return None


def annotation_patches(batch: dict[str, np.ndarray], *, annotations_dir: str, teachers: list[str],
                       rule: str | None, weights: list[float] | None, agreement: str,
                       patch_size: tuple[int, int, int], patches_per_case: int, foreground_share: float,
                       seed: int, coverage: np.ndarray | None = None,
                       with_teachers: bool = False) -> dict[str, np.ndarray]:
    """Cases of an annotation set of volumes (columns ``store``, ``agreement``, ``draw``) -> ``patches_per_case``
    patch rows each (``image``, ``target``, optional ``weight``).

    The target is the stored ``soft_label``, or with ``rule`` re-fused from the teachers' stored maps of the patch
    (``prob/<teacher>``; per-voxel rules give what fusing the whole volume gives; STAPLE estimates its teacher
    performance on the patch). ``agreement == "pixel"`` reads the teachers' maps of the patch too. ``coverage``
    (``parquet.coverage``): the classes each teacher covers, None when all cover all.
    """
    out: dict[str, list[np.ndarray]] = {"image": [], "target": []}
    if agreement != "none":
        out["weight"] = []
    if with_teachers:
        out["teachers"] = []
    for store, case_agreement, draw in zip(batch["store"], batch["agreement"], batch[DRAW]):
        group = vs.open_case(annotations_dir, str(store))
        image_arr = group["image"]
        shape = tuple(image_arr.shape[-3:])
        locations = np.asarray(group["class_locations"][...]) if "class_locations" in group else None
        maps = ([group[vs.teacher_key(t)] for t in teachers] if rule is not None or agreement == "pixel"
                or with_teachers else [])
        soft = group["soft_label"] if rule is None else None
        label_arr = soft if soft is not None else maps[0]
        dtype = np.dtype(str(label_arr.dtype))
        fill = padding_of_probabilities(soft.shape[0], dtype) if soft is not None else None
        fills = [padding_of_probabilities(m.shape[0], dtype) for m in maps]
        rng = _case_rng(seed, draw)
        for _ in range(patches_per_case):
            start, _forced = choose_patch(shape, patch_size, locations, rng, foreground_share)
            out["image"].append(read_patch(image_arr, start, patch_size, 0))
            probs = [read_patch(m, start, patch_size, f) for m, f in zip(maps, fills)]  # T x [C_t, d, h, w]
            if rule is None:
                target = read_patch(soft, start, patch_size, fill)
            else:
                from nakt_ray.fusion import fuse_teachers

                p = [ann.dequantize(q, axis=0) for q in probs]
                # Fusion works on [C, H, W] images: the patch is one image of d * h rows, as volume_store does.
                fused = fuse_teachers([x.reshape(x.shape[0], -1, x.shape[-1]) for x in p], coverage, rule, weights)
                target = ann.quantize(fused.reshape(-1, *p[0].shape[1:]), dtype.name)
            out["target"].append(target)
            if with_teachers:  # the union layout: zeros at the classes a teacher does not cover
                cov = np.ones((len(probs), target.shape[0]), bool) if coverage is None else np.asarray(coverage)
                union = np.zeros((len(probs), *target.shape), dtype=target.dtype)
                for t, p in enumerate(probs):
                    union[t, cov[t]] = p
                out["teachers"].append(union)
            if agreement != "none":
                out["weight"].append(_weights(agreement, target, case_agreement, probs, coverage))
    return {k: np.stack(v) for k, v in out.items()}


def _check_volume_set(annotations_dir: str, manifest: dict[str, Any]) -> None:
    if manifest.get("schema_version") != ann.SCHEMA_VERSION_VOLUMES:
        raise error(DataError, f"annotation set {annotations_dir!r}", f"has schema version "
                    f"{manifest.get('schema_version')} (images); patches are drawn from a set of volumes (schema "
                    f"version {ann.SCHEMA_VERSION_VOLUMES})")


def annotation_patch_dataset(annotations_dir: str, *, patch_size: Sequence[int],
                             patches_per_case: int | None = None, rule: str | None = None,
                             weights: list[float] | None = None, agreement: str = "none",
                             foreground_share: float = FOREGROUND_SHARE, seed: int = 0, teachers: bool = False):
    """The ``ok`` cases of an annotation set of volumes (schema version 2) as a streaming Ray Dataset of patches
    (module docstring): ``patches_per_case`` rows per case per epoch, new patches and order every epoch.

    ``rule`` re-fuses the targets from the stored teacher maps (None: the stored ``soft_label``); ``agreement``
    (``none``, ``case``, ``pixel``) adds ``weight``. The stores are read where the set lies (a local or shared path).
    ``patches_per_case`` None: :data:`PATCHES_PER_CASE`. ``teachers`` adds each teacher's map of the patch in the
    union layout (``teachers`` ``[T, C, d, h, w]``), for the per-teacher loss (``fusion.target: teachers``).
    """
    import ray

    patches_per_case = PATCHES_PER_CASE if patches_per_case is None else patches_per_case
    if agreement not in ("none", "case", "pixel"):
        raise ValueError(f"agreement weighting {agreement!r}: expected none, case or pixel")
    if patches_per_case < 1:
        raise ValueError(f"patches_per_case {patches_per_case!r}: expected an integer >= 1")
    manifest = ann.read_manifest(annotations_dir)
    _check_volume_set(annotations_dir, manifest)
    rows = ann.read_table(annotations_dir, columns=["case_id", "status", "store", "agreement"]).to_pylist()
    items = sorted(({"case_id": r["case_id"], "store": r["store"],
                     "agreement": float("nan") if r["agreement"] is None else float(r["agreement"])}
                    for r in rows if r["status"] == "ok"), key=lambda r: r["case_id"])
    if not items:
        raise error(DataError, f"annotation set {annotations_dir!r}", "has no usable rows; nothing to train on")
    blocks = min(len(items), max(2, -(-len(items) // CASES_PER_BLOCK)))  # >= 2: two DDP workers read in parallel
    return _patches(ray.data.from_items(items, override_num_blocks=blocks), seed, annotation_patches,
                    dict(annotations_dir=str(annotations_dir), teachers=[t["name"] for t in manifest["teachers"]],
                         rule=rule, weights=weights, agreement=agreement, patch_size=tuple(patch_size),
                         patches_per_case=patches_per_case, foreground_share=foreground_share, seed=seed,
                         coverage=ann.coverage(manifest), with_teachers=teachers))


def _patches(cases: Any, seed: int, fn: Any, fn_kwargs: dict[str, Any]):
    """Blocks of cases -> a new block order and one random number per case every epoch -> patches."""
    from ray.data import RandomSeedConfig
    from ray.data.expressions import random

    cases = cases.randomize_block_order(seed=RandomSeedConfig(seed=seed, reseed_after_execution=True))
    cases = cases.with_column(DRAW, random(seed=seed, reseed_after_execution=True))
    patches = cases.map_batches(fn, batch_size=1, num_cpus=PATCH_TASK_CPU, fn_kwargs=fn_kwargs)
    patches.context.target_max_block_size = PATCH_BLOCK_BYTES  # a case's patches leave its task as they are drawn
    return patches


def volume_cases(cfg: Any, folder: str) -> list[Any]:
    """The labeled volumes of ``folder`` (masks required), pseudonymised as the run says."""
    from nakt_ray.data.privacy import cases_for
    from nakt_ray.data.volume_cases import list_volume_cases

    return cases_for(list_volume_cases(folder, require_masks=True, mask_suffix=cfg.data.mask_suffix),
                     cfg.data.pseudonymize)


def read_labeled_volume(batch: dict[str, np.ndarray], *, volume: Any, num_classes: int, locations: bool,
                        seed: int) -> dict[str, np.ndarray]:
    """One labeled case (columns ``case_id``, ``image_path``, ``mask_path``, ``original_id``) -> its preprocessed
    ``image`` float32 ``[1, C_in, D, H, W]``, ``label`` uint8 ``[1, D, H, W]``, its foreground ``locations``
    ``[1, N, 4]`` (with ``locations``) and ``error`` ("" when it was read; a failed case keeps its row with the
    reason and 1-voxel placeholders)."""
    from nakt_ray.data.privacy import scrub
    from nakt_ray.data.readers import Case
    from nakt_ray.data.volume_cases import read_case_labels, read_case_volume

    assert len(batch["case_id"]) == 1, "one volume per batch"  # volumes differ in shape: one row per block
    case = Case(str(batch["case_id"][0]), str(batch["image_path"][0]), str(batch["mask_path"][0]) or None, None,
                str(batch["original_id"][0]) or None)
    out = {"case_id": np.asarray([case.case_id], dtype=object), "error": np.asarray([""], dtype=object)}
    try:
        image, transform = read_case_volume(case, volume)
        label = read_case_labels(case, volume, transform, num_classes)
        found = class_locations(label, num_classes, np.random.default_rng([seed, len(case.case_id)]))
    except Exception as err:  # noqa: BLE001 - any failure of one case is recorded, the run goes on
        why = f"decode: {type(err).__name__}: {err}"
        out["error"][0] = scrub(why, case.case_id, case.original_id, case.image_path) if case.original_id else why
        image, label, found = np.zeros((1, 1, 1, 1), np.float32), np.zeros((1, 1, 1), np.uint8), np.zeros((0, 4))
    out["image"], out["label"] = image.astype(np.float32)[None], label[None]
    if locations:
        out["locations"] = found.astype(np.int32)[None]
    return out


def labeled_volumes(cfg: Any, folder: str, locations: bool = True,
                    seed: int = 0) -> tuple[Any, list[dict[str, str]], int]:
    """Read and preprocess every labeled volume of ``folder`` once, as ``cfg.volume`` says, and hold them in Ray's
    object store (patches are drawn from them every epoch; validation scores them whole).

    Returns ``(materialised dataset of the good cases, one row and block each: image, label[, locations]; failed
    cases [{case_id, error}]; number of cases listed)``. Raises ``DataError`` when no case could be read.
    """
    import ray
    from ray.data.expressions import col

    cases = volume_cases(cfg, folder)
    items = [{"case_id": c.case_id, "image_path": c.image_path, "mask_path": c.mask_path or "",
              "original_id": c.original_id or ""} for c in cases]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        read_labeled_volume, batch_size=1, num_cpus=0.5,
        fn_kwargs=dict(volume=cfg.volume, num_classes=cfg.data.num_classes, locations=locations,
                       seed=seed)).materialize()
    bad = ds.filter(expr=col("error") != "", num_cpus=LIGHT_CPU).select_columns(
        ["case_id", "error"], num_cpus=LIGHT_CPU).take_all()
    failed = [{"case_id": r["case_id"], "error": r["error"]} for r in bad]
    if len(failed) == len(cases):
        raise error(DataError, f"data folder {folder!r}", f"none of its {len(cases)} volumes could be read; first "
                                                           f"error: {failed[0]['error']}")
    good = ds.filter(expr=col("error") == "", num_cpus=LIGHT_CPU) if failed else ds
    keep = ["image", "label"] + (["locations"] if locations else [])
    return good.select_columns(keep, num_cpus=LIGHT_CPU).materialize(), failed, len(cases)


def labeled_patches(batch: dict[str, np.ndarray], *, num_classes: int, patch_size: tuple[int, int, int],
                    patches_per_case: int, foreground_share: float, seed: int) -> dict[str, np.ndarray]:
    """Held labeled volumes (``image``, ``label``, ``locations``, ``draw``) -> ``patches_per_case`` rows each:
    ``image`` float16 and ``target`` one-hot x 255 (padding: image 0, class 0)."""
    images, targets = [], []
    for image, label, found, draw in zip(batch["image"], batch["label"], batch["locations"], batch[DRAW]):
        rng = _case_rng(seed, draw)
        for _ in range(patches_per_case):
            start, _forced = choose_patch(label.shape, patch_size, np.asarray(found), rng, foreground_share)
            images.append(read_patch(image, start, patch_size, 0).astype(np.float16))
            targets.append(one_hot(read_patch(label, start, patch_size, 0), num_classes))
    return {"image": np.stack(images), "target": np.stack(targets)}


def labeled_patch_dataset(volumes: Any, *, num_classes: int, patch_size: Sequence[int],
                          patches_per_case: int | None = None, foreground_share: float = FOREGROUND_SHARE,
                          seed: int = 0):
    """Patches of held labeled volumes (:func:`labeled_volumes`), drawn anew every epoch as from annotations
    (``patches_per_case`` None: :data:`PATCHES_PER_CASE`)."""
    patches_per_case = PATCHES_PER_CASE if patches_per_case is None else patches_per_case
    return _patches(volumes, seed, labeled_patches,
                    dict(num_classes=num_classes, patch_size=tuple(patch_size), patches_per_case=patches_per_case,
                         foreground_share=foreground_share, seed=seed))


def labeled_training_set(cfg: Any, folder: str, training: Any,
                         spatial_dims: int) -> tuple[Any, list[dict[str, str]], int]:
    """A labeled folder as training input for a model of ``spatial_dims``: decoded images (``labeled_split``) in 2D,
    patches of the held volumes in 3D. Returns ``(dataset, failed cases, number of cases listed)``."""
    if spatial_dims != 3:
        from nakt_ray.data.datasets import labeled_split

        return labeled_split(cfg, folder, training.batch_size)
    volumes, failed, n = labeled_volumes(cfg, folder, seed=training.seed)
    return labeled_patch_dataset(volumes, num_classes=cfg.data.num_classes, patch_size=cfg.volume.patch_size,
                                 seed=training.seed, **patch_options(training)), failed, n


def patch_options(training: Any) -> dict[str, Any]:
    """``patches_per_case`` and ``foreground_share`` of a training config (``config.TrainingConfig``)."""
    return {"patches_per_case": training.patches_per_case, "foreground_share": training.foreground_share}


def validation_dataset(cfg: Any, folder: str, batch_size: int, spatial_dims: int) -> Any:
    """A labeled validation folder for a model of ``spatial_dims``: decoded images in 2D, whole preprocessed
    volumes (one row each) in 3D."""
    if spatial_dims != 3:
        from nakt_ray.data.datasets import labeled_split

        return labeled_split(cfg, folder, batch_size)[0]
    return labeled_volumes(cfg, folder, locations=False)[0]

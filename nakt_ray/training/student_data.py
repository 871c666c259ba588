"""The student's training input: an annotation set streamed from Parquet as ``image`` / ``target`` (/ ``weight``)
rows, re-fused on the fly when the run's fusion differs from the stored one."""
from __future__ import annotations

from typing import Any

import numpy as np

from nakt_ray.annotation import parquet as ann
from nakt_ray.annotation.parquet import read_parquet
from nakt_ray.runtime.cluster import LIGHT_CPU


def annotation_batch(batch: dict[str, np.ndarray], *, image_shape: tuple[int, ...], label_shape: tuple[int, ...],
                     teachers: list[str] | None = None, rule: str | None = None,
                     weights: list[float] | None = None, prob_dtype: str = "uint8",
                     agreement: str = "none", teacher_shapes: list[tuple[int, ...]] | None = None,
                     coverage: np.ndarray | None = None, with_teachers: bool = False) -> dict[str, np.ndarray]:
    """Parquet annotation rows -> training columns ``image`` float32 and ``target`` ``[B, C, H, W]`` (probabilities
    in the set's stored dtype, uint8 x 255 or float16; the training loop renormalises either).

    With ``rule`` the target is re-fused from the stored per-teacher maps (no teacher runs again); otherwise the
    stored ``soft_label`` is used. ``agreement`` adds a per-pixel loss weight ``weight`` ``[B, H, W]`` (uint8 x
    255): ``case``, the case's stored mean pairwise Dice of the teachers, everywhere; ``pixel``, the share of
    teachers whose arg-max names the target's class at that pixel (``fusion.pixel_agreement``). Teachers that
    cover only some classes store ``teacher_shapes`` ``[C_t, H, W]`` maps; ``coverage`` says which
    (``parquet.coverage``; None when every teacher covers every class). ``with_teachers`` adds ``teachers``
    ``[B, T, C, H, W]``: each teacher's stored map in the union layout (zeros at classes it does not cover), for
    the per-teacher loss (``fusion.target: teachers``).
    """
    out = {"image": ann.from_bytes(batch["image"], image_shape, "float16").astype(np.float32)}
    probs: list[np.ndarray] = []
    if rule is not None or agreement == "pixel" or with_teachers:
        shapes = teacher_shapes or [tuple(label_shape)] * len(teachers)
        probs = [ann.from_bytes(batch[ann.prob_column(t)], shape, prob_dtype)
                 for t, shape in zip(teachers, shapes)]  # T x [B, C_t, H, W]
    if rule is None:
        out["target"] = ann.from_bytes(batch["soft_label"], label_shape, prob_dtype)
    else:
        from nakt_ray.fusion import fuse_teachers

        out["target"] = ann.quantize(fuse_teachers([ann.dequantize(p) for p in probs], coverage, rule, weights),
                                     prob_dtype)
    if with_teachers:
        n, k = len(out["image"]), label_shape[0]
        cov = np.ones((len(probs), k), bool) if coverage is None else np.asarray(coverage, bool)
        union = np.zeros((n, len(probs), *label_shape), dtype=probs[0].dtype)
        for t, p in enumerate(probs):
            union[:, t, cov[t]] = p
        out["teachers"] = union
    if agreement == "case":
        agree = np.nan_to_num(np.asarray(batch["agreement"], dtype=np.float32), nan=1.0)
        out["weight"] = np.broadcast_to((np.clip(agree, 0, 1) * 255).round().astype(np.uint8)[:, None, None],
                                        (len(agree), *label_shape[1:])).copy()
    elif agreement == "pixel":
        from nakt_ray.fusion import pixel_agreement

        share = pixel_agreement(probs, out["target"].argmax(1), coverage, class_axis=1)  # [B, H, W]
        out["weight"] = (share * 255).round().astype(np.uint8)
    return out


def annotation_columns(manifest: dict[str, Any], rule: str | None, agreement: str = "none",
                       with_teachers: bool = False) -> list[str]:
    """The Parquet columns :func:`annotation_batch` needs."""
    teachers = [t["name"] for t in manifest["teachers"]]
    maps = rule or agreement == "pixel" or with_teachers
    columns = ["status", "image"] + ([ann.prob_column(t) for t in teachers] if maps else [])
    if rule is None:
        columns.append("soft_label")
    if agreement == "case":
        columns.append("agreement")
    return columns


# Rows decoded per Ray Data task when streaming an annotation set: about this many bytes of output per task.
DECODE_BYTES = 16 * 2**20


def decode_rows(manifest: dict[str, Any], batch_size: int) -> int:
    """Rows per decode task for an annotation set: enough for ~``DECODE_BYTES`` of output, at least a batch.

    The decode is cheap (a copy out of Parquet bytes); the cost is per task. Decoding in training batches (8 rows)
    ran ~100 tasks per HC18 epoch at ~150 ms of scheduling each on 2 cores, 15 s an epoch for 0.3 s of work, and
    left Ray Train at 0.4x a plain loop (decision 35). The training batch size is set by the consumer.
    """
    return max(batch_size, min(1024, DECODE_BYTES // decoded_row_bytes(manifest)))


def decoded_row_bytes(manifest: dict[str, Any]) -> int:
    """Bytes of one decoded training row of an annotation set (float32 image, uint8/float16 target)."""
    target = 2 if manifest.get("prob_dtype") == "float16" else 1
    return max(1, 4 * int(np.prod(manifest["image_shape"])) + target * int(np.prod(manifest["label_shape"])))


def annotation_dataset(annotations_dir: str, rule: str | None = None, weights: list[float] | None = None,
                       batch_size: int = 32, agreement: str = "none", shuffle: bool = False,
                       seed: int | None = None, teachers: bool = False):
    """The ``ok`` rows of an annotation set as a streaming Ray Dataset with ``image`` and ``target`` columns
    (and ``weight`` with ``agreement``), read from its Parquet files; ``shuffle`` randomises the file order
    every epoch (with a local shuffle buffer in the consumer, a cheap per-epoch shuffle), reproducibly when a
    ``seed`` is given. ``teachers`` adds each teacher's map (``annotation_batch``'s ``with_teachers``)."""
    from ray.data import FileShuffleConfig
    from ray.data.expressions import col

    manifest = ann.read_manifest(annotations_dir)
    if agreement not in ("none", "case", "pixel"):
        raise ValueError(f"agreement weighting {agreement!r}: expected none, case or pixel")
    ds = read_parquet(ann.parquet_files(annotations_dir),
                      columns=annotation_columns(manifest, rule, agreement, teachers),
                      shuffle=(FileShuffleConfig(seed=seed) if seed is not None else "files") if shuffle else None)
    ds = ds.filter(expr=col("status") == "ok", num_cpus=LIGHT_CPU)
    return ds.map_batches(annotation_batch, batch_size=decode_rows(manifest, batch_size), num_cpus=0.25,
                          fn_kwargs=dict(image_shape=tuple(manifest["image_shape"]),
                                         label_shape=tuple(manifest["label_shape"]),
                                         teachers=[t["name"] for t in manifest["teachers"]],
                                         rule=rule, weights=weights, prob_dtype=manifest["prob_dtype"],
                                         agreement=agreement, teacher_shapes=ann.teacher_shapes(manifest),
                                         coverage=ann.coverage(manifest), with_teachers=teachers))

"""Annotation: stream a transferal set through one Ray Data actor pool per teacher, fuse, write Parquet.

    cases -> decode + preprocess (CPU tasks) -> teacher 1 pool -> ... -> teacher T pool -> fuse (tasks) -> Parquet

Each teacher pool is ``map_batches(TeacherPredictor, compute=ActorPoolStrategy(size=actors))`` with the
teacher's own batch size, CPUs and GPUs. A case that fails anywhere keeps its row with ``status = "error"`` and the
reason, so the written set accounts for every input case exactly once (checked before the summary is written).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nakt_ray import annotations as ann
from nakt_ray.checkpoint import load_model, read_spec

# Shared with the student / evaluation pipelines: columns the teachers read and add.
TEACHER_INPUT = "image"


class TeacherError(ValueError):
    """A teacher whose output or configuration does not fit the run; the message names the teacher."""


class TeacherPredictor:
    """Ray Data actor UDF: hosts one teacher on its device and adds its probabilities to each batch.

    Adds column ``prob__<name>``: uint8 ``[B, C, H, W]`` (probabilities x 255) at the batch's image size. Rows
    with an ``error`` are passed through with zeros. A teacher whose own input size differs from the run's gets
    its input resampled to its size and its output resampled back.
    """

    def __init__(self, checkpoint: str, name: str, num_classes: int, in_channels: int, num_threads: int = 1):
        torch.set_num_threads(num_threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.spec = load_model(checkpoint, self.device)
        self.name = name
        if self.spec.num_classes != num_classes:
            raise TeacherError(f"teacher {name!r} ({checkpoint}) predicts {self.spec.num_classes} classes "
                               f"{list(self.spec.labels)}; the run expects {num_classes}")
        if self.spec.in_channels != in_channels:
            raise TeacherError(f"teacher {name!r} ({checkpoint}) takes {self.spec.in_channels} input channels; "
                               f"the run's preprocessing gives {in_channels}")
        self.column = ann.prob_column(name)
        self.amp = self.device.type == "cuda"

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> np.ndarray:
        """Images ``[B, C_in, H, W]`` float32 -> probabilities ``[B, C, H, W]`` float32."""
        x = torch.from_numpy(images).to(self.device, non_blocking=True)
        size = tuple(x.shape[-2:])
        own = tuple(self.spec.preprocess.size)
        if own != size:
            x = torch.nn.functional.interpolate(x, size=own, mode="bilinear", align_corners=False)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.model(x)
        logits = logits.float()
        if logits.ndim != 4 or logits.shape[:2] != (x.shape[0], self.spec.num_classes) or tuple(logits.shape[-2:]) != own:
            raise TeacherError(f"teacher {self.name!r} returned shape {tuple(logits.shape)}; expected "
                               f"({x.shape[0]}, {self.spec.num_classes}, {own[0]}, {own[1]})")
        probs = logits.softmax(1)
        if own != size:
            probs = torch.nn.functional.interpolate(probs, size=size, mode="bilinear", align_corners=False)
        if not torch.isfinite(probs).all():
            raise TeacherError(f"teacher {self.name!r} produced NaN or infinite values")
        return probs.cpu().numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["error"] == ""
        images = batch[TEACHER_INPUT]
        out = np.zeros((len(images), self.spec.num_classes, *images.shape[-2:]), dtype=np.uint8)
        if ok.any():
            out[ok] = ann.quantize(self.predict(np.ascontiguousarray(images[ok], dtype=np.float32)))
        batch[self.column] = out
        return batch


def fuse_batch(batch: dict[str, np.ndarray], *, teachers: list[str], rule: str,
               weights: list[float] | None) -> dict[str, np.ndarray]:
    """Fuse the teachers' columns into ``soft_label``/``hard_label`` plus quality figures, as Parquet-ready rows.

    Fusion reads the same quantised maps that are stored, so re-fusing the stored set later gives the same result.
    """
    ok = batch["error"] == ""
    out = {
        "case_id": batch["case_id"], "source": batch["source"],
        "status": np.where(ok, "ok", "error").astype(object), "error": batch["error"],
        "geometry": batch["geometry"],
        "image": ann.to_bytes(batch["image"].astype(np.float16)),
    }
    for t in teachers:
        out[ann.prob_column(t)] = ann.to_bytes(batch[ann.prob_column(t)])
    probs_q = np.stack([batch[ann.prob_column(t)] for t in teachers], axis=1)  # [B, T, C, H, W] uint8
    out.update(ann.fused_columns(probs_q, ok, rule, weights))
    for key in ("image", *(ann.prob_column(t) for t in teachers)):
        out[key][~ok] = b""  # failed cases carry no arrays
    return out


@dataclass(frozen=True)
class TeacherRef:
    """A teacher as the annotation pipeline sees it: a model file and its actor pool's resources."""

    name: str
    checkpoint: str
    actors: int = 1
    batch_size: int = 8
    num_cpus: float = 0.5
    num_gpus: float | None = None


# CPUs kept free of actor pools for the decode and fuse tasks: actors that hold every CPU starve the tasks that
# feed them and the pipeline hangs without an error (PLATFORM_NOTES, deadlock 1).
TASK_CPU_RESERVE = 0.5


def pool_cpu_scale(teachers: list[TeacherRef]) -> float:
    """Factor (<= 1) applied to every pool's ``num_cpus`` so all actors together leave room for the tasks.

    Ray's CPU figure is a scheduling quantity, not a thread limit, so scaling it down changes placement only.
    """
    import warnings

    import ray

    total = ray.cluster_resources().get("CPU", 0)
    wanted = sum(t.num_cpus * t.actors for t in teachers)
    room = max(total - TASK_CPU_RESERVE, 0.05 * len(teachers))
    if wanted <= room:
        return 1.0
    warnings.warn(f"teacher pools ask for {wanted:g} CPUs but the cluster has {total:g}; scaling every pool's "
                  f"num_cpus by {room / wanted:.2f} so decoding tasks can still run", stacklevel=2)
    return room / wanted


def add_teacher_pools(ds: Any, teachers: list[TeacherRef], num_classes: int, in_channels: int) -> Any:
    """Append one actor pool per teacher to ``ds`` (the ``image``/``error`` columns of :func:`decode_batch`)."""
    from ray.data import ActorPoolStrategy

    from nakt_ray.runtime import cluster_has_gpus

    gpus = cluster_has_gpus()
    scale = pool_cpu_scale(teachers)
    for t in teachers:
        num_gpus = t.num_gpus if t.num_gpus is not None else (1.0 if gpus else 0.0)
        ds = ds.map_batches(
            TeacherPredictor,
            fn_constructor_kwargs=dict(checkpoint=str(t.checkpoint), name=t.name, num_classes=num_classes,
                                       in_channels=in_channels, num_threads=max(1, int(t.num_cpus))),
            compute=ActorPoolStrategy(size=t.actors),
            batch_size=t.batch_size,
            num_cpus=t.num_cpus * scale,
            num_gpus=num_gpus,
        )
    return ds


def check_teachers(teachers: list[TeacherRef], num_classes: int, in_channels: int) -> list[dict[str, Any]]:
    """Open every teacher's model file in the driver before any actor starts; returns their lineage records."""
    from nakt_ray.checkpoint import fingerprint

    records = []
    for t in teachers:
        spec = read_spec(t.checkpoint)
        if spec.num_classes != num_classes:
            raise TeacherError(f"teacher {t.name!r} ({t.checkpoint}) predicts {spec.num_classes} classes "
                               f"{list(spec.labels)}, but the run (and the other teachers) use {num_classes}")
        if spec.in_channels != in_channels:
            raise TeacherError(f"teacher {t.name!r} ({t.checkpoint}) takes {spec.in_channels} input channels; "
                               f"the run's preprocessing gives {in_channels}")
        records.append({"name": t.name, "checkpoint": str(Path(t.checkpoint).resolve()), "arch": spec.arch,
                        "arch_args": spec.arch_args, "labels": list(spec.labels),
                        "fingerprint": fingerprint(t.checkpoint), "input_size": list(spec.preprocess.size)})
    return records


def annotate(cfg: Any, transferal: str | None = None, output: str | None = None) -> dict[str, Any]:
    """Run the annotation pipeline for ``cfg`` (a RunConfig); returns the summary (also saved as JSON).

    Raises if the written set does not account for every input case exactly once.
    """
    import ray

    from nakt_ray.datasets import cases_dataset, decode_batch
    from nakt_ray.sources import list_cases

    source = transferal or cfg.data.transferal
    if not source:
        raise ValueError("no transferal data: set data.transferal in the config or pass --transferal")
    out_dir = Path(output) if output else cfg.annotations_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"annotation output {str(out_dir)!r} is not empty; remove it or choose another")
    out_dir.mkdir(parents=True, exist_ok=True)
    teachers = [TeacherRef(t.name, str(cfg.teacher_checkpoint(t)), t.actors, t.batch_size, t.num_cpus, t.num_gpus)
                for t in cfg.teachers]
    pre = cfg.preprocess
    records = check_teachers(teachers, cfg.data.num_classes, pre.in_channels)
    cases = list_cases(source)
    weights = list(cfg.fusion.weights) if cfg.fusion.weights else None
    manifest = {
        "transferal": str(Path(source).resolve()), "labels": list(cfg.data.labels),
        "image_shape": [pre.in_channels, *pre.size], "image_dtype": "float16",
        "label_shape": [cfg.data.num_classes, *pre.size], "prob_dtype": "uint8", "prob_scale": 255,
        "preprocess": cfg.to_dict()["preprocess"], "teachers": records,
        "fusion": {"rule": cfg.fusion.rule, "weights": weights},
    }
    t0 = time.perf_counter()

    # 1. Decode and preprocess in CPU tasks; 2. one actor pool per teacher; 3. fuse in tasks; 4. write Parquet.
    ds = cases_dataset(cases, rows_per_block=cfg.annotate.decode_batch_size)
    ds = ds.map_batches(decode_batch, batch_size=cfg.annotate.decode_batch_size, num_cpus=0.25,
                        fn_kwargs=dict(preprocess=pre, num_classes=cfg.data.num_classes))
    ds = add_teacher_pools(ds, teachers, cfg.data.num_classes, pre.in_channels)
    names = [t.name for t in teachers]
    ds = ds.map_batches(fuse_batch, batch_size=cfg.annotate.decode_batch_size, num_cpus=0.25,
                        fn_kwargs=dict(teachers=names, rule=cfg.fusion.rule, weights=weights))
    ds.write_parquet(str(out_dir.resolve()), min_rows_per_file=cfg.annotate.rows_per_file,
                     schema=ann.arrow_schema(names, manifest))
    wall = time.perf_counter() - t0

    # 5. Account for every case, write the manifest, the summary and the errors table.
    table = ann.read_table(out_dir, columns=["case_id", "status", "error"]).to_pydict()
    expected = {c.case_id for c in cases}
    seen = table["case_id"]
    if len(seen) != len(set(seen)) or set(seen) != expected:
        raise RuntimeError(f"annotation accounting failed in {out_dir}: {len(expected)} input cases, "
                           f"{len(seen)} rows, {len(set(seen))} distinct, {len(expected - set(seen))} missing")
    errors = [{"case_id": c, "stage": e.split(":", 1)[0], "reason": e}
              for c, s, e in zip(table["case_id"], table["status"], table["error"]) if s != "ok"]
    ann.write_manifest(out_dir, {**manifest, "num_cases": len(cases)})
    summary = {"cases_read": len(cases), "annotated": len(cases) - len(errors), "failed": len(errors),
               "wall_s": round(wall, 2), "images_per_s": round(len(cases) / wall, 2), "output": str(out_dir),
               "teachers": names, "fusion": cfg.fusion.rule}
    (out_dir / ann.SUMMARY).write_text(json.dumps(summary, indent=2))
    (out_dir / "errors.json").write_text(json.dumps(errors, indent=2))
    return summary

"""Annotation: stream a transferal set through the teachers' Ray Data actor pools, fuse, write Parquet.

    cases -> decode + preprocess (CPU tasks) -> teacher 1 pool -> ... -> teacher T pool -> fuse (tasks) -> Parquet

Each teacher pool is ``map_batches(TeacherPredictor, compute=ActorPoolStrategy(size=actors))`` with the
teacher's own batch size, CPUs and GPUs (``annotate.pools: per_teacher``, the layout on GPU clusters). On a
cluster without GPUs the default is one shared pool instead, whose actors (:class:`EnsemblePredictor`, one per
4 CPUs) each host every teacher (``annotate.pools: shared``; decision 39):

    cases -> decode + preprocess (CPU tasks) -> ensemble pool (teachers 1..T in each actor) -> fuse -> Parquet

A case that fails anywhere keeps its row with ``status = "error"`` and the reason, so the written set accounts for
every input case exactly once (checked before the summary is written).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nakt_ray.annotation import parquet as ann
from nakt_ray.runtime import storage
from nakt_ray.teachers.sources import InferenceOptions, LoadedTeacher, TeacherLoadError, load_teacher

# Shared with the student / evaluation pipelines: columns the teachers read and add.
TEACHER_INPUT = "image"


# A teacher whose output or configuration does not fit; the message names the teacher and its source.
TeacherError = TeacherLoadError


class TeacherPredictor:
    """Ray Data actor UDF: hosts one teacher on its device and adds its probabilities to each batch.

    The teacher can come from anywhere ``teacher_sources.load_teacher`` reads (a nakt model file, TorchScript or
    ONNX with a description YAML, an MLflow model URI). Adds column ``prob__<name>``: probabilities
    ``[B, C, H, W]`` (uint8 x 255, or float16) at the batch's image size; a teacher with another input size gets its input resampled
    (or tiled, with sliding-window inference) and its output mapped back. Rows with an ``error`` pass through
    with zeros.
    """

    def __init__(self, checkpoint: str, name: str, num_classes: int, in_channels: int, num_threads: int = 1,
                 options: InferenceOptions | None = None, tracking_uri: str | None = None,
                 prob_dtype: str = "uint8"):
        torch.set_num_threads(num_threads)
        _use_tracking_uri(checkpoint, tracking_uri)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.teacher = load_teacher(name, checkpoint, device, options)
        check_fits(self.teacher, num_classes, in_channels)
        self.name = name
        self.column = ann.prob_column(name)
        self.prob_dtype = prob_dtype

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Images ``[B, C_in, H, W]`` float32 -> probabilities ``[B, C, H, W]`` float32."""
        x = torch.from_numpy(images)
        if self.teacher.device.type == "cuda":
            x = x.pin_memory().to(self.teacher.device, non_blocking=True)
        return self.teacher.predict(x).cpu().numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["error"] == ""
        images = batch[TEACHER_INPUT]
        out = np.zeros((len(images), self.teacher.num_classes, *images.shape[-2:]), dtype=self.prob_dtype)
        if ok.any():
            out[ok] = ann.quantize(self.predict(np.ascontiguousarray(images[ok], dtype=np.float32)), self.prob_dtype)
        batch[self.column] = out
        return batch


class EnsemblePredictor:
    """Ray Data actor UDF of the ``shared`` layout: hosts every teacher and adds each one's ``prob__<name>``
    column, running the teachers one after another on a batch, each in slices of its own batch size.

    ``teachers`` are :class:`TeacherPredictor` keyword arguments, one dict per teacher; ``predictor_cls`` builds
    each (a subclass, e.g. for fault injection, works as in the ``per_teacher`` layout). Rows with an ``error``
    pass through with zeros, as there.
    """

    def __init__(self, teachers: list[dict[str, Any]], batch_sizes: list[int], num_threads: int = 1,
                 predictor_cls: type = TeacherPredictor):
        self.predictors = [predictor_cls(**kw, num_threads=num_threads) for kw in teachers]
        self.batch_sizes = batch_sizes

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["error"])
        for predictor, size in zip(self.predictors, self.batch_sizes):
            parts = [predictor({TEACHER_INPUT: batch[TEACHER_INPUT][i:i + size], "error": batch["error"][i:i + size]})
                     [predictor.column] for i in range(0, max(n, 1), size)]
            batch[predictor.column] = np.concatenate(parts)
        return batch


def _use_tracking_uri(source: str, uri: str | None) -> None:
    """MLflow teachers (``models:/``, ``runs:/``) are resolved against ``uri`` (set in this process)."""
    if uri and str(source).startswith(("models:/", "runs:/")):
        from nakt_ray.tracking import use_uri

        use_uri(uri)


def check_fits(teacher: LoadedTeacher, num_classes: int, in_channels: int) -> None:
    """Raise :data:`TeacherError` when a loaded teacher's classes or input channels do not fit the run."""
    if teacher.num_classes != num_classes:
        raise TeacherError(f"teacher {teacher.name!r} ({teacher.source}) predicts {teacher.num_classes} classes "
                           f"{list(teacher.labels)}, but the run (and the other teachers) use {num_classes}")
    if teacher.in_channels != in_channels:
        raise TeacherError(f"teacher {teacher.name!r} ({teacher.source}) takes {teacher.in_channels} input "
                           f"channels; the run's preprocessing gives {in_channels}")


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
    options: InferenceOptions | None = None


# CPUs kept free of actor pools for the decode and fuse tasks: actors that hold every CPU starve the tasks that
# feed them and the pipeline hangs without an error (PLATFORM_NOTES, deadlock 1).
TASK_CPU_RESERVE = 0.5
# Share of the cluster's CPUs (as Ray counts them) that the actor pools leave to the decode, fuse and write tasks.
# Ray Data budgets each operator from what the actors do not hold: with the actors at 1.5 of 2 CPUs, decoding and
# fusion ran one task at a time and paced the whole run (measured, 600 HC18 images: decision 39). A Ray CPU is a
# scheduling figure, not a thread limit, so this changes placement and budgets, not how many threads compute.
TASK_CPU_SHARE = 0.5
# Torch threads per actor of the shared layout on CPU: one actor per this many CPUs (at least one actor).
SHARED_ACTOR_THREADS = 4


def pool_cpu_scale(teachers: list[TeacherRef]) -> float:
    """Factor (<= 1) applied to every pool's ``num_cpus`` so all actors together leave ``TASK_CPU_SHARE`` of the
    cluster's CPUs to the tasks. Warns when the pools ask for more than the cluster has.
    """
    import warnings

    import ray

    total = ray.cluster_resources().get("CPU", 0)
    wanted = sum(t.num_cpus * t.actors for t in teachers)
    room = max(total * (1 - TASK_CPU_SHARE), 0.05 * len(teachers))
    if wanted > total - TASK_CPU_RESERVE:
        warnings.warn(f"teacher pools ask for {wanted:g} CPUs but the cluster has {total:g}; scaling every pool's "
                      f"num_cpus by {room / wanted:.2f} so decoding tasks can still run", stacklevel=2)
    return min(1.0, room / wanted)


def shared_pool_size(cpus: float, gpus: float, requested: int | None = None) -> tuple[int, int, float]:
    """Actors, torch threads per actor and Ray CPUs per actor of the shared layout on a cluster with ``cpus`` CPUs
    and ``gpus`` GPUs: one actor per GPU, else one per ``SHARED_ACTOR_THREADS`` CPUs (one with 2 threads on a
    2-core machine: one process starts instead of one per teacher, ~5 s of CPU each for torch and MONAI), unless
    ``requested``."""
    actors = requested or (int(gpus) if gpus >= 1 else max(1, int(cpus) // SHARED_ACTOR_THREADS))
    threads = max(1, int(cpus) // actors)
    return actors, threads, max(0.05, cpus * (1 - TASK_CPU_SHARE) / actors)


def light_task_pool():
    """At most one decode (or fuse) task per cluster CPU at a time.

    The tasks ask for ``LIGHT_CPU`` so they are not starved beside the actor pools, but Ray would then run four per
    CPU, each in a worker process of its own: on 2 cores, 8 task workers that each spend ~3 s of CPU starting
    (Ray, torch) for a few seconds of decoding (measured: 11 worker processes in a 600-image run).
    """
    import ray
    from ray.data import TaskPoolStrategy

    return TaskPoolStrategy(size=max(1, int(ray.cluster_resources().get("CPU", 1))))


# A teacher actor that dies (OOM, a crashed GPU, a killed process, a lost node) is restarted this many times;
# beyond that the run fails loudly instead of looping on a batch that kills every actor. The batch itself is
# retried without a count of its own (max_task_retries=-1), so the restart bound is the only one: a bounded retry
# count is used up within seconds while the cluster has not yet noticed that a node is gone (every retry meets
# "actor temporarily unavailable"), which failed the whole run when a worker node was lost (measured, Ray 2.60;
# tests/test_jobs_cluster.py).
ACTOR_RESTARTS = 3


def pool_layout(pools: str) -> str:
    """``annotate.pools`` resolved on the connected cluster: ``auto`` is ``per_teacher`` with GPUs, else ``shared``."""
    from nakt_ray.runtime.cluster import cluster_has_gpus

    if pools not in ("auto", "per_teacher", "shared"):
        raise ValueError(f"annotate.pools {pools!r}: expected auto, per_teacher or shared")
    if pools != "auto":
        return pools
    return "per_teacher" if cluster_has_gpus() else "shared"


def add_teacher_pools(ds: Any, teachers: list[TeacherRef], num_classes: int, in_channels: int,
                      tracking_uri: str | None = None, predictor_cls: type = TeacherPredictor,
                      prob_dtype: str = "uint8", pools: str = "per_teacher",
                      shared_actors: int | None = None) -> Any:
    """Append the teachers' actor pools to ``ds`` (the ``image``/``error`` columns of :func:`decode_batch`):
    one pool per teacher, or with ``pools="shared"`` one pool of :class:`EnsemblePredictor` actors
    (``shared_actors`` of them; see ``config.AnnotateConfig``). Either way every teacher's column is added.

    ``predictor_cls`` is the per-teacher class (:class:`TeacherPredictor` or a subclass, e.g. for fault injection).
    """
    from ray.data import ActorPoolStrategy

    from nakt_ray.runtime.cluster import cluster_has_gpus

    def teacher_kwargs(t: TeacherRef) -> dict[str, Any]:
        return dict(checkpoint=str(t.checkpoint), name=t.name, num_classes=num_classes, in_channels=in_channels,
                    options=t.options, tracking_uri=tracking_uri, prob_dtype=prob_dtype)

    gpus = cluster_has_gpus()
    if pool_layout(pools) == "shared":
        # Every actor hosts all teachers (one per GPU, or one per few CPUs with that many torch threads), so the
        # cores are shared by whole batches instead of being time-shared by one process per teacher.
        import ray

        resources = ray.cluster_resources()
        size, threads, cpus = shared_pool_size(resources.get("CPU", 1), resources.get("GPU", 0), shared_actors)
        return ds.map_batches(
            EnsemblePredictor,
            fn_constructor_kwargs=dict(teachers=[teacher_kwargs(t) for t in teachers],
                                       batch_sizes=[t.batch_size for t in teachers], num_threads=threads,
                                       predictor_cls=predictor_cls),
            compute=ActorPoolStrategy(size=size),
            batch_size=max(t.batch_size for t in teachers),
            num_cpus=cpus,
            num_gpus=1.0 if gpus else 0.0,
            max_restarts=ACTOR_RESTARTS,
            max_task_retries=-1,
        )
    scale = pool_cpu_scale(teachers)
    for t in teachers:
        num_gpus = t.num_gpus if t.num_gpus is not None else (1.0 if gpus else 0.0)
        ds = ds.map_batches(
            predictor_cls,
            fn_constructor_kwargs=dict(**teacher_kwargs(t), num_threads=max(1, int(t.num_cpus))),
            compute=ActorPoolStrategy(size=t.actors),
            batch_size=t.batch_size,
            num_cpus=t.num_cpus * scale,
            num_gpus=num_gpus,
            max_restarts=ACTOR_RESTARTS,
            max_task_retries=-1,
        )
    return ds


def check_teachers(teachers: list[TeacherRef], num_classes: int, in_channels: int,
                   tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Load and probe every teacher once in the driver (on CPU) before any actor starts: a teacher that does not
    fit fails here, by name, not inside an actor. Returns their lineage records (``LoadedTeacher.describe``)."""
    records = []
    for t in teachers:
        _use_tracking_uri(t.checkpoint, tracking_uri)
        teacher = load_teacher(t.name, t.checkpoint, "cpu", t.options)
        check_fits(teacher, num_classes, in_channels)
        record = teacher.describe()
        record.pop("device")
        record["arch"] = teacher.details.get("arch", teacher.kind)
        records.append(record)
    return records


def inference_options(teacher: Any) -> InferenceOptions:
    """The inference options of a ``config.TeacherConfig``."""
    return InferenceOptions(sliding_window=teacher.sliding_window, overlap=teacher.overlap,
                            tta_flips=tuple(teacher.tta_flips), amp=teacher.amp)


def resume_state(out_dir: str | Path, manifest: dict[str, Any]) -> tuple[set[str], list[str]]:
    """What an interrupted run left in ``out_dir``: the case ids in its readable Parquet files.

    A file that cannot be read (cut off when the run was killed) is deleted, so its cases are annotated again.
    Files written with other teachers, fusion or preprocessing are refused: mixing them would corrupt the set.
    Returns ``(case ids done, names of the files discarded)``.
    """
    import posixpath

    import pyarrow.parquet as pq

    done: set[str] = set()
    discarded = []
    fs, files = storage.listing(out_dir, ".parquet")  # local or object storage alike
    for f in files:
        name = posixpath.basename(f)
        try:
            meta = json.loads(pq.read_schema(f, filesystem=fs).metadata[ann.METADATA_KEY])
            ids = pq.read_table(f, columns=["case_id"], filesystem=fs).column("case_id").to_pylist()
        except Exception:  # noqa: BLE001 - a truncated or empty file: redo its cases
            fs.delete_file(f)
            discarded.append(name)
            continue
        for key in ("teachers", "fusion", "preprocess", "labels", "prob_dtype"):
            ours = json.loads(json.dumps(manifest[key]))
            if meta.get(key) != ours:
                raise ValueError(f"cannot resume into {str(out_dir)!r}: {name} was written with other "
                                 f"{key} ({meta.get(key)!r}; this run: {ours!r})")
        repeated = done.intersection(ids)
        if repeated:
            raise RuntimeError(f"{str(out_dir)!r}: cases {sorted(repeated)[:5]} appear in more than one file")
        done.update(ids)
    return done, discarded


def _earlier_summaries(out_dir: str) -> list[dict[str, Any]]:
    """The summaries an interrupted or finished run left in ``out_dir`` (its own and those it kept), oldest first."""
    try:
        previous = json.loads(storage.read_text(storage.join(out_dir, ann.SUMMARY)))
    except (OSError, ValueError):  # none yet (FileNotFoundError), or unreadable
        return []
    return [*previous.pop("earlier_runs", []), previous]


def annotate(cfg: Any, transferal: str | None = None, output: str | None = None,
             predictor_cls: type = TeacherPredictor, resume: bool = False) -> dict[str, Any]:
    """Run the annotation pipeline for ``cfg`` (a RunConfig); returns the summary (also saved as JSON).

    With ``resume``, the cases already written to the output by an interrupted run are skipped (see
    :func:`resume_state`); the finished set is the same as that of an uninterrupted run. Raises if the written
    set does not account for every input case exactly once.
    """
    import ray

    from nakt_ray.runtime.cluster import LIGHT_CPU
    from nakt_ray.data.datasets import cases_dataset, decode_batch
    from nakt_ray.data.readers import list_cases

    source = transferal or cfg.data.transferal
    if not source:
        raise ValueError("no transferal data: set data.transferal in the config or pass --transferal")
    # A local path or an object-store URI (s3://, gs://, file://): written by Ray Data, read back through pyarrow.
    out_dir = str(output or cfg.annotations_dir)
    if not storage.is_empty(out_dir) and not resume:
        raise FileExistsError(f"annotation output {out_dir!r} is not empty; remove it, choose another, or "
                              "pass --resume to finish an interrupted run")
    storage.make_dirs(out_dir)
    teachers = [TeacherRef(t.name, str(cfg.teacher_checkpoint(t)), t.actors, t.batch_size, t.num_cpus, t.num_gpus,
                           inference_options(t)) for t in cfg.teachers]
    pre = cfg.preprocess
    from nakt_ray.tracking import tracking_uri

    uri = tracking_uri(cfg)
    t_probe = time.perf_counter()
    records = check_teachers(teachers, cfg.data.num_classes, pre.in_channels, uri)
    t_probe = time.perf_counter() - t_probe
    cases = list_cases(source)
    weights = list(cfg.fusion.weights) if cfg.fusion.weights else None
    manifest = {
        "transferal": str(Path(source).resolve()), "labels": list(cfg.data.labels),
        "image_shape": [pre.in_channels, *pre.size], "image_dtype": "float16",
        "label_shape": [cfg.data.num_classes, *pre.size], "prob_dtype": cfg.annotate.prob_dtype,
        "prob_scale": 255 if cfg.annotate.prob_dtype == "uint8" else 1,
        "preprocess": cfg.to_dict()["preprocess"], "teachers": records,
        "fusion": {"rule": cfg.fusion.rule, "weights": weights},
    }
    done, discarded = resume_state(out_dir, manifest) if resume else (set(), [])
    todo = [c for c in cases if c.case_id not in done]
    t0 = time.perf_counter()

    # 1. Decode and preprocess in CPU tasks; 2. the teachers' actor pool(s); 3. fuse in tasks; 4. write Parquet.
    names = [t.name for t in teachers]
    layout = pool_layout(cfg.annotate.pools)
    if todo:
        ds = cases_dataset(todo, rows_per_block=cfg.annotate.decode_batch_size)
        light = light_task_pool()
        ds = ds.map_batches(decode_batch, batch_size=cfg.annotate.decode_batch_size, num_cpus=LIGHT_CPU, compute=light,
                            fn_kwargs=dict(preprocess=pre, num_classes=cfg.data.num_classes))
        ds = add_teacher_pools(ds, teachers, cfg.data.num_classes, pre.in_channels, uri, predictor_cls,
                               cfg.annotate.prob_dtype, layout, cfg.annotate.shared_actors)
        ds = ds.map_batches(fuse_batch, batch_size=cfg.annotate.decode_batch_size, num_cpus=LIGHT_CPU, compute=light,
                            fn_kwargs=dict(teachers=names, rule=cfg.fusion.rule, weights=weights))
        ds.write_parquet(storage.absolute(out_dir), min_rows_per_file=cfg.annotate.rows_per_file,
                         schema=ann.arrow_schema(names, manifest), ray_remote_args={"num_cpus": LIGHT_CPU})
    wall = time.perf_counter() - t0

    # 5. Account for every case, write the manifest, the summary and the errors table.
    t_account = time.perf_counter()
    table = ann.read_table(out_dir, columns=["case_id", "status", "error"]).to_pydict()
    expected = {c.case_id for c in cases}
    seen = table["case_id"]
    if len(seen) != len(set(seen)) or set(seen) != expected:
        raise RuntimeError(f"annotation accounting failed in {out_dir}: {len(expected)} input cases, "
                           f"{len(seen)} rows, {len(set(seen))} distinct, {len(expected - set(seen))} missing")
    errors = [{"case_id": c, "stage": e.split(":", 1)[0], "reason": e}
              for c, s, e in zip(table["case_id"], table["status"], table["error"]) if s != "ok"]
    ann.write_manifest(out_dir, {**manifest, "num_cases": len(cases)})
    # A resumed run keeps the figures of the runs before it (a resume over a finished set annotates nothing).
    earlier = _earlier_summaries(out_dir) if resume else []
    summary = {"cases_read": len(cases), "annotated": len(cases) - len(errors), "failed": len(errors),
               "wall_s": round(wall, 2), "images_per_s": round(len(todo) / wall, 2) if todo else None,
               "cases_this_run": len(todo), "output": str(out_dir),
               "resumed_cases": len(done), "discarded_files": discarded,
               "teachers": names, "fusion": cfg.fusion.rule, "pools": layout,
               "phases_s": {"probe_teachers": round(t_probe, 2), "pipeline": round(wall, 2),
                            "accounting": round(time.perf_counter() - t_account, 2)},
               **({"earlier_runs": earlier} if earlier else {})}
    storage.write_text(storage.join(out_dir, ann.SUMMARY), json.dumps(summary, indent=2))
    storage.write_text(storage.join(out_dir, "errors.json"), json.dumps(errors, indent=2))
    return summary

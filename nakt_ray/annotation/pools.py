"""The teachers' Ray Data actor pools, shared by annotation (``nakt annotate``) and evaluation (``nakt evaluate``).

A teacher enters as a :class:`TeacherRef` (its source, its pool's resources, its inference options), made from
a config's ``TeacherConfig`` by :func:`teacher_ref`, the one place that reads a teacher's pool and inference
settings. :func:`add_teacher_pools` appends the pools to a dataset of decoded cases (an ``image`` and an
``error`` column) in either layout:

- ``per_teacher`` (the default on GPU clusters): one ``map_batches(TeacherPredictor,
  compute=ActorPoolStrategy(size=actors))`` per teacher, with the teacher's own batch size, CPUs and GPUs;
- ``shared`` (the default without GPUs): one pool whose actors (:class:`EnsemblePredictor`, one per
  ``SHARED_ACTOR_THREADS`` CPUs or one per GPU) each host every teacher (``docs/decisions.md``, 39).

Either way each teacher adds its column ``prob__<name>``: probabilities ``[B, C_t, H, W]`` at the batch's image
size, over the run's classes that teacher covers (``C_t = len(classes)``: its own channels folded onto the union by
``fusion.labels``; all of the run's classes, in order, for a teacher with the run's labels). :func:`check_teachers`
loads every teacher once in the driver first and matches its labels to the run's, so a teacher that does not fit
the run fails by name before any actor starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nakt_ray.annotation import parquet as ann
from nakt_ray.errors import ConfigError, TeacherLoadError, TeacherOutputError, error
from nakt_ray.fusion.labels import LabelMap, fold_channels, map_label_spaces
from nakt_ray.runtime.lean_imports import in_ray_actor
from nakt_ray.teachers.description import InferenceOptions, teacher_where
from nakt_ray.teachers.inference import LoadedTeacher
from nakt_ray.teachers.registry import load_teacher, source_kind

if TYPE_CHECKING:
    from nakt_ray.config import RunConfig, TeacherConfig

# The column of decoded cases that the teachers read: preprocessed images [B, C_in, H, W] float32.
TEACHER_INPUT = "image"

# CPUs kept free of actor pools for the decode and fuse tasks: actors that hold every CPU starve the tasks that
# feed them and the pipeline hangs without an error (measured: read_parquet -> map_batches(ActorPoolStrategy(
# size=2), num_cpus=1) hangs on 2 CPUs: the actors hold both CPUs and the read task never runs).
TASK_CPU_RESERVE = 0.5
# Share of the cluster's CPUs (as Ray counts them) that the actor pools leave to the decode, fuse and write tasks.
# Ray Data budgets each operator from what the actors do not hold: with the actors at 1.5 of 2 CPUs, decoding and
# fusion ran one task at a time and paced the whole run (measured, 600 HC18 images: docs/decisions.md, 39). A Ray
# CPU is a scheduling figure, not a thread limit, so this changes placement and budgets, not how many threads
# compute.
TASK_CPU_SHARE = 0.5
# Torch threads per actor of the shared layout on CPU: one actor per this many CPUs (at least one actor).
SHARED_ACTOR_THREADS = 4
# Torch threads per actor of the inline layout on CPU (actors that decode and fuse too): one actor per CPU. Two
# single-thread processes keep 2 cores busier than one with two threads, whose intra-op barriers wait whenever
# another process takes a core (measured, 2,400 HC18 images: decision 76).
INLINE_ACTOR_THREADS = 1
# ``annotate.pools: auto`` picks the inline layout on a CPU cluster for an image run of at least this many cases:
# below it, the second actor's start (~2 s of a one-batch run on 2 cores) costs more than it saves (break-even
# ~150 cases of 3 small teachers at 128x128; decision 76).
INLINE_MIN_CASES = 256
# The same for a volume run: one single-thread actor per CPU from this many volumes (the inline layout's actors;
# preparation and fusion stay tasks, as they write the case's store). Measured at 40 volumes of 120x160x160: 0.84-0.92
# of the plain loop against 0.75 with one two-thread actor (decision 76); the 3D demo's 16 small volumes keep one.
INLINE_MIN_VOLUMES = 24
# A teacher actor that dies (OOM, a crashed GPU, a killed process, a lost node) is restarted this many times;
# beyond that the run fails loudly instead of looping on a batch that kills every actor. The batch itself is
# retried without a count of its own (max_task_retries=-1), so the restart bound is the only one: a bounded retry
# count is used up within seconds while the cluster has not yet noticed that a node is gone (every retry meets
# "actor temporarily unavailable"), which failed the whole run when a worker node was lost (measured, Ray 2.60;
# tests/test_jobs_cluster.py).
ACTOR_RESTARTS = 3
# A teacher whose output is unusable (NaN, ...) for some cases makes those cases error rows and the run goes on; one
# that fails on every case of this many batches in a row (per actor) stops the run: it is broken, not unlucky, and
# would otherwise turn the whole set into error rows (decision 48).
FAILED_BATCHES_TO_STOP = 3
# The stage named in the ``error`` column (and errors.json) for a case a teacher failed on.
PREDICT_STAGE = "predict"
POOL_LAYOUTS = ("auto", "per_teacher", "shared", "inline")


@dataclass(frozen=True)
class TeacherRef:
    """A teacher as its actor pool runs it: a source (any form ``load_teacher`` reads), the pool's resources
    (``num_gpus`` None: 1 on a cluster with GPUs, else 0), the inference options, and ``trust_pickle`` (the
    teacher's consent to loading a pickled MLflow model; ``load_teacher``)."""

    name: str
    checkpoint: str
    actors: int = 1
    batch_size: int = 8
    num_cpus: float = 0.5
    num_gpus: float | None = None
    options: InferenceOptions | None = None
    trust_pickle: bool = False


def inference_options(teacher: TeacherConfig) -> InferenceOptions:
    """The inference options of a ``config.TeacherConfig``: sliding window and its overlap, TTA flips, AMP."""
    return InferenceOptions(sliding_window=teacher.sliding_window, overlap=teacher.overlap,
                            tta_flips=tuple(teacher.tta_flips), amp=teacher.amp, slice_axis=teacher.slice_axis)


def teacher_ref(cfg: RunConfig, teacher: TeacherConfig, source: str | None = None) -> TeacherRef:
    """``teacher`` of the run ``cfg`` as annotation and evaluation run it: from ``source`` (default: its
    configured checkpoint, ``cfg.teacher_checkpoint``), with its pool's actors, batch size, CPUs and GPUs and its
    inference options."""
    return TeacherRef(teacher.name, str(source if source is not None else cfg.teacher_checkpoint(teacher)),
                      teacher.actors, teacher.batch_size, teacher.num_cpus, teacher.num_gpus,
                      inference_options(teacher), teacher.trust_pickle)


def check_fits(teacher: LoadedTeacher, in_channels: int, spatial_dims: int = 2,
               cells: list[int] | tuple[int, ...] | None = None) -> None:
    """Raise ``TeacherLoadError`` when a loaded teacher's input channels or dimensionality do not fit the run (a 2D
    teacher fits a 3D run: it annotates volumes slice by slice; a 3D teacher cannot annotate images), or its class
    count is not the one its label map (``cells``, from :func:`check_teachers`) was made for."""
    where = f"teacher {teacher.name!r} ({teacher.source})"
    if teacher.spatial_dims > spatial_dims:
        raise error(TeacherLoadError, where, f"is a 3D model (input_size {list(teacher.input_size)}) but the run is "
                                             "2D; a 3D teacher annotates volumes for a 3D student "
                                             "(student.arch_args.spatial_dims: 3)")
    if cells is not None and teacher.num_classes != len(cells):
        raise error(TeacherLoadError, where, f"predicts {teacher.num_classes} classes {list(teacher.labels)}, but "
                                             f"the run matched {len(cells)} labels of it (was the model replaced "
                                             "after the run started?)")
    if teacher.in_channels != in_channels:
        raise error(TeacherLoadError, where, f"takes {teacher.in_channels} input channels; the run's "
                                             f"preprocessing gives {in_channels}")


def lean_monai(teachers: list[tuple[str, str]], *, only_annotates: bool = False) -> bool:
    """Import MONAI without its optional integrations (``runtime/lean_imports.py``: ~2.5 CPU-s less) before
    ``teachers`` (name, source) load, when every teacher's kind runs on networks alone and this process does nothing
    else with MONAI: a Ray actor (dedicated to its teachers), or a process that says so (``only_annotates``: the
    ``nakt annotate`` command). Anywhere else (a driver that trains or evaluates next, the plain loop, a test) it does
    nothing. A source whose kind cannot be told is left to ``load_teacher`` to report. True if it imported."""
    from nakt_ray.runtime.lean_imports import import_monai_lean, lean_import_suits

    if not (only_annotates or in_ray_actor()):
        return False
    try:
        kinds = [source_kind(source, name) for name, source in teachers]
    except TeacherLoadError:
        return False
    return lean_import_suits(kinds) and import_monai_lean()


def _use_tracking_uri(source: str, uri: str | None) -> None:
    """MLflow teachers (``models:/``, ``runs:/``) are resolved against ``uri`` (set in this process)."""
    if uri and str(source).startswith(("models:/", "runs:/")):
        from nakt_ray.tracking import use_uri

        use_uri(uri)


class TeacherPredictor:
    """Ray Data actor UDF: hosts one teacher on its device and adds its probabilities to each batch.

    The teacher can come from anywhere ``load_teacher`` reads (a nakt model file, TorchScript or ONNX with a
    description YAML, an MLflow model URI). Adds column ``prob__<name>``: probabilities ``[B, C_t, H, W]`` (uint8
    x 255, or float16) at the batch's image size, its channels folded onto the run's classes it covers by
    ``classes`` / ``cells`` (a :class:`~nakt_ray.fusion.labels.LabelMap`; None: its own channels as they are); a
    teacher with another input size gets its input resampled (or tiled, with sliding-window inference) and its
    output mapped back. Rows with an ``error`` pass through with
    zeros. A case whose output is unusable (``TeacherOutputError``: NaN, ...) gets zeros and its ``error`` set to
    ``predict: teacher '<name>' (<source>): <reason>``; after ``FAILED_BATCHES_TO_STOP`` batches in a row in which
    every case failed, the actor raises ``TeacherOutputError`` and the run stops.
    """

    # Constructor arguments that belong to a run, not to the teacher: a kept host (annotation/hosts.py) is built
    # without them and gets them with each batch.
    RUN_KWARGS: tuple[str, ...] = ()

    def __init__(self, checkpoint: str, name: str, in_channels: int, num_threads: int = 1,
                 options: InferenceOptions | None = None, tracking_uri: str | None = None,
                 prob_dtype: str = "uint8", trust_pickle: bool = False, spatial_dims: int = 2,
                 classes: list[int] | None = None, cells: list[int] | None = None):
        torch.set_num_threads(num_threads)
        lean_monai([(name, checkpoint)])
        _use_tracking_uri(checkpoint, tracking_uri)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # The driver probed this source on CPU (check_teachers): an actor on CPU does not again; on a GPU it does
        # (half precision, another device's kernels).
        self.teacher = load_teacher(name, checkpoint, device, options, trust_pickle=trust_pickle,
                                    probe=device.type != "cpu" or not in_ray_actor())
        check_fits(self.teacher, in_channels, spatial_dims, cells)
        k = self.teacher.num_classes
        self.label_map = LabelMap(tuple(classes if classes is not None else range(k)),
                                  tuple(cells if cells is not None else range(k)), {})
        self.num_stored = len(self.label_map.classes)
        self.name = name
        self.column = ann.prob_column(name)
        self.prob_dtype = prob_dtype
        self.failed_streak = [0, 0]  # batches in a row in which every case failed, and their cases

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Images ``[B, C_in, H, W]`` float32 -> probabilities ``[B, C_t, H, W]`` float32 over its stored classes."""
        x = torch.from_numpy(images)
        if self.teacher.device.type == "cuda":
            x = x.pin_memory().to(self.teacher.device, non_blocking=True)
        return fold_channels(self.teacher.predict(x).cpu().numpy(), self.label_map, axis=1)

    def _predict_isolating(self, images: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Probabilities of ``images`` and, per image, "" or why the teacher's output for it cannot be used. A batch
        whose output fails the checks is predicted again image by image, so one bad case does not take the others
        with it (the cost, a batch run twice, is paid only by batches that hold a bad case)."""
        try:
            return self.predict(images), [""] * len(images)
        except TeacherOutputError as err:
            if len(images) == 1:
                return np.zeros((1, self.num_stored, *images.shape[-2:]), np.float32), [str(err)]
        probs = np.zeros((len(images), self.num_stored, *images.shape[-2:]), np.float32)
        reasons = []
        for i in range(len(images)):
            try:
                probs[i] = self.predict(images[i:i + 1])[0]
                reasons.append("")
            except TeacherOutputError as err:
                reasons.append(str(err))
        return probs, reasons

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = np.array(batch["error"], dtype=object)  # a copy: the cases this teacher fails on are marked
        rows = np.flatnonzero(errors == "")
        images = batch[TEACHER_INPUT]
        out = np.zeros((len(images), self.num_stored, *images.shape[-2:]), dtype=self.prob_dtype)
        if len(rows):
            probs, reasons = self._predict_isolating(np.ascontiguousarray(images[rows], dtype=np.float32))
            good = np.array([not why for why in reasons])
            out[rows[good]] = ann.quantize(probs[good], self.prob_dtype)
            for row, why in zip(rows, reasons):
                if why:
                    errors[row] = f"{PREDICT_STAGE}: {why}"
            self._count_failures(reasons)
        batch[self.column] = out
        batch["error"] = errors
        return batch

    def _count_failures(self, reasons: list[str]) -> None:
        """Stop the run (raise) once every case of ``FAILED_BATCHES_TO_STOP`` batches in a row has failed."""
        if not all(reasons):
            self.failed_streak = [0, 0]
            return
        self.failed_streak = [self.failed_streak[0] + 1, self.failed_streak[1] + len(reasons)]
        batches, cases = self.failed_streak
        if batches >= FAILED_BATCHES_TO_STOP:
            where = teacher_where(self.name, self.teacher.source)
            raise error(TeacherOutputError, where,
                        f"unusable output for every case of {batches} batches in a row ({cases} cases), so the "
                        f"run stops instead of recording every case as failed; the last: "
                        f"{reasons[-1].removeprefix(where + ': ')}")


class EnsemblePredictor:
    """Ray Data actor UDF of the ``shared`` layout: hosts every teacher and adds each one's ``prob__<name>``
    column, running the teachers one after another on a batch, each in slices of its own batch size.

    ``teachers`` are :class:`TeacherPredictor` keyword arguments, one dict per teacher; ``predictor_cls`` builds
    each (a subclass, e.g. for fault injection, works as in the ``per_teacher`` layout). Rows with an ``error``
    pass through with zeros, as there, and a case a teacher fails on is an error row for the teachers after it.
    """

    def __init__(self, teachers: list[dict[str, Any]], batch_sizes: list[int], num_threads: int = 1,
                 predictor_cls: type = TeacherPredictor):
        lean_monai([(kw["name"], kw["checkpoint"]) for kw in teachers])
        self.predictors = [predictor_cls(**kw, num_threads=num_threads) for kw in teachers]
        self.batch_sizes = batch_sizes

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["error"])
        for predictor, size in zip(self.predictors, self.batch_sizes):
            # the inputs, the errors so far and (volumes) each case's grid, which whole-image teachers read
            keys = [k for k in (TEACHER_INPUT, "error", "geometry") if k in batch]
            parts = [predictor({k: batch[k][i:i + size] for k in keys}) for i in range(0, max(n, 1), size)]
            batch[predictor.column] = np.concatenate([part[predictor.column] for part in parts])
            batch["error"] = np.concatenate([part["error"] for part in parts])  # cases it failed on, for the next
        return batch


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


def shared_pool_size(cpus: float, gpus: float, requested: int | None = None,
                     threads_per_actor: int = SHARED_ACTOR_THREADS) -> tuple[int, int, float]:
    """Actors, torch threads per actor and Ray CPUs per actor of the shared layout on a cluster with ``cpus`` CPUs
    and ``gpus`` GPUs: one actor per GPU, else one per ``threads_per_actor`` CPUs (``SHARED_ACTOR_THREADS``: one
    with 2 threads on a 2-core machine, so one process starts instead of one per teacher, ~5 s of CPU each for
    torch and MONAI; ``INLINE_ACTOR_THREADS`` for the inline layout), unless ``requested``."""
    actors = requested or (int(gpus) if gpus >= 1 else max(1, int(cpus) // threads_per_actor))
    threads = max(1, int(cpus) // actors)
    return actors, threads, max(0.05, cpus * (1 - TASK_CPU_SHARE) / actors)


def cluster_pool_size(requested: int | None = None,
                      threads_per_actor: int = SHARED_ACTOR_THREADS) -> tuple[int, int, float]:
    """:func:`shared_pool_size` on the connected cluster's CPUs and GPUs."""
    import ray

    resources = ray.cluster_resources()
    return shared_pool_size(resources.get("CPU", 1), resources.get("GPU", 0), requested, threads_per_actor)


def light_task_pool() -> Any:
    """At most one decode (or fuse) task per cluster CPU at a time (a ``ray.data.TaskPoolStrategy``).

    The tasks ask for ``LIGHT_CPU`` so they are not starved beside the actor pools, but Ray would then run four per
    CPU, each in a worker process of its own: on 2 cores, 8 task workers that each spend ~3 s of CPU starting
    (Ray, torch) for a few seconds of decoding (measured: 11 worker processes in a 600-image run).
    """
    import ray
    from ray.data import TaskPoolStrategy

    return TaskPoolStrategy(size=max(1, int(ray.cluster_resources().get("CPU", 1))))


def pool_layout(pools: str, cases: int | None = None, volumes: bool = False) -> str:
    """``annotate.pools`` resolved on the connected cluster: ``auto`` is ``per_teacher`` with GPUs; without, it is
    ``inline`` for an annotation run of at least ``INLINE_MIN_CASES`` images or ``INLINE_MIN_VOLUMES`` volumes
    (``cases``, ``volumes``) and ``shared`` otherwise. Evaluation passes no ``cases`` and runs an explicit
    ``inline`` as ``shared`` (:func:`add_teacher_pools`); volume runs and kept teachers run it as ``shared`` with
    the inline layout's actors (``pipeline._annotate``)."""
    from nakt_ray.runtime.cluster import cluster_has_gpus

    if pools not in POOL_LAYOUTS:
        raise error(ConfigError, f"annotate.pools {pools!r}", "expected auto, per_teacher, shared or inline")
    if pools != "auto":
        return pools
    if cluster_has_gpus():
        return "per_teacher"
    least = INLINE_MIN_VOLUMES if volumes else INLINE_MIN_CASES
    return "inline" if cases is not None and cases >= least else "shared"


def add_teacher_pools(ds: Any, teachers: list[TeacherRef], records: list[dict[str, Any]], in_channels: int,
                      tracking_uri: str | None = None, predictor_cls: type = TeacherPredictor,
                      prob_dtype: str = "uint8", pools: str = "per_teacher",
                      shared_actors: int | None = None, predictor_kwargs: dict[str, Any] | None = None) -> Any:
    """Append the teachers' actor pools to ``ds`` (the ``image``/``error`` columns of ``decode_batch``):
    one pool per teacher, or with ``pools="shared"`` one pool of :class:`EnsemblePredictor` actors
    (``shared_actors`` of them; see ``config.AnnotateConfig``). Either way every teacher's column is added.
    ``inline`` is run as ``shared`` here: decoding and fusion inside the actors is the annotation pipeline's
    (``pipeline.add_inline_pool``), for images.

    ``records`` are :func:`check_teachers`'s: each teacher's label map goes to its actors. ``predictor_cls`` is the
    per-teacher class (:class:`TeacherPredictor` or a subclass, e.g. for fault injection, or the volume
    predictor of ``annotation/volumes.py``); ``predictor_kwargs`` are passed to each one on top.

    Teachers kept loaded between runs take the same arguments: :func:`nakt_ray.annotation.hosts.add_teacher_stage`.
    """
    from ray.data import ActorPoolStrategy

    from nakt_ray.runtime.cluster import cluster_has_gpus

    def teacher_kwargs(t: TeacherRef) -> dict[str, Any]:
        return predictor_arguments(t, records, in_channels, tracking_uri, prob_dtype, predictor_kwargs)

    gpus = cluster_has_gpus()
    if pool_layout(pools) in ("shared", "inline"):
        # Every actor hosts all teachers (one per GPU, or one per few CPUs with that many torch threads), so the
        # cores are shared by whole batches instead of being time-shared by one process per teacher.
        size, threads, cpus = cluster_pool_size(shared_actors)
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


def predictor_arguments(t: TeacherRef, records: list[dict[str, Any]], in_channels: int, tracking_uri: str | None,
                        prob_dtype: str, predictor_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The keyword arguments of teacher ``t``'s predictor (:class:`TeacherPredictor` or a subclass), with its label
    map from ``records`` (:func:`check_teachers`) and ``predictor_kwargs`` on top."""
    m = next(r for r in records if r["name"] == t.name)
    return dict(checkpoint=str(t.checkpoint), name=t.name, in_channels=in_channels, options=t.options,
                tracking_uri=tracking_uri, prob_dtype=prob_dtype, trust_pickle=t.trust_pickle,
                classes=list(m["classes"]), cells=list(m["cells"]), **(predictor_kwargs or {}))


def check_teachers(teachers: list[TeacherRef], labels: list[str] | tuple[str, ...], in_channels: int,
                   tracking_uri: str | None = None, spatial_dims: int = 2,
                   aliases: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Load and probe every teacher once in the driver (on CPU), with its inference options, before any actor
    starts, and match its labels to the run's ``labels`` through ``aliases`` (``fusion.labels``): a teacher that
    does not fit fails here, by name, not inside an actor. Returns their lineage records
    (``LoadedTeacher.describe`` without the device, plus ``arch``, and the label map: ``classes`` (the run's
    classes it covers, the channels it stores), ``cells`` (its channel -> stored channel) and ``label_map``)."""
    records, own_labels = [], {}
    for t in teachers:
        _use_tracking_uri(t.checkpoint, tracking_uri)
        teacher = load_teacher(t.name, t.checkpoint, "cpu", t.options, trust_pickle=t.trust_pickle)
        check_fits(teacher, in_channels, spatial_dims)
        record = teacher.describe()
        record.pop("device")
        record["arch"] = teacher.details.get("arch", teacher.kind)
        records.append(record)
        own_labels[t.name] = teacher.labels
        if "labels" in teacher.details.get("inferred", ()):  # it declares none (an MLflow model without the tag):
            if teacher.num_classes != len(labels):             # its channels are taken as the run's, in order
                raise error(TeacherLoadError, teacher_where(t.name, teacher.source),
                            f"declares no labels and predicts {teacher.num_classes} classes; the run has "
                            f"{len(labels)} {list(labels)}: declare its labels (its description or MLflow tags)")
            own_labels[t.name] = tuple(labels)
    maps = map_label_spaces(own_labels, labels, aliases, where="the teachers' labels against config keys "
                                                                 "'data.labels' / 'data.label_aliases'")
    for record in records:
        m = maps[record["name"]]
        record.update(classes=list(m.classes), cells=list(m.cells), label_map=m.label_map)
    return records

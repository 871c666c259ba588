"""Annotation: stream a transferal set through the teachers' Ray Data actor pools, fuse, write Parquet.

    cases -> decode + preprocess (CPU tasks) -> teacher pool(s) (``pools.add_teacher_pools``) -> fuse (tasks) -> Parquet
    cases -> one pool whose actors decode, run every teacher and fuse (``inline``: :func:`add_inline_pool`) -> Parquet

The teachers' pools (one per teacher, or one shared pool whose actors host every teacher) are built by
:mod:`nakt_ray.annotation.pools`, which evaluation uses too; with ``annotate.keep_teachers_s`` the same layout runs in
hosts kept loaded between runs (:mod:`nakt_ray.annotation.hosts`). The ``inline`` layout (the default for large image
runs on CPUs, decision 76) keeps each batch in one process from decoding to fused rows. A case that fails anywhere keeps
its row with ``status = "error"`` and the reason, so the written set accounts for every input case exactly once (checked
before the summary is written). An interrupted run can be resumed into the same output (:func:`resume_state`).
"""
from __future__ import annotations

import gc
import json
import os
import re
import socket
import time
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nakt_ray.annotation import parquet as ann
from nakt_ray.annotation.hosts import add_teacher_stage
from nakt_ray.annotation.pools import (
    ACTOR_RESTARTS,
    INLINE_ACTOR_THREADS,
    PREDICT_STAGE,
    EnsemblePredictor,
    TeacherPredictor,
    check_teachers,
    cluster_pool_size,
    light_task_pool,
    pool_layout,
    predictor_arguments,
    teacher_ref,
)
from nakt_ray.errors import ConfigError, DataError, TeacherOutputError, error
from nakt_ray.runtime import storage

if TYPE_CHECKING:
    from nakt_ray.config import RunConfig


def fuse_batch(batch: dict[str, np.ndarray], *, teachers: list[str], rule: str,
               weights: list[float] | None, coverage: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Fuse the teachers' columns into ``soft_label``/``hard_label`` plus quality figures, as Parquet-ready rows.

    Fusion reads the same quantised maps that are stored, so re-fusing the stored set later gives the same result.
    ``coverage`` (``parquet.coverage``): the run's classes each teacher covers; None when all cover all.
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
    probs_q = [batch[ann.prob_column(t)] for t in teachers]  # T x [B, C_t, H, W] uint8
    out.update(ann.fused_columns(probs_q, ok, rule, weights, coverage))
    for key in ("image", *(ann.prob_column(t) for t in teachers)):
        out[key][~ok] = b""  # failed cases carry no arrays
    return out


class CaseAnnotator:
    """Ray Data actor UDF of the ``inline`` layout: decodes a batch of cases (``datasets.decode_batch``), runs every
    teacher on it (an :class:`~nakt_ray.annotation.pools.EnsemblePredictor`) and fuses it (:func:`fuse_batch`), so
    the batch never leaves the process between case paths and Parquet-ready rows. A case that fails to decode, or
    that a teacher fails on, is an error row as in the other layouts."""

    def __init__(self, ensemble: dict[str, Any], decode: dict[str, Any], fuse: dict[str, Any]):
        from nakt_ray.data.datasets import decode_batch

        self.ensemble = EnsemblePredictor(**ensemble)
        self.decode_batch = decode_batch
        self.decode, self.fuse = decode, fuse

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return fuse_batch(self.ensemble(self.decode_batch(batch, **self.decode)), **self.fuse)


def add_inline_pool(ds: Any, cfg: RunConfig, teachers: list[Any], records: list[dict[str, Any]],
                    tracking_uri: str | None, predictor_cls: type, fuse: dict[str, Any]) -> Any:
    """Append the ``inline`` layout's pool to ``ds`` (case references, ``datasets.cases_dataset``): actors that each
    host every teacher, as the shared layout's, but one per CPU with one torch thread (``INLINE_ACTOR_THREADS``;
    one per GPU with GPUs) unless ``annotate.shared_actors``, and that decode and fuse their batches themselves."""
    from ray.data import ActorPoolStrategy

    from nakt_ray.runtime.cluster import cluster_has_gpus

    size, threads, cpus = cluster_pool_size(cfg.annotate.shared_actors, INLINE_ACTOR_THREADS)
    kwargs = [predictor_arguments(t, records, cfg.preprocess.in_channels, tracking_uri, cfg.annotate.prob_dtype)
              for t in teachers]
    ensemble = dict(teachers=kwargs, batch_sizes=[t.batch_size for t in teachers], num_threads=threads,
                    predictor_cls=predictor_cls)
    return ds.map_batches(
        CaseAnnotator,
        fn_constructor_kwargs=dict(ensemble=ensemble, fuse=fuse,
                                   decode=dict(preprocess=cfg.preprocess, num_classes=cfg.data.num_classes)),
        compute=ActorPoolStrategy(size=size),
        batch_size=cfg.annotate.decode_batch_size,
        num_cpus=cpus,
        num_gpus=1.0 if cluster_has_gpus() else 0.0,
        max_restarts=ACTOR_RESTARTS,
        max_task_retries=-1,
    )


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
                raise error(DataError, f"cannot resume into {str(out_dir)!r}",
                            f"{name} was written with other {key} ({meta.get(key)!r}; this run: {ours!r})")
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


# Rows per Parquet file of a set of volumes: a volume takes seconds to minutes, so files are written often and an
# interrupted run loses little (a resume redoes only the cases of files not yet written).
VOLUME_ROWS_PER_FILE = 4

# The lock file of a run writing an annotation set, in the set's folder (decision 48).
LOCK = ".nakt-annotate.lock"


def _lock_holder(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # released meanwhile (or not a lock nakt wrote)
        return None


def _holder_is_gone(holder: dict[str, Any]) -> bool:
    """Whether the run that holds a lock is dead: only knowable for a process on this host."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, TypeError, ValueError):  # alive under another user, or an odd lock file
        return False
    return False


def take_output_lock(out_dir: str) -> tuple[Path, str] | None:
    """Claim the local annotation output ``out_dir`` for this run (two runs, e.g. two ``--resume``, would delete
    each other's files); returns the lock file and this run's token, for :func:`release_output_lock`.

    The lock file (pid, host, start time) appears whole and atomically (written aside, then hard-linked into place:
    the link fails when the file exists). A lock held by a live run raises ``FileExistsError`` naming that run; a
    lock of a process that no longer exists on this host is taken over, with a warning. Object-store outputs are
    not locked (None): pyarrow's filesystems offer no create-if-absent write (decision 48).
    """
    import pyarrow.fs as pafs

    fs, folder = storage.filesystem(out_dir)
    if not isinstance(fs, pafs.LocalFileSystem):
        return None
    path = Path(folder) / LOCK
    mine = {"pid": os.getpid(), "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %z"), "token": uuid.uuid4().hex}
    aside = path.with_name(f"{LOCK}.{mine['token']}")
    aside.write_text(json.dumps(mine))
    try:
        for _ in range(5):  # a retry per lock that vanished or was taken over under us
            try:
                os.link(aside, path)
                return path, mine["token"]
            except FileExistsError:
                holder = _lock_holder(path)
            if holder is None:
                continue
            if not _holder_is_gone(holder):
                raise FileExistsError(
                    f"annotation output {out_dir!r} is in use by another run: pid {holder.get('pid')} on host "
                    f"{holder.get('host')!r} since {holder.get('since')} (lock file {str(path)!r}); wait for it to "
                    "finish, or delete the lock file if that run is gone")
            moved = path.with_name(f"{LOCK}.stale.{mine['token']}")
            try:
                os.rename(path, moved)  # atomic: of two runs taking over one stale lock, one moves it
            except FileNotFoundError:
                continue
            if _lock_holder(moved) != holder:  # a fresh lock, taken between our read and our move: put it back
                try:
                    os.link(moved, path)
                except FileExistsError:
                    pass
            else:
                warnings.warn(f"annotation output {out_dir!r}: taking over the lock of pid {holder.get('pid')} "
                              f"on this host (since {holder.get('since')}), which is no longer running",
                              UserWarning, stacklevel=2)
            moved.unlink(missing_ok=True)
        raise FileExistsError(f"annotation output {out_dir!r}: could not take its lock file {str(path)!r}")
    finally:
        aside.unlink(missing_ok=True)


def release_output_lock(lock: tuple[Path, str] | None) -> None:
    """Remove the lock file of :func:`take_output_lock` if it is still this run's."""
    if lock is not None and (_lock_holder(lock[0]) or {}).get("token") == lock[1]:
        lock[0].unlink(missing_ok=True)


def _holds_files(out_dir: str) -> bool:
    """Whether anything but a lock file lies under ``out_dir``."""
    import posixpath

    import pyarrow.fs as pafs

    fs, path = storage.filesystem(out_dir)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
    return any(not posixpath.basename(i.path).startswith(LOCK) for i in infos)


def _teacher_stop(err: BaseException) -> TeacherOutputError | None:
    """The ``TeacherOutputError`` a teacher actor stopped the run with (``pools.FAILED_BATCHES_TO_STOP``), out of
    the wrapping that Ray Data adds; None for any other failure.

    Ray 2.60 hands the driver a ``RayTaskError(UserCodeException)`` whose cause chain no longer holds the actor's
    exception (it does not survive pickling), only its traceback text; the message is taken from there.
    """
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if type(cur) is TeacherOutputError:
            return cur
        cause = getattr(cur, "cause", None)  # ray.exceptions.RayTaskError keeps the actor's exception here
        cur = cause if isinstance(cause, BaseException) else (cur.__cause__ or cur.__context__)
    found = re.findall(r"TeacherOutputError: (teacher '[^\n]*)", str(err))
    return TeacherOutputError(found[-1].strip()) if found else None


def _prediction_failures(errors: list[dict[str, str]]) -> dict[str, int]:
    """Cases failed at prediction, per teacher (from the ``predict: teacher '<name>' ...`` reasons)."""
    counts: dict[str, int] = {}
    for e in errors:
        found = re.match(rf"{PREDICT_STAGE}: teacher '([^']*)'", e["reason"])
        if found:
            counts[found.group(1)] = counts.get(found.group(1), 0) + 1
    return counts


def annotate(cfg: RunConfig, transferal: str | None = None, output: str | None = None,
             predictor_cls: type = TeacherPredictor, resume: bool = False) -> dict[str, Any]:
    """Run the annotation pipeline for ``cfg`` (a RunConfig); returns the summary (also saved as JSON).

    With ``resume``, the cases already written to the output by an interrupted run are skipped (see
    :func:`resume_state`); the finished set is the same as that of an uninterrupted run. Raises if the written
    set does not account for every input case exactly once. The output is locked for the run
    (:func:`take_output_lock`): a second run into it fails at once, naming the first.

    A case a teacher gives an unusable output for (NaN, ...) is an error row naming the teacher; a teacher that
    fails on every case stops the run with ``TeacherOutputError`` (early, from its actor, after
    ``pools.FAILED_BATCHES_TO_STOP`` all-failed batches; else once the set is written and no case succeeded).
    """
    out_dir = str(output or cfg.annotations_dir)
    storage.make_dirs(out_dir)
    lock = take_output_lock(out_dir)
    try:
        if _holds_files(out_dir) and not resume:
            raise FileExistsError(f"annotation output {out_dir!r} is not empty; remove it, choose another, or "
                                  "pass --resume to finish an interrupted run")
        return _annotate(cfg, transferal, out_dir, predictor_cls, resume)
    finally:
        release_output_lock(lock)


def _annotate(cfg: RunConfig, transferal: str | None, out_dir: str, predictor_cls: type,
              resume: bool) -> dict[str, Any]:
    from nakt_ray.data.datasets import cases_dataset, decode_batch
    from nakt_ray.data.privacy import cases_for
    from nakt_ray.data.readers import list_cases
    from nakt_ray.runtime.cluster import LIGHT_CPU
    from nakt_ray.tracking import tracking_uri

    source = transferal or cfg.data.transferal
    if not source:
        raise error(ConfigError, "no transferal data", "set data.transferal in the config or pass --transferal")
    # out_dir: a local path or an object-store URI (s3://, gs://, file://): written by Ray Data, read through pyarrow.
    teachers = [teacher_ref(cfg, t) for t in cfg.teachers]
    pre = cfg.preprocess
    uri = tracking_uri(cfg)
    volumes = cfg.spatial_dims == 3  # a 3D run annotates volumes into zarr stores (annotation/volumes.py)
    if volumes:
        from nakt_ray.annotation.volumes import VOLUME_IN_CHANNELS, check_volume_output, volume_manifest
        from nakt_ray.data.volume_cases import list_volume_cases

        check_volume_output(out_dir)
    t_probe = time.perf_counter()
    records = check_teachers(teachers, cfg.data.labels, VOLUME_IN_CHANNELS if volumes else pre.in_channels,
                             uri, cfg.spatial_dims, cfg.data.label_aliases)
    t_probe = time.perf_counter() - t_probe
    cases = cases_for(list_volume_cases(source) if volumes else list_cases(source), cfg.data.pseudonymize)
    weights = cfg.fusion.effective_weights()
    if volumes:
        manifest = volume_manifest(cfg, source, records)
    else:
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
    # (The inline layout does 1-3 in its actors.) Volumes and kept teachers run it as the shared layout.
    names = [t.name for t in teachers]
    keep = cfg.annotate.keep_teachers_s
    layout = pool_layout(cfg.annotate.pools, len(todo), volumes)
    shared_actors = cfg.annotate.shared_actors
    if layout == "inline" and (volumes or keep):
        # Decoding cannot join the actors here (a volume's preparation writes its store; kept hosts are reached from
        # the decoding tasks): the shared layout with the inline layout's actors, one single-thread actor per CPU.
        layout = "shared"
        if shared_actors is None:
            shared_actors = cluster_pool_size(None, INLINE_ACTOR_THREADS)[0]
    if todo:
        if volumes:
            from nakt_ray.annotation.volumes import volume_dataset

            ds = volume_dataset(cfg, todo, str(storage.absolute(out_dir)), teachers, records, uri, predictor_cls,
                                layout, shared_actors)
            schema = ann.arrow_schema_volumes(manifest)
        else:
            fuse = dict(teachers=names, rule=cfg.fusion.rule, weights=weights, coverage=ann.coverage(manifest))
            ds = cases_dataset(todo, rows_per_block=cfg.annotate.decode_batch_size)
            if layout == "inline":
                ds = add_inline_pool(ds, cfg, teachers, records, uri, predictor_cls, fuse)
            else:
                light = light_task_pool()
                ds = ds.map_batches(decode_batch, batch_size=cfg.annotate.decode_batch_size, num_cpus=LIGHT_CPU,
                                    compute=light, fn_kwargs=dict(preprocess=pre, num_classes=cfg.data.num_classes))
                ds = add_teacher_stage(ds, teachers, records, pre.in_channels, uri, predictor_cls,
                                       cfg.annotate.prob_dtype, layout, shared_actors, keep_teachers_s=keep,
                                       run_id=uuid.uuid4().hex)
                ds = ds.map_batches(fuse_batch, batch_size=cfg.annotate.decode_batch_size, num_cpus=LIGHT_CPU,
                                    compute=light, fn_kwargs=fuse)
            schema = ann.arrow_schema(names, manifest)
        stop = None
        try:
            rows = min(cfg.annotate.rows_per_file, VOLUME_ROWS_PER_FILE) if volumes else cfg.annotate.rows_per_file
            ds.write_parquet(storage.absolute(out_dir), min_rows_per_file=rows,
                             schema=schema, ray_remote_args={"num_cpus": LIGHT_CPU})
        except Exception as err:
            stop = _teacher_stop(err)  # a teacher that failed on every case: its own message, not Ray's wrapping
            if stop is None:
                raise
        if stop is not None:
            # Raised outside the except block, so no traceback keeps the failed dataset alive: its actor pools hold
            # their CPUs until it is collected (measured, Ray 2.60), which starves a later run in the same process.
            del ds
            gc.collect()
            raise stop
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
    by_teacher = _prediction_failures(errors)
    if by_teacher and not summary["annotated"]:  # too few batches for the actors' rule to stop the run early
        counts = ", ".join(f"teacher {name!r}: {n}" for name, n in by_teacher.items())
        raise error(TeacherOutputError, f"annotation output {out_dir!r}",
                    f"no case could be annotated; cases failed at prediction: {counts} (of {len(cases)}); "
                    f"reasons in {storage.join(out_dir, 'errors.json')}")
    return summary

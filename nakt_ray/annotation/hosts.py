"""Teachers kept loaded on a running cluster between runs (``annotate.keep_teachers_s``; docs/decisions.md, 75).

A run normally starts its teachers itself, in Ray Data actor pools (:mod:`nakt_ray.annotation.pools`) that end
with it: each actor starts a worker process, imports torch and MONAI and loads its teachers. On a running 2-core
cluster that is ~4.5 s of a one-batch job's 6.9 s (docs/benchmarks.md, 2026-12-07), paid again by every job.

With ``keep_teachers_s > 0`` the teachers live instead in named, detached actors, :class:`TeacherHost`, one
:class:`~nakt_ray.annotation.pools.EnsemblePredictor` each, laid out as the pools would be (``shared``: hosts of
every teacher; ``per_teacher``: hosts of one teacher each, with its threads and GPUs; each asks Ray for a token
CPU share, ``HOST_CPU``, so that hosts waiting between runs block no other job). A host's name is a digest of
everything that decides what it computes (:func:`host_names`: the teachers' sources and the files' size and
time, their options and label maps, threads, resources, the predictor class), so the next run with the same
teachers finds them loaded and a changed teacher gets a host of its own. The pipeline reaches the hosts from its
light tasks (:func:`predict_on_hosts`, fused by Ray Data with decoding and fusion into one task), and a host that no
run has called for ``keep_teachers_s`` seconds ends itself, giving its CPUs and GPUs back. ``nakt hosts`` lists
them and stops them at once.

On a local instance that a run starts itself, the hosts end with that instance: they pay off on a running cluster
(``ray.address``), where jobs come and go.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

# The Ray namespace of every host: one place to list and stop them, whatever namespace the jobs run in.
NAMESPACE = "nakt-teachers"
PREFIX = "teachers-"
# The CPU share a host asks Ray for, whatever torch threads it runs: a host waits most of its life, and one that
# held whole CPUs between runs kept other jobs' actors (and training workers) from starting on a small cluster
# (measured: on 2 CPUs a job with its own pool waited 600 s, until the host's idle release). Ray's CPUs are a
# scheduling figure, not a thread limit; GPUs are held as asked (a kept GPU host keeps its GPU).
HOST_CPU = 0.1
# A host checks this often whether it has been idle too long (at most; a quarter of keep_teachers_s when shorter).
WATCH_PERIOD_S = 5.0


class TeacherHost:
    """A detached actor that hosts teachers for every run that asks for them (an ``EnsemblePredictor``).

    ``predict(batch, run_id, run_kwargs)`` adds each teacher's ``prob__<name>`` column as the pool actors do;
    ``run_kwargs`` are the predictor's per-run attributes (``RUN_KWARGS`` of its class: a volume predictor's
    ``out_dir``), set on every predictor before the batch. The failure count that stops a run whose teacher fails
    on every case (``pools.FAILED_BATCHES_TO_STOP``) restarts with each ``run_id``: one run's failures do not stop
    the next. After ``keep_s`` seconds with no call the actor kills itself (no restart)."""

    def __init__(self, teachers: list[dict[str, Any]], batch_sizes: list[int], num_threads: int,
                 predictor_cls: type, keep_s: float, identity: dict[str, Any]):
        from nakt_ray.annotation.pools import EnsemblePredictor

        self.ensemble = EnsemblePredictor(teachers, batch_sizes, num_threads, predictor_cls)
        self.identity = identity
        self.keep_s = keep_s
        self.started = time.time()
        self.last = time.monotonic()
        self.busy = False
        self.calls = 0
        self.runs: list[str] = []
        threading.Thread(target=self._release_when_idle, daemon=True, name="nakt-host-idle").start()

    def predict(self, batch: dict[str, np.ndarray], run_id: str,
                run_kwargs: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        self.busy, self.last = True, time.monotonic()
        try:
            if not self.runs or self.runs[-1] != run_id:
                self.runs.append(run_id)
                for predictor in self.ensemble.predictors:
                    predictor.failed_streak = [0, 0]
            for predictor in self.ensemble.predictors:  # the run's own places (a volume run's stores)
                for key, value in (run_kwargs or {}).items():
                    setattr(predictor, key, value)
            return self.ensemble(batch)
        finally:
            self.busy, self.last, self.calls = False, time.monotonic(), self.calls + 1

    def touch(self) -> None:
        """Restart the idle clock (a run that is about to send batches)."""
        self.last = time.monotonic()

    def info(self) -> dict[str, Any]:
        """Where it runs, what it hosts and how much it served (the idle clock goes on)."""
        import ray

        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "started": self.started,
                "calls": self.calls, "runs": len(self.runs), "keep_s": self.keep_s,
                "idle_s": round(time.monotonic() - self.last, 1),
                "teachers": [p.name for p in self.ensemble.predictors], **self.identity}

    def _release_when_idle(self) -> None:
        import ray

        period = min(WATCH_PERIOD_S, self.keep_s / 4)
        while True:
            time.sleep(period)
            if not self.busy and time.monotonic() - self.last > self.keep_s:
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
                return


def _source_stamp(source: str) -> list[Any]:
    """A local model file's size and modification time (a replaced file gets a new host); a URI as it is."""
    path = Path(source)
    try:
        st = path.stat()
    except OSError:
        return [source]
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def host_names(unit: dict[str, Any], count: int) -> list[str]:
    """The names of a unit's ``count`` hosts: a digest of what decides what they compute (``unit``: the host's
    constructor arguments and resources, with each teacher's source stamped by its file's size and time)."""
    from nakt_ray import __version__

    def plain(value: Any) -> Any:
        if hasattr(value, "__dataclass_fields__"):
            return asdict(value)
        if isinstance(value, type):
            return f"{value.__module__}.{value.__qualname__}"
        return str(value)

    stamped = json.loads(json.dumps(unit, default=plain))  # a copy: the stamps stay out of the hosts' arguments
    for teacher in stamped["teachers"]:
        teacher["source_stamp"] = _source_stamp(teacher["checkpoint"])
    text = json.dumps({"nakt": __version__, "unit": stamped}, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return [f"{PREFIX}{digest}-{i}" for i in range(count)]


def start_hosts(unit: dict[str, Any], count: int, *, num_gpus: float, keep_s: float, restarts: int) -> list[str]:
    """Create (or find, by name) the ``count`` hosts of ``unit`` (``TeacherHost`` arguments but the identity),
    without waiting for them to load: a new host loads its teachers while the run starts. Each asks for
    ``num_gpus`` and ``HOST_CPU`` CPUs. Returns their names."""
    import ray

    names = host_names({**unit, "num_cpus": HOST_CPU, "num_gpus": num_gpus}, count)
    host_cls = ray.remote(TeacherHost)
    for name in names:
        handle = host_cls.options(name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                                  num_cpus=HOST_CPU, num_gpus=num_gpus, max_restarts=restarts,
                                  max_task_retries=-1).remote(**unit, keep_s=keep_s, identity={"name": name})
        handle.touch.remote()  # the idle clock of a host found loaded restarts now, not at its first batch
    return names


_handles: dict[str, Any] = {}
_turn = itertools.count()


def _handle(name: str) -> Any:
    import ray

    if name not in _handles:
        _handles[name] = ray.get_actor(name, namespace=NAMESPACE)
    return _handles[name]


def predict_on_hosts(batch: dict[str, np.ndarray], *, hosts: list[list[str]], run_id: str,
                     run_kwargs: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Ray Data task UDF: the batch through each unit's hosts in turn (one host of a unit per batch, taken in
    turn), as the actor pools would run it."""
    import ray

    for names in hosts:
        name = names[next(_turn) % len(names)]
        try:
            batch = ray.get(_handle(name).predict.remote(batch, run_id, run_kwargs))
        except ray.exceptions.ActorDiedError:
            _handles.pop(name, None)  # restarts used up, or stopped (`nakt hosts --stop`): the error says which
            raise
    return batch


def add_teacher_stage(ds: Any, teachers: list[Any], records: list[dict[str, Any]], in_channels: int,
                      tracking_uri: str | None = None, predictor_cls: type | None = None, prob_dtype: str = "uint8",
                      pools: str = "per_teacher", shared_actors: int | None = None,
                      predictor_kwargs: dict[str, Any] | None = None, keep_teachers_s: float = 0.0,
                      run_id: str = "") -> Any:
    """The teachers' stage of an annotation run: :func:`~nakt_ray.annotation.pools.add_teacher_pools` (same
    arguments) when ``keep_teachers_s`` is 0; else the same units (all teachers, or one each) and threads in hosts
    that outlive the run, found loaded when they exist, reached from one light-task stage that Ray Data fuses with
    decoding and fusion. ``run_id`` names the run to the hosts (their failure count restarts with each run)."""
    import ray

    from nakt_ray.annotation.pools import (
        ACTOR_RESTARTS,
        TeacherPredictor,
        add_teacher_pools,
        cluster_pool_size,
        light_task_pool,
        pool_layout,
        predictor_arguments,
    )
    from nakt_ray.runtime.cluster import LIGHT_CPU

    predictor_cls = predictor_cls or TeacherPredictor
    if not keep_teachers_s:
        return add_teacher_pools(ds, teachers, records, in_channels, tracking_uri, predictor_cls, prob_dtype, pools,
                                 shared_actors, predictor_kwargs)
    run_keys = getattr(predictor_cls, "RUN_KWARGS", ())
    run_kwargs: dict[str, Any] = {}

    def teacher_kwargs(t: Any) -> dict[str, Any]:
        kw = predictor_arguments(t, records, in_channels, tracking_uri, prob_dtype, predictor_kwargs)
        if not str(t.checkpoint).startswith(("models:/", "runs:/")):
            kw["tracking_uri"] = None  # concerns MLflow teachers alone: a file's host serves runs of any store
        for key in run_keys:  # the run's own places go with each batch; the host is built without them
            run_kwargs[key] = kw.pop(key)
        return kw

    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0) >= 1
    common = dict(keep_s=keep_teachers_s, restarts=ACTOR_RESTARTS)
    if pool_layout(pools) in ("shared", "inline"):  # inline: the hosts are reached from decoding tasks
        size, threads, _ = cluster_pool_size(shared_actors)
        unit = dict(teachers=[teacher_kwargs(t) for t in teachers], batch_sizes=[t.batch_size for t in teachers],
                    num_threads=threads, predictor_cls=predictor_cls)
        hosts = [start_hosts(unit, size, num_gpus=1.0 if gpus else 0.0, **common)]
    else:
        hosts = []
        for t in teachers:
            unit = dict(teachers=[teacher_kwargs(t)], batch_sizes=[t.batch_size],
                        num_threads=max(1, int(t.num_cpus)), predictor_cls=predictor_cls)
            num_gpus = t.num_gpus if t.num_gpus is not None else (1.0 if gpus else 0.0)
            hosts.append(start_hosts(unit, t.actors, num_gpus=num_gpus, **common))
    return ds.map_batches(predict_on_hosts, num_cpus=LIGHT_CPU, compute=light_task_pool(),
                          fn_kwargs=dict(hosts=hosts, run_id=run_id, run_kwargs=run_kwargs))


def list_hosts() -> list[dict[str, Any]]:
    """Every running host on the connected cluster, with its ``info``."""
    import ray
    from ray.util import list_named_actors

    names = sorted(a["name"] for a in list_named_actors(all_namespaces=True)
                   if a.get("namespace") == NAMESPACE and a["name"].startswith(PREFIX))
    out = []
    for name in names:
        try:
            out.append(ray.get(ray.get_actor(name, namespace=NAMESPACE).info.remote(), timeout=60))
        except (ValueError, ray.exceptions.RayError) as err:  # went meanwhile, or not answering
            out.append({"name": name, "error": f"{type(err).__name__}: {str(err).splitlines()[0]}"})
    return out


def stop_hosts() -> list[str]:
    """Kill every host on the connected cluster now (no restart); returns their names."""
    import ray
    from ray.util import list_named_actors

    stopped = []
    for actor in list_named_actors(all_namespaces=True):
        if actor.get("namespace") == NAMESPACE and actor["name"].startswith(PREFIX):
            try:
                ray.kill(ray.get_actor(actor["name"], namespace=NAMESPACE), no_restart=True)
                stopped.append(actor["name"])
            except ValueError:  # went meanwhile
                pass
    return sorted(stopped)

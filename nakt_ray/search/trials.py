"""One search trial: the search's base config with the trial's sampled values, trained by ``train_student`` itself.

Ray Tune with Train V2 (docs/decisions.md, 22): each trial is a Tune *function trainable* that runs
:func:`nakt_ray.training.student.train_student` (which builds and fits the ``TorchTrainer``) in a Ray task of its own
and reports every epoch with ``tune.report``. Epochs reach it through a Ray Train callback and a Ray queue
(``nakt_ray/search/epoch_queue.py``), called by the Train controller with workers and by the loop itself in local
mode (``num_workers: 0``). Each trial trains in ``<run_dir>/tune/<search>/trials/<trial id>`` and logs to an MLflow
child run of the search's parent run.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from nakt_ray.config import RunConfig, from_dict
from nakt_ray.config.space import parse_space, trial_config, trial_values
from nakt_ray.tracking import TAG_TUNE_TRIAL_ID, TAG_TUNE_VALUES


def trainable(base: dict[str, Any], space: dict[str, Any], trials_dir: str, parent_run_id: str, val_ds: Any,
              resources: dict[str, float]) -> Any:
    """The Tune trainable of a search: every trial starts from the plain config ``base`` (:func:`trial_base`), decodes
    its parameters with ``space`` (``tune.space``), trains in ``trials_dir/<trial id>``, logs to a child run of
    ``parent_run_id`` and validates on ``val_ds`` (one Ray Dataset shared by all trials); the trial function itself
    takes ``resources`` (it only coordinates: the training holds its own)."""
    from ray import tune

    # (the function's name is the trainable's name in Tune's experiment state, which `Tuner.restore` checks: keep it)
    return tune.with_resources(tune.with_parameters(
        _trial, base=base, space=space, trials_dir=trials_dir, parent_run_id=parent_run_id, val_ds=val_ds), resources)


def _trial(params: dict[str, Any], *, base: dict[str, Any], space: dict[str, Any], trials_dir: str,
           parent_run_id: str, val_ds: Any) -> None:
    """One Tune trial (a function trainable): the search's base config with this trial's values, trained by
    ``train_student`` in a Ray task of its own, every epoch reported to Tune."""
    import queue

    import ray
    from ray import tune

    from nakt_ray.runtime.cluster import cluster_has_gpus
    from nakt_ray.search.epoch_queue import EpochQueue

    # 1. The trial's typed config: base + sampled values, in a run_dir of its own (named by the stable trial id, so
    #    a trial restarted by `nakt tune --resume` continues its own training run and MLflow child run).
    base_cfg = from_dict(base)
    values = trial_values(parse_space(space), params, base_cfg)
    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(base_cfg, {**values, "run_dir": str(Path(trials_dir) / trial_id)})

    # 2. Train. Ray refuses ray.train calls inside a Tune session, which is where a local-mode (num_workers: 0)
    #    loop would run, so training runs in a task: the driver of a train-student run, with its resources in
    #    local mode (the loop runs there) and none otherwise (the Train workers hold them). It runs outside the
    #    trial's placement group (0.1 CPU), as Ray Train's workers do; max_concurrent_trials bounds the search. A
    #    task that dies fails its trial (no silent retry from scratch).
    tc = cfg.training
    local = tc.num_workers == 0
    gpus = 1 if local and (tc.use_gpu if tc.use_gpu is not None else cluster_has_gpus()) else 0
    task = ray.remote(_train_trial).options(num_cpus=tc.cpus_per_worker if local else 0, num_gpus=gpus,
                                            max_retries=0, scheduling_strategy="DEFAULT")
    epochs = _epoch_queue()
    ref = task.remote(cfg, values, trial_id, parent_run_id, [EpochQueue(epochs, trial_id)], val_ds)

    # 3. Every epoch to Tune, from this thread (ASHA decides on each); after training returned, the rest in order.
    #    When Tune stops the trial, tune.report ends this thread: the training is ended with it. The last epoch
    #    reaches Tune only once training has returned: ASHA puts a rung on the last epoch whenever epochs /
    #    grace_period is a power of the reduction factor, and a stop there would end the task while it writes the
    #    trial's model and closes its MLflow run.
    finished, held = False, []
    try:
        while not finished:
            try:
                items = [epochs.get(timeout=0.5)]
            except queue.Empty:
                finished = bool(ray.wait([ref], timeout=0)[0])
                items = [epochs.get() for _ in range(epochs.qsize())] if finished else []
            for trial, metrics in items:
                if trial != trial_id:  # (an epoch of a stopped trial that ran in this process before is dropped)
                    continue
                if metrics.get("epoch", -1) >= tc.epochs - 1 and not finished:
                    held.append(metrics)
                else:
                    tune.report(metrics)
        for metrics in held:
            tune.report(metrics)
    finally:
        if not finished:
            ray.cancel(ref, force=True)  # its process too: a Train controller it started dies with it
    ray.get(ref)  # the task's error, if any, fails the trial


_EPOCHS: Any = None


def _epoch_queue() -> Any:
    """The trial process's epoch queue: one queue actor per trial process, which Tune reuses for the next trial
    (items carry their trial's id)."""
    global _EPOCHS
    if _EPOCHS is None:
        from ray.util.queue import Queue

        _EPOCHS = Queue(actor_options={"num_cpus": 0})
    return _EPOCHS


def _train_trial(cfg: RunConfig, values: dict[str, Any], trial_id: str, parent_run_id: str,
                 callbacks: list[Any], val_ds: Any) -> None:
    """The training of one trial: ``train_student`` as ``nakt train-student`` runs it, minus the registration,
    logging to a child run of the search's parent run."""
    import os

    import ray.data

    from nakt_ray.training.student import train_student, unfinished_run

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = os.environ.get("NAKT_PROGRESS", "1") != "0"
    ctx.print_on_execution_start = False
    train_student(cfg, resume=unfinished_run(cfg.student_checkpoint), register=False, stage="tune-trial",
                  run_name=f"trial-{trial_id}", callbacks=callbacks, val_ds=val_ds,
                  run_tags={"mlflow.parentRunId": parent_run_id, TAG_TUNE_TRIAL_ID: trial_id,
                            TAG_TUNE_VALUES: json.dumps(values)})


def _absolute(path: str | None) -> str | None:
    if path is None or ":/" in path:  # URIs stay as they are (models:/..., runs:/..., s3://...)
        return path
    return str(Path(path).resolve())


def trial_base(cfg: RunConfig, annotations: str) -> dict[str, Any]:
    """The plain config every trial starts from: paths absolute (trials run in other working directories, maybe on
    other nodes), the tracking URI and annotation set pinned (a trial's run_dir is its own), and torch threads
    shared between the concurrent trials' workers."""
    import ray

    from nakt_ray.tracking import tracking_uri

    raw = copy.deepcopy(cfg.to_dict())
    raw.pop("tune")
    raw["run_dir"] = _absolute(raw["run_dir"])
    for key in ("transferal", "val", "test", "finetune"):
        raw["data"][key] = _absolute(raw["data"][key])
    raw["annotate"]["output"] = _absolute(raw["annotate"]["output"])
    for t in raw["teachers"]:
        for key in ("train_data", "val_data", "checkpoint"):
            t[key] = _absolute(t[key])
    raw["student"]["annotations"] = _absolute(annotations)
    raw["student"]["init"] = _absolute(raw["student"]["init"])
    if raw["ray"].get("storage_path"):
        raw["ray"]["storage_path"] = _absolute(raw["ray"]["storage_path"])
    raw["tracking"]["uri"] = tracking_uri(cfg)
    tc = cfg.training
    if tc.torch_threads is None:
        per = cfg.tune.max_concurrent_trials * max(1, tc.num_workers)
        raw["training"]["torch_threads"] = max(1, int(ray.cluster_resources().get("CPU", 1) // per))
    return raw

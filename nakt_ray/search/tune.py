"""Search: a Ray Tune search over student training, fusion included, on a stored annotation set.

``tune.space`` in the run config maps dotted config keys to distributions (plain data, validated at load time).
Every trial is the base config with its sampled values set: a plain ``train-student`` config, trained by
:func:`nakt_ray.training.student.train_student` itself (same datasets, same ``training.fit``; no second loop). Fusion
rules and weights are applied to the per-teacher maps stored in the annotation set, so no teacher is ever loaded.

Ray Tune with Train V2 (PLATFORM_NOTES): each trial is a Tune *function trainable* that runs ``train_student``
(which builds and fits the ``TorchTrainer``) in a Ray task and reports every epoch with ``tune.report``; epochs
reach it through a Ray Train callback and a queue (``nakt_ray/_epoch_queue.py``), called by the Train controller
with workers and by the loop itself in local mode (``num_workers: 0``). ASHA stops lagging trials on the
validation metric; Optuna's TPE proposes trials when installed (docs/decisions.md, 22-28). MLflow: one parent run
(stage ``tune``), one child run per trial with its epochs; the results table (Markdown, CSV) and plot (PNG) on the
parent; the best trial's student registered with alias ``tune.alias``. The experiment lives in
``<run_dir>/tune/<name>``; ``<run_dir>/tune/search.json`` names it and its parent run, so ``nakt tune --resume``
finishes an interrupted search in the same parent run.

Space entries (``when`` is optional on any entry)::

    training.lr:                {loguniform: [1.0e-4, 1.0e-2]}
    training.kl_weight:         {uniform: [0.0, 1.0]}
    training.batch_size:        {randint: [4, 16]}            # both ends included
    student.arch:               {choice: [unet, basic_unet]}
    student.arch_args.channels: {choice: [[8, 16, 32], [16, 32, 64]], when: {student.arch: unet}}
    fusion.rule:                {choice: [weighted_mean, staple]}
    fusion.weights:             {simplex: 3}                  # one weight per teacher, summing to 1
    # or per teacher: fusion.weights.0: {uniform: [0, 1]}     (unsearched teachers keep the base weight, or 1)
"""
from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nakt_ray.config import ConfigError, RunConfig, field_type, from_dict, set_values

KINDS = ("choice", "uniform", "loguniform", "randint", "simplex")
SEARCHABLE = ("training.", "student.", "fusion.")
# Keys a trial cannot change: resources are the search's (tune.*), identity and data are the base config's.
FIXED = {"training.num_workers", "training.cpus_per_worker", "training.use_gpu", "training.torch_threads",
         "training.max_failures", "training.epochs", "student.name", "student.annotations", "student.init"}
RULES_WITHOUT_WEIGHTS = ("mean",)
MAX_CHECKED_TRIALS = 200  # trial configs built at load time to check the space (choice combinations x bounds)
STATE_FILE = "search.json"


@dataclass(frozen=True)
class Dist:
    """One entry of ``tune.space``: ``key`` (dotted config key), ``kind``, ``args`` (choices, bounds or the number
    of simplex weights) and ``when`` (choice key -> allowed values; the entry applies only where they hold)."""

    key: str
    kind: str
    args: tuple[Any, ...]
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    @property
    def params(self) -> list[str]:
        """The Tune parameter names this entry samples."""
        return [f"{self.key}[{i}]" for i in range(self.args[0])] if self.kind == "simplex" else [self.key]

    @property
    def encoded_choices(self) -> list[Any]:
        """Choices as Tune/Optuna see them: scalars as they are, anything else as JSON text."""
        if all(v is None or isinstance(v, (str, int, float, bool)) for v in self.args):
            return list(self.args)
        return [json.dumps(v) for v in self.args]


def _fail(key: str, value: Any, expected: str) -> None:
    raise ConfigError(f"config key '{key}': got {value!r}; expected {expected}")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a) == json.dumps(b)


def parse_space(space: dict[str, Any], prefix: str = "tune.space") -> list[Dist]:
    """Check the syntax of a search space (kinds, bounds, ``when``) and return its entries. Raises ConfigError
    naming ``prefix[key]``. Whether the keys exist and every trial validates is :func:`check_trials`' job."""
    dists: list[Dist] = []
    for key, spec in space.items():
        where = f"{prefix}[{key}]"
        if not any(key.startswith(s) for s in SEARCHABLE):
            _fail(where, key, f"a key under {', '.join(s + '*' for s in SEARCHABLE)} (a trial trains a student "
                              "on the stored annotations; teachers, data and resources are fixed)")
        if key in FIXED or any(key.startswith(f + ".") for f in FIXED):
            _fail(where, key, "a key a trial may change; resources are set by tune.* and the base config's "
                              "training.num_workers/cpus_per_worker, epochs by training.epochs (the ASHA budget)")
        if not isinstance(spec, dict) or len([k for k in spec if k != "when"]) != 1:
            _fail(where, spec, f"a mapping with one distribution, one of {', '.join(KINDS)} (plus optional when), "
                               "e.g. {loguniform: [1.0e-4, 1.0e-2]}")
        kind = next(k for k in spec if k != "when")
        arg = spec[kind]
        if kind not in KINDS:
            import difflib

            close = difflib.get_close_matches(str(kind), KINDS, n=1)
            _fail(where, kind, (f"did you mean '{close[0]}'? " if close else "") + f"one of {', '.join(KINDS)}")
        if kind == "choice":
            if not isinstance(arg, list) or not arg:
                _fail(f"{where}.choice", arg, "a non-empty list of values")
            if len({json.dumps(v) for v in arg}) != len(arg):
                _fail(f"{where}.choice", arg, "distinct values")
            args = tuple(arg)
        elif kind == "simplex":
            if key != "fusion.weights":
                _fail(where, kind, "simplex only for fusion.weights (one weight per teacher, summing to 1)")
            if isinstance(arg, bool) or not isinstance(arg, int) or arg < 2:
                _fail(f"{where}.simplex", arg, "the number of teachers (an integer >= 2)")
            args = (arg,)
        else:
            if not isinstance(arg, list) or len(arg) != 2 or not all(_number(v) for v in arg):
                _fail(f"{where}.{kind}", arg, "[low, high], two numbers")
            low, high = arg
            if kind == "randint" and not all(isinstance(v, int) for v in arg):
                _fail(f"{where}.randint", arg, "[low, high], two integers (both included)")
            if (low > high) if kind == "randint" else (low >= high):
                _fail(f"{where}.{kind}", arg, "low < high" if kind != "randint" else "low <= high")
            if kind == "loguniform" and low <= 0:
                _fail(f"{where}.loguniform", arg, "0 < low < high (a log scale)")
            args = (low, high)
        dists.append(Dist(key, kind, args, ()))
    by_key = {d.key: d for d in dists}
    out = []
    for d, (key, spec) in zip(dists, space.items()):
        when = spec.get("when") if isinstance(spec, dict) else None
        if when is None:
            out.append(d)
            continue
        where = f"{prefix}[{key}].when"
        if not isinstance(when, dict) or not when:
            _fail(where, when, "a mapping of choice keys of this space to a value or a list of values")
        conds = []
        for other, allowed in when.items():
            ref = by_key.get(other)
            if ref is None or ref.kind != "choice" or other == key or other in space and "when" in space[other]:
                _fail(where, other, "the key of another, unconditional choice entry of this space")
            allowed = allowed if isinstance(allowed, list) and not any(_same(allowed, c) for c in ref.args) \
                else [allowed]
            bad = [a for a in allowed if not any(_same(a, c) for c in ref.args)]
            if bad:
                _fail(f"{where}.{other}", bad, f"values among its choices {list(ref.args)}")
            conds.append((other, tuple(allowed)))
        out.append(Dist(d.key, d.kind, d.args, tuple(conds)))
    weights = [d for d in out if d.key == "fusion.weights" or d.key.startswith("fusion.weights.")]
    if len({d.kind == "simplex" for d in weights}) > 1:
        _fail(f"{prefix}[fusion.weights]", [d.key for d in weights],
              "fusion.weights either as one simplex entry or per teacher (fusion.weights.<index>), not both")
    return out


def _decoded(d: Dist, value: Any) -> Any:
    return json.loads(value) if d.encoded_choices != list(d.args) else value


def trial_values(dists: list[Dist], params: dict[str, Any], base: RunConfig) -> dict[str, Any]:
    """The config values a trial's sampled Tune parameters stand for: ``{"dotted.key": value}``, in space order.

    Choices are decoded; an entry whose ``when`` does not hold is left out (the base value stays); a simplex
    ``fusion.weights`` is the normalised ``-log`` of its uniform draws (Dirichlet(1), uniform over the simplex);
    per-teacher weights fill a list from the base weights (or 1). A rule that takes no weights (``mean``) drops them.
    A trial with another architecture than the base config's starts from empty ``arch_args`` (the zoo defaults),
    since the base ones belong to the base architecture.
    """
    choices = {d.key: _decoded(d, params[d.key]) for d in dists if d.kind == "choice"}
    values: dict[str, Any] = {}
    weights: list[float] | None = None
    for d in dists:
        if any(not any(_same(choices[k], a) for a in allowed) for k, allowed in d.when):
            continue
        if d.kind == "choice":
            values[d.key] = choices[d.key]
        elif d.kind == "simplex":
            raw = [-math.log(min(max(float(params[p]), 1e-12), 1.0)) + 1e-12 for p in d.params]
            weights = [w / sum(raw) for w in raw]
        elif d.key.startswith("fusion.weights."):
            weights = weights or (list(base.fusion.weights) if base.fusion.weights else [1.0] * len(base.teachers))
            index = int(d.key.rsplit(".", 1)[1])
            if index < len(weights):
                weights[index] = float(params[d.key])
        else:
            values[d.key] = int(params[d.key]) if d.kind == "randint" else float(params[d.key])
    if weights is not None:
        values["fusion.weights"] = weights
    if values.get("student.arch", base.student.arch) != base.student.arch and "student.arch_args" not in values:
        values = {"student.arch_args": {}, **values}  # the base arch_args belong to the base architecture
    if any(d.key.startswith("fusion.") for d in dists):
        rule = values.get("fusion.rule", base.fusion.rule)
        if rule in RULES_WITHOUT_WEIGHTS and "fusion.weights" in values:
            values["fusion.weights"] = None
    return values


def trial_config(base: RunConfig, values: dict[str, Any]) -> RunConfig:
    """The base config with ``values`` set (a plain train-student config: no search of its own), validated; the
    student must also fit the input size."""
    from nakt_ray import zoo

    raw = base.to_dict()
    raw.pop("tune", None)
    cfg = from_dict(set_values(raw, values))
    try:
        zoo.check_spatial_size(cfg.student.arch, cfg.preprocess.size, cfg.student.arch_args)
    except ValueError as err:
        raise ConfigError(f"config key 'student.arch_args': {err}") from None
    return cfg


def _corner(dists: list[Dist], combo: tuple[int, ...], at: dict[str, str]) -> dict[str, Any]:
    """Tune parameters for one choice combination, numbers at their mid-point unless ``at`` says low/high."""
    params: dict[str, Any] = {}
    choice_dists = [d for d in dists if d.kind == "choice"]
    for d, i in zip(choice_dists, combo):
        params[d.key] = d.encoded_choices[i]
    for d in dists:
        if d.kind == "simplex":
            params.update({p: math.exp(-1) for p in d.params})  # equal weights
        elif d.kind in ("uniform", "loguniform", "randint"):
            low, high = d.args
            mid = (low + high) // 2 if d.kind == "randint" else (
                math.sqrt(low * high) if d.kind == "loguniform" else (low + high) / 2)
            params[d.key] = {"low": low, "high": high}.get(at.get(d.key, ""), mid)
    return params


def check_trials(cfg: RunConfig, prefix: str = "tune.space") -> None:
    """Refuse a space whose keys do not exist or which can produce an invalid trial config.

    Builds the trial config for every combination of choices (a seeded sample of ``MAX_CHECKED_TRIALS`` when there
    are more), with numbers at their mid-point and each number at its bounds; the first invalid one is reported
    with its values and the config error.
    """
    dists = parse_space(cfg.tune.space, prefix)
    n_teachers = len(cfg.teachers)
    for d in dists:
        try:
            field_type(d.key)
        except ConfigError as err:
            raise ConfigError(f"config key '{prefix}[{d.key}]': not a config key: {err}") from None
        if d.kind == "simplex" and d.args[0] != n_teachers:
            _fail(f"{prefix}[{d.key}].simplex", d.args[0], f"{n_teachers}, the number of teachers")
        if d.key.startswith("fusion.weights.") and int(d.key.rsplit(".", 1)[1]) >= n_teachers:
            _fail(f"{prefix}[{d.key}]", d.key, f"a teacher index below {n_teachers}")
    rule = next((d for d in dists if d.key == "fusion.rule"), None)
    rules = set(rule.args) if rule else {cfg.fusion.rule}
    if any(d.key.startswith("fusion.weights") for d in dists) and rules <= set(RULES_WITHOUT_WEIGHTS):
        _fail(f"{prefix}[fusion.weights]", sorted(rules), "a fusion rule that uses weights (weighted_mean, "
              "majority_vote, staple) in the base config or in the space: rule 'mean' takes no weights")
    choice_dists = [d for d in dists if d.kind == "choice"]
    numeric = [d for d in dists if d.kind in ("uniform", "loguniform", "randint")]
    combos = list(itertools.islice(itertools.product(*[range(len(d.args)) for d in choice_dists]), 100_000))
    per_combo = 1 + 2 * len(numeric)
    if len(combos) * per_combo > MAX_CHECKED_TRIALS:
        combos = [combos[0]] + random.Random(0).sample(combos[1:], max(0, min(
            len(combos) - 1, MAX_CHECKED_TRIALS // per_combo - 1)))
    for combo in combos:
        for at in [{}] + [{d.key: end} for d in numeric for end in ("low", "high")]:
            values = trial_values(dists, _corner(dists, combo, at), cfg)
            try:
                trial_config(cfg, values)
            except ConfigError as err:
                hint = (" (limit the entry to some choices with `when`, or change its bounds)"
                        if choice_dists or numeric else "")
                raise ConfigError(f"config key '{prefix}': a trial with {json.dumps(values)} is not a valid "
                                  f"config: {err}{hint}") from None


def tune_domains(dists: list[Dist]) -> dict[str, Any]:
    """The Tune ``param_space`` for the entries (one parameter per entry, one per weight of a simplex)."""
    from ray import tune

    space: dict[str, Any] = {}
    for d in dists:
        if d.kind == "choice":
            space[d.key] = tune.choice(d.encoded_choices)
        elif d.kind == "uniform":
            space[d.key] = tune.uniform(*d.args)
        elif d.kind == "loguniform":
            space[d.key] = tune.loguniform(*d.args)
        elif d.kind == "randint":
            space[d.key] = tune.randint(d.args[0], d.args[1] + 1)  # Tune excludes the upper end
        else:
            space.update({p: tune.uniform(1e-6, 1.0) for p in d.params})
    return space


# ----------------------------------------------------------------------------------------------------------------
# The trial: a Tune function trainable around train_student.


def _trial(params: dict[str, Any], *, base: dict[str, Any], space: dict[str, Any], trials_dir: str,
           parent_run_id: str, val_ds: Any) -> None:
    """One Tune trial (a function trainable): the search's base config with this trial's values, trained by
    ``train_student`` in a Ray task of its own, every epoch reported to Tune."""
    import queue

    import ray
    from ray import tune

    from nakt_ray.search.epoch_queue import EpochQueue
    from nakt_ray.runtime.cluster import cluster_has_gpus

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
                  run_tags={"mlflow.parentRunId": parent_run_id, "nakt.tune_trial_id": trial_id,
                            "nakt.tune_values": json.dumps(values)})


def _trial_dirname(trial: Any) -> str:
    return trial.trial_id


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


# ----------------------------------------------------------------------------------------------------------------
# The driver.


def _state_file(cfg: RunConfig) -> Path:
    return Path(cfg.run_dir) / "tune" / STATE_FILE


def _start_or_resume(cfg: RunConfig, resume: bool) -> dict[str, Any]:
    """The search's identity, persisted in ``<run_dir>/tune/search.json``: experiment name, parent run id, space."""
    f = _state_file(cfg)
    if resume:
        from nakt_ray.training.student import read_unfinished

        state = read_unfinished(f, "search in this run_dir", "search")
        if not _same(state.get("space"), cfg.tune.space):
            raise ValueError(f"cannot resume: tune.space differs from the interrupted search's ({str(f)!r}); "
                             "restore the config it ran with, or run without --resume")
        return state
    return {"name": f"tune-{time.strftime('%Y%m%d-%H%M%S')}", "parent_run_id": None, "finished": False,
            "space": cfg.tune.space}


def _save_state(cfg: RunConfig, state: dict[str, Any]) -> None:
    f = _state_file(cfg)
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(state, indent=2))


def _search_alg(cfg: RunConfig) -> tuple[Any, str]:
    name = cfg.tune.search_alg
    if name in ("auto", "optuna"):
        try:
            import optuna  # noqa: F401
        except ImportError:
            if name == "optuna":
                raise ValueError("tune.search_alg is 'optuna' but optuna is not installed; install it or use "
                                 "'random' (or 'auto': Optuna when installed)") from None
            name = "random"
        else:
            name = "optuna"
    if name == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=cfg.tune.seed), "optuna-tpe"
    from ray.tune.search import BasicVariantGenerator

    # (a SearchGenerator, not a Searcher: Tune ignores TuneConfig.max_concurrent_trials for it, and trials beyond
    # the bound would share the cluster: on 2 CPUs, three trials' datasets get 2 // 3 == 0 CPUs from Ray Data)
    return BasicVariantGenerator(random_state=cfg.tune.seed, max_concurrent=cfg.tune.max_concurrent_trials), "random"


def _scheduler(cfg: RunConfig) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.tune.scheduler == "none":
        return FIFOScheduler()
    # stop_last_trials=False: a trial that reaches max_t ends on its own (model file, artifacts); ASHA's default
    # stops it at its last report, killing it before the training run finishes.
    return ASHAScheduler(time_attr="training_iteration", max_t=cfg.training.epochs,
                         grace_period=cfg.tune.grace_period, reduction_factor=cfg.tune.reduction_factor,
                         stop_last_trials=False)


def tune_student(cfg: RunConfig, resume: bool = False) -> dict[str, Any]:
    """Search ``cfg.tune.space`` with Ray Tune; register the best trial's student. Returns the champion's URI and
    metrics, the rows of the results table and the paths of its files.

    Needs ``data.val`` (the per-epoch metric ASHA and the search compare) and an annotation set (``student.
    annotations`` or ``<run_dir>/annotations``). ``resume`` finishes the interrupted search recorded in
    ``<run_dir>/tune/search.json``: finished trials are kept, unfinished ones run again (continuing their own
    training run where Ray Train kept a checkpoint), the remaining samples are drawn, all in the same parent run.
    """
    import mlflow
    from ray import tune

    from nakt_ray.annotation import parquet as ann
    from nakt_ray import tracking
    from nakt_ray.runtime.cluster import init_ray
    from nakt_ray.data.datasets import labeled_split

    # 1. Everything a trial needs, checked before Ray starts.
    if not cfg.tune.space:
        raise ValueError("tune.space is empty: declare what to search, e.g. "
                         "tune: {space: {training.lr: {loguniform: [1.0e-4, 1.0e-2]}}} (docs/config.md)")
    if not cfg.data.val:
        raise ValueError(f"nakt tune needs a labeled validation set for its metric ({cfg.tune.metric}, every "
                         "epoch): set data.val to a folder with images/ and masks/")
    src = str(cfg.student.annotations or cfg.annotations_dir)  # a path or a URI
    manifest = ann.read_manifest(src)
    if manifest["labels"] != list(cfg.data.labels):
        raise ValueError(f"annotation set {str(src)!r} has labels {manifest['labels']}; the config says "
                         f"{list(cfg.data.labels)}")
    teachers = [t["name"] for t in manifest["teachers"]]
    if len(teachers) != len(cfg.teachers):
        raise ValueError(f"annotation set {str(src)!r} holds {len(teachers)} teachers ({', '.join(teachers)}); "
                         f"the config lists {len(cfg.teachers)}")
    state = _start_or_resume(cfg, resume)
    init_ray(cfg.ray)

    dists = parse_space(cfg.tune.space)
    storage = (Path(cfg.run_dir) / "tune").resolve()
    exp_dir = storage / state["name"]
    with tracking.stage_run(cfg, "tune", run_name=state["name"], run_id=state["parent_run_id"],
                            tags={"nakt.tune_name": state["name"], "nakt.tune_experiment": str(exp_dir)}) as parent:
        state["parent_run_id"] = parent.info.run_id
        _save_state(cfg, state)
        resources = {"cpu": cfg.tune.cpus_per_trial}
        # The validation set is the same for every trial: decoded once, shared through the object store.
        val_ds = labeled_split(cfg, cfg.data.val, cfg.training.batch_size)[0]
        base = trial_base(cfg, src)
        trainable = tune.with_resources(tune.with_parameters(
            _trial, base=base, space=dict(cfg.tune.space), trials_dir=str(exp_dir / "trials"),
            parent_run_id=parent.info.run_id, val_ds=val_ds), resources)

        # 2. The search (or what is left of it).
        search_alg, alg_name = _search_alg(cfg)
        mlflow.set_tags({"nakt.tune_search_alg": alg_name, "nakt.tune_scheduler": cfg.tune.scheduler})
        if resume and tune.Tuner.can_restore(str(exp_dir)):  # (killed before Tune wrote it: start it afresh)
            tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable, param_space=tune_domains(dists),
                tune_config=tune.TuneConfig(metric=cfg.tune.metric, mode=cfg.tune.mode, search_alg=search_alg,
                                            scheduler=_scheduler(cfg), num_samples=cfg.tune.num_samples,
                                            max_concurrent_trials=cfg.tune.max_concurrent_trials,
                                            trial_dirname_creator=_trial_dirname, reuse_actors=True),
                run_config=tune.RunConfig(name=state["name"], storage_path=str(storage), verbose=1))
        t0 = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - t0

        # 3. Results: one row per trial, its child run closed, table and plot on the parent run.
        rows = _rows(grid, dists, cfg, from_dict(base), exp_dir / "trials", parent.info.run_id)
        files = write_results(rows, teachers, cfg.tune.metric, exp_dir)
        for f in files.values():
            mlflow.log_artifact(str(f), artifact_path="tune")
        done = [r for r in rows if r["status"] in ("completed", "early-stopped") and r["model_path"]]
        mlflow.log_metrics({"tune_wall_s": wall, "trials": len(rows), "trials_completed": len(done),
                            "trials_stopped": sum(r["status"] == "stopped" for r in rows)})
        if not done:
            raise RuntimeError(f"no trial of search {state['name']!r} finished training; see {files['md']}")
        best = (max if cfg.tune.mode == "max" else min)(done, key=lambda r: r["best"])

        # 4. The champion: the best finished trial's student, registered from its child run.
        uri, version = _register_champion(cfg, best, manifest, src, parent.info.run_id)
        mlflow.log_metric(f"best_{cfg.tune.metric}", best["best"])
        mlflow.set_tags({"nakt.champion_trial": best["trial_id"], "nakt.champion_run_id": best["run_id"],
                         "nakt.champion_model_uri": uri, "nakt.champion_version": version})
        state["finished"] = True
        _save_state(cfg, state)
    return {"name": state["name"], "parent_run_id": parent.info.run_id, "model_uri": uri, "version": version,
            "champion": best, "rows": rows, "files": {k: str(v) for k, v in files.items()},
            "table": files["md"].read_text(), "wall_s": wall, "search_alg": alg_name}


def _register_champion(cfg: RunConfig, best: dict[str, Any], manifest: dict[str, Any], src: str,
                       parent_run_id: str) -> tuple[str, str]:
    import mlflow

    from nakt_ray.models.model_file import read_spec
    from nakt_ray.training.student import lineage_tags, register_student

    trial_cfg = best["config"]
    weights = list(trial_cfg.fusion.weights) if trial_cfg.fusion.weights else None
    sections = {k: trial_cfg.to_dict()[k] for k in ("student", "fusion", "training")}
    tags = {**lineage_tags(manifest, src, trial_cfg.fusion.rule, weights),
            "nakt.tune_parent_run_id": parent_run_id, "nakt.tune_trial_id": best["trial_id"],
            "nakt.tune_values": json.dumps(best["values"]),
            "nakt.tune_trial_config": json.dumps(sections, separators=(",", ":"))[:5000],
            f"nakt.tune_best_{cfg.tune.metric}": f"{best['best']:.6g}"}
    with mlflow.start_run(run_id=best["run_id"], nested=True):
        mlflow.log_text(json.dumps(trial_cfg.to_dict(), indent=2), "trial_config.json")
        return register_student(best["model_path"], read_spec(best["model_path"]), cfg.tracking.registered_model,
                                cfg.tune.alias, tags)


def _rows(grid: Any, dists: list[Dist], cfg: RunConfig, base: RunConfig, trials_dir: Path,
          parent_run_id: str) -> list[dict[str, Any]]:
    """One row per trial (creation order): id, status, epochs run, best metric, wall time, values, the trial's
    config (from the trials' ``base``), child run, model file."""
    from mlflow.tracking import MlflowClient

    from nakt_ray.tracking import tracking_uri

    client = MlflowClient(tracking_uri(cfg))
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                  order_by=["attributes.start_time ASC"])
    run_of = {r.data.tags.get("nakt.tune_trial_id"): r for r in children}  # the latest run of a trial wins
    metric, better = cfg.tune.metric, (max if cfg.tune.mode == "max" else min)
    rows = []
    for result in grid:
        trial_id = Path(result.path).name
        values = trial_values(dists, result.config, base)
        history = result.metrics_dataframe
        scores = [] if history is None or metric not in history else [float(v) for v in history[metric].dropna()]
        last = result.metrics or {}
        epochs = int(last["epoch"]) + 1 if "epoch" in last else 0
        if result.error is not None:
            status = "error"
        elif last.get("stopped_early"):
            status = "early-stopped"  # training.patience
        elif epochs < cfg.training.epochs:
            status = "stopped"  # by the scheduler (ASHA)
        else:
            status = "completed"
        trial_cfg = trial_config(base, {**values, "run_dir": str(trials_dir / trial_id)})
        model = trial_cfg.student_checkpoint
        run = run_of.get(trial_id)
        rows.append({"trial_id": trial_id, "status": status, "epochs": epochs,
                     "best": better(scores) if scores else float("nan"), "wall_s": float(last.get("time_total_s", 0)),
                     "values": values, "config": trial_cfg, "run_id": run.info.run_id if run else None,
                     "model_path": str(model) if status in ("completed", "early-stopped") and model.exists() else None,
                     "error": str(result.error).splitlines()[0][:300] if result.error is not None else ""})
        if run is not None:
            # A trial stopped by the scheduler had its process ended mid-run (the run reads RUNNING or FAILED): a
            # normal outcome of the search, so FINISHED, with the reason in a tag.
            client.set_tag(run.info.run_id, "nakt.tune_status", status)
            wanted = "FAILED" if status == "error" else "FINISHED"
            if run.info.status != wanted:
                client.set_terminated(run.info.run_id, wanted)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Results a person reads: table (Markdown, CSV) and plot.


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _columns(rows: list[dict[str, Any]], teachers: list[str]) -> list[str]:
    keys: list[str] = []
    for r in rows:
        for k in r["values"]:
            if k not in keys:
                keys.append(k)
    out = []
    for k in keys:
        out += [f"fusion.weights.{t}" for t in teachers] if k == "fusion.weights" else [k]
    return out


def _cell(row: dict[str, Any], column: str, teachers: list[str]) -> Any:
    if column.startswith("fusion.weights.") and "fusion.weights" in row["values"]:
        w = row["values"]["fusion.weights"]
        return None if w is None else w[teachers.index(column.split(".", 2)[2])] / sum(w)
    return row["values"].get(column)


def write_results(rows: list[dict[str, Any]], teachers: list[str], metric: str, out_dir: Path) -> dict[str, Path]:
    """``results.md``, ``results.csv`` and ``results.png`` in ``out_dir``. Weights are shown normalised (shares)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = _columns(rows, teachers)
    head = ["trial", "status", "epochs", f"best {metric}", "wall s"] + columns
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["trial_id", "status", "epochs", f"best_{metric}", "wall_s", "mlflow_run_id"] + columns)
    for r in rows:
        cells = [_cell(r, c, teachers) for c in columns]
        md.append("| " + " | ".join([r["trial_id"], r["status"], str(r["epochs"]), _fmt(r["best"]),
                                     f"{r['wall_s']:.1f}"] + [_fmt(c) for c in cells]) + " |")
        writer.writerow([r["trial_id"], r["status"], r["epochs"], r["best"], round(r["wall_s"], 2), r["run_id"]]
                        + [json.dumps(c) if isinstance(c, (list, tuple)) else c for c in cells])
    files = {"md": out_dir / "results.md", "csv": out_dir / "results.csv", "png": out_dir / "results.png"}
    files["md"].write_text("\n".join(md) + "\n")
    files["csv"].write_text(buf.getvalue())
    plot_results(rows, teachers, metric, files["png"])
    return files


def plot_results(rows: list[dict[str, Any]], teachers: list[str], metric: str, path: Path) -> Path:
    """Best ``metric`` per trial (trial order; hollow markers: stopped early by the scheduler) and against each
    teacher's share of the fusion weights (trials whose rule used weights)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(teachers), figsize=(4 * (1 + len(teachers)), 3.4), squeeze=False)
    ax = axes[0, 0]
    for i, r in enumerate(rows):
        full = r["status"] in ("completed", "early-stopped")
        ax.plot(i, r["best"], "o", color="C0", markerfacecolor="C0" if full else "none")
    ax.set(xlabel="trial (in order)", ylabel=f"best {metric}", title=f"{metric} per trial")
    ax.set_xticks(range(len(rows)))
    for t, name in enumerate(teachers):
        ax = axes[0, 1 + t]
        pts = [(_cell(r, f"fusion.weights.{name}", teachers), r["best"]) for r in rows]
        pts = [(w, s) for w, s in pts if w is not None]
        if pts:
            ax.plot([w for w, _ in pts], [s for _, s in pts], "o", color=f"C{t + 1}")
        else:
            ax.text(0.5, 0.5, "no trial with weights", ha="center", va="center", transform=ax.transAxes)
        ax.set(xlabel=f"weight share of {name}", ylabel=f"best {metric}", xlim=(0, 1), title=f"{metric} vs {name}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

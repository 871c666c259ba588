"""Search: a Ray Tune search over student training, fusion included, on a stored annotation set (``nakt tune``).

``tune.space`` in the run config maps dotted config keys to distributions; its language (syntax, the trial config a
sample stands for, the load-time check of every trial) is ``nakt_ray/config/space.py``. Every trial is the base
config with its sampled values set: a plain ``train-student`` config, trained by
:func:`nakt_ray.training.student.train_student` itself (``nakt_ray/search/trials.py``; same datasets, same
``training.fit``; no second loop). Fusion rules and weights are applied to the per-teacher maps stored in the
annotation set, so no teacher is ever loaded.

Here: the driver. ASHA stops lagging trials on the validation metric; Optuna's TPE proposes trials when installed
(docs/decisions.md, 22-28). MLflow: one parent run (stage ``tune``), one child run per trial with its epochs; the
results table (Markdown, CSV) and plot (PNG) on the parent (``nakt_ray/search/report.py``); the best trial's
student registered with alias ``tune.alias``. The experiment lives in ``<run_dir>/tune/<name>``;
``<run_dir>/tune/search.json`` names it and its parent run, so ``nakt tune --resume`` finishes an interrupted
search in the same parent run.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from nakt_ray.config import RunConfig, from_dict
from nakt_ray.config.space import Dist, parse_space, same_value
from nakt_ray.search.report import result_rows, write_results
from nakt_ray.search.trials import trainable, trial_base
from nakt_ray.tracking import (
    TAG_CHAMPION_MODEL_URI,
    TAG_CHAMPION_RUN_ID,
    TAG_CHAMPION_TRIAL,
    TAG_CHAMPION_VERSION,
    TAG_TUNE_BEST_PREFIX,
    TAG_TUNE_EXPERIMENT,
    TAG_TUNE_NAME,
    TAG_TUNE_PARENT_RUN_ID,
    TAG_TUNE_SCHEDULER,
    TAG_TUNE_SEARCH_ALG,
    TAG_TUNE_TRIAL_CONFIG,
    TAG_TUNE_TRIAL_ID,
    TAG_TUNE_VALUES,
)

STATE_FILE = "search.json"


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


def _trial_dirname(trial: Any) -> str:
    return trial.trial_id


def _state_file(cfg: RunConfig) -> Path:
    return Path(cfg.run_dir) / "tune" / STATE_FILE


def _start_or_resume(cfg: RunConfig, resume: bool) -> dict[str, Any]:
    """The search's identity, persisted in ``<run_dir>/tune/search.json``: experiment name, parent run id, space."""
    f = _state_file(cfg)
    if resume:
        from nakt_ray.training.student import read_unfinished

        state = read_unfinished(f, "search in this run_dir", "search")
        if not same_value(state.get("space"), cfg.tune.space):
            raise ValueError(f"cannot resume: tune.space differs from the interrupted search's ({str(f)!r}); "
                             "restore the config it ran with, or run without --resume")
        return state
    return {"name": f"tune-{time.strftime('%Y%m%d-%H%M%S')}", "parent_run_id": None, "finished": False,
            "space": cfg.tune.space}


def _save_state(cfg: RunConfig, state: dict[str, Any]) -> None:
    f = _state_file(cfg)
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(state, indent=2))


def build_search_alg(cfg: RunConfig) -> tuple[Any, str]:
    """The searcher ``tune.search_alg`` names, seeded by ``tune.seed``, and its name: Optuna's TPE (``optuna``, or
    ``auto`` when Optuna is installed) or Tune's random search (``random``). Public for searches other than
    :func:`tune_student`'s, e.g. E9's fusion-level one."""
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

    from nakt_ray import tracking
    from nakt_ray.annotation import parquet as ann
    from nakt_ray.runtime.cluster import init_ray
    from nakt_ray.training.volume_data import validation_dataset

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
                            tags={TAG_TUNE_NAME: state["name"], TAG_TUNE_EXPERIMENT: str(exp_dir)}) as parent:
        state["parent_run_id"] = parent.info.run_id
        _save_state(cfg, state)
        resources = {"cpu": cfg.tune.cpus_per_trial}
        # The validation set is the same for every trial: decoded once, shared through the object store.
        val_ds = validation_dataset(cfg, cfg.data.val, cfg.training.batch_size, cfg.spatial_dims)
        base = trial_base(cfg, src)
        trial_fn = trainable(base, dict(cfg.tune.space), str(exp_dir / "trials"), parent.info.run_id, val_ds,
                             resources)

        # 2. The search (or what is left of it).
        search_alg, alg_name = build_search_alg(cfg)
        mlflow.set_tags({TAG_TUNE_SEARCH_ALG: alg_name, TAG_TUNE_SCHEDULER: cfg.tune.scheduler})
        if resume and tune.Tuner.can_restore(str(exp_dir)):  # (killed before Tune wrote it: start it afresh)
            tuner = tune.Tuner.restore(str(exp_dir), trainable=trial_fn, resume_unfinished=True,
                                       resume_errored=True)
        else:
            tuner = tune.Tuner(
                trial_fn, param_space=tune_domains(dists),
                tune_config=tune.TuneConfig(metric=cfg.tune.metric, mode=cfg.tune.mode, search_alg=search_alg,
                                            scheduler=_scheduler(cfg), num_samples=cfg.tune.num_samples,
                                            max_concurrent_trials=cfg.tune.max_concurrent_trials,
                                            trial_dirname_creator=_trial_dirname, reuse_actors=True),
                run_config=tune.RunConfig(name=state["name"], storage_path=str(storage), verbose=1))
        t0 = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - t0

        # 3. Results: one row per trial, its child run closed, table and plot on the parent run.
        rows = result_rows(grid, dists, cfg, from_dict(base), exp_dir / "trials", parent.info.run_id)
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
        mlflow.set_tags({TAG_CHAMPION_TRIAL: best["trial_id"], TAG_CHAMPION_RUN_ID: best["run_id"],
                         TAG_CHAMPION_MODEL_URI: uri, TAG_CHAMPION_VERSION: version})
        state["finished"] = True
        _save_state(cfg, state)
    return {"name": state["name"], "parent_run_id": parent.info.run_id, "model_uri": uri, "version": version,
            "champion": best, "rows": rows, "files": {k: str(v) for k, v in files.items()},
            "table": files["md"].read_text(), "wall_s": wall, "search_alg": alg_name}


def _register_champion(cfg: RunConfig, best: dict[str, Any], manifest: dict[str, Any], src: str,
                       parent_run_id: str) -> tuple[str, str]:
    """Register the best row's student as ``tracking.registered_model`` with alias ``tune.alias``, from its child
    run (which gets the trial's whole config as ``trial_config.json``), tagged with its lineage and trial; returns
    the model URI and version."""
    import mlflow

    from nakt_ray.models.model_file import read_spec
    from nakt_ray.training.student import lineage_tags, register_student

    trial_cfg = best["config"]
    weights = trial_cfg.fusion.effective_weights()
    sections = {k: trial_cfg.to_dict()[k] for k in ("student", "fusion", "training")}
    tags = {**lineage_tags(manifest, src, trial_cfg.fusion.rule, weights),
            TAG_TUNE_PARENT_RUN_ID: parent_run_id, TAG_TUNE_TRIAL_ID: best["trial_id"],
            TAG_TUNE_VALUES: json.dumps(best["values"]),
            TAG_TUNE_TRIAL_CONFIG: json.dumps(sections, separators=(",", ":"))[:5000],
            TAG_TUNE_BEST_PREFIX + cfg.tune.metric: f"{best['best']:.6g}"}
    with mlflow.start_run(run_id=best["run_id"], nested=True):
        mlflow.log_text(json.dumps(trial_cfg.to_dict(), indent=2), "trial_config.json")
        return register_student(best["model_path"], read_spec(best["model_path"]), cfg.tracking.registered_model,
                                cfg.tune.alias, tags)

"""MLflow: one place that knows the tracking URI, the experiment, and how a registered student is aliased and tagged.

The student itself is logged in nakt's own MLflow flavor (a model file read with ``weights_only``, no pickle) by
``nakt_ray/models/mlflow_format.py``, which sits with the model file format above this layer.

Default store: ``sqlite:///<run_dir>/mlflow.db`` with artifacts in ``<run_dir>/mlartifacts`` (a real MLflow
backend with a Model Registry). ``tracking.uri`` or ``MLFLOW_TRACKING_URI`` point it at a tracking server instead.
Ray Train workers log through :class:`RunLogger`, which needs only the URI and the run id (picklable).
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nakt_ray.config import RunConfig, flatten

# ----------------------------------------------------------------------------------------------------------------
# The ``nakt.*`` MLflow tag names that stage runs and registered models carry, each spelled once, here.

# On every stage run: the stage (`nakt <stage>`), the run directory, and "true" on a resumed run.
TAG_STAGE = "nakt.stage"
TAG_RUN_DIR = "nakt.run_dir"
TAG_RESUMED = "nakt.resumed"

# What a model is (on a registered model version, or on the run that logged the model), read by the MLflow teacher
# source kind (nakt_ray/teachers/kinds/mlflow_model.py). Values are JSON, except ``nakt.outputs`` which may also be
# the bare word: labels '["background", "head"]', in_channels '1', input_size '[128, 128]', outputs 'logits',
# preprocess '{"normalize": "zscore"}'.
TAG_LABELS = "nakt.labels"
TAG_IN_CHANNELS = "nakt.in_channels"
TAG_INPUT_SIZE = "nakt.input_size"
TAG_OUTPUTS = "nakt.outputs"
TAG_PREPROCESS = "nakt.preprocess"
TAG_VOLUME = "nakt.volume"  # a 3D model's volume preprocessing (config.VolumePreprocessConfig), instead of preprocess
# TeacherDescription field -> its tag.
DESCRIPTION_TAGS = {"labels": TAG_LABELS, "in_channels": TAG_IN_CHANNELS, "input_size": TAG_INPUT_SIZE,
                    "outputs": TAG_OUTPUTS, "preprocess": TAG_PREPROCESS, "volume": TAG_VOLUME}

# Tags: lineage of a student (written at registration, read by people and by `nakt predict`'s report).
TAG_TEACHER = "nakt.teacher"
TAG_TEACHERS = "nakt.teachers"
TAG_TEACHER_ARCHS = "nakt.teacher_archs"
TAG_TEACHER_FINGERPRINTS = "nakt.teacher_fingerprints"
TAG_TRANSFERAL = "nakt.transferal"
TAG_ANNOTATIONS = "nakt.annotations"
TAG_ANNOTATION_FINGERPRINT = "nakt.annotation_fingerprint"
TAG_FUSION_RULE = "nakt.fusion_rule"
TAG_FUSION_WEIGHTS = "nakt.fusion_weights"
TAG_ARCH = "nakt.arch"
TAG_ARCH_ARGS = "nakt.arch_args"
TAG_FINETUNE_DATA = "nakt.finetune_data"
TAG_FINETUNE_CASES = "nakt.finetune_cases"
TAG_START = "nakt.start"
TAG_INIT = "nakt.init"

# Tags: a search: its parent run, its trials and its champion.
TAG_TUNE_NAME = "nakt.tune_name"
TAG_TUNE_EXPERIMENT = "nakt.tune_experiment"
TAG_TUNE_SEARCH_ALG = "nakt.tune_search_alg"
TAG_TUNE_SCHEDULER = "nakt.tune_scheduler"
TAG_TUNE_PARENT_RUN_ID = "nakt.tune_parent_run_id"
TAG_TUNE_TRIAL_ID = "nakt.tune_trial_id"
TAG_TUNE_VALUES = "nakt.tune_values"
TAG_TUNE_TRIAL_CONFIG = "nakt.tune_trial_config"
TAG_TUNE_STATUS = "nakt.tune_status"
TAG_CHAMPION_TRIAL = "nakt.champion_trial"
TAG_CHAMPION_RUN_ID = "nakt.champion_run_id"
TAG_CHAMPION_MODEL_URI = "nakt.champion_model_uri"
TAG_CHAMPION_VERSION = "nakt.champion_version"
TAG_TUNE_BEST_PREFIX = "nakt.tune_best_"  # + the search metric, e.g. nakt.tune_best_val_dice


def tracking_uri(cfg: RunConfig) -> str:
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(cfg.run_dir).resolve() / 'mlflow.db'}"


def use_uri(uri: str) -> None:
    """Point MLflow's tracking and registry at ``uri`` in this process.

    MLflow 3's ``set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` into the environment. That variable is an
    input to nakt (it names the user's server), so it is put back as it was: otherwise a second run in the same
    process (a notebook, a Tune driver, a test session) would log into the first run's store.
    """
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def _is_local(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri


class TrackingUnreachable(ConnectionError):
    """The MLflow tracking server of a run does not answer."""


# Seconds a tracking server gets to answer the reachability probe. MLflow's own client retries a refused
# connection 7 times with exponential backoff (about 4 minutes, measured) before it raises.
PROBE_TIMEOUT_S = 5.0


def check_reachable(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise :class:`TrackingUnreachable` naming ``uri`` when an http(s) tracking server does not answer.

    Any HTTP answer counts as reachable (a proxy may not serve ``/health``); only a refused, unresolvable or
    silent connection fails. Other URIs (sqlite, file, databricks) are not probed.
    """
    import http.client
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        pass  # it answered
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise TrackingUnreachable(f"MLflow tracking server {uri} is not reachable: {reason}; start it, or set "
                                  "tracking.uri (or MLFLOW_TRACKING_URI) to a server that runs") from None


def setup(cfg: RunConfig) -> str:
    """Point MLflow at the run's store and experiment; returns the experiment id.

    A tracking server (http/https URI) is probed first, so a run against a server that is down fails within
    seconds with :class:`TrackingUnreachable` instead of after MLflow's minutes of retries.
    """
    import mlflow

    uri = tracking_uri(cfg)
    check_reachable(uri)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    use_uri(uri)
    exp = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    if exp is not None:
        return exp.experiment_id
    artifacts = None
    if _is_local(uri):  # keep artifacts inside the run directory, not in the current working directory
        artifacts = (Path(cfg.run_dir).resolve() / "mlartifacts").as_uri()
    return mlflow.create_experiment(cfg.tracking.experiment, artifact_location=artifacts)


@contextlib.contextmanager
def stage_run(cfg: RunConfig, stage: str, run_name: str | None = None, params: dict[str, Any] | None = None,
              tags: dict[str, str] | None = None, run_id: str | None = None) -> Iterator[Any]:
    """An MLflow run for one stage, with the whole config as parameters and ``nakt.stage`` as a tag.

    ``run_id`` reopens an existing run (a resumed training logs into the run it started).
    """
    import mlflow

    exp_id = setup(cfg)
    if run_id is not None:
        with mlflow.start_run(run_id=run_id) as run:
            mlflow.set_tag(TAG_RESUMED, "true")
            yield run
        return
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name or stage) as run:
        mlflow.set_tags({TAG_STAGE: stage, TAG_RUN_DIR: str(Path(cfg.run_dir).resolve()), **(tags or {})})
        mlflow.log_params({k: _param(v) for k, v in flatten(cfg.to_dict()).items()})
        if params:
            mlflow.log_params({k: _param(v) for k, v in params.items()})
        yield run


def _param(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 6000 else s[:5997] + "..."


@dataclass(frozen=True)
class RunLogger:
    """Logs metrics to an existing MLflow run from any process (e.g. a Ray Train worker of rank 0)."""

    uri: str
    run_id: str

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))]
        MlflowClient(self.uri).log_batch(self.run_id, metrics=batch)


def description_tags(spec: Any) -> dict[str, str]:
    """The ``nakt.*`` tags that let any loader (the MLflow teacher source kind, ``nakt predict``/``export``) use
    the registered model without its nakt file: labels, input channels and size, output kind, preprocessing."""
    import json
    from dataclasses import asdict

    tags = {TAG_LABELS: json.dumps(list(spec.labels)), TAG_IN_CHANNELS: json.dumps(spec.in_channels),
            TAG_INPUT_SIZE: json.dumps(list(spec.input_size)), TAG_OUTPUTS: "logits"}
    if getattr(spec, "volume", None) is not None:  # a 3D model: its volume preprocessing (the 2D one does not apply)
        tags[TAG_VOLUME] = json.dumps(spec.to_dict()["volume"])
    else:
        tags[TAG_PREPROCESS] = json.dumps(asdict(spec.preprocess))
    return tags


def set_alias_and_tags(registered_name: str, version: str, alias: str, tags: dict[str, str]) -> tuple[str, str]:
    """Point ``alias`` of ``registered_name`` at ``version`` and tag that version; returns ``(model_uri,
    version)`` with the URI ``models:/NAME@ALIAS``.

    The second half of registering a student: the model is logged and registered in nakt's own MLflow flavor by
    ``nakt_ray.models.mlflow_format.log_and_register_model`` (a model file read with ``weights_only``, never a
    pickle), which lives with the model file format, above this layer.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.set_registered_model_alias(registered_name, alias, version)
    for k, v in tags.items():
        client.set_model_version_tag(registered_name, version, k, str(v))
    return f"models:/{registered_name}@{alias}", version

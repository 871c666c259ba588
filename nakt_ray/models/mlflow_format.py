"""The ``nakt`` MLflow model flavor: a registered model that loads without unpickling anything.

A model logged in this flavor is an MLflow model directory holding the nakt model file and an ``MLmodel``::

    model/
        MLmodel      flavors: {nakt: {model_file: model.pt, format: nakt-model, format_version: 1, ...}}
                     signature: inputs [-1, C, H, W] float32, outputs [-1, K, H, W] float32
        model.pt     {"format": "nakt-model", "version": 1, "spec": {...}, "state_dict": {...}}
                     (nakt_ray/models/model_file.py: read with torch.load(weights_only=True))

Loading it (:func:`load_registered`) reads the ``MLmodel`` (YAML, parsed with ``yaml.safe_load`` by MLflow),
downloads ``model.pt`` only, and rebuilds the zoo architecture the spec names: no Python object comes out of the
registry, so whoever can log a model or move an alias can change *which weights* run, never *what code* runs.
A model with MLflow's ``pytorch`` flavor (``mlflow.pytorch.log_model``) is unpickled by
``mlflow.pytorch.load_model``, which runs whatever the pickle says; the MLflow teacher kind refuses those unless the
teacher says ``trust_pickle: true`` (nakt_ray/teachers/kinds/mlflow_model.py).

:func:`log_and_register_model` logs a student in this flavor and registers it (``models:/NAME@ALIAS``).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from nakt_ray.errors import CheckpointError
from nakt_ray.models import model_file
from nakt_ray.models.model_file import FORMAT, VERSION, ModelSpec, load_model

# The flavor's name in ``MLmodel`` and the keys of its entry.
FLAVOR = "nakt"
MODEL_FILE = "model.pt"
# The version of the flavor entry itself (which keys it has); the model file carries its own version.
FLAVOR_VERSION = 1


def save_model(path: str | Path, mlflow_model: Any, *, model: torch.nn.Module | dict[str, torch.Tensor],
               spec: ModelSpec, signature: Any = None, **_: Any) -> None:
    """Write the MLflow model directory ``path``: ``model.pt`` and ``MLmodel`` with the ``nakt`` flavor.

    The ``save_model`` hook that ``mlflow.models.Model.log(flavor=<this module>)`` calls with the ``Model`` it
    is building (``mlflow_model``: run and logged-model ids are already set) and the keyword arguments of
    :func:`log_and_register_model`. Extra keywords MLflow passes through (none at 3.17) are ignored.
    """
    from mlflow.models.model import MLMODEL_FILE_NAME

    path = Path(path)
    path.mkdir(parents=True, exist_ok=False)
    model_file.save_model(path / MODEL_FILE, model, spec)
    mlflow_model.signature = signature
    mlflow_model.add_flavor(FLAVOR, model_file=MODEL_FILE, format=FORMAT, format_version=VERSION,
                            flavor_version=FLAVOR_VERSION, arch=spec.arch, torch_version=str(torch.__version__))
    mlflow_model.save(str(path / MLMODEL_FILE_NAME))


def log_and_register_model(model: torch.nn.Module, spec: ModelSpec, registered_name: str, alias: str,
                           tags: dict[str, str]) -> tuple[str, str]:
    """Log ``model`` (described by ``spec``) to the active MLflow run in the ``nakt`` flavor, register it as a
    new version of ``registered_name``, point ``alias`` at it and tag it with the description and ``tags``.

    Returns ``(model_uri, version)``, the URI being ``models:/NAME@ALIAS``. The model loads with
    :func:`load_registered` (or as a teacher, ``nakt predict --model``, ``nakt export --model``), which never
    unpickles.
    """
    import numpy as np
    from mlflow.models import Model, infer_signature

    from nakt_ray import tracking

    model = getattr(model, "module", model).cpu().eval()
    # The signature is what a reader without nakt sees of the model: [-1, C, H, W] in, [-1, K, H, W] out.
    example = np.zeros((1, spec.in_channels, *spec.input_size), dtype=np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(example)).numpy()
    signature = infer_signature(example, out)
    # artifact_path=None: MLflow 3 takes the name as ``name`` (artifact_path is deprecated but still positional).
    info = Model.log(None, name="model", flavor=_this_module(), registered_model_name=registered_name,
                     flavor_name=FLAVOR, model=model, spec=spec, signature=signature)
    return tracking.set_alias_and_tags(registered_name, str(info.registered_model_version), alias,
                                       {**tracking.description_tags(spec), **tags})


def _this_module() -> Any:
    import sys

    return sys.modules[__name__]


def flavor_config(model_uri: str) -> tuple[dict[str, Any] | None, list[str]]:
    """``(the nakt flavor entry or None, every flavor name)`` of the MLflow model at ``model_uri`` (``models:/``,
    ``runs:/``, a local directory...), from its ``MLmodel`` alone (YAML, parsed safely; no model is loaded)."""
    from mlflow.models import Model

    flavors = Model.load(model_uri).flavors or {}
    entry = flavors.get(FLAVOR)
    return (dict(entry) if isinstance(entry, dict) else None), sorted(flavors)


def _model_file_name(model_uri: str, entry: dict[str, Any]) -> str:
    """The model file the flavor entry names, checked: a plain file name in the model directory (an entry edited
    to ``../other/run/x.pt`` could otherwise point the loader anywhere in the artifact store), of a format and
    version this nakt-ray reads."""
    name = entry.get("model_file")
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        raise CheckpointError(f"MLflow model {model_uri!r}: the {FLAVOR!r} flavor names model file {name!r}; "
                              f"expected a file name in the model directory, such as {MODEL_FILE!r}")
    if entry.get("format") != FORMAT or entry.get("format_version") != VERSION:
        raise CheckpointError(f"MLflow model {model_uri!r}: the {FLAVOR!r} flavor says format "
                              f"{entry.get('format')!r} version {entry.get('format_version')!r}; this nakt-ray "
                              f"reads {FORMAT!r} version {VERSION}")
    return name


def load_registered(model_uri: str, device: str | torch.device = "cpu",
                    entry: dict[str, Any] | None = None) -> tuple[torch.nn.Module, ModelSpec]:
    """The model of an MLflow model in the ``nakt`` flavor, in eval mode on ``device``, and its spec.

    Downloads the model file alone and reads it with ``torch.load(weights_only=True)``
    (nakt_ray/models/model_file.py): nothing is unpickled. ``entry`` is the flavor entry when the caller has
    read it already (:func:`flavor_config`). Works against the current MLflow tracking/registry URI, e.g.::

        mlflow.set_tracking_uri("sqlite:///runs/demo/mlflow.db")
        model, spec = load_registered("models:/nakt-demo-student@candidate")

    Raises:
        CheckpointError: the model has no ``nakt`` flavor (e.g. a pickled ``pytorch`` model), its entry names an
            unusable file, or the file is not a valid nakt model file.
    """
    import mlflow

    if entry is None:
        entry, flavors = flavor_config(model_uri)
        if entry is None:
            raise CheckpointError(f"MLflow model {model_uri!r} has flavors {flavors}, not {FLAVOR!r}: it was not "
                                  "logged by nakt-ray, and loading it would mean unpickling it")
    name = _model_file_name(model_uri, entry)
    with tempfile.TemporaryDirectory(prefix="nakt-mlflow-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"{model_uri.rstrip('/')}/{name}", dst_path=tmp)
        return load_model(local, device)

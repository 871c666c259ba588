"""The ``mlflow`` kind: a PyTorch model in MLflow (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
``models:/NAME/latest``, ``runs:/RUN_ID/PATH``), resolved against the current tracking URI.

How the weights are read depends on the model's flavor (its ``MLmodel``, read first, as YAML):

- ``nakt`` (every student nakt-ray registers; nakt_ray/models/mlflow_format.py): only the nakt model file is
  downloaded and read with ``torch.load(weights_only=True)``; no code from the registry runs.
- anything else (``pytorch``: a model logged with ``mlflow.pytorch.log_model``) can only be loaded by unpickling
  it, which runs whatever code the pickle names: whoever can log a model or move an alias could run code in this
  process (on a cluster, the Ray head). It is refused with a :class:`TeacherLoadError` unless the teacher says
  ``trust_pickle: true``; then it is loaded with ``mlflow.pytorch.load_model`` and a warning.

What the model is comes from the ``nakt.*`` tags (``nakt_ray.tracking.DESCRIPTION_TAGS``) on the model version,
over those on the run that logged it, over (``nakt`` flavor) the model file's own spec; what they leave out comes
from the logged signature (input channels and size, ``[-1, C, H, W]``) and a probe (class count; logits or
probabilities). ``details["inferred"]`` lists what was not declared; ``details["flavor"]`` says how it was read.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from nakt_ray.config import ConfigError
from nakt_ray.errors import CheckpointError, TeacherLoadError, error
from nakt_ray.models import mlflow_format
from nakt_ray.models.mlflow_format import FLAVOR
from nakt_ray.teachers.description import build_description, teacher_where
from nakt_ray.teachers.inference import PROB_TOLERANCE, RawTeacher, looks_like_probabilities
from nakt_ray.tracking import DESCRIPTION_TAGS, TAG_IN_CHANNELS, TAG_INPUT_SIZE, TAG_LABELS, TAG_OUTPUTS, TAG_PREPROCESS

KIND = "mlflow"
EXPECTS = ("an MLflow model URI models:/NAME@ALIAS, models:/NAME/VERSION, models:/NAME/latest or runs:/RUN_ID/PATH "
           "(described by its nakt.* tags, else by its signature and a probe)")
SCHEMES = ("models:/", "runs:/")


def detect(source: str) -> bool:
    """A ``models:/`` or ``runs:/`` URI."""
    return source.startswith(SCHEMES)


def _target(name: str, uri: str, client: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """The description tags for an MLflow URI (model version tags over its run's tags) and lineage details."""
    where = teacher_where(name, uri)
    if uri.startswith("runs:/"):
        run_id = uri[len("runs:/"):].split("/", 1)[0]
        run = client.get_run(run_id)
        return dict(run.data.tags), {"run_id": run_id, "resolved": run_id}
    ref = uri[len("models:/"):]
    if "@" in ref:
        model_name, alias = ref.split("@", 1)
        mv = client.get_model_version_by_alias(model_name, alias)
    elif "/" in ref:
        model_name, version = ref.rsplit("/", 1)
        if version == "latest":
            versions = client.search_model_versions(f"name = '{model_name}'")
            if not versions:
                raise error(TeacherLoadError, where, f"registered model {model_name!r} has no versions")
            mv = max(versions, key=lambda v: int(v.version))
        elif version.isdigit():
            mv = client.get_model_version(model_name, version)
        else:
            raise error(TeacherLoadError, where, f"version {version!r} is not a number; use models:/NAME/3, "
                                                 "models:/NAME@alias or models:/NAME/latest (stages are not supported)")
    else:
        raise error(TeacherLoadError, where, "expected models:/NAME@ALIAS, models:/NAME/VERSION, models:/NAME/latest "
                                             "or runs:/RUN_ID/PATH")
    tags = dict(client.get_run(mv.run_id).data.tags) if mv.run_id else {}
    tags.update(mv.tags or {})
    details = {"registered_model": mv.name, "version": str(mv.version), "run_id": mv.run_id,
               "resolved": f"{mv.name}/{mv.version}:{mv.run_id}"}
    return tags, details


def _parse_tags(name: str, uri: str, tags: Mapping[str, str]) -> dict[str, Any]:
    """The description fields the ``nakt.*`` tags give, as plain data (JSON-decoded)."""
    out: dict[str, Any] = {}
    for key, tag in DESCRIPTION_TAGS.items():
        if tag not in tags:
            continue
        value = tags[tag]
        if key == "outputs" and value in ("logits", "probabilities"):
            out[key] = value
            continue
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            raise error(TeacherLoadError, teacher_where(name, uri),
                        f"MLflow tag {tag!r} = {value!r} is not JSON (e.g. labels '[\"background\", \"head\"]', "
                        "input_size '[128, 128]', in_channels '1')") from None
    return out


def _signature_shape(uri: str) -> tuple[int, ...] | None:
    """The logged signature's input shape ``(-1, C, H, W)`` or ``(-1, C, D, H, W)``, or None without such a tensor
    signature."""
    import mlflow

    try:
        signature = mlflow.models.get_model_info(uri).signature
        spec = signature.inputs.inputs[0] if signature is not None else None
        shape = getattr(spec, "shape", None)
    except Exception:  # noqa: BLE001 - no or unreadable signature: the tags must say it
        return None
    return tuple(int(s) for s in shape) if shape is not None and len(shape) in (4, 5) else None


def _refusal(name: str, flavors: list[str]) -> str:
    """Why a model without the nakt flavor is not loaded, and the ways out."""
    return (f"is an MLflow model with flavors {flavors}, not nakt's own {FLAVOR!r} flavor: loading it means "
            "unpickling it (mlflow.pytorch.load_model), which runs any code the pickle names, so whoever can log a "
            "model or move an alias in this registry could run code here. Register it through nakt (nakt "
            "train-student, or save it as a nakt model file), export it to ONNX or TorchScript with a description "
            f"YAML, or, if you trust everyone who can write to this registry, set trust_pickle: true on teacher "
            f"{name!r} in the run config (nakt predict, nakt export and a nakt evaluate --model that is not a "
            "configured teacher never unpickle)")


def _load_module(name: str, source: str, device: torch.device, trust_pickle: bool
                 ) -> tuple[torch.nn.Module, dict[str, Any], str]:
    """``(module, description data from the model file's spec, flavor read)``; see the module docstring."""
    import mlflow

    entry, flavors = mlflow_format.flavor_config(source)
    if entry is not None:
        model, spec = mlflow_format.load_registered(source, device, entry)
        data = {"labels": list(spec.labels), "in_channels": spec.in_channels,
                "input_size": list(spec.input_size), "outputs": "logits"}
        if spec.volume is not None:
            data["volume"] = spec.to_dict()["volume"]
        else:
            data["preprocess"] = spec.to_dict()["preprocess"]
        return model, data, FLAVOR
    if not trust_pickle:
        raise error(TeacherLoadError, teacher_where(name, source), _refusal(name, flavors))
    warnings.warn(f"teacher {name!r} ({source}): unpickling an MLflow model with flavors {flavors} because the "
                  "teacher says trust_pickle: true; the pickle can run any code", UserWarning, stacklevel=4)
    model = mlflow.pytorch.load_model(source, map_location=device)
    if not isinstance(model, torch.nn.Module):
        raise error(TeacherLoadError, teacher_where(name, source),
                    f"mlflow.pytorch.load_model returned {type(model).__name__}, not a torch module")
    return model, {}, "pytorch (pickle, trusted)"


def load(name: str, source: str, device: torch.device, trust_pickle: bool = False) -> RawTeacher:
    """The logged torch module on ``device``, described by tags, the model file, the signature and a probe (in
    that order). ``trust_pickle``: a model without the ``nakt`` flavor may be unpickled (else it is refused)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    where = teacher_where(name, source)
    tracking = mlflow.get_tracking_uri()
    try:
        tags, details = _target(name, source, MlflowClient())
        model, data, flavor = _load_module(name, source, device, trust_pickle)
    except TeacherLoadError:
        raise
    except CheckpointError as err:  # a nakt flavor whose entry or model file is unusable
        raise error(TeacherLoadError, where, f"{err} (tracking URI {tracking})") from None
    except Exception as err:  # noqa: BLE001 - MLflow raises many types (missing model, store errors)
        raise error(TeacherLoadError, where, f"cannot be loaded from MLflow (tracking URI {tracking}): {err}") from None
    model = model.to(device).eval()
    data.update(_parse_tags(name, source, tags))
    inferred: list[str] = []

    # 1. Input size and channels: tags, else the logged signature ([-1, C, H, W]).
    if "input_size" not in data or "in_channels" not in data:
        shape = _signature_shape(source)
        if shape is not None and "input_size" not in data and min(shape[2:]) > 0:
            data["input_size"] = list(shape[2:])
            inferred.append("input_size")
        if shape is not None and "in_channels" not in data and shape[1] > 0:
            data["in_channels"] = shape[1]
            inferred.append("in_channels")
    missing = [k for k in ("input_size", "in_channels") if k not in data]
    if missing:
        raise error(TeacherLoadError, where,
                    f"nothing says the model's {' and '.join(missing)}: set the MLflow tags "
                    f"{', '.join(DESCRIPTION_TAGS[k] for k in missing)} on the model version or its run (e.g. "
                    f"{TAG_INPUT_SIZE}='[128, 128]', {TAG_IN_CHANNELS}='1'; also {TAG_LABELS}, {TAG_OUTPUTS}, "
                    f"{TAG_PREPROCESS}), or log it with a signature")
    # 2. Labels and outputs: tags, else a probe with one zero image (class count) and a random batch.
    if "labels" not in data or "outputs" not in data:
        try:
            size = [int(s) for s in data["input_size"]]
            gen = torch.Generator().manual_seed(0)
            probe = torch.cat([torch.zeros(1, int(data["in_channels"]), *size),
                               torch.randn(2, int(data["in_channels"]), *size, generator=gen)]).to(device)
            with torch.no_grad():
                raw = model(probe)
        except Exception as err:  # noqa: BLE001 - a model that fails on its own declared input
            probe_shape = [1, data["in_channels"], *data["input_size"]]
            raise error(TeacherLoadError, where, f"probing with an input of {probe_shape} failed: {err}") from None
        if not isinstance(raw, torch.Tensor) or raw.ndim != probe.ndim:
            raise error(TeacherLoadError, where, f"the model returned {getattr(raw, 'shape', type(raw).__name__)}; "
                                                 f"expected [B, K, {'H, W' if probe.ndim == 4 else 'D, H, W'}]")
        if "labels" not in data:
            data["labels"] = [f"class_{k}" for k in range(raw.shape[1])]
            inferred.append("labels")
        if "outputs" not in data:
            probs = looks_like_probabilities(raw.float(), PROB_TOLERANCE)
            data["outputs"] = "probabilities" if probs else "logits"
            inferred.append("outputs")
    try:
        description = build_description(data)
    except ConfigError as err:
        raise error(TeacherLoadError, where, f"description from MLflow tags ({', '.join(DESCRIPTION_TAGS.values())}): "
                                             f"{err}") from None
    resolved = details.pop("resolved")
    details.update(tracking_uri=tracking, inferred=inferred, flavor=flavor,
                   tags={k: v for k, v in tags.items() if k in DESCRIPTION_TAGS.values()})
    # No file to hash: the URI and what it resolved to (registered version and run) identify the weights.
    fp = hashlib.sha256(f"{source}|{resolved}".encode()).hexdigest()[:16]
    return RawTeacher(model, description, fp, details)

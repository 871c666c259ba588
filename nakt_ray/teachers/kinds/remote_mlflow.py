"""MLflow's scoring server for remote teachers (``remote.py``): what ``mlflow models serve`` (and a Databricks or
Azure ML endpoint of an MLflow model) answers: ``GET /ping``, ``GET /version`` (MLflow's version), ``POST
/invocations`` with ``{"inputs": nested lists}`` (the tensor input of a model with a tensor signature), answered
with ``{"predictions": ...}``. The server serves one model and says nothing about it: no name, version or shape.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from nakt_ray.teachers.kinds.remote_http import Http, RequestFailed, as_scores

__all__ = ["MLflowServer", "mlflow_decode", "mlflow_encode"]


def mlflow_encode(x: np.ndarray) -> bytes:
    """An MLflow scoring-server request for ``x``: ``{"inputs": nested lists}`` (the tensor input format)."""
    return json.dumps({"inputs": x.tolist()}).encode()


def mlflow_decode(resp: Any, output_name: str | None) -> np.ndarray:
    """The scores in an MLflow scoring-server answer ``{"predictions": ...}``: a nested list, or a mapping of
    outputs (the one named ``output_name``, else its only one)."""
    try:
        predictions = resp.json()["predictions"]
    except (ValueError, KeyError, TypeError):
        raise RequestFailed(f"the answer is not an MLflow prediction: {resp.text[:200]!r}") from None
    if isinstance(predictions, dict):
        if output_name in predictions:
            predictions = predictions[output_name]
        elif len(predictions) == 1:
            predictions = next(iter(predictions.values()))
        else:
            raise RequestFailed(f"the predictions hold outputs {list(predictions)}; name one with output_name")
    return as_scores(predictions, None, "the predictions")


class MLflowServer:
    """A model behind MLflow's scoring server. Its ``model`` and ``version`` are the teacher YAML's (recorded, and
    in the fingerprint), since the server does not say."""

    def __init__(self, model: str | None, version: str | None, output_name: str | None):
        self.model, self.version, self.output_name = model or "", version or "", output_name

    def connect(self, http: Http) -> dict[str, Any]:
        http.request("GET", "/ping")
        server = http.request("GET", "/version").text.strip().strip('"')[:40]
        return {"model": self.model, "version": self.version, "mlflow_version": server, "fixed_batch": None}

    def infer(self, http: Http, x: np.ndarray) -> np.ndarray:
        return mlflow_decode(http.request("POST", "/invocations", mlflow_encode(x)), self.output_name)

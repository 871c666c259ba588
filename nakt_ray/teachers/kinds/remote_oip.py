"""The Open Inference Protocol v2 (REST) for remote teachers (``remote.py``): KServe, Triton and MLServer serve it.

``GET /v2/health/ready``; ``GET /v2/models/{name}[/versions/{v}]``: the model's metadata (its versions, and its
inputs and outputs with datatype and shape, ``-1`` for a variable dimension), checked against the teacher's
description; ``POST /v2/models/{name}[/versions/{v}]/infer``: one input tensor in JSON (row-major ``data``), one
output tensor back. JSON tensors are what every v2 server takes (Triton's and KServe's binary tensor extension is
faster but not universal).
"""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import numpy as np

from nakt_ray.teachers.description import TeacherDescription
from nakt_ray.teachers.kinds.remote_http import (
    FLOAT_TYPES,
    Http,
    RequestFailed,
    as_scores,
)

__all__ = ["OIP", "model_path", "oip_decode", "oip_encode"]


def model_path(model: str, version: str | None) -> str:
    """``/v2/models/<model>[/versions/<version>]``, each part URL-quoted."""
    path = f"/v2/models/{quote(model, safe='')}"
    return path + (f"/versions/{quote(version, safe='')}" if version else "")


def oip_encode(x: np.ndarray, input_name: str, datatype: str, output_name: str | None) -> bytes:
    """An OIP v2 inference request (JSON) for ``x`` ``[B, C, ...]``: one input tensor, row-major flattened."""
    body: dict[str, Any] = {"inputs": [{"name": input_name, "shape": list(x.shape), "datatype": datatype,
                                        "data": x.ravel().tolist()}]}
    if output_name:
        body["outputs"] = [{"name": output_name}]
    return json.dumps(body).encode()


def oip_decode(resp: Any, output_name: str | None) -> np.ndarray:
    """The scores an OIP v2 inference response holds: the output named ``output_name``, else its only output."""
    try:
        outputs = resp.json()["outputs"]
        chosen = [o for o in outputs if o.get("name") == output_name] if output_name else outputs
        if len(chosen) != 1:
            names = [o.get("name") for o in outputs]
            raise RequestFailed(f"the response has outputs {names}; expected one"
                                + (f" named {output_name!r}" if output_name else " (name it with output_name)"))
        out = chosen[0]
        shape, datatype = [int(s) for s in out["shape"]], out["datatype"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RequestFailed(f"the answer is not an OIP inference response: {resp.text[:200]!r}") from None
    if datatype not in FLOAT_TYPES:
        raise RequestFailed(f"output {out.get('name')!r} is {datatype}; a teacher returns class scores "
                            f"({', '.join(FLOAT_TYPES)})")
    return as_scores(out.get("data"), shape, f"output {out.get('name')!r}")


def _pick(tensors: list[dict[str, Any]], name: str | None, what: str) -> dict[str, Any] | None:
    """The metadata of the tensor named ``name`` (or the only one); None when the metadata lists none."""
    names = [t.get("name") for t in tensors]
    if name:
        found = [t for t in tensors if t.get("name") == name]
        if tensors and not found:
            raise RequestFailed(f"the model has no {what} {name!r}; its {what}s: {names}")
        return found[0] if found else {"name": name}
    if len(tensors) > 1:
        raise RequestFailed(f"the model has {what}s {names}; name the one to use with {what}_name")
    return tensors[0] if tensors else None


def _check_tensor(tensor: dict[str, Any], what: str, d: TeacherDescription) -> int | None:
    """Check one tensor's metadata against the description; its fixed batch size (an input's), if any."""
    datatype, shape = tensor.get("datatype"), [int(s) for s in tensor.get("shape") or []]
    if datatype is not None and datatype not in FLOAT_TYPES:
        raise RequestFailed(f"{what} {tensor['name']!r} is {datatype}; expected {', '.join(FLOAT_TYPES)}")
    if not shape:
        return None
    dims = d.spatial_dims
    if len(shape) != 2 + dims:
        axes = "H, W" if dims == 2 else "D, H, W"
        raise RequestFailed(f"{what} {tensor['name']!r} has shape {shape}; expected [B, C, {axes}] (input_size "
                            f"{list(d.input_size)})")
    channels, expect = shape[1], d.in_channels if what == "input" else len(d.labels)
    if channels > 0 and channels != expect:
        said = f"in_channels {expect}" if what == "input" else f"{expect} labels {list(d.labels)}"
        raise RequestFailed(f"{what} {tensor['name']!r} has {channels} channels (shape {shape}); the description "
                            f"says {said}")
    spatial = [s for s in shape[2:] if s > 0]
    if len(spatial) == dims and tuple(spatial) != tuple(d.input_size):
        raise RequestFailed(f"{what} {tensor['name']!r} is fixed at {spatial}; the description says input_size "
                            f"{list(d.input_size)}")
    return shape[0] if what == "input" and shape[0] > 0 else None


class OIP:
    """A model on an OIP v2 server: ``connect`` checks it, ``infer`` sends a batch."""

    def __init__(self, model: str, version: str | None, input_name: str | None, output_name: str | None,
                 description: TeacherDescription):
        self.model, self.version, self.description = model, version, description
        self.input_name, self.output_name, self.datatype = input_name or "", output_name, "FP32"
        self.infer_path = ""

    def connect(self, http: Http) -> dict[str, Any]:
        """Check the server and the model's metadata against the description; the lineage details (``model``,
        ``version`` and ``fixed_batch`` among them)."""
        http.request("GET", "/v2/health/ready")
        meta = http.get_json(model_path(self.model, self.version))
        if not isinstance(meta, dict):
            raise RequestFailed(f"the model's metadata is not a mapping: {str(meta)[:200]!r}")
        versions = [str(v) for v in meta.get("versions") or []]
        if self.version and versions and self.version not in versions:
            raise RequestFailed(f"model {self.model!r} has versions {versions}, not {self.version!r}")
        if not self.version and len(versions) > 1:
            raise RequestFailed(f"model {self.model!r} has versions {versions}; pin one with version: (the "
                                "fingerprint must name the weights that annotate)")
        version = self.version or (versions[0] if versions else "")
        name = str(meta.get("name") or self.model)
        inp = _pick(meta.get("inputs") or [], self.input_name, "input")
        if inp is None:
            raise RequestFailed(f"the metadata of model {name!r} lists no inputs; name its input with input_name")
        out = _pick(meta.get("outputs") or [], self.output_name, "output")
        self.input_name, self.datatype = str(inp["name"]), str(inp.get("datatype") or "FP32")
        self.output_name = str(out["name"]) if out is not None else None
        fixed_batch = _check_tensor(inp, "input", self.description)
        if out is not None:
            _check_tensor(out, "output", self.description)
        self.infer_path = model_path(name, version or None) + "/infer"
        return {"model": name, "version": version, "platform": meta.get("platform"), "input_name": self.input_name,
                "output_name": self.output_name, "fixed_batch": fixed_batch}

    def infer(self, http: Http, x: np.ndarray) -> np.ndarray:
        body = oip_encode(x, self.input_name, self.datatype, self.output_name)
        return oip_decode(http.request("POST", self.infer_path, body), self.output_name)

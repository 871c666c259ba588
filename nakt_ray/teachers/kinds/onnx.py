"""The ``onnx`` kind: an ONNX file with its description YAML beside it (``model.onnx.yaml``), or named by a
teacher YAML (see ``described_yaml.py``), run by onnxruntime (CUDA when the device is a GPU and the CUDA provider
is installed, else CPU) in the precision it was exported, without autocast.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nakt_ray.errors import TeacherLoadError, error
from nakt_ray.models.model_file import fingerprint
from nakt_ray.teachers.description import describe_model_file, teacher_where
from nakt_ray.teachers.inference import RawTeacher

KIND = "onnx"
EXPECTS = "a .onnx file with model.onnx.yaml beside it"
SUFFIXES = (".onnx",)


def detect(source: str) -> bool:
    """A file with an ONNX suffix."""
    path = Path(source)
    return path.is_file() and path.suffix.lower() in SUFFIXES


def load(name: str, source: str, device: torch.device) -> RawTeacher:
    """An onnxruntime session behind a torch-in, torch-out forward; ``source`` may also be a teacher YAML.

    The session's one input must be a 4-d float tensor ``[B, C, H, W]``; a fixed C or (H, W) must match the
    description. A model exported with a fixed batch runs in chunks of that batch, the last zero-padded.
    """
    import numpy as np
    import onnxruntime as ort

    where = teacher_where(name, source)
    model_path, yaml_path, description = describe_model_file(name, source)
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()  # the actor's thread budget holds for ONNX too
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise error(TeacherLoadError, where, f"{str(model_path)!r} cannot be loaded by onnxruntime: {err}") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise error(TeacherLoadError, where, f"the ONNX model takes {len(inputs)} inputs {[i.name for i in inputs]}; "
                                             "a teacher takes one image tensor")
    inp = inputs[0]
    dtypes: dict[str, Any] = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
    dims = len(description.input_size)  # 2, or 3 for a model of volumes
    if inp.type not in dtypes or len(inp.shape) != 2 + dims:
        axes = "H, W" if dims == 2 else "D, H, W"
        raise error(TeacherLoadError, where, f"the ONNX input {inp.name!r} is {inp.type} {inp.shape}; expected a "
                                             f"{2 + dims}-d float tensor [B, C, {axes}] (input_size "
                                             f"{list(description.input_size)})")
    batch, channels, *spatial = inp.shape
    if isinstance(channels, int) and channels != description.in_channels:
        raise error(TeacherLoadError, where, f"the ONNX input {inp.name!r} has {channels} channels; the description "
                                             f"says in_channels {description.in_channels}")
    fixed = [s for s in spatial if isinstance(s, int)]
    if len(fixed) == dims and tuple(fixed) != tuple(description.input_size):
        raise error(TeacherLoadError, where, f"the ONNX input {inp.name!r} is fixed at {tuple(fixed)}; the "
                                             f"description says input_size {list(description.input_size)}")
    fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
    in_name, out_name, in_dtype = inp.name, outputs[0].name, dtypes[inp.type]

    def forward(x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().cpu().numpy().astype(in_dtype, copy=False)
        if fixed_batch is None:
            out = session.run([out_name], {in_name: arr})[0]
        else:  # a model exported with a fixed batch: run it in chunks, zero-padding the last one
            parts = []
            for i in range(0, len(arr), fixed_batch):
                chunk = arr[i:i + fixed_batch]
                pad = fixed_batch - len(chunk)
                if pad:
                    chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), dtype=chunk.dtype)])
                parts.append(session.run([out_name], {in_name: chunk})[0][:fixed_batch - pad])
            out = np.concatenate(parts)
        return torch.from_numpy(np.ascontiguousarray(out)).to(x.device)

    details = {"path": str(model_path.resolve()), "description_file": str(yaml_path.resolve()),
               "description_fingerprint": fingerprint(yaml_path), "providers": session.get_providers(),
               "input_name": in_name, "output_name": out_name, "fixed_batch": fixed_batch}
    return RawTeacher(forward, description, fingerprint(model_path), details, autocast=False)

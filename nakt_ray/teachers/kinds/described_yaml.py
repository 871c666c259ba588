"""The ``teacher_yaml`` kind: a teacher YAML given as the source, whose ``file:`` key names a TorchScript or ONNX
model (relative to the YAML) and whose other keys describe it (``nakt_ray/teachers/description.py``).

The teacher is loaded, and recorded in manifests, as the kind of the file it names (``torchscript`` or ``onnx``):
:func:`model_kind` tells the registry which.
"""
from __future__ import annotations

from pathlib import Path

import torch

from nakt_ray.errors import TeacherLoadError, error
from nakt_ray.teachers.description import DESCRIPTION_SUFFIXES, teacher_where, yaml_model_file
from nakt_ray.teachers.inference import RawTeacher
from nakt_ray.teachers.kinds import onnx, torchscript

KIND = "teacher_yaml"
EXPECTS = "a teacher YAML (.yaml, .yml) whose 'file:' names a TorchScript or ONNX model, relative to the YAML"


def detect(source: str) -> bool:
    """A file with a YAML suffix."""
    path = Path(source)
    return path.is_file() and path.suffix.lower() in DESCRIPTION_SUFFIXES


def model_kind(name: str, source: str) -> str:
    """``torchscript`` or ``onnx``: the kind of the model file the YAML names (which must exist)."""
    model_path, _ = yaml_model_file(name, source, Path(source))
    if onnx.detect(str(model_path)):
        return onnx.KIND
    if torchscript.detect(str(model_path)):
        return torchscript.KIND
    raise error(TeacherLoadError, teacher_where(name, source),
                f"{str(model_path)!r} (the file named by {str(Path(source))!r}) is neither TorchScript nor ONNX; a "
                "nakt model file describes itself, give its path as the source")


def load(name: str, source: str, device: torch.device) -> RawTeacher:
    """The named model, loaded by its own kind with this YAML as its description."""
    loaders = {onnx.KIND: onnx.load, torchscript.KIND: torchscript.load}
    return loaders[model_kind(name, source)](name, source, device)

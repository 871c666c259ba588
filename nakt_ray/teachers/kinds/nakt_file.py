"""The ``nakt`` kind: a nakt model file (``model.pt`` written by ``nakt train-teacher`` / ``train-student``), which
describes itself (architecture, preprocessing, labels) and returns logits.

It is asked last (priority -1 in the registry): any existing file no other kind claims is read as a nakt model
file, so a file that is not one gets the reader's reason plus the list of what a teacher source may be.
"""
from __future__ import annotations

from pathlib import Path

import torch

from nakt_ray.errors import CheckpointError, TeacherLoadError, error
from nakt_ray.models.model_file import fingerprint, load_model
from nakt_ray.teachers.description import TeacherDescription, teacher_where
from nakt_ray.teachers.inference import RawTeacher

KIND = "nakt"
EXPECTS = "a nakt model file (.pt from nakt train-teacher / train-student; asked last, for any other existing file)"

# Appended to a file that cannot be read as a nakt model: the user may have meant another kind.
_OTHER_SOURCES = ("a teacher source is a nakt model file, a TorchScript (.ts, .torchscript, TorchScript .pt) or ONNX "
                  "(.onnx) file with a description YAML, a teacher YAML, or an MLflow URI models:/... or runs:/...")


def detect(source: str) -> bool:
    """Any existing file (the other file kinds are asked first)."""
    return Path(source).is_file()


def load(name: str, source: str, device: torch.device) -> RawTeacher:
    """The model file's architecture with its weights, in eval mode on ``device``; outputs logits."""
    try:
        model, spec = load_model(source, device)
    except CheckpointError as err:
        raise error(TeacherLoadError, teacher_where(name, source), f"{err} ({_OTHER_SOURCES})") from None
    description = TeacherDescription(labels=spec.labels, in_channels=spec.in_channels,
                                     input_size=spec.input_size, outputs="logits",
                                     preprocess=spec.preprocess if spec.volume is None else None, volume=spec.volume)
    details = {"path": str(Path(source).resolve()), "arch": spec.arch, "arch_args": dict(spec.arch_args),
               "role": spec.role, "spec_name": spec.name}
    return RawTeacher(model, description, fingerprint(source), details)

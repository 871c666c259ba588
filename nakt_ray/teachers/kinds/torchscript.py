"""The ``torchscript`` kind: a TorchScript file (``.ts``, ``.torchscript``, or a ``.pt`` that is a TorchScript
archive) with its description YAML beside it (``model.ts.yaml``), or named by a teacher YAML (see
``described_yaml.py``).
"""
from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import torch

from nakt_ray.errors import TeacherLoadError, error
from nakt_ray.models.model_file import fingerprint
from nakt_ray.teachers.description import describe_model_file, teacher_where
from nakt_ray.teachers.inference import RawTeacher

KIND = "torchscript"
EXPECTS = "a TorchScript file (.ts, .torchscript, or a TorchScript .pt) with model.ts.yaml beside it"
SUFFIXES = (".ts", ".torchscript")


def is_torchscript_archive(path: Path) -> bool:
    """Whether ``path`` is a TorchScript zip: one with a ``<name>/code/`` folder (``torch.save`` zips, which nakt
    model files are, have none)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n for n in z.namelist())
    except (OSError, zipfile.BadZipFile):  # unreadable: not ours; the nakt kind will say why
        return False


def detect(source: str) -> bool:
    """A file with a TorchScript suffix, or any file that is a TorchScript archive."""
    path = Path(source)
    return path.is_file() and (path.suffix.lower() in SUFFIXES or is_torchscript_archive(path))


def load(name: str, source: str, device: torch.device) -> RawTeacher:
    """The scripted module on ``device``, described by its YAML; ``source`` may also be a teacher YAML."""
    model_path, yaml_path, description = describe_model_file(name, source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load is deprecated; still the loader
            model = torch.jit.load(str(model_path), map_location=device)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad archive
        raise error(TeacherLoadError, teacher_where(name, source),
                    f"{str(model_path)!r} cannot be loaded as TorchScript: {err}") from None
    details = {"path": str(model_path.resolve()), "description_file": str(yaml_path.resolve()),
               "description_fingerprint": fingerprint(yaml_path)}
    return RawTeacher(model.eval(), description, fingerprint(model_path), details)

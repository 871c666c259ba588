"""Self-describing model files: architecture, its arguments, preprocessing, label map and weights in one file.

A nakt model file is a ``torch.save`` of plain data (loadable with ``weights_only=True``, so opening a file from
another site executes no code)::

    {"format": "nakt-model", "version": 1, "spec": {...ModelSpec...}, "state_dict": {...}}

``load_model`` needs nothing but the path: the spec says which zoo architecture to build and how to feed it.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nakt_ray import zoo
from nakt_ray.config import PreprocessConfig, VolumePreprocessConfig, build
from nakt_ray.config.convert import to_plain
from nakt_ray.errors import CheckpointError  # re-exported: callers import CheckpointError from here too

FORMAT = "nakt-model"
VERSION = 1


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model and use it: ``arch(**arch_args)`` fed by ``preprocess``.

    ``labels`` names the output channels (background first). ``role`` is ``teacher`` or ``student``;
    ``lineage`` holds free-form provenance (training data, teachers, fusion...). ``volume`` is a 3D model's
    preprocessing (spacing, orientation, normalisation, ``patch_size``: its input size); None for a 2D model, whose
    input is ``preprocess`` (only its ``in_channels`` counts for a 3D model).
    """

    name: str
    arch: str
    arch_args: dict[str, Any]
    labels: tuple[str, ...]
    preprocess: PreprocessConfig
    role: str = "teacher"
    lineage: dict[str, Any] = field(default_factory=dict)
    volume: VolumePreprocessConfig | None = None

    @property
    def input_size(self) -> tuple[int, ...]:
        """(H, W) of a 2D model, (D, H, W) of a 3D one."""
        return tuple(self.volume.patch_size) if self.volume is not None else tuple(self.preprocess.size)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def in_channels(self) -> int:
        return self.preprocess.in_channels

    def build(self) -> torch.nn.Module:
        return zoo.create_model(self.arch, self.in_channels, self.num_classes, self.input_size, **self.arch_args)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["preprocess"] = dataclasses.asdict(self.preprocess)
        d["labels"] = list(self.labels)
        d["preprocess"]["size"] = list(self.preprocess.size)
        if self.volume is None:
            d.pop("volume")  # 2D model files stay as they were
        else:
            d["volume"] = to_plain(self.volume)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        d = dict(d)
        d["preprocess"] = build(PreprocessConfig, d["preprocess"], "spec.preprocess")
        d["labels"] = tuple(d["labels"])
        if d.get("volume") is not None:
            d["volume"] = build(VolumePreprocessConfig, d["volume"], "spec.volume")
        return cls(**d)


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``model``'s weights (DDP wrapper removed)."""
    return {k: v.detach().cpu().clone() for k, v in getattr(model, "module", model).state_dict().items()}


def save_model(path: str | Path, model: torch.nn.Module | dict[str, torch.Tensor], spec: ModelSpec) -> Path:
    """Write a model's weights (or a state dict) and its spec to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = model if isinstance(model, dict) else cpu_state_dict(model)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": FORMAT, "version": VERSION, "spec": spec.to_dict(), "state_dict": state}, tmp)
    tmp.replace(path)
    return path


def read_spec(path: str | Path) -> ModelSpec:
    """The spec of a model file, without building the model."""
    return _read(path)[0]


def _read(path: str | Path) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(f"model file {str(path)!r} cannot be read as a nakt model: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"model file {str(path)!r} is not a nakt model file (no 'format: {FORMAT}' entry)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"model file {str(path)!r} has version {payload.get('version')}; "
                              f"this nakt-ray reads version {VERSION}")
    try:
        spec = ModelSpec.from_dict(payload["spec"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"model file {str(path)!r} has an invalid spec: {err}") from None
    return spec, payload["state_dict"]


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelSpec]:
    """Build the model a file describes, load its weights, and return it in eval mode on ``device``."""
    spec, state = _read(path)
    model = spec.build()
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"model file {str(path)!r}: weights do not fit architecture {spec.arch!r} "
                              f"{spec.arch_args}: {err}") from None
    return model.to(device).eval(), spec


def fingerprint(path: str | Path) -> str:
    """A short content hash of any file: the first 16 hex digits of its SHA-256.

    The one file fingerprint of nakt: it identifies a teacher in annotation lineage (the weights file of a nakt,
    TorchScript or ONNX teacher, and the description YAML beside it).
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def model_spec(cfg: Any, name: str, arch: str, arch_args: dict[str, Any], role: str,
               lineage: dict[str, Any]) -> ModelSpec:
    """The spec of a model trained in the run ``cfg``: a 3D architecture gets the run's volume preprocessing."""
    volume = cfg.volume if zoo.spatial_dims_of(arch, arch_args) == 3 else None
    return ModelSpec(name=name, arch=arch, arch_args=dict(arch_args), labels=tuple(cfg.data.labels),
                     preprocess=cfg.preprocess, role=role, lineage=lineage, volume=volume)

"""What a teacher is and how it predicts: the description schema (``TeacherDescription``), the inference options
(``InferenceOptions``), and the reader of description YAML files.

A foreign model (TorchScript, ONNX, MLflow) does not say what its outputs mean, so it comes with a description. A
description YAML holds exactly these keys (unknown keys are refused)::

    file: model.onnx                      # only in a teacher YAML given as the source; relative to the YAML
    labels: [background, head]            # names the output channels, background first
    in_channels: 1
    input_size: [128, 128]                # (H, W) the model was trained at; (D, H, W) for a 3D model
    outputs: logits                       # or probabilities (what the raw model returns)
    preprocess: {normalize: zscore}       # optional PreprocessConfig (2D); size / in_channels default to the above
    volume: {spacing: [2, 2, 2]}          # optional VolumePreprocessConfig (3D); patch_size defaults to input_size

It sits beside the model as ``<model file>.yaml`` (``model.onnx.yaml``), or is itself the source (a "teacher
YAML") and names the model with ``file:``. The MLflow kind reads the same schema from ``nakt.*`` tags
(``nakt_ray.tracking.DESCRIPTION_TAGS``).

Every problem is a :class:`TeacherLoadError` worded ``teacher '<name>' (<source>): <what>``.
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from nakt_ray.config import ConfigError, PreprocessConfig, VolumePreprocessConfig, build
from nakt_ray.errors import TeacherLoadError, error, expected

__all__ = [
    "DESCRIPTION_SUFFIXES",
    "InferenceOptions",
    "TeacherDescription",
    "build_description",
    "describe_model_file",
    "existing_file",
    "read_description_yaml",
    "teacher_where",
    "yaml_model_file",
]

DESCRIPTION_SUFFIXES = (".yaml", ".yml")


def teacher_where(name: str, source: str) -> str:
    """The *where* of every teacher message: ``teacher '<name>' (<source>)``."""
    return f"teacher {name!r} ({source})"


# ----------------------------------------------------------------------------------------------------------------
# Options and descriptions


@dataclass(frozen=True)
class InferenceOptions:
    """How a teacher predicts.

    ``sliding_window``: MONAI sliding-window inference over the full-size input with the teacher's ``input_size``
    as window (instead of resampling the input to ``input_size``); ``overlap`` in [0, 1) between windows;
    ``blend`` how overlapping windows are averaged; ``sw_batch_size`` windows per forward pass.
    ``tta_flips``: spatial axes (-1 = width, -2 = height, -3 = depth of a 3D model) to flip for test-time
    augmentation; the prediction is the mean probability over every subset of them (``(-1, -2)``: none, W, H, both
    = 4 passes; ``(-1, -2, -3)``: 8). ``slice_axis``: the axis of a volume ``[D, H, W]`` (0, 1 or 2) along which a
    2D model predicts it slice by slice.
    ``amp``: autocast dtype, used on CUDA only (and never for ONNX, which runs in the precision it was exported).
    """

    sliding_window: bool = False
    overlap: float = 0.25
    blend: Literal["gaussian", "constant"] = "gaussian"
    tta_flips: tuple[int, ...] = ()
    amp: Literal["none", "bf16", "fp16"] = "bf16"
    sw_batch_size: int = 4
    slice_axis: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "tta_flips", tuple(self.tta_flips))  # YAML / JSON give lists
        if not 0 <= self.overlap < 1:
            raise error(ConfigError, "InferenceOptions.overlap", expected(self.overlap, "a number in [0, 1)"))
        if self.blend not in ("gaussian", "constant"):
            raise error(ConfigError, "InferenceOptions.blend", expected(self.blend, "'gaussian' or 'constant'"))
        if self.amp not in ("none", "bf16", "fp16"):
            raise error(ConfigError, "InferenceOptions.amp", expected(self.amp, "'none', 'bf16' or 'fp16'"))
        if (any(a not in (-1, -2, -3) or isinstance(a, bool) for a in self.tta_flips)
                or len(set(self.tta_flips)) != len(self.tta_flips)):
            raise error(ConfigError, "InferenceOptions.tta_flips",
                        expected(self.tta_flips, "distinct spatial axes -1 (width), -2 (height) and, for 3D models, "
                                                 "-3 (depth), e.g. () or (-1,) or (-1, -2)"))
        if self.slice_axis not in (0, 1, 2) or isinstance(self.slice_axis, bool):
            raise error(ConfigError, "InferenceOptions.slice_axis", expected(self.slice_axis, "0, 1 or 2 (an axis of "
                                                                             "a volume [D, H, W])"))
        if isinstance(self.sw_batch_size, bool) or not isinstance(self.sw_batch_size, int) or self.sw_batch_size < 1:
            raise error(ConfigError, "InferenceOptions.sw_batch_size", expected(self.sw_batch_size, "an integer >= 1"))

    def flip_sets(self) -> list[tuple[int, ...]]:
        """The flips TTA runs: every subset of ``tta_flips``, the identity ``()`` first."""
        return [dims for r in range(len(self.tta_flips) + 1) for dims in itertools.combinations(self.tta_flips, r)]


@dataclass(frozen=True)
class TeacherDescription:
    """What a foreign model is: the schema of a description YAML (and of the ``nakt.*`` MLflow tags).

    ``labels`` names the K output channels, background first; ``input_size`` is (H, W) in pixels, or (D, H, W) in
    voxels for a 3D model; ``outputs`` is what the raw model returns. ``preprocess`` (2D) or ``volume`` (3D) is the
    model's own preprocessing when known. ``file`` is only used in a teacher YAML given as the source itself.
    """

    labels: tuple[str, ...]
    in_channels: int
    input_size: tuple[int, ...]
    outputs: Literal["logits", "probabilities"]
    preprocess: PreprocessConfig | None = None
    file: str | None = None
    volume: VolumePreprocessConfig | None = None

    @property
    def spatial_dims(self) -> int:
        """2 or 3: the number of spatial axes of ``input_size``."""
        return len(self.input_size)

    def _validate(self, p: str) -> None:  # called by config.build with the key prefix ``p``
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise error(ConfigError, f"config key '{p}labels'",
                        expected(list(self.labels), "at least two distinct class names, background first"))
        if self.in_channels < 1:
            raise error(ConfigError, f"config key '{p}in_channels'", expected(self.in_channels, "an integer >= 1"))
        if len(self.input_size) not in (2, 3) or any(s < 1 for s in self.input_size):
            raise error(ConfigError, f"config key '{p}input_size'",
                        expected(list(self.input_size), "two positive integers (H, W), or three (D, H, W) for a 3D "
                                                        "model"))
        if self.volume is not None and tuple(self.volume.patch_size) != tuple(self.input_size):
            raise error(ConfigError, f"config key '{p}volume.patch_size'",
                        f"got {list(self.volume.patch_size)!r}; it must equal input_size {list(self.input_size)!r} "
                        "(or be left out)")
        pre = self.preprocess
        if pre is not None and tuple(pre.size) != tuple(self.input_size):
            raise error(ConfigError, f"config key '{p}preprocess.size'",
                        f"got {list(pre.size)!r}; it must equal input_size {list(self.input_size)!r} (or be left "
                        "out)")
        if pre is not None and pre.in_channels != self.in_channels:
            raise error(ConfigError, f"config key '{p}preprocess.in_channels'",
                        f"got {pre.in_channels!r}; it must equal in_channels {self.in_channels!r} (or be left out)")


def build_description(data: Any) -> TeacherDescription:
    """Validate plain data (a YAML mapping, parsed MLflow tags) into a :class:`TeacherDescription`.

    Raises:
        ConfigError: an unknown key, a missing one, or a value of the wrong type or range; the message names it.
    """
    if isinstance(data, Mapping) and isinstance(data.get("preprocess"), Mapping):
        # The preprocessing's size and channels are the model's own unless the description says otherwise.
        data = dict(data)
        pre = dict(data["preprocess"])
        if "input_size" in data:
            pre.setdefault("size", data["input_size"])
        if "in_channels" in data:
            pre.setdefault("in_channels", data["in_channels"])
        data["preprocess"] = pre
    if isinstance(data, Mapping) and isinstance(data.get("volume"), Mapping) and "input_size" in data:
        data = dict(data)
        data["volume"] = {"patch_size": data["input_size"], **data["volume"]}
    return build(TeacherDescription, data, "")


# ----------------------------------------------------------------------------------------------------------------
# Reading description files


def existing_file(name: str, source: str, path: Path, what: str) -> Path:
    """``path`` if it is a file; else TeacherLoadError ``<what> '<path>' does not exist``."""
    if not path.is_file():
        raise error(TeacherLoadError, teacher_where(name, source), f"{what} {str(path)!r} does not exist")
    return path


def read_description_yaml(name: str, source: str, path: Path) -> dict[str, Any]:
    """The mapping a description YAML holds (not yet validated: see :func:`build_description`)."""
    where = teacher_where(name, source)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise error(TeacherLoadError, where, f"description file {str(path)!r} cannot be read as YAML: {err}") from None
    if not isinstance(data, dict):
        raise error(TeacherLoadError, where, f"description file {str(path)!r} must be a mapping of keys (labels, "
                                             f"in_channels, input_size, outputs, preprocess), got "
                                             f"{type(data).__name__}")
    return data


def yaml_model_file(name: str, source: str, yaml_path: Path) -> tuple[Path, dict[str, Any]]:
    """The model file a teacher YAML names in its ``file:`` key (relative to the YAML), and the YAML's data."""
    data = read_description_yaml(name, source, yaml_path)
    file = data.get("file")
    if not isinstance(file, str) or not file:
        raise error(TeacherLoadError, teacher_where(name, source),
                    f"description file {str(yaml_path)!r} given as the source needs a 'file:' key naming the model "
                    "file (relative to the YAML)")
    return existing_file(name, source, yaml_path.parent / file, f"model file (from {str(yaml_path)!r})"), data


def describe_model_file(name: str, source: str) -> tuple[Path, Path, TeacherDescription]:
    """``(model file, description file, description)`` for a described model file.

    ``source`` is either the model file, with ``<model file>.yaml`` beside it, or a teacher YAML whose ``file:``
    names the model.
    """
    where = teacher_where(name, source)
    path = Path(source)
    if path.suffix.lower() in DESCRIPTION_SUFFIXES:
        yaml_path = path
        model_path, data = yaml_model_file(name, source, path)
    else:
        model_path = existing_file(name, source, path, "model file")
        yaml_path = path.with_name(path.name + ".yaml")
        if not yaml_path.is_file():
            raise error(TeacherLoadError, where,
                        f"no description file {str(yaml_path)!r} beside the model; write one with labels, "
                        "in_channels, input_size and outputs (and optionally preprocess), or give a teacher YAML "
                        "whose 'file:' key names the model as the source")
        data = read_description_yaml(name, source, yaml_path)
        file = data.get("file")
        if file is not None and (not isinstance(file, str)
                                 or (yaml_path.parent / file).resolve() != model_path.resolve()):
            raise error(TeacherLoadError, where,
                        f"{str(yaml_path)!r}: 'file: {file}' does not name the model beside it")
    try:
        description = build_description(data)
    except ConfigError as err:
        raise error(TeacherLoadError, where, f"description file {str(yaml_path)!r}: {err}") from None
    return model_path, yaml_path, description

"""Teacher sources: load a teacher from wherever it comes from and predict probabilities with it.

Network-agnostic knowledge transfer only needs each teacher's *output*, so a teacher can be any model that maps
an image ``[B, C_in, H, W]`` to per-pixel class scores ``[B, K, H, W]``. :func:`load_teacher` picks a loader from
the form of ``source``:

=================================================  ===========  ==========================================
source                                             kind         described by
=================================================  ===========  ==========================================
``model.pt`` (a nakt model file)                   nakt         its own spec (outputs logits)
``model.ts`` / ``.torchscript`` / TorchScript .pt  torchscript  ``model.ts.yaml`` beside it
``model.onnx``                                     onnx         ``model.onnx.yaml`` beside it
``teacher.yaml`` with ``file: model.ts``           by ``file``  that YAML (``file`` relative to it)
``models:/name@alias``, ``models:/name/3``,        mlflow       MLflow tags ``nakt.*`` (version, then run),
``models:/name/latest``, ``runs:/<id>/model``                   else the signature and a probe
=================================================  ===========  ==========================================

A description YAML holds exactly these keys (unknown keys are refused)::

    file: model.onnx                      # only in a teacher YAML given as the source; relative to the YAML
    labels: [background, head]            # names the output channels, background first
    in_channels: 1
    input_size: [128, 128]                # (H, W) the model was trained at
    outputs: logits                       # or probabilities (what the raw model returns)
    preprocess: {normalize: zscore}       # optional PreprocessConfig; size / in_channels default to the above

Every teacher is probed once at load time (a zero image and a small random batch) and every prediction is
checked cheaply: class count against the labels, output spatial size against the input, NaN / inf, and that
declared probabilities are probabilities. Every error is a :class:`TeacherLoadError` naming the teacher and the
source.

:meth:`LoadedTeacher.predict` adds what the model itself lacks: resampling to the teacher's input size (or MONAI
sliding-window inference at full size), flip test-time augmentation, autocast on CUDA, and the softmax.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
import yaml

from nakt_ray.config import ConfigError, PreprocessConfig, build

__all__ = [
    "DESCRIPTION_TAGS",
    "InferenceOptions",
    "LoadedTeacher",
    "TAG_INPUT_SIZE",
    "TAG_IN_CHANNELS",
    "TAG_LABELS",
    "TAG_OUTPUTS",
    "TAG_PREPROCESS",
    "TeacherDescription",
    "TeacherLoadError",
    "load_teacher",
    "source_kind",
]

# MLflow tags (on the model version, or on the run that logged the model) that describe a teacher. Values are
# JSON, except ``nakt.outputs`` which may also be the bare word: labels '["background", "head"]', in_channels '1',
# input_size '[128, 128]', outputs 'logits', preprocess '{"normalize": "zscore"}'.
TAG_LABELS = "nakt.labels"
TAG_IN_CHANNELS = "nakt.in_channels"
TAG_INPUT_SIZE = "nakt.input_size"
TAG_OUTPUTS = "nakt.outputs"
TAG_PREPROCESS = "nakt.preprocess"
DESCRIPTION_TAGS = {"labels": TAG_LABELS, "in_channels": TAG_IN_CHANNELS, "input_size": TAG_INPUT_SIZE,
                    "outputs": TAG_OUTPUTS, "preprocess": TAG_PREPROCESS}

# How far declared probabilities may stray from [0, 1] and from summing to 1 over classes. 16-bit outputs
# (autocast on CUDA) carry ~3 significant digits, so they get a looser bound.
PROB_TOLERANCE = 1e-3
PROB_TOLERANCE_16BIT = 1e-2

MLFLOW_SCHEMES = ("models:/", "runs:/")
TORCHSCRIPT_SUFFIXES = (".ts", ".torchscript")
ONNX_SUFFIXES = (".onnx",)
DESCRIPTION_SUFFIXES = (".yaml", ".yml")


class TeacherLoadError(ValueError):
    """A teacher that cannot be loaded or whose output is not usable; the message names the teacher and source."""


def _fail(name: str, source: str, message: str) -> TeacherLoadError:
    return TeacherLoadError(f"teacher {name!r} ({source}): {message}")


# ----------------------------------------------------------------------------------------------------------------
# Options and descriptions


@dataclass(frozen=True)
class InferenceOptions:
    """How a teacher predicts.

    ``sliding_window``: MONAI sliding-window inference over the full-size input with the teacher's ``input_size``
    as window (instead of resampling the input to ``input_size``); ``overlap`` in [0, 1) between windows;
    ``blend`` how overlapping windows are averaged; ``sw_batch_size`` windows per forward pass.
    ``tta_flips``: spatial axes (-1 = width, -2 = height) to flip for test-time augmentation; the prediction is
    the mean probability over every subset of them (``(-1, -2)``: none, W, H, both = 4 passes).
    ``amp``: autocast dtype, used on CUDA only (and never for ONNX, which runs in the precision it was exported).
    """

    sliding_window: bool = False
    overlap: float = 0.25
    blend: Literal["gaussian", "constant"] = "gaussian"
    tta_flips: tuple[int, ...] = ()
    amp: Literal["none", "bf16", "fp16"] = "bf16"
    sw_batch_size: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "tta_flips", tuple(self.tta_flips))  # YAML / JSON give lists
        if not 0 <= self.overlap < 1:
            raise ValueError(f"InferenceOptions.overlap: got {self.overlap!r}; expected a number in [0, 1)")
        if self.blend not in ("gaussian", "constant"):
            raise ValueError(f"InferenceOptions.blend: got {self.blend!r}; expected 'gaussian' or 'constant'")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"InferenceOptions.amp: got {self.amp!r}; expected 'none', 'bf16' or 'fp16'")
        if (any(a not in (-1, -2) or isinstance(a, bool) for a in self.tta_flips)
                or len(set(self.tta_flips)) != len(self.tta_flips)):
            raise ValueError(f"InferenceOptions.tta_flips: got {self.tta_flips!r}; expected distinct spatial axes "
                             "-1 (width) and/or -2 (height), e.g. () or (-1,) or (-1, -2)")
        if isinstance(self.sw_batch_size, bool) or not isinstance(self.sw_batch_size, int) or self.sw_batch_size < 1:
            raise ValueError(f"InferenceOptions.sw_batch_size: got {self.sw_batch_size!r}; expected an integer >= 1")

    def flip_sets(self) -> list[tuple[int, ...]]:
        """The flips TTA runs: every subset of ``tta_flips``, the identity ``()`` first."""
        return [dims for r in range(len(self.tta_flips) + 1) for dims in itertools.combinations(self.tta_flips, r)]


@dataclass(frozen=True)
class TeacherDescription:
    """What a foreign model is: the schema of a description YAML (and of the ``nakt.*`` MLflow tags).

    ``labels`` names the K output channels, background first; ``input_size`` is (H, W) in pixels; ``outputs`` is
    what the raw model returns. ``file`` is only used in a teacher YAML given as the source itself.
    """

    labels: tuple[str, ...]
    in_channels: int
    input_size: tuple[int, int]
    outputs: Literal["logits", "probabilities"]
    preprocess: PreprocessConfig | None = None
    file: str | None = None

    def _validate(self, p: str) -> None:
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"config key '{p}labels': got {list(self.labels)!r}; expected at least two distinct "
                              "class names, background first")
        if self.in_channels < 1:
            raise ConfigError(f"config key '{p}in_channels': got {self.in_channels!r}; expected an integer >= 1")
        if any(s < 1 for s in self.input_size):
            raise ConfigError(f"config key '{p}input_size': got {list(self.input_size)!r}; expected two positive "
                              "integers (H, W)")
        pre = self.preprocess
        if pre is not None and tuple(pre.size) != tuple(self.input_size):
            raise ConfigError(f"config key '{p}preprocess.size': got {list(pre.size)!r}; it must equal "
                              f"input_size {list(self.input_size)!r} (or be left out)")
        if pre is not None and pre.in_channels != self.in_channels:
            raise ConfigError(f"config key '{p}preprocess.in_channels': got {pre.in_channels!r}; it must equal "
                              f"in_channels {self.in_channels!r} (or be left out)")


def _build_description(data: Any) -> TeacherDescription:
    """Validate plain data into a :class:`TeacherDescription` (raises ConfigError naming the key)."""
    if isinstance(data, Mapping) and isinstance(data.get("preprocess"), Mapping):
        # The preprocessing's size and channels are the model's own unless the description says otherwise.
        data = dict(data)
        pre = dict(data["preprocess"])
        if "input_size" in data:
            pre.setdefault("size", data["input_size"])
        if "in_channels" in data:
            pre.setdefault("in_channels", data["in_channels"])
        data["preprocess"] = pre
    return build(TeacherDescription, data, "")


# ----------------------------------------------------------------------------------------------------------------
# The loaded teacher


@dataclass
class _Loaded:
    """What a loader hands to :class:`LoadedTeacher`: a raw forward and what it means."""

    forward: Callable[[torch.Tensor], Any]
    description: TeacherDescription
    fingerprint: str
    details: dict[str, Any] = field(default_factory=dict)
    autocast: bool = True  # False for runtimes outside torch (ONNX)


class LoadedTeacher:
    """A teacher on a device, whatever its source, that turns images into class probabilities.

    Attributes mirror the description: ``labels`` (K names, background first), ``num_classes`` (K),
    ``in_channels``, ``input_size`` (H, W the model was trained at), ``outputs`` (what the raw model returns),
    ``preprocess`` (when known), ``fingerprint`` (16 hex chars identifying the weights).
    """

    def __init__(self, name: str, source: str, kind: str, loaded: _Loaded, device: torch.device,
                 options: InferenceOptions):
        d = loaded.description
        self.name = name
        self.source = source
        self.kind = kind
        self.labels: tuple[str, ...] = tuple(d.labels)
        self.num_classes = len(self.labels)
        self.in_channels = d.in_channels
        self.input_size: tuple[int, int] = (int(d.input_size[0]), int(d.input_size[1]))
        self.outputs: str = d.outputs
        self.preprocess: PreprocessConfig | None = d.preprocess
        self.fingerprint = loaded.fingerprint
        self.device = device
        self.options = options
        self.details = dict(loaded.details)
        self._forward = loaded.forward
        self._autocast = (loaded.autocast and device.type == "cuda" and options.amp != "none")
        self._amp_dtype = torch.bfloat16 if options.amp == "bf16" else torch.float16

    @property
    def module(self) -> torch.nn.Module | None:
        """The raw model as a torch module (nakt, TorchScript and MLflow teachers; returns what ``outputs`` says),
        for export; None for ONNX, which runs outside torch."""
        return self._forward if isinstance(self._forward, torch.nn.Module) else None

    def __repr__(self) -> str:
        return (f"LoadedTeacher(name={self.name!r}, kind={self.kind!r}, source={self.source!r}, "
                f"labels={list(self.labels)}, input_size={self.input_size}, outputs={self.outputs!r})")

    # -- prediction -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C_in, H, W]`` (any H, W) -> probabilities ``[B, K, H, W]`` float32 on the teacher's device.

        Without sliding window, an input whose size differs from ``input_size`` is resampled (bilinear) to it and
        the probabilities are resampled back. With TTA, probabilities are averaged over the flips.
        """
        x = torch.as_tensor(images)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"teacher {self.name!r}: images must be [B, {self.in_channels}, H, W], got "
                             f"{tuple(x.shape)}")
        x = x.to(self.device, torch.float32)
        flips = self.options.flip_sets()
        total: torch.Tensor | None = None
        for dims in flips:
            probs = self._predict_once(x.flip(dims) if dims else x)
            probs = probs.flip(dims) if dims else probs
            total = probs if total is None else total + probs
        assert total is not None
        return total / len(flips) if len(flips) > 1 else total

    def _predict_once(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(x.shape[-2:])
        if self.options.sliding_window:
            from monai.inferers import sliding_window_inference  # importing MONAI costs seconds; only when used

            # MONAI pads an input smaller than the window and crops the result back. Windows are blended as
            # probabilities, so the blend of normalised weights still sums to 1 over classes.
            out = sliding_window_inference(x, roi_size=self.input_size, sw_batch_size=self.options.sw_batch_size,
                                           predictor=self._probabilities, overlap=self.options.overlap,
                                           mode=self.options.blend)
            return out.as_tensor() if hasattr(out, "as_tensor") else out
        if size == self.input_size:
            return self._probabilities(x)
        x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        # Bilinear weights are convex, so resampled probabilities still sum to 1.
        return F.interpolate(self._probabilities(x), size=size, mode="bilinear", align_corners=False)

    def _raw(self, x: torch.Tensor) -> Any:
        with torch.autocast(self.device.type, dtype=self._amp_dtype, enabled=self._autocast):
            return self._forward(x)

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """One checked forward pass at the model's own size: ``[B, C_in, h, w]`` -> ``[B, K, h, w]``."""
        return self._check(self._raw(x), x)

    def _check(self, raw: Any, x: torch.Tensor) -> torch.Tensor:
        """Check a raw output against the description and turn it into float32 probabilities."""
        def fail(message: str) -> TeacherLoadError:
            return _fail(self.name, self.source, message)

        if not isinstance(raw, torch.Tensor):
            raise fail(f"the model returned {type(raw).__name__}; expected one tensor [B, K, H, W]")
        if raw.ndim != 4:
            raise fail(f"the model returned shape {tuple(raw.shape)}; expected [B, K, H, W] with K = "
                       f"{self.num_classes}")
        if raw.shape[1] != self.num_classes:
            raise fail(f"the model returns {raw.shape[1]} classes but its labels declare {self.num_classes} "
                       f"{list(self.labels)}")
        if raw.shape[0] != x.shape[0]:
            raise fail(f"the model returned batch size {raw.shape[0]} for an input batch of {x.shape[0]}")
        if tuple(raw.shape[-2:]) != tuple(x.shape[-2:]):
            raise fail(f"the model returns spatial size {tuple(raw.shape[-2:])} for an input of "
                       f"{tuple(x.shape[-2:])}; a segmentation teacher must return one value per input pixel")
        tol = PROB_TOLERANCE if raw.dtype in (torch.float32, torch.float64) else PROB_TOLERANCE_16BIT
        raw = raw.float()
        if not torch.isfinite(raw).all():
            raise fail("the model produced NaN or infinite values")
        if self.outputs == "logits":
            return raw.softmax(1)
        if not _looks_like_probabilities(raw, tol):
            lo, hi = raw.min().item(), raw.max().item()
            sums = raw.sum(1)
            raise fail(f"declared probabilities but the output looks like logits (values in [{lo:.3g}, {hi:.3g}], "
                       f"class sums in [{sums.min().item():.3g}, {sums.max().item():.3g}]); set outputs: logits")
        return raw.clamp(0.0, 1.0)

    def _probe(self) -> None:
        """Run a zero image and a small random batch once; raise on a bad output, warn on suspicious logits."""
        h, w = self.input_size
        gen = torch.Generator().manual_seed(0)
        batches = [torch.zeros(1, self.in_channels, h, w), torch.randn(2, self.in_channels, h, w, generator=gen)]
        all_probability_like = True
        with torch.no_grad():
            for x in batches:
                x = x.to(self.device)
                raw = self._raw(x)
                self._check(raw, x)
                all_probability_like &= _looks_like_probabilities(raw.float(), PROB_TOLERANCE)
        if self.outputs == "logits" and all_probability_like:
            warnings.warn(f"teacher {self.name!r} ({self.source}): declared logits but the output already lies in "
                          "[0, 1] and sums to 1 over classes; it may be probabilities (softmax would then be applied "
                          "twice; set outputs: probabilities)", UserWarning, stacklevel=3)

    # -- lineage ----------------------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Plain (JSON-ready) data for manifests and lineage."""
        pre = None
        if self.preprocess is not None:
            pre = dataclasses.asdict(self.preprocess)
            pre["size"] = list(self.preprocess.size)
        options = dataclasses.asdict(self.options)
        options["tta_flips"] = list(self.options.tta_flips)
        return {"name": self.name, "source": self.source, "kind": self.kind, "fingerprint": self.fingerprint,
                "labels": list(self.labels), "num_classes": self.num_classes, "in_channels": self.in_channels,
                "input_size": list(self.input_size), "outputs": self.outputs, "preprocess": pre,
                "inference": options, "device": str(self.device), "details": dict(self.details)}


def _looks_like_probabilities(t: torch.Tensor, tol: float) -> bool:
    return bool(t.min() >= -tol and t.max() <= 1 + tol and (t.sum(1) - 1).abs().max() <= tol)


# ----------------------------------------------------------------------------------------------------------------
# Locating a source


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _is_torchscript_archive(path: Path) -> bool:
    # A TorchScript archive is a zip with a `<name>/code/` folder; torch.save zips (nakt files) have none.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n for n in z.namelist())


def _model_file_kind(path: Path) -> str:
    if path.suffix.lower() in ONNX_SUFFIXES:
        return "onnx"
    if path.suffix.lower() in TORCHSCRIPT_SUFFIXES or _is_torchscript_archive(path):
        return "torchscript"
    return "nakt"


def _existing(name: str, source: str, path: Path, what: str) -> Path:
    if not path.is_file():
        raise _fail(name, source, f"{what} {str(path)!r} does not exist")
    return path


def _read_yaml(name: str, source: str, path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise _fail(name, source, f"description file {str(path)!r} cannot be read as YAML: {err}") from None
    if not isinstance(data, dict):
        raise _fail(name, source, f"description file {str(path)!r} must be a mapping of keys (labels, "
                                  f"in_channels, input_size, outputs, preprocess), got {type(data).__name__}")
    return data


def source_kind(source: str | os.PathLike[str], name: str = "?") -> str:
    """Which loader ``source`` needs: ``nakt``, ``torchscript``, ``onnx`` or ``mlflow`` (files must exist)."""
    src = str(source)
    if src.startswith(MLFLOW_SCHEMES):
        return "mlflow"
    path = _existing(name, src, Path(src), "file")
    if path.suffix.lower() in DESCRIPTION_SUFFIXES:
        model_path, _ = _described_file(name, src, path)
        kind = _model_file_kind(model_path)
        if kind == "nakt":
            raise _fail(name, src, f"{str(model_path)!r} (the file named by {str(path)!r}) is neither TorchScript "
                                   "nor ONNX; a nakt model file describes itself, give its path as the source")
        return kind
    return _model_file_kind(path)


def _described_file(name: str, source: str, yaml_path: Path) -> tuple[Path, dict[str, Any]]:
    """The model file a teacher YAML names in its ``file:`` key, and the YAML's data."""
    data = _read_yaml(name, source, yaml_path)
    file = data.get("file")
    if not isinstance(file, str) or not file:
        raise _fail(name, source, f"description file {str(yaml_path)!r} given as the source needs a 'file:' key "
                                  "naming the model file (relative to the YAML)")
    return _existing(name, source, yaml_path.parent / file, f"model file (from {str(yaml_path)!r})"), data


def _description_for(name: str, source: str) -> tuple[Path, Path, TeacherDescription]:
    """(model file, description file, description) for a TorchScript or ONNX source."""
    path = Path(source)
    if path.suffix.lower() in DESCRIPTION_SUFFIXES:
        yaml_path = path
        model_path, data = _described_file(name, source, path)
    else:
        model_path = _existing(name, source, path, "model file")
        yaml_path = path.with_name(path.name + ".yaml")
        if not yaml_path.is_file():
            raise _fail(name, source, f"no description file {str(yaml_path)!r} beside the model; write one with "
                                      "labels, in_channels, input_size and outputs (and optionally preprocess), or "
                                      "give a teacher YAML whose 'file:' key names the model as the source")
        data = _read_yaml(name, source, yaml_path)
        file = data.get("file")
        if file is not None and (not isinstance(file, str)
                                 or (yaml_path.parent / file).resolve() != model_path.resolve()):
            raise _fail(name, source, f"{str(yaml_path)!r}: 'file: {file}' does not name the model beside it")
    try:
        description = _build_description(data)
    except ConfigError as err:
        raise _fail(name, source, f"description file {str(yaml_path)!r}: {err}") from None
    return model_path, yaml_path, description


# ----------------------------------------------------------------------------------------------------------------
# Loaders: one per kind, each (name, source, device) -> _Loaded


def _load_nakt(name: str, source: str, device: torch.device) -> _Loaded:
    from nakt_ray.models.model_file import CheckpointError, fingerprint, load_model

    try:
        model, spec = load_model(source, device)
    except CheckpointError as err:
        raise _fail(name, source, f"{err} (a teacher source is a nakt model file, a TorchScript (.ts, .torchscript, "
                                  "TorchScript .pt) or ONNX (.onnx) file with a description YAML, a teacher YAML, or "
                                  "an MLflow URI models:/... or runs:/...)") from None
    description = TeacherDescription(labels=spec.labels, in_channels=spec.in_channels,
                                     input_size=tuple(spec.preprocess.size), outputs="logits",
                                     preprocess=spec.preprocess)
    details = {"path": str(Path(source).resolve()), "arch": spec.arch, "arch_args": dict(spec.arch_args),
               "role": spec.role, "spec_name": spec.name}
    return _Loaded(model, description, fingerprint(source), details)


def _load_torchscript(name: str, source: str, device: torch.device) -> _Loaded:
    model_path, yaml_path, description = _description_for(name, source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load is deprecated; still the loader
            model = torch.jit.load(str(model_path), map_location=device)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad archive
        raise _fail(name, source, f"{str(model_path)!r} cannot be loaded as TorchScript: {err}") from None
    details = {"path": str(model_path.resolve()), "description_file": str(yaml_path.resolve()),
               "description_fingerprint": _file_hash(yaml_path)}
    return _Loaded(model.eval(), description, _file_hash(model_path), details)


def _load_onnx(name: str, source: str, device: torch.device) -> _Loaded:
    import numpy as np
    import onnxruntime as ort

    model_path, yaml_path, description = _description_for(name, source)
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()  # the actor's thread budget holds for ONNX too
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise _fail(name, source, f"{str(model_path)!r} cannot be loaded by onnxruntime: {err}") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise _fail(name, source, f"the ONNX model takes {len(inputs)} inputs {[i.name for i in inputs]}; a teacher "
                                  "takes one image tensor")
    inp = inputs[0]
    dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
    if inp.type not in dtypes or len(inp.shape) != 4:
        raise _fail(name, source, f"the ONNX input {inp.name!r} is {inp.type} {inp.shape}; expected a 4-d float "
                                  "tensor [B, C, H, W]")
    batch, channels, *spatial = inp.shape
    if isinstance(channels, int) and channels != description.in_channels:
        raise _fail(name, source, f"the ONNX input {inp.name!r} has {channels} channels; the description says "
                                  f"in_channels {description.in_channels}")
    fixed = [s for s in spatial if isinstance(s, int)]
    if len(fixed) == 2 and tuple(fixed) != tuple(description.input_size):
        raise _fail(name, source, f"the ONNX input {inp.name!r} is fixed at {tuple(fixed)}; the description says "
                                  f"input_size {list(description.input_size)}")
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
               "description_fingerprint": _file_hash(yaml_path), "providers": session.get_providers(),
               "input_name": in_name, "output_name": out_name, "fixed_batch": fixed_batch}
    return _Loaded(forward, description, _file_hash(model_path), details, autocast=False)


def _mlflow_target(name: str, uri: str, client: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """The description tags for an MLflow URI (model version tags over its run's tags) and lineage details."""
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
                raise _fail(name, uri, f"registered model {model_name!r} has no versions")
            mv = max(versions, key=lambda v: int(v.version))
        elif version.isdigit():
            mv = client.get_model_version(model_name, version)
        else:
            raise _fail(name, uri, f"version {version!r} is not a number; use models:/NAME/3, models:/NAME@alias "
                                   "or models:/NAME/latest (stages are not supported)")
    else:
        raise _fail(name, uri, "expected models:/NAME@ALIAS, models:/NAME/VERSION, models:/NAME/latest or "
                               "runs:/RUN_ID/PATH")
    tags = dict(client.get_run(mv.run_id).data.tags) if mv.run_id else {}
    tags.update(mv.tags or {})
    details = {"registered_model": mv.name, "version": str(mv.version), "run_id": mv.run_id,
               "resolved": f"{mv.name}/{mv.version}:{mv.run_id}"}
    return tags, details


def _parse_tags(name: str, uri: str, tags: Mapping[str, str]) -> dict[str, Any]:
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
            raise _fail(name, uri, f"MLflow tag {tag!r} = {value!r} is not JSON (e.g. labels '[\"background\", "
                                   "\"head\"]', input_size '[128, 128]', in_channels '1')") from None
    return out


def _signature_shape(uri: str) -> tuple[int, ...] | None:
    import mlflow

    try:
        signature = mlflow.models.get_model_info(uri).signature
        spec = signature.inputs.inputs[0] if signature is not None else None
        shape = getattr(spec, "shape", None)
    except Exception:  # noqa: BLE001 - no or unreadable signature: the tags must say it
        return None
    return tuple(int(s) for s in shape) if shape is not None and len(shape) == 4 else None


def _load_mlflow(name: str, source: str, device: torch.device) -> _Loaded:
    import mlflow
    from mlflow.tracking import MlflowClient

    tracking = mlflow.get_tracking_uri()
    try:
        tags, details = _mlflow_target(name, source, MlflowClient())
        model = mlflow.pytorch.load_model(source, map_location=device)
    except TeacherLoadError:
        raise
    except Exception as err:  # noqa: BLE001 - MLflow raises many types (missing model, store errors)
        raise _fail(name, source, f"cannot be loaded from MLflow (tracking URI {tracking}): {err}") from None
    if not isinstance(model, torch.nn.Module):
        raise _fail(name, source, f"mlflow.pytorch.load_model returned {type(model).__name__}, not a torch module")
    model = model.to(device).eval()
    data = _parse_tags(name, source, tags)
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
        raise _fail(name, source, f"nothing says the model's {' and '.join(missing)}: set the MLflow tags "
                                  f"{', '.join(DESCRIPTION_TAGS[k] for k in missing)} on the model version or its "
                                  f"run (e.g. {TAG_INPUT_SIZE}='[128, 128]', {TAG_IN_CHANNELS}='1'; also "
                                  f"{TAG_LABELS}, {TAG_OUTPUTS}, {TAG_PREPROCESS}), or log it with a signature")
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
            raise _fail(name, source, f"probing with an input of {[1, data['in_channels'], *data['input_size']]} "
                                      f"failed: {err}") from None
        if not isinstance(raw, torch.Tensor) or raw.ndim != 4:
            raise _fail(name, source, f"the model returned {getattr(raw, 'shape', type(raw).__name__)}; expected "
                                      "[B, K, H, W]")
        if "labels" not in data:
            data["labels"] = [f"class_{k}" for k in range(raw.shape[1])]
            inferred.append("labels")
        if "outputs" not in data:
            probs = _looks_like_probabilities(raw.float(), PROB_TOLERANCE)
            data["outputs"] = "probabilities" if probs else "logits"
            inferred.append("outputs")
    try:
        description = _build_description(data)
    except ConfigError as err:
        raise _fail(name, source, f"description from MLflow tags ({', '.join(DESCRIPTION_TAGS.values())}): "
                                  f"{err}") from None
    resolved = details.pop("resolved")
    details.update(tracking_uri=tracking, inferred=inferred,
                   tags={k: v for k, v in tags.items() if k in DESCRIPTION_TAGS.values()})
    fp = hashlib.sha256(f"{source}|{resolved}".encode()).hexdigest()[:16]
    return _Loaded(model, description, fp, details)


_LOADERS: dict[str, Callable[[str, str, torch.device], _Loaded]] = {
    "nakt": _load_nakt,
    "torchscript": _load_torchscript,
    "onnx": _load_onnx,
    "mlflow": _load_mlflow,
}


def load_teacher(name: str, source: str | os.PathLike[str], device: str | torch.device = "cpu",
                 options: InferenceOptions | None = None) -> LoadedTeacher:
    """Load teacher ``name`` from ``source`` (see the module docstring for the forms) onto ``device``.

    The teacher is probed once (a zero image and a random batch at its ``input_size``) before it is returned.

    Raises:
        TeacherLoadError: a missing or unreadable file or MLflow model, a missing or invalid description, or a
            probe output with the wrong class count or spatial size, NaN / inf, or logits declared as
            probabilities. The message names the teacher and the source.
    """
    src = str(source)
    kind = source_kind(src, name)
    device = torch.device(device)
    teacher = LoadedTeacher(name, src, kind, _LOADERS[kind](name, src, device), device,
                            options or InferenceOptions())
    teacher._probe()
    return teacher

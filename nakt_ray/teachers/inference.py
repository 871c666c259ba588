"""A loaded teacher, whatever its source, turning images into checked class probabilities.

A source kind (``nakt_ray/teachers/kinds/``) hands over a :class:`RawTeacher`: a forward function and its
description. :class:`LoadedTeacher` adds what the model itself lacks: resampling to the teacher's input size (or
MONAI sliding-window inference at full size), flip test-time augmentation, autocast on CUDA, the softmax, and a
cheap check of every output (class count against the labels, spatial size against the input, NaN / inf, declared
probabilities that are probabilities). A kind that must see whole images (nnU-Net's predictor: its own resampling
and sliding window) says so with ``RawTeacher.whole_image``; its forward then gets the run's images as they are.

Errors: the probe at load time raises :class:`TeacherLoadError` (a teacher that fails on its own declared input
cannot be used at all); an output that cannot be used at prediction time raises :class:`TeacherOutputError`, for
the batch at hand (a caller may record the batch's cases as failed and go on).
"""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from nakt_ray.config import PreprocessConfig, VolumePreprocessConfig
from nakt_ray.errors import NaktError, TeacherLoadError, TeacherOutputError, error
from nakt_ray.teachers.description import InferenceOptions, TeacherDescription, teacher_where

__all__ = [
    "PROB_TOLERANCE",
    "PROB_TOLERANCE_16BIT",
    "LoadedTeacher",
    "RawTeacher",
    "looks_like_probabilities",
]

# How far declared probabilities may stray from [0, 1] and from summing to 1 over classes. 16-bit outputs
# (autocast on CUDA) carry ~3 significant digits, so they get a looser bound.
PROB_TOLERANCE = 1e-3
PROB_TOLERANCE_16BIT = 1e-2


@dataclass
class RawTeacher:
    """What a source kind's loader hands to :class:`LoadedTeacher`: a raw forward and what it means.

    ``forward`` maps ``[B, C_in, h, w]`` float32 at the model's ``input_size`` to raw scores ``[B, K, h, w]``
    (``description.outputs`` says logits or probabilities). ``fingerprint``: 16 hex chars identifying the weights.
    ``details``: JSON-ready lineage (paths, run ids...). ``autocast``: False for runtimes outside torch (ONNX).
    ``whole_image``: the kind resamples and tiles by itself, so ``forward(x, spacing)`` takes images of any size as
    the run hands them (``spacing``: mm per spatial axis of ``x``, or None when the run does not know it) and
    returns scores at that size; ``input_size`` is then only its window (the probe's size), never a resampling.
    """

    forward: Callable[..., Any]
    description: TeacherDescription
    fingerprint: str
    details: dict[str, Any] = field(default_factory=dict)
    autocast: bool = True
    whole_image: bool = False


def looks_like_probabilities(t: torch.Tensor, tol: float) -> bool:
    """Whether ``t`` ``[B, K, ...]`` lies in [0, 1] and sums to 1 over K, within ``tol``."""
    return bool(t.min() >= -tol and t.max() <= 1 + tol and (t.sum(1) - 1).abs().max() <= tol)


class LoadedTeacher:
    """A teacher on a device, whatever its source, that turns images into class probabilities.

    Attributes mirror the description: ``labels`` (K names, background first), ``num_classes`` (K),
    ``in_channels``, ``input_size`` (H, W the model was trained at), ``outputs`` (what the raw model returns),
    ``preprocess`` (when known), ``fingerprint`` (16 hex chars identifying the weights); ``kind`` is the source
    kind that loaded it.
    """

    def __init__(self, name: str, source: str, kind: str, loaded: RawTeacher, device: torch.device,
                 options: InferenceOptions):
        d = loaded.description
        self.name = name
        self.source = source
        self.kind = kind
        self.labels: tuple[str, ...] = tuple(d.labels)
        self.num_classes = len(self.labels)
        self.in_channels = d.in_channels
        self.input_size: tuple[int, ...] = tuple(int(s) for s in d.input_size)
        self.spatial_dims = len(self.input_size)
        self.outputs: str = d.outputs
        self.preprocess: PreprocessConfig | None = d.preprocess
        self.volume: VolumePreprocessConfig | None = d.volume
        self.fingerprint = loaded.fingerprint
        self.device = device
        self.options = options
        self.details = dict(loaded.details)
        self._forward = loaded.forward
        self.whole_image = loaded.whole_image
        self._autocast = (loaded.autocast and device.type == "cuda" and options.amp != "none")
        self._amp_dtype = torch.bfloat16 if options.amp == "bf16" else torch.float16
        if self.spatial_dims == 2 and -3 in options.tta_flips:
            raise error(TeacherLoadError, teacher_where(name, source),
                        f"tta_flips {list(options.tta_flips)} flips the depth axis (-3), but this is a 2D model "
                        f"(input_size {list(self.input_size)}); a 2D teacher flips within its slices: -1, -2")
        if self.whole_image and options.sliding_window:
            raise error(TeacherLoadError, teacher_where(name, source),
                        f"sliding_window is set, but a {kind} teacher tiles whole images itself (window "
                        f"{list(self.input_size)}); remove sliding_window from this teacher")

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
    def predict(self, images: torch.Tensor, spacing: tuple[float, ...] | None = None) -> torch.Tensor:
        """Images ``[B, C_in, H, W]`` (or volumes ``[B, C_in, D, H, W]``, any size) -> probabilities ``[B, K, ...]``
        float32 at the input's size, on the teacher's device.

        A 3D model predicts volumes; a 2D model predicts images, and volumes slice by slice along
        ``options.slice_axis`` (:meth:`predict_volume_by_slices`). Without sliding window, an input whose size
        differs from ``input_size`` is resampled (bilinear / trilinear) to it and the probabilities are resampled
        back. With TTA, probabilities are averaged over the flips. A whole-image teacher (``whole_image``) gets the
        images as they are, with ``spacing`` (mm per spatial axis of ``images``; None: unknown), which only such a
        teacher reads.

        Raises:
            TeacherOutputError: an output with the wrong class count, batch or spatial size, NaN / inf values, or
                declared probabilities that are not; the message names the teacher and the source.
        """
        x = torch.as_tensor(images)
        if self.spatial_dims == 2 and x.ndim == 5 and x.shape[1] == self.in_channels:
            return self.predict_volume_by_slices(x, spacing)
        if x.ndim != 2 + self.spatial_dims or x.shape[1] != self.in_channels:
            axes = "H, W" if self.spatial_dims == 2 else "D, H, W"
            raise ValueError(f"teacher {self.name!r}: inputs must be [B, {self.in_channels}, {axes}], got "
                             f"{tuple(x.shape)}")
        x = x.to(self.device, torch.float32)
        flips = self.options.flip_sets()
        total: torch.Tensor | None = None
        for dims in flips:
            probs = self._predict_once(x.flip(dims) if dims else x, spacing)
            probs = probs.flip(dims) if dims else probs
            total = probs if total is None else total + probs
        assert total is not None
        return total / len(flips) if len(flips) > 1 else total

    # Slices a 2D teacher predicts at once when it annotates a volume.
    SLICES_PER_PASS = 16

    def predict_volume_by_slices(self, volumes: torch.Tensor, spacing: tuple[float, ...] | None = None) -> torch.Tensor:
        """A 2D model on volumes ``[B, C_in, D, H, W]``: each slice along ``options.slice_axis`` (0 = D, 1 = H,
        2 = W) is predicted as an image, ``SLICES_PER_PASS`` at a time, and the maps are stacked back into the
        volume: ``[B, K, D, H, W]``. Network-agnostic across dimensions: a 2D teacher can annotate for a 3D student.
        ``spacing`` ``(d, h, w)`` gives each slice the spacing of its two axes.
        """
        if self.spatial_dims != 2:
            raise ValueError(f"teacher {self.name!r} is a {self.spatial_dims}D model; only 2D models predict by slices")
        axis = 2 + self.options.slice_axis
        in_plane = None if spacing is None else tuple(s for i, s in enumerate(spacing) if i != self.options.slice_axis)
        out = []
        for volume in torch.as_tensor(volumes):
            slices = volume.movedim(axis - 1, 0)  # [S, C_in, a, b]
            parts = [self.predict(slices[i:i + self.SLICES_PER_PASS], in_plane)
                     for i in range(0, slices.shape[0], self.SLICES_PER_PASS)]
            out.append(torch.cat(parts).movedim(0, axis - 1))  # [K, D, H, W]
        return torch.stack(out)

    def _predict_once(self, x: torch.Tensor, spacing: tuple[float, ...] | None = None) -> torch.Tensor:
        size = tuple(x.shape[2:])
        if self.whole_image:  # the kind resamples and tiles by itself; _check holds it to the input's size
            return self._check(self._raw(x, spacing), x, TeacherOutputError)
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
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        x = F.interpolate(x, size=self.input_size, mode=mode, align_corners=False)
        # Bilinear / trilinear weights are convex, so resampled probabilities still sum to 1.
        return F.interpolate(self._probabilities(x), size=size, mode=mode, align_corners=False)

    def _raw(self, x: torch.Tensor, spacing: tuple[float, ...] | None = None) -> Any:
        with torch.autocast(self.device.type, dtype=self._amp_dtype, enabled=self._autocast):
            return self._forward(x, spacing) if self.whole_image else self._forward(x)

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """One checked forward pass at the model's own size: ``[B, C_in, h, w]`` -> ``[B, K, h, w]``."""
        return self._check(self._raw(x), x, TeacherOutputError)

    def _check(self, raw: Any, x: torch.Tensor, kind: type[NaktError]) -> torch.Tensor:
        """Check a raw output against the description and turn it into float32 probabilities; a bad output
        raises ``kind`` (TeacherLoadError while probing at load time, TeacherOutputError when predicting)."""
        where = teacher_where(self.name, self.source)
        if not isinstance(raw, torch.Tensor):
            raise error(kind, where, f"the model returned {type(raw).__name__}; expected one tensor [B, K, H, W]")
        if raw.ndim != x.ndim:
            axes = "H, W" if x.ndim == 4 else "D, H, W"
            raise error(kind, where, f"the model returned shape {tuple(raw.shape)}; expected [B, K, {axes}] with K = "
                                     f"{self.num_classes}")
        if raw.shape[1] != self.num_classes:
            raise error(kind, where, f"the model returns {raw.shape[1]} classes but its labels declare "
                                     f"{self.num_classes} {list(self.labels)}")
        if raw.shape[0] != x.shape[0]:
            raise error(kind, where, f"the model returned batch size {raw.shape[0]} for an input batch of "
                                     f"{x.shape[0]}")
        if tuple(raw.shape[2:]) != tuple(x.shape[2:]):
            raise error(kind, where, f"the model returns spatial size {tuple(raw.shape[2:])} for an input of "
                                     f"{tuple(x.shape[2:])}; a segmentation teacher must return one value per "
                                     "input pixel")
        tol = PROB_TOLERANCE if raw.dtype in (torch.float32, torch.float64) else PROB_TOLERANCE_16BIT
        raw = raw.float()
        if not torch.isfinite(raw).all():
            raise error(kind, where, "the model produced NaN or infinite values")
        if self.outputs == "logits":
            return raw.softmax(1)
        if not looks_like_probabilities(raw, tol):
            lo, hi = raw.min().item(), raw.max().item()
            sums = raw.sum(1)
            raise error(kind, where, f"declared probabilities but the output looks like logits (values in "
                                     f"[{lo:.3g}, {hi:.3g}], class sums in [{sums.min().item():.3g}, "
                                     f"{sums.max().item():.3g}]); set outputs: logits")
        return raw.clamp(0.0, 1.0)

    def probe(self) -> None:
        """Run a zero image and a small random batch once (at load time); raise TeacherLoadError on a bad output,
        warn on logits that look like probabilities."""
        size = self.input_size
        gen = torch.Generator().manual_seed(0)
        batches = [torch.zeros(1, self.in_channels, *size), torch.randn(2, self.in_channels, *size, generator=gen)]
        all_probability_like = True
        with torch.no_grad():
            for x in batches:
                x = x.to(self.device)
                raw = self._raw(x)
                self._check(raw, x, TeacherLoadError)
                all_probability_like &= looks_like_probabilities(raw.float(), PROB_TOLERANCE)
        if self.outputs == "logits" and all_probability_like:
            # stacklevel 3: the caller of load_teacher (probe <- load_teacher <- caller)
            warnings.warn(f"{teacher_where(self.name, self.source)}: declared logits but the output already lies in "
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
        volume = None
        if self.volume is not None:
            from nakt_ray.config.convert import to_plain

            volume = to_plain(self.volume)
        return {"name": self.name, "source": self.source, "kind": self.kind, "fingerprint": self.fingerprint,
                "labels": list(self.labels), "num_classes": self.num_classes, "in_channels": self.in_channels,
                "input_size": list(self.input_size), "outputs": self.outputs, "preprocess": pre, "volume": volume,
                "inference": options, "device": str(self.device), "details": dict(self.details)}

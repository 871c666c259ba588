"""Architecture zoo: one registry of 2D segmentation networks, used for teachers and students alike.

Every model maps a float image ``[B, in_channels, H, W]`` to class logits ``[B, num_classes, H, W]`` (same H, W).
``num_classes >= 2`` always: binary segmentation is two classes (background, foreground). Callers apply the
softmax over the class axis.

A builder is a plain function ``builder(in_channels, num_classes, *, knob=default, ...)`` registered under a name
with :func:`register_architecture`. Its keyword-only parameters are the architecture's ``arch_args``; their
defaults are small and CPU-friendly. :func:`create_model` validates the name, the ``arch_args`` keys and the
spatial size before anything is built, so a bad config fails with a message rather than a shape error deep in a
forward pass.

MONAI and timm are imported inside the builders only: importing this module costs no more than ``import torch``
(``import monai`` alone takes 5-8 s on a 2-core machine).

Example:
    >>> model = create_model("unet", in_channels=1, num_classes=2, spatial_size=(128, 128), channels=[8, 16, 32])
"""
from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TimmUNet",
    "UnknownArchitectureError",
    "check_arch_args",
    "check_spatial_size",
    "count_parameters",
    "create_model",
    "describe",
    "list_architectures",
    "register_architecture",
    "resolve_arch_args",
]

Builder = Callable[..., nn.Module]
# Maps the resolved arch_args of an architecture to (size_divisor, min_size): H and W must be multiples of
# size_divisor and at least min_size.
SizeRule = Callable[[Mapping[str, Any]], tuple[int, int]]


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    size_rule: SizeRule


_ARCHITECTURES: dict[str, _Entry] = {}

# Positional parameters every builder takes; everything else is an arch_arg.
_BUILDER_POSITIONAL = ("in_channels", "num_classes")


class UnknownArchitectureError(ValueError):
    """Raised for an architecture name that is not registered; the message lists the valid names."""


def _no_size_constraint(_: Mapping[str, Any]) -> tuple[int, int]:
    return 1, 1


def register_architecture(name: str, *, size_rule: SizeRule | None = None) -> Callable[[Builder], Builder]:
    """Register a model builder under ``name``.

    The builder is called as ``builder(in_channels, num_classes, **arch_args)``; its keyword-only parameters
    (all with defaults) are the architecture's ``arch_args``.

    Args:
        name: registry key, e.g. ``"unet"``.
        size_rule: maps the resolved arch_args to ``(size_divisor, min_size)``: each of H, W must be a multiple of
            ``size_divisor`` and at least ``min_size`` pixels. None means any size works.

    Returns:
        A decorator that registers the builder and returns it unchanged.

    Raises:
        ValueError: ``name`` is already registered, or the builder's signature does not follow the convention.
    """

    def decorator(builder: Builder) -> Builder:
        if name in _ARCHITECTURES:
            raise ValueError(f"architecture {name!r} is already registered (by {_ARCHITECTURES[name].builder!r})")
        params = inspect.signature(builder).parameters
        positional = [p for p in params.values() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        if tuple(p.name for p in positional) != _BUILDER_POSITIONAL:
            raise ValueError(
                f"builder for {name!r} must take exactly {_BUILDER_POSITIONAL} before its keyword-only arch_args, "
                f"got {tuple(p.name for p in positional)}"
            )
        no_default = [p.name for p in params.values() if p.kind is inspect.Parameter.KEYWORD_ONLY
                      and p.default is inspect.Parameter.empty]
        if no_default:
            raise ValueError(f"builder for {name!r}: arch_args need defaults, missing for {no_default}")
        _ARCHITECTURES[name] = _Entry(builder=builder, size_rule=size_rule or _no_size_constraint)
        return builder

    return decorator


def list_architectures() -> list[str]:
    """Names of all registered architectures, sorted."""
    return sorted(_ARCHITECTURES)


def _entry(name: str) -> _Entry:
    try:
        return _ARCHITECTURES[name]
    except KeyError:
        pass
    valid = list_architectures()
    close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UnknownArchitectureError(f"unknown architecture {name!r}{hint} valid: {', '.join(valid)}")


def describe(name: str) -> dict[str, Any]:
    """Default arch_args of an architecture (what :func:`create_model` uses for keys it is not given).

    Args:
        name: a registered architecture name.

    Returns:
        ``{arg_name: default}`` for every arch_arg the builder accepts, in signature order.
    """
    params = inspect.signature(_entry(name).builder).parameters
    return {p.name: p.default for p in params.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def check_arch_args(name: str, arch_args: Mapping[str, Any]) -> None:
    """Raise if ``arch_args`` holds a key the architecture's builder does not accept.

    Raises:
        UnknownArchitectureError: ``name`` is not registered.
        ValueError: naming the architecture, the unknown key(s) and the allowed keys.
    """
    allowed = describe(name)
    bad = sorted(k for k in arch_args if k not in allowed)
    if bad:
        close = [m for k in bad for m in difflib.get_close_matches(str(k), list(allowed), n=1, cutoff=0.6)]
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise ValueError(
            f"architecture {name!r} does not accept arch_args {bad}{hint}; "
            f"allowed: {', '.join(allowed) or '(none)'}"
        )


def _as_tuples(arch_args: Mapping[str, Any]) -> dict[str, Any]:
    # YAML has no tuples: sequences arrive as lists.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in arch_args.items()}


def resolve_arch_args(name: str, arch_args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The defaults of ``name`` overridden by ``arch_args`` (lists turned into tuples): what the model is built with.

    Raises:
        UnknownArchitectureError, ValueError: as :func:`check_arch_args`.
    """
    arch_args = dict(arch_args or {})
    check_arch_args(name, arch_args)
    return {**describe(name), **_as_tuples(arch_args)}


def check_spatial_size(name: str, spatial_size: Sequence[int], arch_args: Mapping[str, Any] | None = None) -> None:
    """Raise if an input of ``spatial_size`` cannot go through ``name`` built with ``arch_args``.

    Down-sampling networks need H and W divisible by their total down-sampling factor (the skip connections
    must line up again on the way up), and most need the deepest feature map to be at least 2x2 (instance /
    batch norm over a single value fails in training).

    Args:
        name: a registered architecture name.
        spatial_size: ``(H, W)`` in pixels.
        arch_args: the arch_args the model will be built with (defaults fill the rest).

    Raises:
        ValueError: ``spatial_size`` is not two positive ints, or does not suit the architecture; the message
            says which multiple and minimum are needed.
    """
    entry = _entry(name)
    size = tuple(spatial_size) if isinstance(spatial_size, (list, tuple)) else (spatial_size,)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f"spatial_size must be two positive ints (H, W), got {spatial_size!r}")
    args = resolve_arch_args(name, arch_args)
    divisor, min_size = entry.size_rule(args)
    bad = [s for s in size if s % divisor or s < min_size]
    if bad:
        suggestion = tuple(max(min_size, -(-s // divisor) * divisor) for s in size)
        raise ValueError(
            f"spatial_size {size} does not suit architecture {name!r}: H and W must be multiples of {divisor} and "
            f"at least {min_size} with these arch_args, e.g. {suggestion}"
        )


def create_model(
    name: str,
    in_channels: int,
    num_classes: int,
    spatial_size: tuple[int, int],
    **arch_args: Any,
) -> nn.Module:
    """Build a registered segmentation network.

    Args:
        name: architecture name, see :func:`list_architectures`.
        in_channels: image channels C of the input ``[B, C, H, W]``.
        num_classes: output classes K (>= 2; binary segmentation is K = 2), logits ``[B, K, H, W]``.
        spatial_size: ``(H, W)`` the model will see; checked against the architecture's down-sampling.
        **arch_args: overrides of the architecture's width/depth knobs (see :func:`describe`); lists are
            accepted where tuples are expected.

    Returns:
        A freshly initialised ``nn.Module`` mapping ``[B, in_channels, H, W]`` float to ``[B, num_classes, H, W]``
        logits. No pretrained weights are loaded.

    Raises:
        UnknownArchitectureError: unknown ``name``.
        ValueError: bad ``in_channels`` / ``num_classes``, an arch_args key the builder does not accept, or a
            ``spatial_size`` the architecture cannot take.
    """
    entry = _entry(name)
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"num_classes must be an int >= 2 (binary segmentation = 2 classes: background, foreground), "
            f"got {num_classes!r}"
        )
    args = resolve_arch_args(name, arch_args)
    check_spatial_size(name, spatial_size, args)
    return entry.builder(in_channels, num_classes, **args)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters in ``model`` (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------------------------------------------------------
# Builders. Each checks what MONAI would otherwise report obscurely (or not at all), then builds the network.
# ---------------------------------------------------------------------------------------------------------------


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def _require(cond: bool, arch: str, message: str) -> None:
    if not cond:
        raise ValueError(f"architecture {arch!r}: {message}")


def _strided_unet_size(args: Mapping[str, Any]) -> tuple[int, int]:
    # The bottleneck sits at 1/prod(strides); instance/batch norm there needs at least 2x2.
    factor = _prod(args["strides"])
    return factor, 2 * factor


@register_architecture("unet", size_rule=_strided_unet_size)
def _build_unet(
    in_channels: int,
    num_classes: int,
    *,
    channels: Sequence[int] = (16, 32, 64, 128),
    strides: Sequence[int] = (2, 2, 2),
    num_res_units: int = 1,
    dropout: float = 0.0,
) -> nn.Module:
    """MONAI residual UNet (instance norm, PReLU)."""
    _require(len(strides) == len(channels) - 1, "unet",
             f"needs len(strides) == len(channels) - 1, got channels={tuple(channels)}, strides={tuple(strides)}")
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes, channels=tuple(channels),
                strides=tuple(strides), num_res_units=num_res_units, dropout=dropout)


@register_architecture("attention_unet", size_rule=_strided_unet_size)
def _build_attention_unet(
    in_channels: int,
    num_classes: int,
    *,
    channels: Sequence[int] = (16, 32, 64, 128),
    strides: Sequence[int] = (2, 2, 2),
    dropout: float = 0.0,
) -> nn.Module:
    """MONAI Attention U-Net (Oktay et al. 2018, batch norm)."""
    _require(len(strides) == len(channels) - 1, "attention_unet",
             f"needs len(strides) == len(channels) - 1, got channels={tuple(channels)}, strides={tuple(strides)}")
    from monai.networks.nets import AttentionUnet

    return AttentionUnet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes, channels=tuple(channels),
                         strides=tuple(strides), dropout=dropout)


def _segresnet_size(args: Mapping[str, Any]) -> tuple[int, int]:
    # Group norm works on a 1x1 map, so the down-sampling factor alone bounds the size.
    factor = 2 ** (len(args["blocks_down"]) - 1)
    return factor, factor


@register_architecture("segresnet", size_rule=_segresnet_size)
def _build_segresnet(
    in_channels: int,
    num_classes: int,
    *,
    init_filters: int = 16,
    blocks_down: Sequence[int] = (1, 2, 2, 4),
    blocks_up: Sequence[int] = (1, 1, 1),
    dropout_prob: float | None = None,
) -> nn.Module:
    """MONAI SegResNet (Myronenko 2018) without the VAE branch; group norm with 8 groups."""
    _require(len(blocks_up) == len(blocks_down) - 1, "segresnet",
             f"needs len(blocks_up) == len(blocks_down) - 1, got blocks_down={tuple(blocks_down)}, "
             f"blocks_up={tuple(blocks_up)}")
    _require(init_filters % 8 == 0, "segresnet",
             f"init_filters must be a multiple of 8 (group norm with 8 groups), got {init_filters}")
    from monai.networks.nets import SegResNet

    return SegResNet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes, init_filters=init_filters,
                     blocks_down=tuple(blocks_down), blocks_up=tuple(blocks_up), dropout_prob=dropout_prob)


@register_architecture("basic_unet", size_rule=lambda args: (16, 32))
def _build_basic_unet(
    in_channels: int,
    num_classes: int,
    *,
    features: Sequence[int] = (16, 16, 32, 64, 128, 16),
    dropout: float = 0.0,
) -> nn.Module:
    """MONAI BasicUNet: four 2x down-samplings; ``features`` = 5 encoder widths + the last decoder width."""
    _require(len(features) == 6, "basic_unet", f"features needs 6 entries, got {tuple(features)}")
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes, features=tuple(features),
                     dropout=dropout)


@register_architecture("swin_unetr", size_rule=lambda args: (32, 64))
def _build_swin_unetr(
    in_channels: int,
    num_classes: int,
    *,
    feature_size: int = 12,
    depths: Sequence[int] = (2, 2, 2, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
) -> nn.Module:
    """MONAI SwinUNETR, 2D, patch size 2, window 7. The input goes down to 1/32, the bottleneck must be >= 2x2."""
    _require(feature_size % 12 == 0 and feature_size > 0, "swin_unetr",
             f"feature_size must be a positive multiple of 12, got {feature_size}")
    _require(len(depths) == 4 and len(num_heads) == 4, "swin_unetr",
             f"depths and num_heads need 4 entries each (four Swin stages), got {tuple(depths)}, {tuple(num_heads)}")
    for stage, heads in enumerate(num_heads):
        width = feature_size * 2**stage
        _require(width % heads == 0, "swin_unetr",
                 f"stage {stage} width {width} (feature_size * 2**{stage}) is not divisible by num_heads {heads}")
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(in_channels=in_channels, out_channels=num_classes, spatial_dims=2, feature_size=feature_size,
                     depths=tuple(depths), num_heads=tuple(num_heads))


# --- timm encoder + U-Net decoder -------------------------------------------------------------------------------


class _DecoderBlock(nn.Module):
    """Upsample to the skip's size, concatenate it, two conv-BN-ReLU: ``[B, C_in, h, w] -> [B, C_out, H_s, W_s]``."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels + skip_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.convs(torch.cat([x, skip], dim=1))


class TimmUNet(nn.Module):
    """A timm ``features_only`` encoder with a U-Net decoder.

    The encoder yields N feature maps at reductions ``r_0 < ... < r_{N-1}`` (e.g. 2..32 for resnet18, 4..32 for
    convnext). Starting from the deepest, each of the N-1 decoder stages upsamples to the next shallower map,
    concatenates it and applies two conv-BN-ReLU. A 1x1 head gives class logits at reduction ``r_0``, which are
    bilinearly upsampled to the input size (a 1x1 conv and bilinear upsampling commute, so this equals
    upsample-then-head at a fraction of the cost).

    Args:
        encoder: a timm model created with ``features_only=True`` (has ``feature_info``).
        num_classes: K, logits ``[B, K, H, W]``.
        decoder_channels: output width of each decoder stage, deepest first; N-1 entries.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, decoder_channels: Sequence[int]) -> None:
        super().__init__()
        channels = list(encoder.feature_info.channels())
        reductions = list(encoder.feature_info.reduction())
        if len(decoder_channels) != len(channels) - 1:
            raise ValueError(
                f"decoder_channels needs {len(channels) - 1} entries (one per skip of an encoder with feature "
                f"channels {channels}), got {tuple(decoder_channels)}"
            )
        self.encoder = encoder
        self.size_divisor = max(reductions)
        blocks = []
        in_ch = channels[-1]
        for skip_ch, out_ch in zip(reversed(channels[:-1]), decoder_channels):
            blocks.append(_DecoderBlock(in_ch, skip_ch, int(out_ch)))
            in_ch = int(out_ch)
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(in_ch, num_classes, kernel_size=1)

    def __reduce_ex__(self, protocol: int) -> Any:
        # Pickle as "rebuild through the zoo, then load the weights" rather than as timm classes: unpickling (e.g.
        # mlflow.pytorch.load_model in a fresh process) then goes through _build_timm_unet, which makes
        # torchvision importable before timm is imported. Models not built by the zoo pickle as usual.
        build = getattr(self, "_nakt_build", None)
        if build is None:
            return super().__reduce_ex__(protocol)
        return _rebuild_timm_unet, (build, self.state_dict(), self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` image -> ``[B, K, H, W]`` logits; H and W must be multiples of ``size_divisor``."""
        if x.shape[-2] % self.size_divisor or x.shape[-1] % self.size_divisor:
            raise ValueError(
                f"TimmUNet input H, W must be multiples of {self.size_divisor}, got {tuple(x.shape[-2:])}"
            )
        features = self.encoder(x)
        y = features[-1]
        for block, skip in zip(self.decoder, reversed(features[:-1])):
            y = block(y, skip)
        y = self.head(y)
        if y.shape[-2:] != x.shape[-2:]:
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return y


def _unknown_timm_encoder(encoder: str, timm: Any) -> ValueError:
    # Substring matches first (what `timm.list_models("*name*")` shows), then spelling neighbours.
    matches = timm.list_models(f"*{encoder}*")[:10] or difflib.get_close_matches(encoder, timm.list_models(), n=5)
    hint = f"; close matches: {', '.join(matches)}" if matches else ""
    return ValueError(
        f"architecture 'timm_unet': unknown timm encoder {encoder!r}{hint} "
        f"(timm.list_models('*pattern*') lists the valid names)"
    )


@register_architecture("timm_unet", size_rule=lambda args: (32, 64))
def _build_timm_unet(
    in_channels: int,
    num_classes: int,
    *,
    encoder: str = "resnet18",
    decoder_channels: Sequence[int] | None = None,
) -> nn.Module:
    """A randomly initialised timm encoder (no pretrained weights: nothing is downloaded) with a U-Net decoder.

    ``decoder_channels=None`` derives one width per decoder stage, deepest first, halving down to 16:
    ``(128, 64, 32, 16)`` for resnet18 / efficientnet_b0 (5 feature maps), ``(64, 32, 16)`` for convnext (4).
    The size rule assumes the usual maximum reduction of 32 and a bottleneck of at least 2x2 (batch norm).
    """
    from nakt_ray._torchvision_compat import ensure_torchvision

    ensure_torchvision()  # timm imports torchvision, which needs the shim against CPU torch
    import timm

    if not isinstance(encoder, str) or not timm.is_model(encoder):
        raise _unknown_timm_encoder(str(encoder), timm)
    try:
        backbone = timm.create_model(encoder, features_only=True, pretrained=False, in_chans=in_channels)
    except RuntimeError as err:  # e.g. "features_only not implemented for ..."
        raise ValueError(f"architecture 'timm_unet': timm encoder {encoder!r} cannot give feature maps: {err}") from err
    if decoder_channels is None:
        n_stages = len(backbone.feature_info.channels()) - 1
        decoder_channels = tuple(16 * 2 ** (n_stages - 1 - i) for i in range(n_stages))
    model = TimmUNet(backbone, num_classes, decoder_channels)
    model._nakt_build = dict(in_channels=in_channels, num_classes=num_classes, encoder=encoder,
                             decoder_channels=tuple(int(c) for c in decoder_channels))
    return model


def _rebuild_timm_unet(build: dict[str, Any], state: dict[str, torch.Tensor], training: bool) -> TimmUNet:
    """Unpickling target of :class:`TimmUNet` (see ``__reduce_ex__``)."""
    build = dict(build)
    model = _build_timm_unet(build.pop("in_channels"), build.pop("num_classes"), **build)
    model.load_state_dict(state)
    return model.train(training)

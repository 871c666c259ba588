"""The MONAI architectures of the zoo, registered on import: ``unet``, ``attention_unet``, ``segresnet``,
``basic_unet``, ``swin_unetr``, all 2D.

Each builder checks what MONAI would otherwise report obscurely (or not at all), then imports MONAI and builds the
network; importing this module imports no MONAI. Each has a size rule: the multiple and minimum of H and W its
down-sampling needs (see :func:`nakt_ray.zoo.registry.register_architecture`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from nakt_ray.errors import ConfigError, error
from nakt_ray.zoo.registry import register_architecture

__all__: list[str] = []  # importing the module registers its builders; nothing is imported from it


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def _require(cond: bool, arch: str, message: str) -> None:
    if not cond:
        raise error(ConfigError, f"architecture {arch!r}", message)


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

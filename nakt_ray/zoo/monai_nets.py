"""The MONAI architectures of the zoo, registered on import: ``unet``, ``attention_unet``, ``segresnet``,
``basic_unet``, ``swin_unetr``, ``dynunet``; each 2D by default and 3D with the arch_arg ``spatial_dims=3``.

Each builder checks what MONAI would otherwise report obscurely (or not at all), then imports MONAI and builds the
network; importing this module imports no MONAI. Each has a size rule: the multiple and minimum of every spatial
axis (H, W, or D, H, W) its down-sampling needs (see :func:`nakt_ray.zoo.registry.register_architecture`); the
same numbers hold in 2D and 3D, since every axis is down-sampled alike.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from nakt_ray.errors import ConfigError, error, expected
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


def _dims(spatial_dims: int, arch: str) -> int:
    # create_model checks spatial_dims with the arch_args (registry.check_arch_args); a builder called directly
    # (registry.rebuild_model) checks it here, before MONAI reports it less clearly.
    _require(isinstance(spatial_dims, numbers.Integral) and not isinstance(spatial_dims, bool)
             and int(spatial_dims) in (2, 3), arch,
             expected(spatial_dims, "spatial_dims 2 (images, [B, C, H, W]) or 3 (volumes, [B, C, D, H, W])"))
    return int(spatial_dims)


def _strided_unet_size(args: Mapping[str, Any]) -> tuple[int, int]:
    # The bottleneck sits at 1/prod(strides); instance/batch norm there needs at least 2 a side (2x2, 2x2x2).
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
    spatial_dims: int = 2,
) -> nn.Module:
    """MONAI residual UNet (instance norm, PReLU)."""
    dims = _dims(spatial_dims, "unet")
    _require(len(strides) == len(channels) - 1, "unet",
             f"needs len(strides) == len(channels) - 1, got channels={tuple(channels)}, strides={tuple(strides)}")
    from monai.networks.nets import UNet

    return UNet(spatial_dims=dims, in_channels=in_channels, out_channels=num_classes, channels=tuple(channels),
                strides=tuple(strides), num_res_units=num_res_units, dropout=dropout)


@register_architecture("attention_unet", size_rule=_strided_unet_size)
def _build_attention_unet(
    in_channels: int,
    num_classes: int,
    *,
    channels: Sequence[int] = (16, 32, 64, 128),
    strides: Sequence[int] = (2, 2, 2),
    dropout: float = 0.0,
    spatial_dims: int = 2,
) -> nn.Module:
    """MONAI Attention U-Net (Oktay et al. 2018, batch norm)."""
    dims = _dims(spatial_dims, "attention_unet")
    _require(len(strides) == len(channels) - 1, "attention_unet",
             f"needs len(strides) == len(channels) - 1, got channels={tuple(channels)}, strides={tuple(strides)}")
    from monai.networks.nets import AttentionUnet

    return AttentionUnet(spatial_dims=dims, in_channels=in_channels, out_channels=num_classes, channels=tuple(channels),
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
    spatial_dims: int = 2,
) -> nn.Module:
    """MONAI SegResNet (Myronenko 2018) without the VAE branch; group norm with 8 groups."""
    dims = _dims(spatial_dims, "segresnet")
    _require(len(blocks_up) == len(blocks_down) - 1, "segresnet",
             f"needs len(blocks_up) == len(blocks_down) - 1, got blocks_down={tuple(blocks_down)}, "
             f"blocks_up={tuple(blocks_up)}")
    _require(init_filters % 8 == 0, "segresnet",
             f"init_filters must be a multiple of 8 (group norm with 8 groups), got {init_filters}")
    from monai.networks.nets import SegResNet

    return SegResNet(spatial_dims=dims, in_channels=in_channels, out_channels=num_classes, init_filters=init_filters,
                     blocks_down=tuple(blocks_down), blocks_up=tuple(blocks_up), dropout_prob=dropout_prob)


@register_architecture("basic_unet", size_rule=lambda args: (16, 32))
def _build_basic_unet(
    in_channels: int,
    num_classes: int,
    *,
    features: Sequence[int] = (16, 16, 32, 64, 128, 16),
    dropout: float = 0.0,
    spatial_dims: int = 2,
) -> nn.Module:
    """MONAI BasicUNet: four 2x down-samplings; ``features`` = 5 encoder widths + the last decoder width."""
    dims = _dims(spatial_dims, "basic_unet")
    _require(len(features) == 6, "basic_unet", f"features needs 6 entries, got {tuple(features)}")
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=dims, in_channels=in_channels, out_channels=num_classes, features=tuple(features),
                     dropout=dropout)


@register_architecture("swin_unetr", size_rule=lambda args: (32, 64))
def _build_swin_unetr(
    in_channels: int,
    num_classes: int,
    *,
    feature_size: int = 12,
    depths: Sequence[int] = (2, 2, 2, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    spatial_dims: int = 2,
) -> nn.Module:
    """MONAI SwinUNETR, patch size 2, window 7. The input goes down to 1/32 on every axis; the bottleneck must be
    at least 2 a side (instance norm), so 64 a side is the smallest input, in 2D and 3D."""
    dims = _dims(spatial_dims, "swin_unetr")
    _require(feature_size % 12 == 0 and feature_size > 0, "swin_unetr",
             f"feature_size must be a positive multiple of 12, got {feature_size}")
    _require(len(depths) == 4 and len(num_heads) == 4, "swin_unetr",
             f"depths and num_heads need 4 entries each (four Swin stages), got {tuple(depths)}, {tuple(num_heads)}")
    for stage, heads in enumerate(num_heads):
        width = feature_size * 2**stage
        _require(width % heads == 0, "swin_unetr",
                 f"stage {stage} width {width} (feature_size * 2**{stage}) is not divisible by num_heads {heads}")
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(in_channels=in_channels, out_channels=num_classes, spatial_dims=dims, feature_size=feature_size,
                     depths=tuple(depths), num_heads=tuple(num_heads))


def _dynunet_size(args: Mapping[str, Any]) -> tuple[int, int]:
    # Level 0 keeps the input size, each further level halves it; instance norm at the bottleneck needs >= 2 a side.
    factor = 2 ** (len(args["filters"]) - 1)
    return factor, 2 * factor


@register_architecture("dynunet", size_rule=_dynunet_size)
def _build_dynunet(
    in_channels: int,
    num_classes: int,
    *,
    filters: Sequence[int] = (16, 32, 64, 128),
    res_block: bool = False,
    dropout: float = 0.0,
    spatial_dims: int = 2,
) -> nn.Module:
    """MONAI DynUNet, the nnU-Net architecture (instance norm, leaky ReLU): one level per entry of ``filters``
    (its width); the first level keeps the input size (stride 1), each further one halves it (stride 2), with 3-wide
    kernels throughout (nnU-Net's isotropic plan); ``res_block`` uses residual blocks. Deep supervision is off, so the
    network returns one ``[B, K, *spatial]`` tensor in training and in evaluation alike.
    """
    dims = _dims(spatial_dims, "dynunet")
    _require(len(filters) >= 3, "dynunet",
             f"filters needs at least 3 levels (MONAI's DynUNet), got {tuple(filters)}")
    _require(all(isinstance(f, int) and f > 0 for f in filters), "dynunet",
             f"filters must be positive ints, got {tuple(filters)}")
    from monai.networks.nets import DynUNet

    levels = len(filters)
    strides = [1] + [2] * (levels - 1)
    return DynUNet(spatial_dims=dims, in_channels=in_channels, out_channels=num_classes,
                   kernel_size=[3] * levels, strides=strides, upsample_kernel_size=strides[1:],
                   filters=tuple(filters), dropout=dropout or None, res_block=bool(res_block),
                   deep_supervision=False)

"""``timm_unet``: any timm encoder with a U-Net decoder, registered on import.

:class:`TimmUNet` takes a timm ``features_only`` encoder (N feature maps) and decodes them with N-1 upsample-concat-
conv stages and a 1x1 head: ``[B, C, H, W]`` image -> ``[B, K, H, W]`` logits. timm is imported inside the builder
only, after the torchvision shim of :mod:`nakt_ray._torchvision_compat`; a zoo-built model pickles as "rebuild
through the zoo" so that unpickling it in a fresh process goes through the shim too.

2D only: timm encoders are 2D networks. ``spatial_dims`` is an arch_arg all the same (default 2), so that a config
asking for ``spatial_dims: 3`` gets a message that says so and names the architectures that build volumes, rather
than "unknown key".
"""
from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nakt_ray.errors import ConfigError, error
from nakt_ray.zoo.registry import (
    rebuild_model,
    register_architecture,
    volume_architectures,
)

__all__ = ["TimmUNet"]


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
        # mlflow.pytorch.load_model in a fresh process) then goes through registry.rebuild_model and so through
        # _build_timm_unet, which makes torchvision importable before timm is imported. The pickle names the
        # registry function and "timm_unet", not this module, so it survives a move of this class. Models not
        # built by the zoo pickle as usual (by class path, nakt_ray.zoo.timm_unet.TimmUNet).
        build = getattr(self, "_nakt_build", None)
        if build is None:
            return super().__reduce_ex__(protocol)
        return rebuild_model, ("timm_unet", build, self.state_dict(), self.training)

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


def _unknown_timm_encoder(encoder: str, timm: Any) -> ConfigError:
    # Substring matches first (what `timm.list_models("*name*")` shows), then spelling neighbours.
    matches = timm.list_models(f"*{encoder}*")[:10] or difflib.get_close_matches(encoder, timm.list_models(), n=5)
    hint = f"; close matches: {', '.join(matches)}" if matches else ""
    return error(ConfigError, "architecture 'timm_unet'",
                 f"unknown timm encoder {encoder!r}{hint} (timm.list_models('*pattern*') lists the valid names)")


_ONLY_2D = "timm encoders are 2D only"


@register_architecture("timm_unet", size_rule=lambda args: (32, 64), only_2d=_ONLY_2D)
def _build_timm_unet(
    in_channels: int,
    num_classes: int,
    *,
    encoder: str = "resnet18",
    decoder_channels: Sequence[int] | None = None,
    spatial_dims: int = 2,
) -> nn.Module:
    """A randomly initialised timm encoder (no pretrained weights: nothing is downloaded) with a U-Net decoder.

    ``decoder_channels=None`` derives one width per decoder stage, deepest first, halving down to 16:
    ``(128, 64, 32, 16)`` for resnet18 / efficientnet_b0 (5 feature maps), ``(64, 32, 16)`` for convnext (4).
    The size rule assumes the usual maximum reduction of 32 and a bottleneck of at least 2x2 (batch norm).
    ``spatial_dims`` must be 2 (create_model refuses 3 already, when it checks the arch_args; this covers a direct
    call).
    """
    if spatial_dims != 2:
        raise error(ConfigError, "architecture 'timm_unet'",
                    f"spatial_dims {spatial_dims!r} is not available: {_ONLY_2D}; the zoo's architectures that take "
                    f"spatial_dims: 3 are {', '.join(volume_architectures())}")
    from nakt_ray._torchvision_compat import ensure_torchvision

    ensure_torchvision()  # timm imports torchvision, which needs the shim against CPU torch
    import timm

    if not isinstance(encoder, str) or not timm.is_model(encoder):
        raise _unknown_timm_encoder(str(encoder), timm)
    try:
        backbone = timm.create_model(encoder, features_only=True, pretrained=False, in_chans=in_channels)
    except RuntimeError as err:  # e.g. "features_only not implemented for ..."
        raise error(ConfigError, "architecture 'timm_unet'",
                    f"timm encoder {encoder!r} cannot give feature maps: {err}") from err
    if decoder_channels is None:
        n_stages = len(backbone.feature_info.channels()) - 1
        decoder_channels = tuple(16 * 2 ** (n_stages - 1 - i) for i in range(n_stages))
    model = TimmUNet(backbone, num_classes, decoder_channels)
    model._nakt_build = dict(in_channels=in_channels, num_classes=num_classes, encoder=encoder,
                             decoder_channels=tuple(int(c) for c in decoder_channels))
    return model

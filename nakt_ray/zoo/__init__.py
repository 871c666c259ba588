"""The zoo: every architecture a teacher or a student may have, by name (``create_model(name, ...)``), with
its arguments checked before anything is built.

Takes in: an architecture name, channel and class counts, the spatial size and ``arch_args``. Gives out: a freshly
initialised ``nn.Module`` mapping ``[B, C, H, W]`` images to ``[B, K, H, W]`` logits, or, built with the arch_arg
``spatial_dims: 3`` (:func:`spatial_dims_of`), ``[B, C, D, H, W]`` volumes to ``[B, K, D, H, W]`` logits; or an
error naming what is wrong. Imports torch (and MONAI / timm only when a model of theirs is built), nothing of the
pipeline.

:mod:`~nakt_ray.zoo.registry` holds the registry machinery; :mod:`~nakt_ray.zoo.monai_nets` and
:mod:`~nakt_ray.zoo.timm_unet` register the built-in architectures when this package is imported.
"""
# Importing the builder modules registers the built-in architectures; they import the registry, never the reverse.
from nakt_ray.zoo import monai_nets, timm_unet  # noqa: F401
from nakt_ray.zoo.registry import (
    UnknownArchitectureError,
    _rebuild_timm_unet,  # noqa: F401  pickles of earlier versions name nakt_ray.zoo._rebuild_timm_unet
    check_arch_args,
    check_spatial_size,
    count_parameters,
    create_model,
    describe,
    list_architectures,
    register_architecture,
    resolve_arch_args,
    spatial_dims_of,
    volume_architectures,
)
from nakt_ray.zoo.timm_unet import (
    TimmUNet,
    _DecoderBlock,  # noqa: F401  pickles of earlier versions name nakt_ray.zoo._DecoderBlock
)

__all__ = ["TimmUNet", "UnknownArchitectureError", "check_arch_args", "check_spatial_size", "count_parameters",
           "create_model", "describe", "list_architectures", "register_architecture", "resolve_arch_args",
           "spatial_dims_of", "volume_architectures"]

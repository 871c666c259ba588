"""The zoo: every architecture a teacher or a student may have, by name (``create_model(name, ...)``), with
its arguments checked before anything is built. Imports torch (and MONAI / timm when a model is built), nothing
of the pipeline.
"""
from nakt_ray.zoo.registry import (
    TimmUNet,
    UnknownArchitectureError,
    check_arch_args,
    check_spatial_size,
    count_parameters,
    create_model,
    describe,
    list_architectures,
    register_architecture,
    resolve_arch_args,
)

__all__ = ["TimmUNet", "UnknownArchitectureError", "check_arch_args", "check_spatial_size", "count_parameters",
           "create_model", "describe", "list_architectures", "register_architecture", "resolve_arch_args"]

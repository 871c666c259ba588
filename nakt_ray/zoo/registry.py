"""The architecture registry: names -> builders of 2D and 3D segmentation networks, for teachers and students alike.

Every model maps a float image ``[B, in_channels, H, W]`` to class logits ``[B, num_classes, H, W]`` (same H, W),
or, built with the arch_arg ``spatial_dims=3``, a volume ``[B, in_channels, D, H, W]`` to ``[B, num_classes, D, H,
W]``. ``num_classes >= 2`` always: binary segmentation is two classes (background, foreground). Callers apply the
softmax over the class axis.

``spatial_dims`` (2 or 3, default 2) is an ordinary keyword-only arch_arg of the builders that can build volumes;
a builder without it is 2D (third-party builders need not know about volumes), and one that takes it but builds
2D only says why when it is registered (``only_2d``), so that ``spatial_dims: 3`` fails when arguments are checked
(at config load), not when the model is built. :func:`spatial_dims_of` says which an architecture will be.

A builder is a plain function ``builder(in_channels, num_classes, *, knob=default, ...)`` registered under a name
with :func:`register_architecture`. Its keyword-only parameters are the architecture's ``arch_args``; their
defaults are small and CPU-friendly. :func:`create_model` validates the name, the ``arch_args`` keys and the
spatial size before anything is built, so a bad config fails with a message rather than a shape error deep in a
forward pass.

The built-in architectures register themselves from :mod:`nakt_ray.zoo.monai_nets` and
:mod:`nakt_ray.zoo.timm_unet`, which ``import nakt_ray.zoo`` imports; this module imports neither (they import
it). MONAI and timm are imported inside the builders only: importing the zoo costs no more than ``import torch``
(``import monai`` alone takes 5-8 s on a 2-core machine).

Example:
    >>> model = create_model("unet", in_channels=1, num_classes=2, spatial_size=(128, 128), channels=[8, 16, 32])
    >>> volume_model = create_model("unet", 1, 2, spatial_size=(64, 64, 64), spatial_dims=3)
"""
from __future__ import annotations

import difflib
import inspect
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nakt_ray.errors import ConfigError, error, expected

__all__ = [
    "UnknownArchitectureError",
    "check_arch_args",
    "check_spatial_size",
    "count_parameters",
    "create_model",
    "describe",
    "list_architectures",
    "rebuild_model",
    "register_architecture",
    "resolve_arch_args",
    "spatial_dims_of",
    "volume_architectures",
]

Builder = Callable[..., nn.Module]
# Maps the resolved arch_args of an architecture to (size_divisor, min_size): every spatial axis (H, W or D, H, W)
# must be a multiple of size_divisor and at least min_size.
SizeRule = Callable[[Mapping[str, Any]], tuple[int, int]]


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    size_rule: SizeRule
    only_2d: str | None  # why a builder with a spatial_dims arch_arg refuses 3; None: it takes 2 and 3


_ARCHITECTURES: dict[str, _Entry] = {}

# Positional parameters every builder takes; everything else is an arch_arg.
_BUILDER_POSITIONAL = ("in_channels", "num_classes")
# The arch_arg that makes a builder build 2D (images) or 3D (volumes) networks, and its values.
_SPATIAL_DIMS = "spatial_dims"
_SPATIAL_DIMS_VALUES = (2, 3)


class UnknownArchitectureError(ValueError):
    """Raised for an architecture name that is not registered; the message lists the valid names."""


def _is_dims(value: Any, allowed: Sequence[int]) -> bool:
    # Integral rather than int: a value drawn by a search may be a numpy integer; a bool or 2.0 is a mistake.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) in allowed


def _no_size_constraint(_: Mapping[str, Any]) -> tuple[int, int]:
    return 1, 1


def register_architecture(
    name: str, *, size_rule: SizeRule | None = None, only_2d: str | None = None
) -> Callable[[Builder], Builder]:
    """Register a model builder under ``name``.

    The builder is called as ``builder(in_channels, num_classes, **arch_args)``; its keyword-only parameters
    (all with defaults) are the architecture's ``arch_args``. A builder that can build volumes takes the arch_arg
    ``spatial_dims: int = 2`` (2: ``[B, C, H, W]``, 3: ``[B, C, D, H, W]``); one without it builds 2D networks.

    Args:
        name: registry key, e.g. ``"unet"``.
        size_rule: maps the resolved arch_args (``spatial_dims`` included) to ``(size_divisor, min_size)``: each
            spatial axis (H, W, or D, H, W) must be a multiple of ``size_divisor`` and at least ``min_size``.
            None means any size works.
        only_2d: for a builder that takes ``spatial_dims`` but builds 2D networks only, the reason (e.g. "timm
            encoders are 2D only"): ``spatial_dims: 3`` is then refused with it when the arch_args are checked.

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
        dims = params[_SPATIAL_DIMS].default if _SPATIAL_DIMS in params else 2
        if not _is_dims(dims, (2,) if only_2d else _SPATIAL_DIMS_VALUES):
            raise ValueError(f"builder for {name!r}: spatial_dims defaults to {dims!r}; expected "
                             f"{'2 (it is registered as 2D only)' if only_2d else '2 or 3'}")
        _ARCHITECTURES[name] = _Entry(builder=builder, size_rule=size_rule or _no_size_constraint, only_2d=only_2d)
        return builder

    return decorator


def list_architectures() -> list[str]:
    """Names of all registered architectures, sorted."""
    return sorted(_ARCHITECTURES)


def volume_architectures() -> list[str]:
    """Names of the registered architectures that build 3D networks (take ``spatial_dims: 3``), sorted."""
    return [name for name in list_architectures() if _ARCHITECTURES[name].only_2d is None
            and _SPATIAL_DIMS in inspect.signature(_ARCHITECTURES[name].builder).parameters]


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


def _volumes_hint() -> str:
    return f"the zoo's architectures that take spatial_dims: 3 are {', '.join(volume_architectures())}"


def check_arch_args(name: str, arch_args: Mapping[str, Any]) -> None:
    """Raise if ``arch_args`` holds a key the architecture's builder does not accept, or a ``spatial_dims`` it
    cannot build (anything but 2 or 3; 3 for an architecture that is 2D only).

    Raises:
        UnknownArchitectureError: ``name`` is not registered.
        ValueError: naming the architecture, the unknown key(s) and the allowed keys.
        ConfigError: (a ValueError) naming the architecture and the ``spatial_dims`` value.
    """
    allowed = describe(name)
    bad = sorted(k for k in arch_args if k not in allowed)
    if bad:
        close = [m for k in bad for m in difflib.get_close_matches(str(k), list(allowed), n=1, cutoff=0.6)]
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        if _SPATIAL_DIMS in bad:
            hint += f" ({name} is 2D only: its builder takes no spatial_dims; {_volumes_hint()})"
        raise ValueError(
            f"architecture {name!r} does not accept arch_args {bad}{hint}; "
            f"allowed: {', '.join(allowed) or '(none)'}"
        )
    if _SPATIAL_DIMS in arch_args:
        dims = arch_args[_SPATIAL_DIMS]
        if not _is_dims(dims, _SPATIAL_DIMS_VALUES):
            raise error(ConfigError, f"architecture {name!r}",
                        expected(dims, "spatial_dims 2 (images, [B, C, H, W]) or 3 (volumes, [B, C, D, H, W])"))
        only_2d = _entry(name).only_2d
        if only_2d and dims != 2:
            raise error(ConfigError, f"architecture {name!r}",
                        f"spatial_dims {dims!r} is not available: {only_2d}; {_volumes_hint()}")


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


def spatial_dims_of(name: str, arch_args: Mapping[str, Any] | None = None) -> int:
    """2 or 3: whether ``name`` built with ``arch_args`` is a 2D (``[B, C, H, W]``) or a 3D (``[B, C, D, H, W]``)
    network; the resolved ``spatial_dims`` arch_arg, 2 for an architecture without one.

    Raises:
        UnknownArchitectureError, ValueError, ConfigError: as :func:`check_arch_args`.
    """
    return int(resolve_arch_args(name, arch_args).get(_SPATIAL_DIMS, 2))


def check_spatial_size(name: str, spatial_size: Sequence[int], arch_args: Mapping[str, Any] | None = None) -> None:
    """Raise if an input of ``spatial_size`` cannot go through ``name`` built with ``arch_args``.

    Down-sampling networks need every spatial axis divisible by their total down-sampling factor (the skip
    connections must line up again on the way up), and most need the deepest feature map to be at least 2 a side
    (instance / batch norm over a single value fails in training).

    Args:
        name: a registered architecture name.
        spatial_size: ``(H, W)`` in pixels for a 2D network, ``(D, H, W)`` in voxels for a 3D one; the number of
            axes must equal the architecture's ``spatial_dims`` (:func:`spatial_dims_of`).
        arch_args: the arch_args the model will be built with (defaults fill the rest).

    Raises:
        ValueError: ``spatial_size`` is not two or three positive ints, has another number of axes than the
            architecture's ``spatial_dims``, or does not suit the architecture; the message says which multiple
            and minimum are needed.
    """
    entry = _entry(name)
    size = tuple(spatial_size) if isinstance(spatial_size, (list, tuple)) else (spatial_size,)
    if len(size) not in _SPATIAL_DIMS_VALUES or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size
    ):
        raise ValueError(f"spatial_size must be two positive ints (H, W) or three (D, H, W), got {spatial_size!r}")
    args = resolve_arch_args(name, arch_args)
    dims = int(args.get(_SPATIAL_DIMS, 2))
    if len(size) != dims:
        if dims == 3:
            fix = "give (D, H, W) for volumes, or set arch_args.spatial_dims: 2 for images"
        elif name in volume_architectures():
            fix = "set arch_args.spatial_dims: 3 for volumes"
        else:
            fix = f"{name} is 2D only; {_volumes_hint()}"
        raise ValueError(f"spatial_size {size} has {len(size)} axes but {name} is built with spatial_dims={dims}; "
                         f"{fix}")
    divisor, min_size = entry.size_rule(args)
    bad = [s for s in size if s % divisor or s < min_size]
    if bad:
        suggestion = tuple(max(min_size, -(-s // divisor) * divisor) for s in size)
        axes = "H and W" if dims == 2 else "D, H and W"
        raise ValueError(
            f"spatial_size {size} does not suit architecture {name!r}: {axes} must be multiples of {divisor} and "
            f"at least {min_size} with these arch_args, e.g. {suggestion}"
        )


def create_model(
    name: str,
    in_channels: int,
    num_classes: int,
    spatial_size: tuple[int, int] | tuple[int, int, int],
    **arch_args: Any,
) -> nn.Module:
    """Build a registered segmentation network, 2D or (with ``spatial_dims=3``) 3D.

    Args:
        name: architecture name, see :func:`list_architectures`.
        in_channels: image channels C of the input ``[B, C, H, W]`` (``[B, C, D, H, W]`` in 3D).
        num_classes: output classes K (>= 2; binary segmentation is K = 2), logits ``[B, K, H, W]``
            (``[B, K, D, H, W]``).
        spatial_size: ``(H, W)``, or ``(D, H, W)`` for a 3D network, that the model will see (the training patch
            size for volumes); checked against the architecture's ``spatial_dims`` and down-sampling.
        **arch_args: overrides of the architecture's knobs (see :func:`describe`), ``spatial_dims`` included;
            lists are accepted where tuples are expected.

    Returns:
        A freshly initialised ``nn.Module`` mapping ``[B, in_channels, *spatial]`` float to ``[B, num_classes,
        *spatial]`` logits. No pretrained weights are loaded.

    Raises:
        UnknownArchitectureError: unknown ``name``.
        ValueError: bad ``in_channels`` / ``num_classes``, an arch_args key the builder does not accept, or a
            ``spatial_size`` the architecture cannot take.
        ConfigError: (a ValueError) a ``spatial_dims`` the architecture cannot build.
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


def rebuild_model(name: str, build: Mapping[str, Any], state: Mapping[str, torch.Tensor], training: bool) -> nn.Module:
    """Unpickling target of zoo models that pickle as "rebuild through the zoo, then load the weights".

    A model whose classes must not be unpickled directly (:class:`~nakt_ray.zoo.timm_unet.TimmUNet`: timm needs
    the torchvision shim that its builder installs first) returns ``(rebuild_model, (name, build, state,
    training))`` from ``__reduce_ex__``. Unpickling in a fresh process imports this module, and with it
    ``nakt_ray.zoo``, which registers every built-in architecture; the builder is then found by name, so a pickle
    does not depend on which module defines the class. The module path and name of this function are written
    into every such pickle: keep both.

    Args:
        name: the registered architecture name.
        build: the builder's arguments, ``in_channels`` and ``num_classes`` included.
        state: the model's ``state_dict``.
        training: the train / eval mode to restore.

    Returns:
        The rebuilt model with its weights loaded, in the mode it was pickled in.
    """
    build = dict(build)
    model = _entry(name).builder(build.pop("in_channels"), build.pop("num_classes"), **build)
    model.load_state_dict(state)
    return model.train(training)


def _rebuild_timm_unet(build: dict[str, Any], state: dict[str, torch.Tensor], training: bool) -> nn.Module:
    """Unpickling target of ``timm_unet`` models pickled by earlier versions (kept so that they still load).

    Pickles written when TimmUNet lived in the flat module ``nakt_ray.zoo`` name ``nakt_ray.zoo._rebuild_timm_unet``
    (re-exported by the package); those written while it lived in this module name this function.
    """
    return rebuild_model("timm_unet", build, state, training)

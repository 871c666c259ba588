"""Make ``import torchvision`` (and so ``import timm``) work against a CPU-only torch.

PyPI ships torchvision only as a CUDA build. Against the CPU torch wheel its compiled ``_C`` extension does not
load, and ``torchvision/_meta_registrations.py`` then fails at import time with
``RuntimeError: operator torchvision::nms does not exist``. timm imports torchvision unconditionally, so every
timm encoder in the architecture zoo depends on this.

:func:`ensure_torchvision` first tries the real import. Only if it fails with exactly that error does it define
the two missing operator schemas (``torchvision::nms``, ``torchvision::qnms``) with ``torch.library`` and import
again. The operators then exist without a kernel: timm models, ``torchvision.transforms.v2`` and ``roi_align``
work, while ``torchvision.ops.nms`` raises "no kernel" (nakt-ray never calls it). Where torchvision imports on its
own (a CUDA machine with matching wheels) nothing is defined and nothing changes.

It runs in every process that can build a zoo model: the zoo calls it before importing timm, and
:func:`nakt_ray.runtime.init_ray` installs :func:`install_import_hook` as Ray's ``worker_process_setup_hook``, so
the first ``import torchvision`` in any Ray worker (e.g. while unpickling a timm model) goes through it. The hook
is lazy: importing torchvision costs ~2 s of CPU, and a worker that only decodes images or writes Parquet never
pays it (on 2 cores, the eager hook cost ~4 s of CPU per worker process, a third of a 600-image annotation run).
"""
from __future__ import annotations

import copy
import importlib
import importlib.abc
import importlib.util
import sys

# Outcome of the first call in this process: "absent", "native" or "shimmed".
_STATE: str | None = None
_MISSING_OPS = ("nms", "qnms")
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY = None  # keeps the torch.library.Library alive; dropping it would unregister the schemas


def ensure_torchvision() -> str:
    """Import torchvision, shimming the missing operator schemas only when the real ones are absent.

    Returns:
        ``"absent"`` when torchvision is not installed, ``"native"`` when it imported on its own, ``"shimmed"``
        when the schemas had to be defined. Idempotent; cheap after the first call.
    """
    global _STATE, _LIBRARY
    if _STATE is not None:
        return _STATE
    if importlib.util.find_spec("torchvision") is None:
        _STATE = "absent"
        return _STATE
    try:
        importlib.import_module("torchvision")
        _STATE = "native"
        return _STATE
    except RuntimeError as err:
        if "torchvision::" not in str(err) or "does not exist" not in str(err):
            raise
    # A failed import leaves half-initialised submodules behind; drop them so the second import starts clean.
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    import torch

    _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")  # noqa: TOR901 (schemas only, no kernels)
    for op in _MISSING_OPS:
        if not hasattr(torch.ops.torchvision, op):
            _LIBRARY.define(_SCHEMAS[op])
    importlib.import_module("torchvision")
    _STATE = "shimmed"
    return _STATE


def state() -> str | None:
    """What :func:`ensure_torchvision` did in this process (None if it has not run)."""
    return _STATE


class _AlreadyLoaded(importlib.abc.Loader):
    """Hands the import system the module :func:`ensure_torchvision` has just imported."""

    def create_module(self, spec):
        return sys.modules[spec.name]

    def exec_module(self, module) -> None:
        pass


class _TorchvisionFinder(importlib.abc.MetaPathFinder):
    """Runs :func:`ensure_torchvision` at the first ``import torchvision`` (then leaves ``sys.meta_path``)."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "torchvision":
            return None
        uninstall_import_hook()
        ensure_torchvision()
        module = sys.modules.get("torchvision")
        if module is None:  # not installed: let the import fail as it would have
            return None
        spec = copy.copy(module.__spec__)
        spec.loader = _AlreadyLoaded()
        return spec


_FINDER = _TorchvisionFinder()


def install_import_hook() -> None:
    """Make the first ``import torchvision`` in this process go through :func:`ensure_torchvision`.

    Imports nothing now; a no-op once torchvision is imported or the hook is installed.
    """
    if "torchvision" not in sys.modules and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def uninstall_import_hook() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)

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
:func:`nakt_ray.runtime.init_ray` installs it as Ray's ``worker_process_setup_hook`` so every Ray worker runs it
before it unpickles anything.
"""
from __future__ import annotations

import importlib
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

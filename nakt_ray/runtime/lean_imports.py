"""Import MONAI without its optional integrations, in processes that only run networks (the annotation actors).

``import monai`` imports every MONAI submodule, and through their optional imports mlflow, scipy, matplotlib,
scikit-image and pandas: 3.3 of the 4.5 CPU-seconds that ``import torch, monai`` costs here (``python -X
importtime``; 2026-12-07, 2 cores). An annotation actor that hosts zoo, TorchScript or ONNX teachers uses MONAI's
networks and ``sliding_window_inference`` only, which need none of them. :func:`import_monai_lean` imports MONAI
with those five hidden (a ``None`` entry in ``sys.modules`` makes ``import`` raise ``ImportError``, which MONAI's
``optional_import`` records as "not installed"), then un-hides them: 1.9 CPU-s for ``import torch, monai`` and three
networks built, against 4.5.

The cost, and why only actors do it: in that process MONAI's features that use a hidden package stay unavailable
for good (its ``MLFlowHandler``, ``monai.visualize``'s plots, transforms that call scipy), although the packages
themselves import normally afterwards. So it is for processes that run networks and nothing else. A teacher kind
that runs MONAI code beyond networks (a MONAI bundle's transforms, nnU-Net, an MLflow model that unpickles into
any class) gets the full import: :func:`lean_import_suits` says which. ``NAKT_LEAN_MONAI=0`` in the environment
turns it off (every process imports MONAI in full).
"""
from __future__ import annotations

import os
import sys

# MONAI's optional integrations that network inference never touches (measured above).
HIDDEN_FROM_MONAI = ("mlflow", "matplotlib", "skimage", "pandas", "scipy")

# Teacher kinds whose loading and inference use MONAI's networks and sliding window only.
LEAN_KINDS = frozenset({"nakt", "torchscript", "onnx", "remote"})


def lean_import_suits(kinds: list[str]) -> bool:
    """True when every teacher kind in ``kinds`` (``teachers.registry.source_kind``) can run on a lean MONAI, and
    ``NAKT_LEAN_MONAI`` is not ``0``."""
    return os.environ.get("NAKT_LEAN_MONAI", "1") != "0" and all(k in LEAN_KINDS for k in kinds)


def in_ray_actor() -> bool:
    """True in a Ray actor's process (dedicated to that actor: nothing else runs there later)."""
    if "ray" not in sys.modules:
        return False
    import ray

    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


def import_monai_lean() -> bool:
    """Import MONAI with :data:`HIDDEN_FROM_MONAI` hidden; True if it did, False if MONAI was imported already or
    the lean import failed (then MONAI is imported in full, as if this had not been called)."""
    if "monai" in sys.modules:
        return False
    hidden = [m for m in HIDDEN_FROM_MONAI if m not in sys.modules]
    for m in hidden:
        sys.modules[m] = None  # type: ignore[assignment]
    try:
        import monai  # noqa: F401
        ok = True
    except ImportError:  # a MONAI release that needs one of them: forget the half-imported MONAI and import it whole
        for name in [n for n in sys.modules if n == "monai" or n.startswith("monai.")]:
            del sys.modules[name]
        ok = False
    finally:
        for m in hidden:
            if m in sys.modules and sys.modules[m] is None:
                del sys.modules[m]
    if not ok:
        import monai  # noqa: F401
    return ok

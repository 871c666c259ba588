"""The teacher source registry: which kind reads a source, and :func:`load_teacher`, the one way to load a teacher.

Network-agnostic knowledge transfer only needs each teacher's *output*, so a teacher can be any model that maps an
image ``[B, C_in, H, W]`` to per-pixel class scores ``[B, K, H, W]``, from wherever it comes. Each form is a *kind*
(``nakt_ray/teachers/kinds/``) registered here with::

    register_teacher_source(kind, detect, load, expects, priority=0, resolve=None, takes_trust_pickle=False)

``detect(source) -> bool`` says cheaply whether a source is the kind's own; ``load(name, source, device)``
returns a :class:`~nakt_ray.teachers.inference.RawTeacher`; ``expects`` is one line saying what such a source
looks like. :func:`load_teacher` asks the kinds in order, higher ``priority`` first and equal priorities in the
order they were registered, and loads with the first that accepts; when none does, the error lists every kind and
what it expects. A kind that can only load some sources by unpickling them (``mlflow``: a model someone logged
with ``mlflow.pytorch``) registers with ``takes_trust_pickle=True`` and gets the teacher's ``trust_pickle``
(``load(name, source, device, trust_pickle=...)``); while it is false the kind must refuse such a source. The
built-in kinds, in that order: ``mlflow`` (``models:/``, ``runs:/``), ``onnx``, ``torchscript``, ``remote`` (a
teacher YAML with ``url:``: an inference endpoint), ``nnunet`` (an nnU-Net v2 results folder, or a teacher YAML with
``nnunet:``), ``teacher_yaml`` (a YAML whose ``file:`` names the model; recorded as the kind of that file),
``monai_bundle`` (a MONAI bundle folder or ``.zip``) and, asked last (priority -1) because it takes any other existing
file, ``nakt``.

Errors: anything wrong while loading (no kind reads the source, a missing or unreadable file, a bad description,
a probe output that cannot be used) is a :class:`TeacherLoadError`; a prediction that cannot be used later is a
:class:`~nakt_ray.errors.TeacherOutputError` (see ``nakt_ray/teachers/inference.py``).
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from nakt_ray.errors import TeacherLoadError, error
from nakt_ray.teachers.description import InferenceOptions, teacher_where
from nakt_ray.teachers.inference import LoadedTeacher, RawTeacher
from nakt_ray.teachers.kinds import (
    described_yaml,
    mlflow_model,
    monai_bundle,
    nakt_file,
    nnunet,
    onnx,
    remote,
    torchscript,
)

__all__ = [
    "TeacherSource",
    "load_teacher",
    "register_teacher_source",
    "source_kind",
    "teacher_source_kinds",
    "unregister_teacher_source",
]

Detect = Callable[[str], bool]
Load = Callable[[str, str, torch.device], RawTeacher]
Resolve = Callable[[str, str], str]


@dataclass(frozen=True)
class TeacherSource:
    """A registered kind: ``detect(source)``, ``load(name, source, device)``, the ``expects`` line, its
    ``priority`` (higher is asked first), an optional ``resolve(name, source)`` giving the kind a source is
    recorded as when that differs from ``kind`` (a teacher YAML runs as the kind of the file it names), and
    ``takes_trust_pickle``: ``load`` takes the keyword ``trust_pickle`` (the teacher's consent to unpickling)."""

    kind: str
    detect: Detect
    load: Load
    expects: str
    priority: int = 0
    resolve: Resolve | None = None
    takes_trust_pickle: bool = False


_SOURCES: dict[str, TeacherSource] = {}  # kind -> source, in registration order


def register_teacher_source(kind: str, detect: Detect, load: Load, expects: str, *, priority: int = 0,
                            resolve: Resolve | None = None, takes_trust_pickle: bool = False) -> None:
    """Register a teacher source kind (see the module docstring).

    Raises:
        ValueError: ``kind`` is already registered, or ``kind`` / ``expects`` is empty.
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"teacher source kind: got {kind!r}; expected a non-empty name such as 'onnx'")
    if kind in _SOURCES:
        raise ValueError(f"teacher source kind {kind!r} is already registered (loaded by {_SOURCES[kind].load!r}); "
                         f"registered kinds: {', '.join(teacher_source_kinds())}")
    if not isinstance(expects, str) or not expects:
        raise ValueError(f"teacher source kind {kind!r}: expects must say what its sources look like, got "
                         f"{expects!r}")
    _SOURCES[kind] = TeacherSource(kind, detect, load, expects, priority, resolve, takes_trust_pickle)


def unregister_teacher_source(kind: str) -> TeacherSource:
    """Remove ``kind`` (a test's or a plug-in's) and return what was registered, e.g. to register it back.

    Raises:
        ValueError: ``kind`` is not registered; the message lists the registered kinds.
    """
    if kind not in _SOURCES:
        raise ValueError(f"teacher source kind {kind!r} is not registered; registered kinds: "
                         f"{', '.join(teacher_source_kinds())}")
    return _SOURCES.pop(kind)


def _in_order() -> list[TeacherSource]:
    # sorted() is stable: equal priorities keep the registration order of the dict.
    return sorted(_SOURCES.values(), key=lambda s: -s.priority)


def teacher_source_kinds() -> list[str]:
    """The registered kinds in the order :func:`load_teacher` asks them."""
    return [s.kind for s in _in_order()]


_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


def _source_for(name: str, source: str) -> TeacherSource:
    """The first kind whose ``detect`` accepts ``source``; else TeacherLoadError listing every kind."""
    ordered = _in_order()
    for entry in ordered:
        if entry.detect(source):
            return entry
    path = Path(source)
    if path.is_dir():
        reason = f"{source!r} is a folder, which no teacher source kind reads"
    elif path.exists():
        reason = f"{source!r} is a file no teacher source kind reads"
    elif _URI.match(source):
        reason = f"no teacher source kind reads URIs like {source!r}"
    else:
        reason = f"file {source!r} does not exist"
    kinds = "; ".join(f"{s.kind}: {s.expects}" for s in ordered)
    raise error(TeacherLoadError, teacher_where(name, source),
                f"{reason}; a teacher source is one of these kinds: {kinds}")


def _kind_of(entry: TeacherSource, name: str, source: str) -> str:
    return entry.resolve(name, source) if entry.resolve is not None else entry.kind


def source_kind(source: str | os.PathLike[str], name: str = "?") -> str:
    """The kind ``source`` is loaded and recorded as (``nakt``, ``torchscript``, ``onnx``, ``mlflow``...), without
    loading it; ``name`` only names the teacher in an error.

    Raises:
        TeacherLoadError: no kind reads the source (a missing file, among others), or a teacher YAML that names
            no usable model file.
    """
    src = str(source)
    return _kind_of(_source_for(name, src), name, src)


def load_teacher(name: str, source: str | os.PathLike[str], device: str | torch.device = "cpu",
                 options: InferenceOptions | None = None, *, trust_pickle: bool = False,
                 probe: bool = True) -> LoadedTeacher:
    """Load teacher ``name`` from ``source`` (a path or URI of any registered kind) onto ``device``.

    ``trust_pickle`` (a teacher's ``trust_pickle: true``) lets a kind that takes it load a source by unpickling
    it, which runs whatever code the pickle names; by default such a source is refused (README, "Untrusted
    models").

    The teacher is probed once (a zero image and a random batch at its ``input_size``) before it is returned,
    unless ``probe`` is false: for a caller that probed the same source on the same kind of device already (an
    annotation actor on CPU, after the driver's ``check_teachers``; ~0.2-0.4 CPU-s a teacher on 2 cores).

    Raises:
        TeacherLoadError: no kind reads the source, a missing or unreadable file or MLflow model, a pickled
            MLflow model without ``trust_pickle``, a missing or invalid description, or a probe output with the
            wrong class count or spatial size, NaN / inf, or logits declared as probabilities. The message names
            the teacher and the source.
    """
    src = str(source)
    entry = _source_for(name, src)
    kind = _kind_of(entry, name, src)
    device = torch.device(device)
    trust = {"trust_pickle": bool(trust_pickle)} if entry.takes_trust_pickle else {}
    raw = entry.load(name, src, device, **trust)
    teacher = LoadedTeacher(name, src, kind, raw, device, options or InferenceOptions())
    if probe:
        teacher.probe()
    return teacher


def _register_built_in_kinds() -> None:
    # The order of these lines is the order the kinds are asked (nakt last, by priority: it takes any file).
    register_teacher_source(mlflow_model.KIND, mlflow_model.detect, mlflow_model.load, mlflow_model.EXPECTS,
                            takes_trust_pickle=True)
    register_teacher_source(onnx.KIND, onnx.detect, onnx.load, onnx.EXPECTS)
    register_teacher_source(torchscript.KIND, torchscript.detect, torchscript.load, torchscript.EXPECTS)
    # remote before teacher_yaml: both read teacher YAMLs; a remote one has url: where the other has file:
    register_teacher_source(remote.KIND, remote.detect, remote.load, remote.EXPECTS)
    # nnunet before teacher_yaml too (its YAML has nnunet: where the other has file:); trust: pickled checkpoints
    register_teacher_source(nnunet.KIND, nnunet.detect, nnunet.load, nnunet.EXPECTS, takes_trust_pickle=True)
    register_teacher_source(described_yaml.KIND, described_yaml.detect, described_yaml.load, described_yaml.EXPECTS,
                            resolve=described_yaml.model_kind)
    register_teacher_source(monai_bundle.KIND, monai_bundle.detect, monai_bundle.load, monai_bundle.EXPECTS,
                            takes_trust_pickle=True)  # trust: a bundle config may build objects outside MONAI
    register_teacher_source(nakt_file.KIND, nakt_file.detect, nakt_file.load, nakt_file.EXPECTS, priority=-1)


_register_built_in_kinds()

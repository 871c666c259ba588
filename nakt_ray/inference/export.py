"""Deployable students: a model exported to TorchScript and ONNX, each file checked against the torch model.

Every exported file gets the description YAML that :func:`nakt_ray.teachers.registry.load_teacher` reads, so an
exported student is itself a teacher source (and ``nakt predict`` input)::

    <out>/model.ts      + model.ts.yaml      TorchScript (torch.jit.trace at the model's input size)
    <out>/model.onnx    + model.onnx.yaml    ONNX (torch.export-based exporter), input ``image``, output ``logits``
    <out>/export.json   source, lineage, and per format: files, measured max |difference|, tolerance

Both files take a float32 batch ``[B, in_channels, H, W]`` at the model's ``input_size`` (the batch dimension is
dynamic) and return what the torch model returns (``logits`` ``[B, K, H, W]`` for nakt models). Other sizes are
for the caller to resample to, as :class:`~nakt_ray.teachers.inference.LoadedTeacher` does.

A 3D model (``ModelSpec.volume``) is exported alike at its patch size: ``[B, in_channels, D, H, W]`` -> ``[B, K, D,
H, W]``, batch dynamic; its description gives ``input_size`` ``(D, H, W)`` and its ``volume`` preprocessing, so the
file predicts whole volumes by sliding window as a teacher or in ``nakt predict``.

The parity check runs the saved file (``torch.jit.load`` / onnxruntime) and the torch model on the same random
batch of :data:`PARITY_BATCH` images (another batch size than the one traced, so a batch dimension frozen by the
export would fail) and refuses a file whose largest absolute difference exceeds the format's tolerance.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import yaml

from nakt_ray.errors import ExportError  # re-exported: callers import ExportError from here too
from nakt_ray.models.model_file import ModelSpec

FORMATS = ("torchscript", "onnx")
SUFFIXES = {"torchscript": ".ts", "onnx": ".onnx"}
# Largest |exported - torch| accepted on the parity batch, in the model's output units (logits).
TOLERANCES = {"torchscript": 1e-4, "onnx": 1e-3}
TRACE_BATCH = 2
PARITY_BATCH = 3


def description(spec: ModelSpec, outputs: str = "logits", file: str | None = None) -> dict[str, Any]:
    """The description YAML data (``nakt_ray.teachers.description.TeacherDescription``) of a model exported from
    ``spec``: a 2D model's ``preprocess``, or a 3D model's ``volume`` preprocessing (its patch size is then
    ``input_size``)."""
    pre = spec.preprocess
    data: dict[str, Any] = {
        "labels": list(spec.labels), "in_channels": spec.in_channels, "input_size": list(spec.input_size),
        "outputs": outputs,
    }
    if spec.volume is None:
        data["preprocess"] = {"size": list(pre.size), "mode": pre.mode, "normalize": pre.normalize,
                              "in_channels": pre.in_channels}
    else:
        from nakt_ray.config.convert import to_plain

        data["volume"] = to_plain(spec.volume)
    return {"file": file, **data} if file else data


def _example(spec: ModelSpec, batch: int, seed: int) -> torch.Tensor:
    # Unit-variance noise: what a z-scored image (or volume) looks like to the first layer.
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, spec.in_channels, *spec.input_size, generator=gen)


def _write_description(model_path: Path, spec: ModelSpec, outputs: str) -> Path:
    yaml_path = model_path.with_name(model_path.name + ".yaml")
    yaml_path.write_text(yaml.safe_dump(description(spec, outputs, file=model_path.name), sort_keys=False))
    return yaml_path


def export_torchscript(model: torch.nn.Module, spec: ModelSpec, out_dir: str | Path,
                       outputs: str = "logits") -> Path:
    """Trace ``model`` at ``spec``'s input size to ``<out_dir>/model.ts`` and write ``model.ts.yaml`` beside it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.ts"
    model = model.cpu().eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # Tracing is deprecated in favour of torch.export but is what TorchScript is; shape checks inside
            # models become constants, which holds at the fixed input size the description declares.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(model, _example(spec, TRACE_BATCH, seed=1))
            traced.save(str(path))
    except Exception as err:  # noqa: BLE001 - tracing fails in many ways (control flow, unsupported ops)
        raise ExportError(f"model {spec.name!r} ({spec.arch}) cannot be traced to TorchScript: "
                          f"{type(err).__name__}: {err}") from None
    _write_description(path, spec, outputs)
    return path


def export_onnx(model: torch.nn.Module, spec: ModelSpec, out_dir: str | Path, outputs: str = "logits") -> Path:
    """Export ``model`` to ``<out_dir>/model.onnx`` (dynamic batch) and write ``model.onnx.yaml`` beside it.

    Uses the torch.export-based exporter (``dynamo=True``, the default since torch 2.9; the TorchScript-based one
    is deprecated). Input ``image`` ``[batch, in_channels, H, W]`` (``[batch, in_channels, D, H, W]`` for a 3D
    model), output ``logits`` (or ``probabilities``).
    """
    from torch.export import Dim

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.onnx"
    model = model.cpu().eval()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            program = torch.onnx.export(model, (_example(spec, TRACE_BATCH, seed=1),), dynamo=True, verbose=False,
                                        input_names=["image"], output_names=[outputs],
                                        dynamic_shapes=({0: Dim("batch")},))
        program.save(str(path))
    except Exception as err:  # noqa: BLE001 - torch.export / ONNX translation raise many types
        raise ExportError(f"model {spec.name!r} ({spec.arch}) cannot be exported to ONNX: "
                          f"{type(err).__name__}: {err}") from None
    _write_description(path, spec, outputs)
    return path


def _run_exported(path: Path, x: torch.Tensor) -> torch.Tensor:
    if path.suffix == SUFFIXES["onnx"]:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load is deprecated; still the loader
        scripted = torch.jit.load(str(path), map_location="cpu").eval()
    with torch.no_grad():
        return scripted(x)


def check_parity(path: str | Path, model: torch.nn.Module, spec: ModelSpec, tolerance: float | None = None,
                 sample: torch.Tensor | None = None) -> float:
    """Run the exported file at ``path`` and ``model`` on ``sample`` and return the largest absolute difference.

    ``sample`` defaults to :data:`PARITY_BATCH` random images (volumes) ``[B, in_channels, *input_size]``; ``tolerance``
    to the format's entry in :data:`TOLERANCES` (the format is taken from the suffix, ``.ts`` or ``.onnx``).

    Raises:
        ExportError: the file cannot be run, returns another shape, or differs by more than ``tolerance``.
    """
    path = Path(path)
    fmt = next((f for f, s in SUFFIXES.items() if path.suffix == s), None)
    if fmt is None:
        raise ExportError(f"exported file {str(path)!r}: unknown format; expected a .ts or .onnx file")
    tol = TOLERANCES[fmt] if tolerance is None else tolerance
    x = (_example(spec, PARITY_BATCH, seed=0) if sample is None else sample).float().cpu()
    with torch.no_grad():
        expected = model.cpu().eval()(x).float()
    try:
        got = _run_exported(path, x).float()
    except Exception as err:  # noqa: BLE001 - a file that does not run at all
        raise ExportError(f"exported file {str(path)!r} fails on a batch of {tuple(x.shape)}: "
                          f"{type(err).__name__}: {err}") from None
    if got.shape != expected.shape:
        raise ExportError(f"exported file {str(path)!r} returns shape {tuple(got.shape)} for a batch of "
                          f"{tuple(x.shape)}; the torch model returns {tuple(expected.shape)}")
    diff = float((got - expected).abs().max())
    if not diff <= tol:  # also refuses NaN
        raise ExportError(f"exported file {str(path)!r} differs from the torch model {spec.name!r}: max abs "
                          f"difference {diff:.3g} > tolerance {tol:g} on a batch of {tuple(x.shape)}")
    return diff


def _parse_formats(formats: Iterable[str] | str) -> list[str]:
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    items = [f.strip().lower() for f in items if f.strip()]
    bad = [f for f in items if f not in FORMATS]
    if bad or not items:
        raise ExportError(f"export formats: got {bad or items!r}; expected one or more of {', '.join(FORMATS)}")
    return list(dict.fromkeys(items))


def load_for_export(source: str | Path) -> tuple[torch.nn.Module, ModelSpec, str]:
    """``(model, spec, outputs)`` from a nakt model file or an MLflow URI (``models:/...``, ``runs:/...``).

    A nakt model file carries its spec. An MLflow model is described by its ``nakt.*`` tags, else by its
    signature and a probe (see ``nakt_ray/teachers/kinds/mlflow_model.py``); preprocessing it does not declare
    defaults to a resize to its input size with z-score normalisation, and ``spec.lineage["inferred"]`` lists
    what was not declared.
    """
    from nakt_ray.config import PreprocessConfig, VolumePreprocessConfig
    from nakt_ray.models.model_file import load_model
    from nakt_ray.teachers.registry import load_teacher, source_kind

    src = str(source)
    kind = source_kind(src, "export")
    if kind == "nakt":
        model, spec = load_model(src)
        return model, spec, "logits"
    if kind != "mlflow":
        raise ExportError(f"model {src!r} is already a {kind} file; export needs a torch model: a nakt model file "
                          "or an MLflow URI (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model)")
    teacher = load_teacher("export", src)
    module = teacher.module
    assert module is not None  # MLflow teachers are torch modules
    inferred = list(teacher.details.get("inferred", []))
    preprocess, volume = teacher.preprocess, teacher.volume
    if teacher.spatial_dims == 3:
        preprocess = PreprocessConfig(in_channels=teacher.in_channels)  # a 3D model: only its channels count
        if volume is None:
            volume = VolumePreprocessConfig(patch_size=tuple(teacher.input_size))  # type: ignore[arg-type]
            inferred.append("volume")
    elif preprocess is None:
        preprocess = PreprocessConfig(size=teacher.input_size, in_channels=teacher.in_channels)
        inferred.append("preprocess")
    name = teacher.details.get("registered_model") or "model"
    spec = ModelSpec(name=name, arch="mlflow", arch_args={}, labels=teacher.labels, preprocess=preprocess,
                     role="student", lineage={"source": src, **{k: v for k, v in teacher.details.items()
                                                                    if k != "inferred"}, "inferred": inferred},
                     volume=volume)
    return module, spec, teacher.outputs


def export(source: str | Path, out_dir: str | Path, formats: Iterable[str] | str = FORMATS) -> dict[str, Any]:
    """Export the model at ``source`` (nakt model file or MLflow URI) to ``formats`` under ``out_dir``.

    Each file is parity-checked against the torch model and loaded back through ``load_teacher``. Returns (and
    writes as ``<out_dir>/export.json``) ``{"source", "model", "labels", "input_size", "outputs", "lineage",
    "files": {format: {"model", "description", "max_abs_diff", "tolerance"}}}``.

    Raises:
        ExportError: an unknown format, a source that is not a torch model, an export or parity failure.
    """
    from nakt_ray.teachers.registry import load_teacher

    fmts = _parse_formats(formats)
    model, spec, outputs = load_for_export(source)
    out = Path(out_dir)
    exporters = {"torchscript": export_torchscript, "onnx": export_onnx}
    files: dict[str, Any] = {}
    for fmt in fmts:
        path = exporters[fmt](model, spec, out, outputs)
        diff = check_parity(path, model, spec)
        load_teacher(spec.name, path)  # the description must make the file a valid teacher source
        files[fmt] = {"model": str(path), "description": str(path.with_name(path.name + ".yaml")),
                      "max_abs_diff": diff, "tolerance": TOLERANCES[fmt]}
    report = {"source": str(source), "model": spec.name, "arch": spec.arch, "labels": list(spec.labels),
              "input_size": list(spec.input_size), "outputs": outputs,
              "lineage": json.loads(json.dumps(spec.lineage, default=str)), "files": files}
    (out / "export.json").write_text(json.dumps(report, indent=2))
    return report


"""The ``monai_bundle`` kind: a MONAI bundle (the MONAI Model Zoo's format), a folder or a ``.zip`` of one::

    configs/metadata.json      network_data_format: inputs.image.num_channels, outputs.pred.channel_def (labels)
    configs/inference.json     (or .yaml / .yml) with network_def, preprocessing and inferer
    models/model.pt            the network's state dict (torch.load(weights_only=True)), or models/model.ts

Only ``network_def``, ``preprocessing`` and ``inferer`` (and the entries they reference) are built, by
``monai.bundle.ConfigParser``; the rest of the config (evaluator, handlers, imports) is never parsed. A bundle config
instantiates whatever its ``_target_`` names and ``eval``s its ``$`` expressions, so without the teacher's
``trust_pickle: true`` a bundle whose parts would run code outside MONAI is refused (``monai_bundle_config.py``).

How it runs (decision 61, docs/decisions.md): the bundle's file reading and geometry transforms are left to the run
(it puts every case on its own grid); its other transforms (intensity) run per image inside the teacher, then its
inferer around the network (:class:`BundleModel`), with the spatial axes reversed into MONAI's ``(x, y[, z])`` and
back. ``input_size`` is the inferer's ``roi_size`` (else the metadata's ``spatial_shape``) in nakt's order; the
output is taken as logits. Fingerprint: SHA-256 over the bundle's configs and its weights file.
"""
from __future__ import annotations

import hashlib
import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
import yaml

from nakt_ray.config import ConfigError
from nakt_ray.errors import TeacherLoadError, error
from nakt_ray.teachers.description import build_description, teacher_where
from nakt_ray.teachers.inference import RawTeacher
from nakt_ray.teachers.kinds.monai_bundle_config import build_parts, left_to_run, short_name, walk

__all__ = ["EXPECTS", "KIND", "BundleModel", "detect", "load"]

KIND = "monai_bundle"
EXPECTS = ("a MONAI bundle folder or .zip (configs/metadata.json with channel_def, configs/inference.json with "
           "network_def, models/model.pt or models/model.ts)")

METADATA = "configs/metadata.json"
INFERENCE_CONFIGS = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml")
WEIGHTS = ("models/model.pt", "models/model.ts")
PARTS = ("network_def", "preprocessing", "inferer")  # the config entries a teacher is built from


# ----------------------------------------------------------------------------------------------------------------
# The bundle's files: a folder or a zip, by their path inside the bundle


def _zip_roots(path: Path) -> list[str]:
    """The prefixes ("" or "name/") under which a zip holds ``configs/metadata.json``."""
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return [n[:-len(METADATA)] for n in names
            if n == METADATA or (n.endswith("/" + METADATA) and n.count("/") == METADATA.count("/") + 1)]


def detect(source: str) -> bool:
    """A folder with ``configs/metadata.json``, or a ``.zip`` holding one (at its top or in one folder)."""
    path = Path(source)
    if path.is_dir():
        return (path / METADATA).is_file()
    if not (path.is_file() and path.suffix.lower() == ".zip"):
        return False
    try:
        return bool(_zip_roots(path))
    except (OSError, zipfile.BadZipFile):  # not a readable zip: not ours
        return False


class _Files:
    """A bundle's files by their path inside it (``configs/metadata.json``), from a folder or a zip."""

    def __init__(self, name: str, source: str):
        self.where = teacher_where(name, source)
        path = Path(source).resolve()
        self.location = str(path)
        self._zip: Path | None = None
        if path.is_dir():
            self._root = path
            self.names = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
            return
        roots = _zip_roots(path)
        if len(roots) != 1:
            raise error(TeacherLoadError, self.where, f"{str(path)!r} holds {len(roots)} bundles ({roots}); a teacher "
                                                      "is one bundle")
        self._prefix = roots[0]
        self._zip = path
        with zipfile.ZipFile(path) as z:  # opened per read: nothing stays open after loading
            self.names = {n[len(self._prefix):] for n in z.namelist()
                          if n.startswith(self._prefix) and not n.endswith("/")}

    def path(self, rel: str) -> str:
        """Where ``rel`` is, for messages: a path, or ``<zip>!/<member>``."""
        return str(self._root / rel) if self._zip is None else f"{self.location}!/{self._prefix}{rel}"

    def read(self, rel: str) -> bytes:
        if self._zip is None:
            return (self._root / rel).read_bytes()
        with zipfile.ZipFile(self._zip) as z:
            return z.read(self._prefix + rel)

    def first(self, candidates: tuple[str, ...], what: str) -> str:
        found = [c for c in candidates if c in self.names]
        if not found:
            raise error(TeacherLoadError, self.where, f"the bundle {self.location!r} has no {what} (looked for "
                                                      f"{', '.join(candidates)})")
        return found[0]

    def mapping(self, rel: str) -> dict[str, Any]:
        """A JSON or YAML file of the bundle that must hold a mapping."""
        try:
            text = self.read(rel).decode()
            data = json.loads(text) if rel.endswith(".json") else yaml.safe_load(text)
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as err:
            raise error(TeacherLoadError, self.where, f"{self.path(rel)!r} cannot be read: {err}") from None
        if not isinstance(data, dict):
            raise error(TeacherLoadError, self.where, f"{self.path(rel)!r} must hold a mapping, got "
                                                      f"{type(data).__name__}")
        return data

    def fingerprint(self, weights: str, weight_bytes: bytes) -> str:
        """SHA-256 (16 hex digits) over every configs/ file and the weights file, with their paths in the bundle, so
        the folder and its zip have one fingerprint."""
        h = hashlib.sha256()
        for rel in sorted(n for n in self.names if n.startswith("configs/")) + [weights]:
            data = weight_bytes if rel == weights else self.read(rel)
            h.update(rel.encode() + b"\0" + len(data).to_bytes(8, "little"))
            h.update(data)
        return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# Metadata: labels, input channels, input shape


def _entry(meta: dict[str, Any], side: str, key: str) -> dict[str, Any]:
    """``network_data_format.<side>.<key>`` (``key`` "image" / "pred", or the only entry there); {} when absent."""
    fmt = meta.get("network_data_format")
    entries = fmt.get(side) if isinstance(fmt, dict) else None
    if not isinstance(entries, dict):
        return {}
    if key not in entries and len(entries) == 1:
        key = next(iter(entries))
    entry = entries.get(key)
    return entry if isinstance(entry, dict) else {}


def _field(files: _Files, meta: dict[str, Any], side: str, key: str, field: str) -> Any:
    """``network_data_format.<side>.<key>.<field>``; a TeacherLoadError naming the file and the field if absent."""
    value = _entry(meta, side, key).get(field)
    if value is None:
        raise error(TeacherLoadError, files.where, f"{files.path(METADATA)!r} has no network_data_format.{side}.{key}."
                                                   f"{field}{_FIELD_HELP.get(field, '')}")
    return value


_FIELD_HELP = {"channel_def": ": it names the network's output channels in order, background first, e.g. "
                              '{"0": "background", "1": "spleen"}',
               "num_channels": ": the number of input channels, e.g. 1"}


def _labels(files: _Files, meta: dict[str, Any]) -> tuple[str, ...]:
    """The output channels' names from ``outputs.pred.channel_def``, in channel order."""
    cdef = _field(files, meta, "outputs", "pred", "channel_def")
    where = f"{files.path(METADATA)!r}: network_data_format.outputs.pred.channel_def"
    try:
        order = sorted((int(k), v) for k, v in cdef.items())
    except (AttributeError, TypeError, ValueError):
        raise error(TeacherLoadError, files.where, f"{where} must map channel numbers to names, got {cdef!r}") from None
    labels = tuple(v for _, v in order)
    if ([k for k, _ in order] != list(range(len(order))) or not all(isinstance(v, str) and v for v in labels)
            or len(set(labels)) != len(labels) or len(labels) < 2):
        raise error(TeacherLoadError, files.where, f"{where} must name channels 0..K-1 (K >= 2) with distinct names, "
                                                   f"background first; got {cdef!r}")
    num = _entry(meta, "outputs", "pred").get("num_channels")
    if num is not None and num != len(labels):
        raise error(TeacherLoadError, files.where, f"{where} names {len(labels)} channels {list(labels)} but "
                                                   f"outputs.pred.num_channels is {num!r}")
    return labels


# ----------------------------------------------------------------------------------------------------------------
# The teacher: preprocessing, inferer and network in nakt's axis order


def _reversed_axes(t: torch.Tensor) -> torch.Tensor:
    """``[B, C, a, b(, c)]`` -> ``[B, C, (c,) b, a]``: nakt's spatial order <-> MONAI's."""
    return t.permute(0, 1, *range(t.ndim - 1, 1, -1))


def _plain(t: Any) -> Any:
    """A MONAI MetaTensor as a plain tensor (anything else as it is)."""
    return t.as_tensor() if hasattr(t, "as_tensor") else t


class BundleModel(torch.nn.Module):
    """A bundle's network behind its own intensity preprocessing and inferer: images ``[B, C, H, W]`` (or volumes
    ``[B, C, D, H, W]``) in nakt's axis order, any size, -> the network's raw scores ``[B, K, ...]``.

    ``transforms`` run per image (MONAI transforms take one channel-first image; a dict transform gets
    ``{key: image}``); ``inferer(inputs, network)`` is the bundle's (MONAI's SimpleInferer when it has none);
    ``reverse_axes`` reverses the spatial axes into MONAI's ``(x, y[, z])`` order and back.
    """

    def __init__(self, network: Any, transforms: list[Any], key: str, inferer: Any, reverse_axes: bool):
        super().__init__()
        self.network = network
        self.transforms = transforms
        self.key = key
        self.inferer = inferer
        self.reverse_axes = reverse_axes

    def _preprocess(self, image: torch.Tensor) -> torch.Tensor:
        from monai.transforms import MapTransform

        data: Any = image
        for t in self.transforms:
            data = t({self.key: data})[self.key] if isinstance(t, MapTransform) else t(data)
        return torch.as_tensor(_plain(data), device=image.device).to(torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reverse_axes:
            x = _reversed_axes(x)
        if self.transforms:
            x = torch.stack([self._preprocess(image) for image in x])
        out = _plain(self.inferer(inputs=x, network=self.network))
        return _reversed_axes(out) if self.reverse_axes and isinstance(out, torch.Tensor) else out


def _split_preprocessing(pre: Any) -> tuple[list[Any], list[str], list[str], str]:
    """The built preprocessing as (transforms run in the teacher, their names, names left to the run, the image key)."""
    from monai.transforms import Compose, MapTransform

    def flat(obj: Any) -> list[Any]:
        if obj is None:
            return []
        if isinstance(obj, Compose):
            return list(obj.flatten().transforms)
        if isinstance(obj, (list, tuple)):
            return [t for o in obj for t in flat(o)]
        return [obj]

    transforms = flat(pre)
    keys = [k for t in transforms if isinstance(t, MapTransform) for k in t.keys]
    key = keys[0] if keys else "image"
    kept = [t for t in transforms if not left_to_run(type(t))
            and (not isinstance(t, MapTransform) or key in t.keys)]
    left = [type(t).__name__ for t in transforms if not any(t is k for k in kept)]
    return kept, [type(t).__name__ for t in kept], left, key


def _input_size(files: _Files, meta: dict[str, Any], inferer: Any, cfg_rel: str) -> tuple[int, ...]:
    """The window the network sees, in MONAI's axis order: the inferer's roi_size, else the metadata's spatial_shape."""
    shape = _entry(meta, "inputs", "image").get("spatial_shape")
    numeric = (list(shape) if isinstance(shape, list) and shape and all(isinstance(s, int) and s > 0 for s in shape)
               else None)
    roi = getattr(inferer, "roi_size", None)
    if isinstance(roi, int) and numeric is not None:
        roi = [roi] * len(numeric)
    if isinstance(roi, (list, tuple)) and roi and all(isinstance(s, int) and s > 0 for s in roi):
        return tuple(int(s) for s in roi)
    if numeric is not None and len(numeric) in (2, 3):
        return tuple(numeric)
    raise error(TeacherLoadError, files.where,
                f"nothing gives the network's input size: {files.path(cfg_rel)!r} 'inferer' has no roi_size "
                f"({type(inferer).__name__}) and {files.path(METADATA)!r} network_data_format.inputs.image."
                f"spatial_shape is {shape!r}; expected 2 or 3 positive integers")


def _json_ready(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(getattr(value, "value", value))


def _description_data(labels: tuple[str, ...], in_channels: int, size: tuple[int, ...], geometry: dict[str, Any],
                      reverse: bool) -> dict[str, Any]:
    """The description: 2D models get the run's images un-normalised (the bundle scales them itself); 3D ones the
    bundle's spacing and orientation (for ``nakt predict``), intensities kept."""
    data: dict[str, Any] = {"labels": list(labels), "in_channels": in_channels, "input_size": list(size),
                            "outputs": "logits"}
    if len(size) == 2 and in_channels in (1, 3) and all(16 <= s <= 8192 for s in size):
        data["preprocess"] = {"normalize": "none"}
    if len(size) == 3 and all(8 <= s <= 1024 for s in size):
        pixdim = geometry.get("pixdim")
        spacing = None
        if (isinstance(pixdim, list) and len(pixdim) == 3 and all(isinstance(p, (int, float)) and 0.01 <= p <= 50
                                                                   for p in pixdim)):
            spacing = [float(p) for p in (pixdim[::-1] if reverse else pixdim)]
        axcodes = geometry.get("axcodes")
        data["volume"] = {"spacing": spacing, "modality": "none", "crop_nonzero": False,
                          "orientation": axcodes if reverse and axcodes in ("RAS", "LPS") else None}
    return data


def _refuse_multi_label(files: _Files, cfg_rel: str, config: dict[str, Any]) -> None:
    """A bundle whose postprocessing applies a sigmoid predicts independent channels, not one class per voxel."""
    for at, node in walk(config.get("postprocessing"), "postprocessing"):
        if (isinstance(node, dict) and short_name(node.get("_target_", "")).rstrip("d") == "Activations"
                and node.get("sigmoid") is True):
            raise error(TeacherLoadError, files.where, f"{files.path(cfg_rel)!r}: the postprocessing applies a sigmoid "
                                                       f"({at}): its channels are independent (multi-label), not "
                                                       "classes of one label per voxel, which a teacher predicts")


def _network(files: _Files, weights: str, blob: bytes, network: Any, cfg_rel: str, device: torch.device) -> Any:
    """The network with its weights: ``network_def`` (built) with the state dict of models/model.pt, loaded strictly
    and without unpickling code, or the TorchScript models/model.ts."""
    if weights.endswith(".pt"):
        try:
            state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
            if isinstance(state, dict) and not all(isinstance(v, torch.Tensor) for v in state.values()):
                # a checkpoint holding the state dict under a key, as MONAI's CheckpointSaver writes it
                state = next((state[k] for k in ("model", "state_dict", "network") if isinstance(state.get(k), dict)),
                             state)
            network.load_state_dict(state, strict=True)
        except Exception as err:  # noqa: BLE001 - torch raises many types for an unreadable or unfitting file
            raise error(TeacherLoadError, files.where,
                        f"{files.path(weights)!r} does not fit the network_def of {files.path(cfg_rel)!r} "
                        f"({type(network).__name__}): {str(err)[:800]}") from None
        return network.to(device)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load is deprecated; still the loader
            return torch.jit.load(io.BytesIO(blob), map_location=device)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad archive
        raise error(TeacherLoadError, files.where, f"{files.path(weights)!r} cannot be loaded as TorchScript: "
                                                   f"{err}") from None


def load(name: str, source: str, device: torch.device, trust_pickle: bool = False) -> RawTeacher:
    """The bundle's network with its preprocessing and inferer (:class:`BundleModel`) on ``device``, described by
    its metadata; ``trust_pickle``: the bundle may build objects outside MONAI (else it is refused)."""
    files = _Files(name, source)
    meta = files.mapping(METADATA)
    cfg_rel = files.first(INFERENCE_CONFIGS, "inference config")
    config = files.mapping(cfg_rel)
    labels = _labels(files, meta)
    in_channels = _field(files, meta, "inputs", "image", "num_channels")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise error(TeacherLoadError, files.where, f"{files.path(METADATA)!r}: network_data_format.inputs.image."
                                                   f"num_channels is {in_channels!r}; expected an integer >= 1")
    weights = files.first(tuple(w for w in WEIGHTS if w.endswith(".ts") or "network_def" in config), "weights "
                          "(models/model.pt with a network_def in the inference config, or models/model.ts)")
    ids = [k for k in PARTS if k in config and (k != "network_def" or weights.endswith(".pt"))]
    _refuse_multi_label(files, cfg_rel, config)
    built, learnt = build_parts(files.where, files.path(cfg_rel), config, meta, ids, trust_pickle)
    blob = files.read(weights)
    network = _network(files, weights, blob, built.get("network_def"), cfg_rel, device)
    from monai.inferers import SimpleInferer

    inferer = built.get("inferer") or SimpleInferer()
    transforms, applied, left_built, key = _split_preprocessing(built.get("preprocessing"))
    monai_size = _input_size(files, meta, inferer, cfg_rel)
    geometry = learnt["geometry"]
    numpy_order = ((geometry.get("reverse_indexing") is False and len(monai_size) == 2
                    and geometry.get("reader") in (None, "PILReader"))
                   or (geometry.get("reverse_indexing") is True and geometry.get("reader") == "ITKReader"))
    reverse = not numpy_order
    size = monai_size[::-1] if reverse else monai_size
    model = BundleModel(network.eval(), transforms, key, inferer, reverse).eval()

    # The network's output channels against the metadata's labels, on a zero image at its own size.
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, in_channels, *size, device=device))
    except Exception as err:  # noqa: BLE001 - whatever the bundle's transforms or network raise
        raise error(TeacherLoadError, files.where,
                    f"the bundle's preprocessing, inferer and network fail on a zero input [1, {in_channels}, "
                    f"{', '.join(map(str, size))}] (inputs.image.num_channels of {files.path(METADATA)!r}, the "
                    f"inferer's roi_size): {type(err).__name__}: {err}") from None
    if isinstance(out, torch.Tensor) and out.ndim == len(size) + 2 and out.shape[1] != len(labels):
        raise error(TeacherLoadError, files.where,
                    f"{files.path(METADATA)!r}: network_data_format.outputs.pred.channel_def names {len(labels)} "
                    f"channels {list(labels)} but the network ({files.path(weights)!r}) returns {out.shape[1]}")
    try:
        description = build_description(_description_data(labels, in_channels, size, geometry, reverse))
    except ConfigError as err:
        raise error(TeacherLoadError, files.where, f"description from {files.path(METADATA)!r}: {err}") from None
    inferer_details = {"type": type(inferer).__name__, **{k: _json_ready(getattr(inferer, k)) for k in
                                                         ("roi_size", "overlap", "mode", "sw_batch_size")
                                                         if hasattr(inferer, k)}}
    details = {"path": files.location, "bundle": meta.get("name"), "version": meta.get("version"),
               "config_file": cfg_rel, "weights_file": weights, "arch": f"monai_bundle:{type(network).__name__}",
               "inferer": inferer_details, "preprocessing_applied": applied,
               "preprocessing_left_to_run": learnt["left"] + left_built,
               "axis_order": "reversed into MONAI's (x, y[, z])" if reverse else "as stored (numpy order)"}
    if learnt["trusted_code"]:
        details["trusted_code"] = learnt["trusted_code"]
    return RawTeacher(model, description, files.fingerprint(weights, blob), _json_ready_dict(details))


def _json_ready_dict(details: dict[str, Any]) -> dict[str, Any]:
    return {k: (_json_ready_dict(v) if isinstance(v, dict) else _json_ready(v)) for k, v in details.items()}

"""The ``nnunet`` kind: an nnU-Net v2 results folder, run through nnU-Net's own predictor.

The source is the folder nnU-Net trains into (``nnUNet_results/DatasetXXX_Name/<Trainer>__<Plans>__<configuration>``)::

    dataset.json                  labels (name -> value, background 0), channel_names
    plans.json                    the configurations: spacing, normalisation, patch size, network
    fold_0/checkpoint_final.pth   one per fold (or checkpoint_best.pth); a 2D or a 3D configuration

or its dataset folder when that holds one such folder, or a teacher YAML that names one and chooses::

    nnunet: results/Dataset501_Tiny2D/nnUNetTrainer__nnUNetPlans__2d   # relative to this YAML
    folds: [0]                    # default: every fold_<n> holding the checkpoint (as nnU-Net's own default)
    checkpoint: checkpoint_final.pth   # or checkpoint_best.pth
    tile_step_size: 0.5           # nnU-Net's sliding-window step, a share of its patch
    use_mirroring: true           # nnU-Net's test-time mirroring (its allowed axes, from the checkpoint)
    spacing: [1.0, 1.0]           # mm per axis ((h, w) or (d, h, w)) of the images the run hands the teacher

How it runs (``docs/decisions.md``, 63): the teacher takes whole images (``RawTeacher.whole_image``): each image the
run hands it (on the run's grid) goes through ``nnUNetPredictor.predict_single_npy_array``, i.e. nnU-Net's cropping,
resampling to its spacing, normalisation, gaussian sliding window with mirroring, fold averaging (of logits, as nnU-Net
does) and resampling back; the probabilities come back at the image's size, channels in the order of the label values
(``dataset.json``), named by their labels. The spacing nnU-Net is told is the case's when the caller gives it
(``LoadedTeacher.predict(x, spacing)``: volume annotation, evaluation and prediction give the case's grid), else
the YAML's ``spacing``, else the spacing the configuration was trained at (then nnU-Net resamples nothing: right when
the run's images are at that spacing, e.g. 2D images at their own size).

Code: nnU-Net's checkpoints are pickles. Those its trainers write hold tensors, plain data and numpy scalars (its
training log), so they are read with ``torch.load(weights_only=True)`` with numpy's data-only reconstructors allowed
(``NUMPY_DATA``); anything else needs the teacher's ``trust_pickle: true``. ``plans.json`` names the network class
and its layers (``pydoc.locate`` imports them): without trust only ``dynamic_network_architectures`` and ``torch.nn``
names are accepted. nnunetv2 is optional (``pip install 'nakt-ray[nnunet]'``). The fingerprint covers plans.json,
dataset.json and the weights of the folds used.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml

from nakt_ray.config import ConfigError, build
from nakt_ray.errors import TeacherLoadError, error, expected
from nakt_ray.teachers.description import (
    DESCRIPTION_SUFFIXES,
    build_description,
    read_description_yaml,
    teacher_where,
)
from nakt_ray.teachers.inference import RawTeacher

__all__ = ["EXPECTS", "KIND", "NnUNetForward", "NnUNetSource", "detect", "load", "model_folder"]

KIND = "nnunet"
EXPECTS = ("an nnU-Net v2 results folder <Trainer>__<Plans>__<configuration> (dataset.json, plans.json, "
           "fold_*/checkpoint_final.pth), its dataset folder, or a teacher YAML with 'nnunet:' naming one")
DATASET_JSON, PLANS_JSON = "dataset.json", "plans.json"
INSTALL = "pip install 'nakt-ray[nnunet]'"
# Names plans.json may make nnU-Net import (pydoc.locate) without the teacher's trust_pickle.
NETWORK_MODULES = ("dynamic_network_architectures.",)
LAYER_MODULES = ("torch.nn.",)
# nnU-Net 2D configurations read natural images as (c, 1, y, x) with this spacing on the dummy axis
# (nnunetv2/imageio/natural_image_reader_writer.py); only the in-plane spacing is ever resampled.
DUMMY_SPACING = 999.0


@dataclass(frozen=True)
class NnUNetSource:
    """The keys of an nnU-Net teacher YAML (the module docstring shows each); ``nnunet`` is relative to the YAML."""

    nnunet: str
    kind: Literal["nnunet"] = "nnunet"
    folds: tuple[int | Literal["all"], ...] | None = None
    checkpoint: Literal["checkpoint_final.pth", "checkpoint_best.pth"] = "checkpoint_final.pth"
    tile_step_size: float = 0.5
    use_mirroring: bool = True
    spacing: tuple[float, ...] | None = None

    def _validate(self, p: str) -> None:
        if not 0 < self.tile_step_size <= 1:
            raise error(ConfigError, f"config key '{p}tile_step_size'", expected(self.tile_step_size, "a share of the "
                                                                                 "patch in (0, 1]"))
        if self.folds is not None and (not self.folds or len(set(self.folds)) != len(self.folds)
                                       or any(isinstance(f, int) and f < 0 for f in self.folds)):
            raise error(ConfigError, f"config key '{p}folds'", expected(self.folds, "distinct fold numbers >= 0 (or "
                                                                         "'all'), e.g. [0] or [0, 1, 2, 3, 4]"))
        if self.spacing is not None and (len(self.spacing) not in (2, 3) or not all(0 < s < 1e4 for s in self.spacing)):
            raise error(ConfigError, f"config key '{p}spacing'", expected(self.spacing, "2 (h, w) or 3 (d, h, w) "
                                                                           "spacings > 0, or null"))


# ----------------------------------------------------------------------------------------------------------------
# Finding the folder


def _has_model_files(path: Path) -> bool:
    return (path / PLANS_JSON).is_file() or (path / DATASET_JSON).is_file()


def _teacher_yaml(path: Path) -> dict[str, Any] | None:
    """The mapping of a YAML file that is an nnU-Net teacher YAML (``nnunet:`` or ``kind: nnunet``), else None."""
    if path.suffix.lower() not in DESCRIPTION_SUFFIXES or not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # not ours to explain: the teacher_yaml kind says why it cannot be read
    return data if isinstance(data, dict) and ("nnunet" in data or data.get("kind") == KIND) else None


def detect(source: str) -> bool:
    """A folder with plans.json or dataset.json at its top or one level down (not a MONAI bundle: one with
    configs/metadata.json, whatever else it holds), or an nnU-Net teacher YAML."""
    path = Path(source)
    if path.is_dir():
        if (path / "configs" / "metadata.json").is_file():
            return False
        return _has_model_files(path) or any(_has_model_files(p) for p in path.iterdir() if p.is_dir())
    return _teacher_yaml(path) is not None


def model_folder(name: str, source: str, folder: Path) -> Path:
    """The results folder ``<Trainer>__<Plans>__<configuration>`` that ``folder`` is or holds (exactly one)."""
    where = teacher_where(name, source)
    if not folder.is_dir():
        raise error(TeacherLoadError, where, f"nnU-Net folder {str(folder)!r} does not exist")
    if (folder / "imagesTr").is_dir():
        raise error(TeacherLoadError, where, f"{str(folder)!r} is an nnU-Net raw dataset (imagesTr/); a teacher is a "
                                             "trained model: the folder nnU-Net trained into, nnUNet_results/<dataset>/"
                                             "<Trainer>__<Plans>__<configuration>")
    if _has_model_files(folder):
        return folder
    inner = sorted(p for p in folder.iterdir() if p.is_dir() and _has_model_files(p))
    if len(inner) != 1:
        found = [p.name for p in inner] or "none"
        raise error(TeacherLoadError, where, f"{str(folder)!r} holds {len(inner)} nnU-Net model folders ({found}); "
                                             "name the one to use (<Trainer>__<Plans>__<configuration>)")
    return inner[0]


def read_source(name: str, source: str) -> tuple[Path, NnUNetSource]:
    """The model folder and the options: from a teacher YAML, or the defaults for a folder given as it is."""
    path = Path(source)
    if path.is_dir():
        return model_folder(name, source, path), NnUNetSource(nnunet=str(path))
    data = read_description_yaml(name, source, path)
    try:
        options = build(NnUNetSource, data, "")
    except ConfigError as err:
        raise error(TeacherLoadError, teacher_where(name, source), f"teacher YAML {source!r}: {err}") from None
    return model_folder(name, source, path.parent / options.nnunet), options


# ----------------------------------------------------------------------------------------------------------------
# dataset.json, plans.json, the folds


def _json(where: str, path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise error(TeacherLoadError, where, f"{str(path)!r} does not exist; an nnU-Net model folder holds "
                                             f"{DATASET_JSON}, {PLANS_JSON} and fold_<n>/ (nnU-Net copies the first "
                                             "two there when it trains)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise error(TeacherLoadError, where, f"{str(path)!r} cannot be read as JSON: {err}") from None
    if not isinstance(data, dict):
        raise error(TeacherLoadError, where, f"{str(path)!r} must hold a mapping, got {type(data).__name__}")
    return data


def labels_of(where: str, dataset_file: Path, dataset: dict[str, Any]) -> tuple[str, ...]:
    """The output channels' names: ``dataset.json`` ``labels`` (name -> value) ordered by value, background (0)
    first, the ``ignore`` label left out (nnU-Net predicts no channel for it)."""
    raw = dataset.get("labels")
    at = f"{str(dataset_file)!r}: labels"
    if not isinstance(raw, dict) or not raw:
        raise error(TeacherLoadError, where, f"{at} must map label names to values, e.g. {{\"background\": 0, "
                                             f"\"liver\": 1}}; got {raw!r}")
    regions = sorted(k for k, v in raw.items() if isinstance(v, (list, tuple)) and len(v) > 1)
    if regions:
        raise error(TeacherLoadError, where, f"{at} defines regions {regions} (region-based training: overlapping "
                                             "channels with a sigmoid); a teacher predicts one class per pixel")
    values: dict[int, str] = {}
    for label, value in raw.items():
        if label == "ignore":
            continue
        v = value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value
        if isinstance(v, bool) or not isinstance(v, int) or v in values:
            raise error(TeacherLoadError, where, f"{at}: {label!r} has value {value!r}; expected distinct integers")
        values[v] = label
    if sorted(values) != list(range(len(values))) or len(values) < 2 or values[0] != "background":
        raise error(TeacherLoadError, where, f"{at} {raw!r} must give 'background' the value 0 and the other labels "
                                             "1..K-1, one each (nnU-Net's output channel k is label value k)")
    return tuple(values[v] for v in range(len(values)))


def _folds(where: str, folder: Path, options: NnUNetSource) -> list[str]:
    """The fold folders used (``fold_0``...): the YAML's, else every ``fold_<n>`` holding the checkpoint, else
    ``fold_all`` (nnU-Net's default leaves ``fold_all`` out when numbered folds exist)."""
    ckpt = options.checkpoint
    present = sorted((p.name for p in folder.glob("fold_*") if (p / ckpt).is_file()),
                     key=lambda n: (not n[5:].isdigit(), int(n[5:]) if n[5:].isdigit() else 0))
    if options.folds is None:
        numbered = [n for n in present if n != "fold_all"]
        chosen = numbered or present
        if not chosen:
            others = sorted(str(p.relative_to(folder)) for p in folder.glob("fold_*/checkpoint_*.pth"))
            hint = f"; there are {others}: choose with 'checkpoint:' in a teacher YAML" if others else ""
            raise error(TeacherLoadError, where, f"{str(folder)!r} has no fold_<n>/{ckpt}{hint}")
        return chosen
    chosen = [f"fold_{f}" for f in options.folds]
    missing = [f for f in chosen if f not in present]
    if missing:
        raise error(TeacherLoadError, where, f"{str(folder)!r} has no {', '.join(f'{m}/{ckpt}' for m in missing)}; "
                                             f"folds holding {ckpt}: {[n[5:] for n in present] or 'none'}")
    return chosen


# The data-only numpy reconstructors a checkpoint of nnU-Net's own trainers needs (its training log holds numpy
# scalars); numpy 1 wrote them as numpy.core.*, numpy 2 as numpy._core.*.
def _numpy_data() -> list[Any]:
    core = getattr(np, "_core", None) or np.core
    allowed: list[Any] = [np.dtype, np.ndarray]
    for path in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(core.multiarray.scalar, f"{path}.scalar"), (core.multiarray._reconstruct, f"{path}._reconstruct")]
    allowed += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return allowed


def load_checkpoint(where: str, path: Path, trust_pickle: bool) -> tuple[dict[str, Any], str]:
    """A fold's checkpoint and how it was read: tensors, plain data and numpy scalars without unpickling code;
    anything else only with ``trust_pickle``."""
    try:
        with torch.serialization.safe_globals(_numpy_data()):
            checkpoint, how = torch.load(path, map_location="cpu", weights_only=True), "weights_only"
    except pickle.UnpicklingError as err:
        if not trust_pickle:
            named = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
            held = named.group(1) if named else "objects"
            raise error(TeacherLoadError, where, f"{str(path)!r} holds {held} beyond tensors and plain data, which "
                                                 "unpickling would run (nnU-Net's own trainers write none); set "
                                                 "trust_pickle: true for this teacher only if you trust who wrote it "
                                                 "(README, 'Untrusted models')") from None
        warnings.warn(f"{where}: unpickling {str(path)!r} (trust_pickle: true); it may run any code it names",
                      UserWarning, stacklevel=2)
        checkpoint, how = torch.load(path, map_location="cpu", weights_only=False), "unpickled (trust_pickle)"
    except Exception as err:  # noqa: BLE001 - torch raises many types for an unreadable file
        raise error(TeacherLoadError, where, f"{str(path)!r} cannot be read as a checkpoint: {err}") from None
    init = checkpoint.get("init_args") if isinstance(checkpoint, dict) else None
    if (not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("network_weights"), dict)
            or not isinstance(checkpoint.get("trainer_name"), str) or not isinstance(init, dict)
            or not isinstance(init.get("configuration"), str)):
        raise error(TeacherLoadError, where, f"{str(path)!r} is not an nnU-Net v2 checkpoint (expected "
                                             "network_weights, trainer_name and init_args.configuration)")
    return checkpoint, how


def fingerprint(folder: Path, files: list[str]) -> str:
    """SHA-256 (16 hex digits) over ``files`` (paths in ``folder``: plans.json, dataset.json, the folds' weights),
    each with its path and length."""
    h = hashlib.sha256()
    for rel in files:
        path = folder / rel
        h.update(rel.encode() + b"\0" + path.stat().st_size.to_bytes(8, "little"))
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# nnU-Net's network and predictor


def _import_nnunet(where: str) -> Any:
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # nnunetv2.paths prints when nnUNet_* are unset
            import nnunetv2
            from nnunetv2.inference import predict_from_raw_data
    except ImportError as err:
        raise error(TeacherLoadError, where, f"an nnU-Net folder needs nnunetv2, which is not installed ({err}); "
                                             f"install it with {INSTALL}") from None
    return nnunetv2, predict_from_raw_data


def _refuse_code_in_plans(where: str, plans_file: Path, configuration: Any) -> None:
    """Without trust, plans.json may only name nnU-Net's network classes and torch.nn layers for nnU-Net to import."""
    named = {"network_class_name": configuration.network_arch_class_name}
    kwargs = configuration.network_arch_init_kwargs
    named.update({k: kwargs.get(k) for k in configuration.network_arch_init_kwargs_req_import})
    for key, value in named.items():
        allowed = NETWORK_MODULES if key == "network_class_name" else LAYER_MODULES
        if value is not None and (not isinstance(value, str) or not value.startswith(allowed)):
            raise error(TeacherLoadError, where, f"{str(plans_file)!r}: the architecture's {key} is {value!r}; nnU-Net "
                                                 f"imports it, so without trust_pickle: true only names under "
                                                 f"{', '.join(allowed)} are accepted")


def _trainer_class(where: str, nnunetv2: Any, trainer_name: str) -> Any:
    """The trainer class nnU-Net builds the network with, found by name as nnU-Net does."""
    if trainer_name == "nnUNetTrainer":
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        return nnUNetTrainer
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    from nakt_ray._torchvision_compat import ensure_torchvision

    ensure_torchvision()  # the search imports every trainer module; some import timm, hence torchvision
    found = recursive_find_python_class(str(Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer"), trainer_name,
                                        "nnunetv2.training.nnUNetTrainer")
    if found is None:
        raise error(TeacherLoadError, where, f"the checkpoint's trainer {trainer_name!r} is not part of nnunetv2 "
                                             f"{getattr(nnunetv2, '__version__', '')}; nnU-Net builds the network with "
                                             "the trainer's class, so it must be importable under "
                                             "nnunetv2.training.nnUNetTrainer")
    return found


def _network(where: str, trainer: Any, plans_manager: Any, configuration: Any, dataset: dict[str, Any],
             labels: tuple[str, ...], folds: dict[str, dict[str, Any]], dataset_file: Path) -> Any:
    """The network built as nnU-Net builds it for inference, checked against every fold's weights."""
    import inspect

    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    in_channels = determine_num_input_channels(plans_manager, configuration, dataset)
    try:
        if "plans_manager" in inspect.signature(trainer.build_network_architecture).parameters:
            network = trainer.build_network_architecture(plans_manager, configuration, in_channels, len(labels),
                                                         enable_deep_supervision=False)
        else:  # the older signature nnU-Net still accepts
            network = trainer.build_network_architecture(
                configuration.network_arch_class_name, configuration.network_arch_init_kwargs,
                configuration.network_arch_init_kwargs_req_import, in_channels, len(labels),
                enable_deep_supervision=False)
    except Exception as err:  # noqa: BLE001 - whatever the plans make the architecture raise
        raise error(TeacherLoadError, where, f"nnU-Net cannot build the network of plans.json: {type(err).__name__}: "
                                             f"{err}") from None
    for fold, weights in folds.items():
        heads = [w.shape[0] for k, w in weights.items() if re.search(r"seg_layers\.\d+\.weight$", k)]
        if heads and heads[-1] != len(labels):
            raise error(TeacherLoadError, where, f"{str(dataset_file)!r} names {len(labels)} labels {list(labels)} but "
                                                 f"the weights of {fold} predict {heads[-1]} classes")
        try:
            network.load_state_dict(weights)
        except RuntimeError as err:
            raise error(TeacherLoadError, where, f"the weights of {fold} do not fit the network of plans.json and "
                                                 f"dataset.json: {str(err)[:600]}") from None
    return network


class NnUNetForward:
    """Whole images through nnU-Net's predictor: ``[B, C, H, W]`` (2D configuration) or ``[B, C, D, H, W]`` (3D),
    any size, with their spacing (mm per spatial axis; None: ``default_spacing``) -> probabilities ``[B, K, ...]``
    float32 at the same size, on the input's device.

    nnU-Net's arrays are ``(c, x, y, z)`` in the order of the files it trained on, and a 2D configuration predicts
    them slice by slice along the axis its ``transpose_forward`` puts first; so a 2D image gets a dummy axis there
    (spacing ``DUMMY_SPACING``) and keeps its (H, W) order, which is the trained files' in-plane order.
    """

    def __init__(self, predictor: Any, dims: int, default_spacing: tuple[float, ...], transpose_forward: list[int]):
        self.predictor = predictor
        self.dims = dims
        self.default_spacing = tuple(float(s) for s in default_spacing)
        self.slice_axis = int(transpose_forward[0]) if dims == 2 else None

    def _properties(self, spacing: tuple[float, ...] | None) -> dict[str, list[float]]:
        spacing = tuple(float(s) for s in (spacing if spacing is not None else self.default_spacing))
        if len(spacing) != self.dims:
            raise ValueError(f"spacing {list(spacing)} has {len(spacing)} values for a {self.dims}D configuration")
        if self.dims == 3:
            return {"spacing": list(spacing)}
        full = list(spacing)
        full.insert(self.slice_axis, DUMMY_SPACING)
        return {"spacing": full}

    def __call__(self, x: torch.Tensor, spacing: tuple[float, ...] | None = None) -> torch.Tensor:
        properties = self._properties(spacing)
        out = []
        for image in x.detach().to("cpu", torch.float32).numpy():
            if self.dims == 2:
                image = np.expand_dims(image, 1 + self.slice_axis)  # (c, H, W) -> nnU-Net's (c, x, y, z)
            _, probs = self.predictor.predict_single_npy_array(np.ascontiguousarray(image), dict(properties), None,
                                                               None, True)
            out.append(probs.squeeze(1 + self.slice_axis) if self.dims == 2 else probs)
        return torch.from_numpy(np.stack(out).astype(np.float32, copy=False)).to(x.device)


def _description(labels: tuple[str, ...], in_channels: int, patch: list[int], spacing: tuple[float, ...]) -> Any:
    """2D: raw images (nnU-Net normalises them itself); 3D: the trained spacing, the stored axis order (nnU-Net reads
    files as they are stored) and raw intensities, which is what ``nakt predict`` then feeds it."""
    data: dict[str, Any] = {"labels": list(labels), "in_channels": in_channels, "input_size": patch,
                            "outputs": "probabilities"}
    if len(patch) == 2 and in_channels in (1, 3) and all(16 <= s <= 8192 for s in patch):
        data["preprocess"] = {"normalize": "none"}
    if len(patch) == 3 and all(8 <= s <= 1024 for s in patch) and all(0.01 <= s <= 50 for s in spacing):
        data["volume"] = {"spacing": list(spacing), "orientation": None, "modality": "none", "crop_nonzero": False}
    return build_description(data)


def load(name: str, source: str, device: torch.device, trust_pickle: bool = False) -> RawTeacher:
    """The folder's folds in nnU-Net's predictor on ``device`` (:class:`NnUNetForward`, whole images), described by
    its dataset.json and plans; ``trust_pickle``: checkpoints and plans may name code (else they are refused)."""
    where = teacher_where(name, source)
    folder, options = read_source(name, source)
    dataset_file, plans_file = folder / DATASET_JSON, folder / PLANS_JSON
    dataset, plans = _json(where, dataset_file), _json(where, plans_file)
    labels = labels_of(where, dataset_file, dataset)
    folds = _folds(where, folder, options)
    nnunetv2, predict_module = _import_nnunet(where)
    checkpoints, read_as = {}, set()
    for fold in folds:
        checkpoints[fold], how = load_checkpoint(where, folder / fold / options.checkpoint, trust_pickle)
        read_as.add(how)
    first = checkpoints[folds[0]]
    config_name, trainer_name = first["init_args"]["configuration"], first["trainer_name"]
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    try:
        plans_manager = PlansManager(plans)
        configuration = plans_manager.get_configuration(config_name)
    except Exception as err:  # noqa: BLE001 - nnU-Net raises KeyError / AssertionError / RuntimeError here
        raise error(TeacherLoadError, where, f"{str(plans_file)!r} has no usable configuration {config_name!r} (the "
                                             f"checkpoints' own): {type(err).__name__}: {err}") from None
    if configuration.previous_stage_name is not None:
        raise error(TeacherLoadError, where, f"configuration {config_name!r} is a cascade stage (it needs the "
                                             f"segmentation of {configuration.previous_stage_name!r}); use a 2d or "
                                             "3d_fullres folder")
    if not trust_pickle:
        _refuse_code_in_plans(where, plans_file, configuration)
    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints its progress; the teacher's details record it
        trainer = _trainer_class(where, nnunetv2, trainer_name)
        weights = {fold: c["network_weights"] for fold, c in checkpoints.items()}
        network = _network(where, trainer, plans_manager, configuration, dataset, labels, weights, dataset_file)
        predictor = predict_module.nnUNetPredictor(
            tile_step_size=options.tile_step_size, use_gaussian=True, use_mirroring=options.use_mirroring,
            perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
            verbose_preprocessing=False, allow_tqdm=False)
        mirror_axes = first.get("inference_allowed_mirroring_axes")
        predictor.manual_initialization(network, plans_manager, configuration, list(weights.values()), dataset,
                                        trainer_name, mirror_axes)
    patch = [int(s) for s in configuration.patch_size]
    dims = len(patch)
    if options.spacing is not None and len(options.spacing) != dims:
        raise error(TeacherLoadError, where, f"teacher YAML {source!r}: spacing {list(options.spacing)} has "
                                             f"{len(options.spacing)} values; configuration {config_name!r} is {dims}D")
    backward = list(plans_manager.transpose_backward)
    forward = list(plans_manager.transpose_forward)
    trained = [float(s) for s in configuration.spacing]
    # The trained spacing in the files' axis order: 3D undoes the transpose; 2D keeps its two in-plane axes in order.
    if dims == 3:
        trained_spacing = tuple(trained[backward[i]] for i in range(3))
    else:
        trained_spacing = tuple(trained[forward.index(i) - 1] for i in range(3) if i != forward[0])
    in_channels = len(dataset.get("channel_names") or dataset.get("modality") or {}) or 1
    try:
        description = _description(labels, in_channels, patch, trained_spacing)
    except ConfigError as err:
        raise error(TeacherLoadError, where, f"description from {str(plans_file)!r}: {err}") from None
    model = NnUNetForward(predictor, dims, options.spacing or trained_spacing, forward)
    details = {"path": str(folder.resolve()), "dataset": plans_manager.dataset_name, "plans": plans_manager.plans_name,
               "configuration": config_name, "trainer": trainer_name, "folds": [f[5:] for f in folds],
               "checkpoint": options.checkpoint, "checkpoint_read": sorted(read_as),
               "nnunetv2": getattr(nnunetv2, "__version__", None) or _version("nnunetv2"),
               "patch_size": patch, "trained_spacing": list(trained_spacing),
               "spacing": list(options.spacing) if options.spacing else "the case's, else trained_spacing",
               "tile_step_size": options.tile_step_size, "use_mirroring": options.use_mirroring,
               "mirror_axes": list(mirror_axes) if mirror_axes is not None else None,
               "normalization": list(configuration.normalization_schemes), "whole_image": True}
    files = [PLANS_JSON, DATASET_JSON] + [f"{fold}/{options.checkpoint}" for fold in folds]
    return RawTeacher(model, description, fingerprint(folder, files), details, autocast=False, whole_image=True)


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None

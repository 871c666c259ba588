"""One YAML file describes a whole run; this module turns it into frozen, typed, validated dataclasses.

Validation happens at load time, at the boundary: an unknown key, a value of the wrong type or outside its range
raises :class:`ConfigError`, whose message names the key (as a dotted path such as ``teachers[1].arch``), the value
and what is allowed. YAML is data only (``yaml.safe_load``): no tags, no code.

Relative paths in a config are relative to the working directory of the command (documented in README.md).

Example (every key is optional except ``teachers``; see ``docs/config.md`` for all keys)::

    run_dir: runs/hc18
    data:
      labels: [background, head]
      transferal: ../shared/data/hc18/images
      test: data/test
    preprocess: {size: [128, 128], mode: resize, normalize: zscore}
    teachers:
      - {name: unet_a, arch: unet, train_data: data/site_a}
      - {name: segresnet_b, arch: segresnet, train_data: data/site_b}
    student: {arch: basic_unet}
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration value that is missing, unknown, of the wrong type or out of range."""


def _fail(key: str, value: Any, allowed: str) -> typing.NoReturn:
    raise ConfigError(f"config key '{key}': got {value!r}; expected {allowed}")


# ----------------------------------------------------------------------------------------------------------------
# The typed config. Each dataclass checks its own ranges in `_validate(prefix)`; types are checked generically.


@dataclass(frozen=True)
class PreprocessConfig:
    """The one preprocessing definition shared by teachers and students.

    ``size`` is the model input (height, width) in pixels. ``mode``: ``resize`` stretches the image to ``size``;
    ``letterbox`` keeps the aspect ratio, scales to fit and pads. ``normalize``: ``zscore`` (per image, zero mean
    and unit variance), ``minmax`` (per image, to [0, 1]), ``none``. ``in_channels``: images are converted to grey
    (1) or to 3 channels (grey replicated) whatever their file holds.
    """

    size: tuple[int, int] = (128, 128)
    mode: Literal["resize", "letterbox"] = "resize"
    normalize: Literal["zscore", "minmax", "none"] = "zscore"
    in_channels: Literal[1, 3] = 1

    def _validate(self, p: str) -> None:
        if any(s < 16 or s > 8192 for s in self.size):
            _fail(f"{p}size", list(self.size), "two integers (height, width) between 16 and 8192")


@dataclass(frozen=True)
class DataConfig:
    """Where the data lives and what the labels mean.

    Each path is a folder source: ``<path>/images/`` with an optional ``<path>/masks/`` whose files match the
    images by name (``mask_suffix`` is appended to the image's stem when looking up its mask). ``labels`` names the
    classes, background first. ``mask_values`` maps mask pixel values to classes (one value per label); when
    absent, binary masks map any non-zero pixel to class 1 and multi-class masks hold the class index.
    """

    labels: tuple[str, ...] = ("background", "foreground")
    mask_values: tuple[int, ...] | None = None
    mask_suffix: str = ""
    transferal: str | None = None
    val: str | None = None
    test: str | None = None
    finetune: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def _validate(self, p: str) -> None:
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            _fail(f"{p}labels", list(self.labels), "at least two distinct class names, background first")
        if self.mask_values is not None:
            if len(self.mask_values) != len(self.labels) or len(set(self.mask_values)) != len(self.mask_values):
                _fail(f"{p}mask_values", list(self.mask_values),
                      f"{len(self.labels)} distinct pixel values, one per label {list(self.labels)}")
            if any(not 0 <= v <= 65535 for v in self.mask_values):
                _fail(f"{p}mask_values", list(self.mask_values), "pixel values between 0 and 65535")


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation and Ray Train settings, shared by teacher and student training.

    ``num_workers`` is the number of Ray Train workers (distributed data parallel; 0 runs the loop in the driver
    process, useful for debugging). ``cpus_per_worker`` may be fractional: on a 2-core machine a worker must not
    hold a whole core or the Ray Data task that feeds it never runs. ``use_gpu`` null means "if the cluster has
    GPUs". ``torch_threads`` null means the cluster's CPUs divided by the number of workers (at least 1).

    Loss: ``dice_weight`` x soft Dice + ``ce_weight`` x soft cross-entropy + ``kl_weight`` x KL at
    ``temperature`` against the (fused) soft target, plus ``hard_weight`` x (Dice + CE) against its arg-max.
    ``agreement_weighting`` weights the per-pixel terms by the teachers' agreement: ``case`` by each case's mean
    pairwise Dice, ``pixel`` by the share of teachers whose label equals the fused label at that pixel (students
    only; teachers' hard labels carry no agreement). ``augment_strength`` scales the random affine (rotation up
    to 15 degrees, scale up to 10 %) and intensity changes; flips are on whenever ``augment`` is.

    Validation (when a labeled validation set is given) computes Dice and IoU every epoch, plus ``val_metrics``
    (``hd95``, ``nsd``; slow, opt-in; NSD at ``nsd_tolerance`` pixels). The best epoch by Dice is kept;
    ``patience`` stops after that many epochs without improvement. ``max_failures``: how often a run whose
    worker died is restarted from its last checkpoint (Ray Train ``FailureConfig``).

    ``cache_mb`` (students): an annotation set whose decoded training columns take at most this many MiB is decoded
    and re-fused once and held in Ray's object store, and every epoch reshuffles it through a buffer of up to
    256 MiB of rows; a larger set streams from Parquet every epoch (file order shuffled, 4-batch buffer). 0 always
    streams. ``seed`` fixes initialisation, shuffles and augmentation.
    """

    epochs: int = 10
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    num_workers: int = 1
    cpus_per_worker: float = 0.5
    use_gpu: bool | None = None
    torch_threads: int | None = None
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    kl_weight: float = 0.0
    temperature: float = 1.0
    hard_weight: float = 0.0
    agreement_weighting: Literal["none", "case", "pixel"] = "none"
    augment: bool = True
    augment_strength: float = 1.0
    val_metrics: tuple[Literal["hd95", "nsd"], ...] = ()
    nsd_tolerance: float = 2.0
    patience: int | None = None
    max_failures: int = 2
    seed: int = 0
    cache_mb: int = 1024

    def _validate(self, p: str) -> None:
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                _fail(f"{p}{key}", getattr(self, key), "an integer >= 1")
        if not 0 < self.lr < 1:
            _fail(f"{p}lr", self.lr, "a learning rate in (0, 1)")
        if self.weight_decay < 0:
            _fail(f"{p}weight_decay", self.weight_decay, "a number >= 0")
        if self.num_workers < 0:
            _fail(f"{p}num_workers", self.num_workers, "an integer >= 0 (0 runs the loop in the driver)")
        if not 0 < self.cpus_per_worker <= 256:
            _fail(f"{p}cpus_per_worker", self.cpus_per_worker, "a number in (0, 256]; fractions are allowed")
        if self.torch_threads is not None and self.torch_threads < 1:
            _fail(f"{p}torch_threads", self.torch_threads, "an integer >= 1 or null")
        for key in ("dice_weight", "ce_weight", "kl_weight", "hard_weight"):
            if getattr(self, key) < 0:
                _fail(f"{p}{key}", getattr(self, key), "a number >= 0")
        if self.dice_weight + self.ce_weight + self.kl_weight + self.hard_weight <= 0:
            _fail(f"{p}dice_weight", self.dice_weight, "loss weights (dice, ce, kl, hard) whose sum is > 0")
        if not 0 <= self.augment_strength <= 3:
            _fail(f"{p}augment_strength", self.augment_strength, "a number in [0, 3] (1 is the default strength)")
        if len(set(self.val_metrics)) != len(self.val_metrics):
            _fail(f"{p}val_metrics", list(self.val_metrics), "distinct names among hd95, nsd")
        if self.nsd_tolerance <= 0:
            _fail(f"{p}nsd_tolerance", self.nsd_tolerance, "a tolerance in pixels > 0")
        if self.cache_mb < 0:
            _fail(f"{p}cache_mb", self.cache_mb, "an integer >= 0 (MiB; 0 always streams)")
        if self.patience is not None and self.patience < 1:
            _fail(f"{p}patience", self.patience, "an integer >= 1 or null (no early stopping)")
        if self.max_failures < -1:
            _fail(f"{p}max_failures", self.max_failures, "an integer >= 0, or -1 for unlimited restarts")
        if self.temperature <= 0:
            _fail(f"{p}temperature", self.temperature, "a number > 0")


@dataclass(frozen=True)
class TeacherConfig:
    """One teacher: how it is trained (``arch``, ``train_data``) and how it annotates (``checkpoint``, pool).

    ``checkpoint`` is where the teacher comes from: a nakt model file (default
    ``<run_dir>/teachers/<name>/model.pt``, where ``nakt train-teacher`` writes it), a TorchScript or ONNX file with
    a description YAML beside it (``<file>.yaml``), a teacher YAML, or an MLflow model URI (``models:/name@alias``,
    ``runs:/<id>/model``); see ``nakt_ray/teacher_sources.py``. ``actors``, ``batch_size``, ``num_cpus`` and
    ``num_gpus`` size this teacher's Ray Data actor pool; ``num_gpus`` null means 1 when the cluster has GPUs and
    0 otherwise (fractions share a GPU). ``sliding_window`` runs MONAI sliding-window inference with the
    teacher's input size as window (``overlap``, gaussian blending) instead of resampling the image;
    ``tta_flips`` averages over flips of these axes (-1 width, -2 height); ``amp`` is the autocast type on GPU.
    """

    name: str
    arch: str = "unet"
    arch_args: dict[str, Any] = field(default_factory=dict)
    train_data: str | None = None
    val_data: str | None = None
    checkpoint: str | None = None
    actors: int = 1
    batch_size: int = 8
    num_cpus: float = 0.5
    num_gpus: float | None = None
    sliding_window: bool = False
    overlap: float = 0.25
    tta_flips: tuple[int, ...] = ()
    amp: Literal["none", "bf16", "fp16"] = "bf16"

    def _validate(self, p: str) -> None:
        if not self.name or not all(c.isalnum() or c in "_-." for c in self.name):
            _fail(f"{p}name", self.name, "a non-empty name of letters, digits, '_', '-' or '.'")
        _check_arch(f"{p}arch", self.arch, f"{p}arch_args", self.arch_args)
        if not 0 <= self.overlap < 1:
            _fail(f"{p}overlap", self.overlap, "a number in [0, 1)")
        if any(a not in (-1, -2) for a in self.tta_flips) or len(set(self.tta_flips)) != len(self.tta_flips):
            _fail(f"{p}tta_flips", list(self.tta_flips), "distinct axes among -1 (width) and -2 (height), e.g. [-1]")
        if self.actors < 1:
            _fail(f"{p}actors", self.actors, "an integer >= 1")
        if self.batch_size < 1:
            _fail(f"{p}batch_size", self.batch_size, "an integer >= 1")
        if not 0 < self.num_cpus <= 256:
            _fail(f"{p}num_cpus", self.num_cpus, "a number in (0, 256]; fractions are allowed")
        if self.num_gpus is not None and not 0 <= self.num_gpus <= 16:
            _fail(f"{p}num_gpus", self.num_gpus, "a number in [0, 16] (fractions share a GPU) or null")


@dataclass(frozen=True)
class StudentConfig:
    """The student: any zoo architecture. Its checkpoint goes to ``<run_dir>/student/<name>/model.pt``.

    ``init``: a nakt model file whose weights the student starts from (same architecture); null starts from
    scratch. ``nakt finetune`` starts from the distilled student unless told otherwise.
    """

    name: str = "student"
    arch: str = "basic_unet"
    arch_args: dict[str, Any] = field(default_factory=dict)
    annotations: str | None = None
    init: str | None = None

    def _validate(self, p: str) -> None:
        if not self.name or not all(c.isalnum() or c in "_-." for c in self.name):
            _fail(f"{p}name", self.name, "a non-empty name of letters, digits, '_', '-' or '.'")
        _check_arch(f"{p}arch", self.arch, f"{p}arch_args", self.arch_args)


@dataclass(frozen=True)
class FusionConfig:
    """How teachers' probabilities become one soft label. ``weights``: one per teacher, for weighted rules."""

    rule: Literal["mean", "weighted_mean", "majority_vote", "staple"] = "mean"
    weights: tuple[float, ...] | None = None

    def _validate(self, p: str) -> None:
        if self.weights is not None and (any(w < 0 for w in self.weights) or sum(self.weights) <= 0):
            _fail(f"{p}weights", list(self.weights), "non-negative numbers, not all zero, one per teacher")
        if self.rule == "weighted_mean" and self.weights is None:
            _fail(f"{p}weights", None, "a list of weights, one per teacher, for rule 'weighted_mean'")


@dataclass(frozen=True)
class AnnotateConfig:
    """The annotation run. ``output`` defaults to ``<run_dir>/annotations``; it may be an object-store URI
    (``s3://bucket/prefix``, ``gs://...``, ``file:///...``; see ``nakt_ray/storage.py``). ``prob_dtype``: how
    probability maps are stored, uint8 (p x 255, 4x smaller than float32; the default) or float16.

    ``pools`` lays out the teachers' actors: ``per_teacher`` gives each teacher an actor pool of its own, sized
    by its ``actors``, ``num_cpus`` and ``num_gpus`` (each teacher on its own GPU share); ``shared`` runs one pool
    whose actors each host every teacher and run them one after another on a batch (each teacher still in its own
    ``batch_size``), ``shared_actors`` of them (default: one per GPU, else one per 4 CPUs, at least one), the
    cluster's CPUs split between them as torch threads; ``auto`` (the default) is ``per_teacher`` on a cluster
    with GPUs and ``shared`` on one without: on CPUs, pools of their own only time-share the same cores, and every
    batch crosses the object store once per teacher (decision 39)."""

    output: str | None = None
    prob_dtype: Literal["uint8", "float16"] = "uint8"
    decode_batch_size: int = 16
    rows_per_file: int = 256
    pools: Literal["auto", "per_teacher", "shared"] = "auto"
    shared_actors: int | None = None

    def _validate(self, p: str) -> None:
        if self.shared_actors is not None and self.shared_actors < 1:
            _fail(f"{p}shared_actors", self.shared_actors, "an integer >= 1, or null (one per GPU, else per 4 CPUs)")
        if self.decode_batch_size < 1:
            _fail(f"{p}decode_batch_size", self.decode_batch_size, "an integer >= 1")
        if self.rows_per_file < 1:
            _fail(f"{p}rows_per_file", self.rows_per_file, "an integer >= 1")


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow. ``uri`` null means ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<run_dir>/mlflow.db``."""

    uri: str | None = None
    experiment: str = "nakt-ray"
    registered_model: str = "nakt-student"
    alias: str = "candidate"

    def _validate(self, p: str) -> None:
        if not self.experiment:
            _fail(f"{p}experiment", self.experiment, "a non-empty experiment name")
        if not self.registered_model:
            _fail(f"{p}registered_model", self.registered_model, "a non-empty model name")
        if not self.alias or self.alias[0].isdigit() or not all(c.isalnum() or c in "_-" for c in self.alias):
            _fail(f"{p}alias", self.alias, "an MLflow alias: letters, digits, '_' or '-', not starting with a digit")


@dataclass(frozen=True)
class RayConfig:
    """Where Ray runs. ``address`` null starts a local instance (``auto`` joins a running cluster).

    ``storage_path``: Ray Train's storage (checkpoints and run state of every training), a path every node sees
    or an object-store URI (``s3://bucket/prefix``, ``gs://...``); null means ``<run_dir>/ray_train``. Training
    with ``num_workers: 0`` runs in the driver, where Ray Train does not use it: checkpoints then go to
    ``<storage_path>/<run>/local`` for a path, to a temporary folder for a URI.
    """

    address: str | None = None
    num_cpus: int | None = None
    num_gpus: int | None = None
    storage_path: str | None = None

    def _validate(self, p: str) -> None:
        if self.storage_path is not None and not self.storage_path:
            _fail(f"{p}storage_path", self.storage_path, "a path, a URI such as s3://bucket/prefix, or null")
        for key in ("num_cpus", "num_gpus"):
            value = getattr(self, key)
            if value is not None and value < 0:
                _fail(f"{p}{key}", value, "an integer >= 0 or null")


@dataclass(frozen=True)
class TuneConfig:
    """A Ray Tune search over student training (``nakt tune``; ``nakt_ray/search.py``).

    ``space`` maps dotted config keys (``training.*``, ``student.*``, ``fusion.*``) to distributions, e.g.
    ``{"training.lr": {"loguniform": [1e-4, 1e-2]}, "fusion.weights": {"simplex": 3}}``; kinds: ``choice``,
    ``uniform``, ``loguniform``, ``randint`` (both ends included) and, for ``fusion.weights`` only, ``simplex``
    (one weight per teacher, summing to 1); ``when`` limits an entry to trials where other choices hold
    (``{"choice": [[8, 16]], "when": {"student.arch": "unet"}}``). Every trial is the base config with its sampled
    values set, and must validate; this is checked at load time.

    Each trial's Tune function takes ``cpus_per_trial`` (it only coordinates); the trial's training takes what
    ``nakt train-student`` takes: ``training.num_workers`` x ``training.cpus_per_worker`` (+1 GPU each with
    ``use_gpu``), or with ``num_workers: 0`` one process of ``cpus_per_worker`` (Ray Train local mode, cheapest
    for tiny models). At most ``max_concurrent_trials`` run at once. ``scheduler``: ``asha`` stops trials whose
    ``metric`` lags at epochs ``grace_period`` x ``reduction_factor``^k; ``search_alg``: ``auto`` is Optuna (TPE)
    when installed, else random. The best trial's student is registered as ``tracking.registered_model`` with
    alias ``alias``.
    """

    num_samples: int = 8
    max_concurrent_trials: int = 1
    cpus_per_trial: float = 0.1
    metric: Literal["val_dice", "val_iou", "val_hd95", "val_nsd"] = "val_dice"
    mode: Literal["max", "min"] = "max"
    scheduler: Literal["asha", "none"] = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0
    search_alg: Literal["auto", "optuna", "random"] = "auto"
    seed: int = 0
    alias: str = "champion"
    space: dict[str, Any] = field(default_factory=dict)

    def _validate(self, p: str) -> None:
        from nakt_ray.search.tune import parse_space  # the space's semantics live with the search

        for key in ("num_samples", "max_concurrent_trials", "grace_period"):
            if getattr(self, key) < 1:
                _fail(f"{p}{key}", getattr(self, key), "an integer >= 1")
        if not 0 < self.cpus_per_trial <= 256:
            _fail(f"{p}cpus_per_trial", self.cpus_per_trial, "a number in (0, 256]; fractions are allowed")
        if self.reduction_factor <= 1:
            _fail(f"{p}reduction_factor", self.reduction_factor, "a number > 1 (ASHA keeps 1/reduction_factor)")
        if not self.alias or self.alias[0].isdigit() or not all(c.isalnum() or c in "_-" for c in self.alias):
            _fail(f"{p}alias", self.alias, "an MLflow alias: letters, digits, '_' or '-', not starting with a digit")
        parse_space(self.space, f"{p}space")


@dataclass(frozen=True)
class RunConfig:
    """A whole run: data, teachers, fusion, student, training, tracking and Ray resources."""

    teachers: tuple[TeacherConfig, ...]
    run_dir: str = "runs/nakt"
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher_training: TrainingConfig = field(default_factory=TrainingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    finetune: TrainingConfig = field(default_factory=lambda: TrainingConfig(epochs=10, lr=5e-4))
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def _validate(self, p: str) -> None:
        if not self.teachers:
            _fail(f"{p}teachers", [], "a list of at least one teacher")
        names = [t.name for t in self.teachers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            _fail(f"{p}teachers", names, f"unique teacher names (repeated: {', '.join(dupes)})")
        if self.fusion.weights is not None and len(self.fusion.weights) != len(self.teachers):
            _fail(f"{p}fusion.weights", list(self.fusion.weights),
                  f"{len(self.teachers)} weights, one per teacher ({', '.join(names)})")
        if self.tune.scheduler == "asha" and self.tune.grace_period > self.training.epochs:
            _fail(f"{p}tune.grace_period", self.tune.grace_period,
                  f"at most training.epochs ({self.training.epochs}): ASHA's first rung must fall within a trial")
        if self.tune.metric in ("val_hd95", "val_nsd") and self.tune.metric[4:] not in self.training.val_metrics:
            _fail(f"{p}tune.metric", self.tune.metric, f"a metric the trials compute: add "
                  f"'{self.tune.metric[4:]}' to training.val_metrics, or use val_dice or val_iou")
        if self.tune.space:
            from nakt_ray.search.tune import check_trials  # every trial the space can produce must be a valid config

            check_trials(self, f"{p}tune.space")

    # Paths derived from run_dir, in one place.
    def teacher_checkpoint(self, teacher: TeacherConfig) -> Path:
        return Path(teacher.checkpoint) if teacher.checkpoint else Path(self.run_dir) / "teachers" / teacher.name / "model.pt"

    @property
    def annotations_dir(self) -> Path | str:
        """``annotate.output`` (a URI stays a string: pathlib would fold its ``//``) or ``<run_dir>/annotations``."""
        if self.annotate.output and "://" in self.annotate.output:
            return self.annotate.output
        return Path(self.annotate.output) if self.annotate.output else Path(self.run_dir) / "annotations"

    @property
    def train_storage(self) -> str:
        """Ray Train's ``storage_path``: ``ray.storage_path`` (a URI stays as it is) or ``<run_dir>/ray_train``."""
        return self.ray.storage_path or str(Path(self.run_dir) / "ray_train")

    @property
    def student_checkpoint(self) -> Path:
        return Path(self.run_dir) / "student" / self.student.name / "model.pt"

    def teacher(self, name: str) -> TeacherConfig:
        for t in self.teachers:
            if t.name == name:
                return t
        raise ConfigError(f"no teacher named {name!r}; teachers in this config: {[t.name for t in self.teachers]}")

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)


def _check_arch(key: str, arch: str, args_key: str, arch_args: dict[str, Any]) -> None:
    from nakt_ray import zoo  # zoo imports only torch at module level

    valid = zoo.list_architectures()
    if arch not in valid:
        close = difflib.get_close_matches(arch, valid, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        _fail(key, arch, f"{hint}one of the zoo's architectures: {', '.join(valid)}")
    try:
        zoo.check_arch_args(arch, arch_args)
    except ValueError as err:
        raise ConfigError(f"config key '{args_key}': {err}") from None


# ----------------------------------------------------------------------------------------------------------------
# Generic conversion of plain data (from YAML) into the dataclasses above, checking types and unknown keys.


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list, each {_type_name(args[0])}"
        return f"a list of {len(args)} values ({', '.join(_type_name(a) for a in args)})"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        options = typing.get_args(tp)
        if value not in options or isinstance(value, bool) != any(isinstance(o, bool) for o in options):
            close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            _fail(key, value, hint + _type_name(tp))
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            _fail(key, value, _type_name(tp))
        non_null = [a for a in args if a is not type(None)]
        errors = []
        for arg in non_null:
            try:
                return _convert(arg, value, key)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        _fail(key, value, _type_name(tp))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            _fail(key, value, _type_name(tp))
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            _fail(key, value, _type_name(tp))
        return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            _fail(key, value, "a mapping with string keys")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            _fail(key, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(key, value, "an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(key, value, "a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(key, value, "a string")
        return value
    if tp is Any:
        return value
    raise TypeError(f"config type {tp!r} of '{key}' is not supported")  # a bug in this module, not user input


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix or "the config file's top level"
    if not isinstance(data, Mapping):
        raise ConfigError(f"config key '{where}': got {data!r}; expected a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    dot = f"{prefix}." if prefix else ""
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"unknown config key '{dot}{key}'; {hint}allowed keys here: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], f"{dot}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"config key '{dot}{name}' is required ({_type_name(hints[name])})")
    obj = cls(**kwargs)
    obj._validate(dot)
    return obj


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj


def from_dict(data: Mapping[str, Any]) -> RunConfig:
    """Validate plain data (as loaded from YAML) into a :class:`RunConfig`."""
    return _build(RunConfig, data, "")


def build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Validate plain data into any config dataclass of this module (e.g. a Ray Tune trial's dict)."""
    return _build(cls, data, prefix)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (value parsed as YAML) to plain config data, before validation.

    List items are addressed by index: ``teachers.0.epochs=3``.
    """
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy of plain data
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. training.epochs=3")
        path, raw = item.split("=", 1)
        _set_path(data, path.strip(), yaml.safe_load(raw), f"override {item!r}")
    return data


def set_values(data: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of plain config data with ``{"dotted.key": value}`` set (as :func:`apply_overrides` does, without
    parsing values as YAML), before validation; e.g. a search trial's sampled values."""
    data = yaml.safe_load(yaml.safe_dump(data))
    for path, value in values.items():
        _set_path(data, path, _to_plain(value), f"setting {path!r}")
    return data


def _set_path(data: dict[str, Any], path: str, value: Any, what: str) -> None:
    parts = path.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{what}: '{'.'.join(parts[:i + 1])}' is not a valid list index")
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise ConfigError(f"{what}: '{'.'.join(parts[:i])}' is not a mapping")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"{what}: '{path}' is not a valid list index")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"{what}: '{'.'.join(parts[:-1])}' is not a mapping")


def field_type(key: str, cls: type | None = None) -> Any:
    """The declared type of the dotted config key ``key`` (e.g. ``training.lr`` -> float), walking the dataclasses
    above: list items by index (``fusion.weights.0``, ``teachers.1.arch``), free mappings by any sub-key
    (``student.arch_args.channels`` -> Any). An unknown key raises :class:`ConfigError` with the closest match."""
    tp: Any = cls or RunConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        where = ".".join(parts[:i + 1])
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
            tp = args[0]  # X | None
        if dataclasses.is_dataclass(tp):
            names = [f.name for f in dataclasses.fields(tp)]
            if part not in names:
                close = difflib.get_close_matches(part, names, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise ConfigError(f"unknown config key '{where}'; {hint}allowed keys here: {', '.join(names)}")
            tp = typing.get_type_hints(tp)[part]
        elif typing.get_origin(tp) is tuple:
            items = typing.get_args(tp)
            if not part.isdigit() or (items[-1] is not Ellipsis and int(part) >= len(items)):
                raise ConfigError(f"config key '{where}': '{part}' is not a list index")
            tp = items[0] if items[-1] is Ellipsis else items[int(part)]
        elif typing.get_origin(tp) is dict or tp is Any:
            return Any
        else:
            raise ConfigError(f"unknown config key '{where}': '{'.'.join(parts[:i])}' has no sub-keys")
    return tp


def load(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load, override and validate a run config from a YAML file. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    try:
        return from_dict(apply_overrides(data, overrides or []))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def dump(cfg: RunConfig, path: str | Path) -> Path:
    """Write a config as YAML that :func:`load` reads back to an equal config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested plain data into ``{"a.b.c": value}`` (for MLflow parameters)."""
    if dataclasses.is_dataclass(data):
        data = _to_plain(data)
    out: dict[str, Any] = {}
    if isinstance(data, Mapping):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(data, (list, tuple)) and any(isinstance(v, (Mapping, list, tuple)) for v in data):
        for i, v in enumerate(data):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix.rstrip(".")] = data
    return out

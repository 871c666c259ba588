"""The run config's sections: one frozen, typed dataclass per stage, composed into :class:`RunConfig`.

Each dataclass checks its own ranges in ``_validate(prefix)`` (``prefix``: the section's dotted key, such as
``"teachers[1]."``), and :class:`RunConfig` checks the sections against each other; types, unknown and missing keys
are checked generically by ``convert.py``, which builds them. A bad value raises :class:`ConfigError`, whose message
names the key, the value and what is allowed. What ``tune.space`` may hold is checked by ``space.py``, when
``io.from_dict`` loads a whole run (it builds trial configs, so it sits above this module).

An example run config is in ``io.py``; every key is in ``docs/config.md``.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nakt_ray.config.convert import to_plain
from nakt_ray.config.data import DataConfig
from nakt_ray.config.fusion import FusionConfig
from nakt_ray.config.volume import VolumePreprocessConfig
from nakt_ray.errors import ConfigError, error, expected

# The student's default floor on optimisation steps (``training.min_steps``): the steps E3's students take (24
# epochs of 178 images, batch 8: 552), the floor E7 measured on small sets (docs/decisions.md, 74).
STUDENT_MIN_STEPS = 550


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
            raise error(ConfigError, f"config key '{p}size'",
                        expected(list(self.size), "two integers (height, width) between 16 and 8192"))


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

    ``min_steps`` is a floor on the optimisation steps of a run: when ``epochs`` passes over a small set give fewer
    steps, every epoch goes over the set several times, enough passes for at least ``min_steps`` steps in all (as
    nnU-Net's epochs are a fixed number of steps). The epoch stays the unit of the LR schedule, validation, best
    model, ``patience``, checkpoints and a search's ASHA budget; only its length grows. 0: one pass per epoch.
    The student's section (``training``) defaults to ``STUDENT_MIN_STEPS`` (550), teachers and fine-tuning to 0:
    E7 measured the floor on students (docs/decisions.md, 74).

    ``cache_mb`` (students): an annotation set whose decoded training columns take at most this many MiB is decoded
    and re-fused once and held in Ray's object store, and every epoch reshuffles it through a buffer of up to
    256 MiB of rows; a larger set streams from Parquet every epoch (file order shuffled, 4-batch buffer). 0 always
    streams. ``seed`` fixes initialisation, shuffles and augmentation.

    3D models (a 3D run's student, 3D teachers) train on patches of ``volume.patch_size``: ``patches_per_case``
    random patches per case per epoch, of which a share ``foreground_share`` is centred on a foreground voxel of a
    random class present (nnU-Net's oversampling; 0.33 as there); validation is a sliding window over whole
    volumes (Dice and IoU per class; HD95 and NSD in mm come from ``nakt evaluate``).
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
    min_steps: int = 0
    max_failures: int = 2
    seed: int = 0
    cache_mb: int = 1024
    patches_per_case: int = 4
    foreground_share: float = 0.33

    def _validate(self, p: str) -> None:
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise error(ConfigError, f"config key '{p}{key}'", expected(getattr(self, key), "an integer >= 1"))
        if not 0 < self.lr < 1:
            raise error(ConfigError, f"config key '{p}lr'", expected(self.lr, "a learning rate in (0, 1)"))
        if self.weight_decay < 0:
            raise error(ConfigError, f"config key '{p}weight_decay'", expected(self.weight_decay, "a number >= 0"))
        if self.num_workers < 0:
            raise error(ConfigError, f"config key '{p}num_workers'",
                        expected(self.num_workers, "an integer >= 0 (0 runs the loop in the driver)"))
        if not 0 < self.cpus_per_worker <= 256:
            raise error(ConfigError, f"config key '{p}cpus_per_worker'",
                        expected(self.cpus_per_worker, "a number in (0, 256]; fractions are allowed"))
        if self.torch_threads is not None and self.torch_threads < 1:
            raise error(ConfigError, f"config key '{p}torch_threads'",
                        expected(self.torch_threads, "an integer >= 1 or null"))
        for key in ("dice_weight", "ce_weight", "kl_weight", "hard_weight"):
            if getattr(self, key) < 0:
                raise error(ConfigError, f"config key '{p}{key}'", expected(getattr(self, key), "a number >= 0"))
        if self.dice_weight + self.ce_weight + self.kl_weight + self.hard_weight <= 0:
            raise error(ConfigError, f"config key '{p}dice_weight'",
                        expected(self.dice_weight, "loss weights (dice, ce, kl, hard) whose sum is > 0"))
        if not 0 <= self.augment_strength <= 3:
            raise error(ConfigError, f"config key '{p}augment_strength'",
                        expected(self.augment_strength, "a number in [0, 3] (1 is the default strength)"))
        if len(set(self.val_metrics)) != len(self.val_metrics):
            raise error(ConfigError, f"config key '{p}val_metrics'",
                        expected(list(self.val_metrics), "distinct names among hd95, nsd"))
        if self.nsd_tolerance <= 0:
            raise error(ConfigError, f"config key '{p}nsd_tolerance'",
                        expected(self.nsd_tolerance, "a tolerance in pixels > 0"))
        if self.cache_mb < 0:
            raise error(ConfigError, f"config key '{p}cache_mb'",
                        expected(self.cache_mb, "an integer >= 0 (MiB; 0 always streams)"))
        if self.patches_per_case < 1:
            raise error(ConfigError, f"config key '{p}patches_per_case'",
                        expected(self.patches_per_case, "an integer >= 1 (patches per case per epoch)"))
        if not 0 <= self.foreground_share <= 1:
            raise error(ConfigError, f"config key '{p}foreground_share'",
                        expected(self.foreground_share, "a share in [0, 1] of patches centred on foreground"))
        if self.min_steps < 0:
            raise error(ConfigError, f"config key '{p}min_steps'",
                        expected(self.min_steps, "an integer >= 0 (optimisation steps; 0: one pass per epoch)"))
        if self.patience is not None and self.patience < 1:
            raise error(ConfigError, f"config key '{p}patience'",
                        expected(self.patience, "an integer >= 1 or null (no early stopping)"))
        if self.max_failures < -1:
            raise error(ConfigError, f"config key '{p}max_failures'",
                        expected(self.max_failures, "an integer >= 0, or -1 for unlimited restarts"))
        if self.temperature <= 0:
            raise error(ConfigError, f"config key '{p}temperature'", expected(self.temperature, "a number > 0"))


@dataclass(frozen=True)
class TeacherConfig:
    """One teacher: how it is trained (``arch``, ``train_data``) and how it annotates (``checkpoint``, pool).

    ``checkpoint`` is where the teacher comes from: a nakt model file (default
    ``<run_dir>/teachers/<name>/model.pt``, where ``nakt train-teacher`` writes it), a TorchScript or ONNX file with
    a description YAML beside it (``<file>.yaml``), a teacher YAML, an MLflow model URI (``models:/name@alias``,
    ``runs:/<id>/model``), a MONAI bundle (folder or ``.zip``) or a teacher YAML with ``url:`` naming an inference
    endpoint; see ``nakt_ray/teachers/``. ``actors``, ``batch_size``, ``num_cpus`` and
    ``num_gpus`` size this teacher's Ray Data actor pool; ``num_gpus`` null means 1 when the cluster has GPUs and
    0 otherwise (fractions share a GPU). ``sliding_window`` runs MONAI sliding-window inference with the
    teacher's input size as window (``overlap``, gaussian blending) instead of resampling the image;
    ``tta_flips`` averages over flips of these axes (-1 width, -2 height, -3 depth for 3D teachers); ``amp`` is the
    autocast type on GPU. ``slice_axis``: the axis of a volume ``[D, H, W]`` along which a 2D teacher annotates it
    slice by slice (0: the D axis, axial slices after RAS reorientation).
    ``trust_pickle``: an MLflow ``checkpoint`` that is not in nakt's own flavor (e.g. logged with
    ``mlflow.pytorch.log_model``) is loaded by unpickling it, which runs any code the pickle names; it is refused
    unless this is true (README, "Untrusted models"); a MONAI bundle whose config names code outside MONAI is
    refused unless this is true; so is an nnU-Net checkpoint that holds more than tensors and plain data. Only for
    MLflow URIs, MONAI bundles and nnU-Net folders.
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
    trust_pickle: bool = False
    slice_axis: Literal[0, 1, 2] = 0

    def _validate(self, p: str) -> None:
        if not self.name or not all(c.isalnum() or c in "_-." for c in self.name):
            raise error(ConfigError, f"config key '{p}name'",
                        expected(self.name, "a non-empty name of letters, digits, '_', '-' or '.'"))
        _check_arch(f"{p}arch", self.arch, f"{p}arch_args", self.arch_args)
        if self.trust_pickle and not _may_run_code(self.checkpoint):
            # Only MLflow models (unpickling), MONAI bundles (their configs' code) and nnU-Net folders (pickled
            # checkpoints, classes named in plans) ever run code when loaded; consent given elsewhere is a misread.
            raise error(ConfigError, f"config key '{p}trust_pickle'",
                        f"is true but checkpoint {self.checkpoint!r} is neither an MLflow URI (models:/... or "
                        "runs:/...), an nnU-Net folder (with plans.json or dataset.json, or a teacher YAML with "
                        "nnunet:) nor a MONAI bundle (a folder with configs/, or a .zip); only those can run code when "
                        "loaded: remove the key")
        if not 0 <= self.overlap < 1:
            raise error(ConfigError, f"config key '{p}overlap'", expected(self.overlap, "a number in [0, 1)"))
        if any(a not in (-1, -2, -3) for a in self.tta_flips) or len(set(self.tta_flips)) != len(self.tta_flips):
            raise error(ConfigError, f"config key '{p}tta_flips'",
                        expected(list(self.tta_flips), "distinct axes among -1 (width), -2 (height) and, for 3D "
                                 "teachers, -3 (depth), e.g. [-1]"))
        if self.actors < 1:
            raise error(ConfigError, f"config key '{p}actors'", expected(self.actors, "an integer >= 1"))
        if self.batch_size < 1:
            raise error(ConfigError, f"config key '{p}batch_size'", expected(self.batch_size, "an integer >= 1"))
        if not 0 < self.num_cpus <= 256:
            raise error(ConfigError, f"config key '{p}num_cpus'",
                        expected(self.num_cpus, "a number in (0, 256]; fractions are allowed"))
        if self.num_gpus is not None and not 0 <= self.num_gpus <= 16:
            raise error(ConfigError, f"config key '{p}num_gpus'",
                        expected(self.num_gpus, "a number in [0, 16] (fractions share a GPU) or null"))


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
            raise error(ConfigError, f"config key '{p}name'",
                        expected(self.name, "a non-empty name of letters, digits, '_', '-' or '.'"))
        _check_arch(f"{p}arch", self.arch, f"{p}arch_args", self.arch_args)


# The shortest annotate.keep_teachers_s: a kept teacher host must outlive the seconds between a run creating it and
# the run's first batch reaching it.
MIN_KEEP_TEACHERS_S = 30.0


@dataclass(frozen=True)
class AnnotateConfig:
    """The annotation run. ``output`` defaults to ``<run_dir>/annotations``; it may be an object-store URI
    (``s3://bucket/prefix``, ``gs://...``, ``file:///...``; see ``nakt_ray/runtime/storage.py``). ``prob_dtype``: how
    probability maps are stored, uint8 (p x 255, 4x smaller than float32; the default) or float16.

    ``pools`` lays out the teachers' actors: ``per_teacher``, an actor pool per teacher sized by its ``actors``,
    ``num_cpus`` and ``num_gpus``; ``shared``, one pool whose actors each host every teacher (``shared_actors`` of
    them; default one per GPU, else one per 4 CPUs, which share the CPUs as torch threads); ``inline``, the shared
    layout with actors that also decode and fuse (a batch stays in one process), one per GPU, else one per CPU
    with one thread (volume runs and kept teachers decode in tasks and keep only this sizing); ``auto`` (the
    default) is ``per_teacher`` with GPUs and, without, ``inline`` from 256 images (24 volumes), else ``shared``
    (decisions 39, 76).

    ``keep_teachers_s``: 0 (the default) starts the teachers' actors with the run and ends them with it. Above 0
    (at least 30), the teachers stay loaded on the cluster, in the same layout and resources, until no run has
    used them for that many seconds: the next run with the same teachers skips their start (~4.5 s of a small
    job on 2 cores; decision 75). Meant for a running cluster (``ray.address``), where they hold their CPUs and
    GPUs while they wait; ``nakt hosts --stop`` frees them at once."""

    output: str | None = None
    prob_dtype: Literal["uint8", "float16"] = "uint8"
    decode_batch_size: int = 16
    rows_per_file: int = 256
    pools: Literal["auto", "per_teacher", "shared", "inline"] = "auto"
    shared_actors: int | None = None
    keep_teachers_s: float = 0.0

    def _validate(self, p: str) -> None:
        if self.keep_teachers_s and self.keep_teachers_s < MIN_KEEP_TEACHERS_S:
            raise error(ConfigError, f"config key '{p}keep_teachers_s'",
                        expected(self.keep_teachers_s, f"0 (the teachers go with the run) or at least "
                                                       f"{MIN_KEEP_TEACHERS_S:g} seconds"))
        if self.shared_actors is not None and self.shared_actors < 1:
            raise error(ConfigError, f"config key '{p}shared_actors'",
                        expected(self.shared_actors, "an integer >= 1, or null (sized by the layout)"))
        if self.decode_batch_size < 1:
            raise error(ConfigError, f"config key '{p}decode_batch_size'",
                        expected(self.decode_batch_size, "an integer >= 1"))
        if self.rows_per_file < 1:
            raise error(ConfigError, f"config key '{p}rows_per_file'", expected(self.rows_per_file, "an integer >= 1"))


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow. ``uri`` null means ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<run_dir>/mlflow.db``."""

    uri: str | None = None
    experiment: str = "nakt-ray"
    registered_model: str = "nakt-student"
    alias: str = "candidate"

    def _validate(self, p: str) -> None:
        if not self.experiment:
            raise error(ConfigError, f"config key '{p}experiment'",
                        expected(self.experiment, "a non-empty experiment name"))
        if not self.registered_model:
            raise error(ConfigError, f"config key '{p}registered_model'",
                        expected(self.registered_model, "a non-empty model name"))
        if not self.alias or self.alias[0].isdigit() or not all(c.isalnum() or c in "_-" for c in self.alias):
            raise error(ConfigError, f"config key '{p}alias'",
                        expected(self.alias, "an MLflow alias: letters, digits, '_' or '-', not starting with a digit"))


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
            raise error(ConfigError, f"config key '{p}storage_path'",
                        expected(self.storage_path, "a path, a URI such as s3://bucket/prefix, or null"))
        for key in ("num_cpus", "num_gpus"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise error(ConfigError, f"config key '{p}{key}'", expected(value, "an integer >= 0 or null"))


@dataclass(frozen=True)
class TuneConfig:
    """A Ray Tune search over student training (``nakt tune``; ``nakt_ray/search/tune.py``).

    ``space`` maps dotted config keys (``training.*``, ``student.*``, ``fusion.*``) to distributions, e.g.
    ``{"training.lr": {"loguniform": [1e-4, 1e-2]}, "fusion.weights": {"simplex": 3}}``; kinds: ``choice``,
    ``uniform``, ``loguniform``, ``randint`` (both ends included) and, for ``fusion.weights`` only, ``simplex``
    (one weight per teacher, summing to 1); ``when`` limits an entry to trials where other choices hold
    (``{"choice": [[8, 16]], "when": {"student.arch": "unet"}}``). Every trial is the base config with its sampled
    values set, and must validate; this is checked at load time (the language: ``nakt_ray/config/space.py``).

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
        # (``space`` is checked with the whole run by ``space.check_trials``: a trial is a RunConfig)
        for key in ("num_samples", "max_concurrent_trials", "grace_period"):
            if getattr(self, key) < 1:
                raise error(ConfigError, f"config key '{p}{key}'", expected(getattr(self, key), "an integer >= 1"))
        if not 0 < self.cpus_per_trial <= 256:
            raise error(ConfigError, f"config key '{p}cpus_per_trial'",
                        expected(self.cpus_per_trial, "a number in (0, 256]; fractions are allowed"))
        if self.reduction_factor <= 1:
            raise error(ConfigError, f"config key '{p}reduction_factor'",
                        expected(self.reduction_factor, "a number > 1 (ASHA keeps 1/reduction_factor)"))
        if not self.alias or self.alias[0].isdigit() or not all(c.isalnum() or c in "_-" for c in self.alias):
            raise error(ConfigError, f"config key '{p}alias'",
                        expected(self.alias, "an MLflow alias: letters, digits, '_' or '-', not starting with a digit"))


@dataclass(frozen=True)
class RunConfig:
    """A whole run: data, teachers, fusion, student, training, tracking and Ray resources.

    A run is 2D or 3D as its student is (``student.arch_args.spatial_dims``, :attr:`spatial_dims`): a 2D run reads
    images (and NIfTI slices) through ``preprocess``, a 3D run reads volumes through ``volume`` (docs/decisions.md,
    51).
    """

    teachers: tuple[TeacherConfig, ...]
    run_dir: str = "runs/nakt"
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    volume: VolumePreprocessConfig = field(default_factory=VolumePreprocessConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher_training: TrainingConfig = field(default_factory=TrainingConfig)
    # The student's floor of 550 optimisation steps: small transferal sets (docs/decisions.md, 74; E7).
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(min_steps=STUDENT_MIN_STEPS))
    finetune: TrainingConfig = field(default_factory=lambda: TrainingConfig(epochs=10, lr=5e-4))
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def _validate(self, p: str) -> None:
        if not self.teachers:
            raise error(ConfigError, f"config key '{p}teachers'", expected([], "a list of at least one teacher"))
        names = [t.name for t in self.teachers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise error(ConfigError, f"config key '{p}teachers'",
                        expected(names, f"unique teacher names (repeated: {', '.join(dupes)})"))
        if self.fusion.weights is not None and len(self.fusion.weights) != len(self.teachers):
            raise error(ConfigError, f"config key '{p}fusion.weights'",
                        expected(list(self.fusion.weights),
                                 f"{len(self.teachers)} weights, one per teacher ({', '.join(names)})"))
        if self.fusion.class_weights is not None:
            n_labels = len(self.data.labels)
            rows = self.fusion.class_weights
            if len(rows) != len(self.teachers) or any(len(r) != n_labels for r in rows):
                raise error(ConfigError, f"config key '{p}fusion.class_weights'", expected(
                    [list(r) for r in rows],
                    f"{len(self.teachers)} rows, one per teacher ({', '.join(names)}), of {n_labels} weights, one "
                    f"per label of data.labels {list(self.data.labels)}"))
        if self.tune.scheduler == "asha" and self.tune.grace_period > self.training.epochs:
            raise error(ConfigError, f"config key '{p}tune.grace_period'",
                        expected(self.tune.grace_period, f"at most training.epochs ({self.training.epochs}): "
                                 "ASHA's first rung must fall within a trial"))
        if self.tune.metric in ("val_hd95", "val_nsd") and self.tune.metric[4:] not in self.training.val_metrics:
            raise error(ConfigError, f"config key '{p}tune.metric'",
                        expected(self.tune.metric, f"a metric the trials compute: add '{self.tune.metric[4:]}' "
                                 "to training.val_metrics, or use val_dice or val_iou"))
        if self.spatial_dims == 3:
            from nakt_ray import zoo

            volume_teachers = any(zoo.spatial_dims_of(t.arch, t.arch_args) == 3 for t in self.teachers)
            for key, tc in (("training", self.training), ("finetune", self.finetune),
                            ("teacher_training", self.teacher_training if volume_teachers else None)):
                if tc is not None and tc.val_metrics:
                    raise error(ConfigError, f"config key '{p}{key}.val_metrics'",
                                expected(list(tc.val_metrics), "[] for 3D models: their validation scores Dice and "
                                         "IoU on whole volumes; HD95 and NSD in mm come from `nakt evaluate`"))
            try:
                zoo.check_spatial_size(self.student.arch, self.volume.patch_size, self.student.arch_args)
            except ValueError as err:
                raise error(ConfigError, f"config key '{p}volume.patch_size'", str(err)) from None

    @property
    def spatial_dims(self) -> int:
        """2 or 3: the student's ``spatial_dims``; a 3D run reads volumes (``volume``), a 2D run images."""
        from nakt_ray import zoo

        return zoo.spatial_dims_of(self.student.arch, self.student.arch_args)

    @property
    def model_input_size(self) -> tuple[int, ...]:
        """What the student sees: ``preprocess.size`` (H, W) in 2D, ``volume.patch_size`` (D, H, W) in 3D."""
        return tuple(self.volume.patch_size) if self.spatial_dims == 3 else tuple(self.preprocess.size)

    # Paths derived from run_dir, in one place.
    def teacher_checkpoint(self, teacher: TeacherConfig) -> Path:
        if teacher.checkpoint:
            return Path(teacher.checkpoint)
        return Path(self.run_dir) / "teachers" / teacher.name / "model.pt"

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
        return to_plain(self)


def _may_run_code(checkpoint: str | None) -> bool:
    """Whether a teacher source is of a kind that can run code when loaded (``trust_pickle`` applies): an MLflow
    URI, a MONAI bundle (a ``.zip``, or a folder holding ``configs/``), or an nnU-Net folder (``plans.json`` or
    ``dataset.json`` at its top or one level down) or teacher YAML (``nnunet:``; teachers/kinds/nnunet.py)."""
    source = str(checkpoint or "")
    path = Path(source)
    if source and path.is_dir():
        folders = (path, *(q for q in path.iterdir() if q.is_dir()))
        if (path / "configs").is_dir() or any((f / "plans.json").is_file() or (f / "dataset.json").is_file()
                                              for f in folders):
            return True
    if path.suffix.lower() in (".yaml", ".yml") and path.is_file():
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            data = None  # the teacher loader says why it cannot be read
        return isinstance(data, dict) and ("nnunet" in data or data.get("kind") == "nnunet")
    return source.startswith(("models:/", "runs:/")) or source.endswith(".zip")


def _check_arch(key: str, arch: str, args_key: str, arch_args: dict[str, Any]) -> None:
    from nakt_ray import zoo  # zoo imports only torch at module level

    valid = zoo.list_architectures()
    if arch not in valid:
        close = difflib.get_close_matches(arch, valid, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise error(ConfigError, f"config key '{key}'",
                    expected(arch, f"{hint}one of the zoo's architectures: {', '.join(valid)}"))
    try:
        zoo.check_arch_args(arch, arch_args)
    except ValueError as err:
        raise error(ConfigError, f"config key '{args_key}'", str(err)) from None


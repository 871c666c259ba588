"""The run configuration: one frozen, typed dataclass per stage composed into :class:`RunConfig`, read from YAML
(data only), overridden from the command line, validated at load time.

Takes in: a YAML file or a mapping, plus ``KEY=VALUE`` overrides. Gives out: a :class:`RunConfig`, or a
:class:`ConfigError` naming the key, the value and what is allowed.

Modules, low to high: ``convert`` (plain data <-> dataclasses, types checked), ``schema`` (the sections and their
ranges), ``overrides`` (dotted keys set in plain data), ``space`` (the language of ``tune.space``: its syntax, and
the trial configs it produces), ``io`` (``from_dict``, ``load``, ``dump``: the boundary where a whole run is
validated, its search space included), ``docs`` (the key table of docs/config.md), ``volume`` (volume
preprocessing: target spacing, orientation, modality normalisation, patch size: the ``volume`` section of a 3D
run). Imports the zoo (architecture names and arguments are checked here) and no Ray: the search itself lives in
``nakt_ray.search``.
"""
from nakt_ray.config.convert import build, flatten
from nakt_ray.config.io import dump, from_dict, load
from nakt_ray.config.overrides import apply_overrides, field_type, set_values
from nakt_ray.config.schema import (
    STUDENT_MIN_STEPS,
    AnnotateConfig,
    DataConfig,
    FusionConfig,
    PreprocessConfig,
    RayConfig,
    RunConfig,
    StudentConfig,
    TeacherConfig,
    TrackingConfig,
    TrainingConfig,
    TuneConfig,
)
from nakt_ray.config.volume import CTStatistics, VolumePreprocessConfig
from nakt_ray.errors import ConfigError

__all__ = [
    "STUDENT_MIN_STEPS", "AnnotateConfig", "CTStatistics", "ConfigError", "DataConfig", "FusionConfig",
    "PreprocessConfig", "RayConfig", "RunConfig", "StudentConfig", "TeacherConfig", "TrackingConfig",
    "TrainingConfig", "TuneConfig", "VolumePreprocessConfig", "apply_overrides", "build", "dump", "field_type",
    "flatten", "from_dict", "load", "set_values",
]

"""The run configuration: one frozen, typed dataclass per stage composed into :class:`RunConfig`, read from YAML
(data only), overridden from the command line, validated at load time.

Takes in: a YAML file or a mapping, plus ``KEY=VALUE`` overrides. Gives out: a :class:`RunConfig`, or a
:class:`ConfigError` naming the key, the value and what is allowed. Imports only the zoo (architecture names and
arguments are checked here) and the search-space language.
"""
from nakt_ray.config.schema import (
    AnnotateConfig,
    ConfigError,
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
    apply_overrides,
    build,
    dump,
    field_type,
    flatten,
    from_dict,
    load,
    set_values,
)

__all__ = [
    "AnnotateConfig", "ConfigError", "DataConfig", "FusionConfig", "PreprocessConfig", "RayConfig", "RunConfig",
    "StudentConfig", "TeacherConfig", "TrackingConfig", "TrainingConfig", "TuneConfig", "apply_overrides", "build",
    "dump", "field_type", "flatten", "from_dict", "load", "set_values",
]

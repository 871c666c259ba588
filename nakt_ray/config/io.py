"""One YAML file describes a whole run; this module reads it into a validated :class:`RunConfig` and writes it back.

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

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from nakt_ray.config.convert import build
from nakt_ray.config.overrides import apply_overrides
from nakt_ray.config.schema import RunConfig
from nakt_ray.config.space import check_trials
from nakt_ray.errors import ConfigError, error


def from_dict(data: Mapping[str, Any]) -> RunConfig:
    """Validate plain data (as loaded from YAML) into a :class:`RunConfig`: the sections and their relations, then
    ``tune.space`` (every trial the space can produce must itself be a valid config)."""
    cfg = build(RunConfig, data, "")
    if cfg.tune.space:
        check_trials(cfg, "tune.space")
    return cfg


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
        raise error(ConfigError, str(path), str(err)) from None


def dump(cfg: RunConfig, path: str | Path) -> Path:
    """Write a config as YAML that :func:`load` reads back to an equal config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path

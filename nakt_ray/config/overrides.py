"""Setting dotted config keys in plain config data before it is validated: ``KEY=VALUE`` overrides from the command
line, a search trial's sampled values, and the declared type of a dotted key.

A dotted key addresses list items by index (``teachers.0.epochs``, ``fusion.weights.1``); the data is copied, never
changed in place, and nothing is validated here: :func:`nakt_ray.config.from_dict` does that afterwards, so an
override is checked exactly as the same value written in the file would be.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any

import yaml

from nakt_ray.config.convert import to_plain
from nakt_ray.config.schema import RunConfig
from nakt_ray.errors import ConfigError, error


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (value parsed as YAML) to plain config data, before validation.

    List items are addressed by index: ``teachers.0.epochs=3``.
    """
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy of plain data
    for item in overrides:
        if "=" not in item:
            raise error(ConfigError, f"override {item!r}", "expected KEY=VALUE, e.g. training.epochs=3")
        path, raw = item.split("=", 1)
        _set_path(data, path.strip(), yaml.safe_load(raw), f"override {item!r}")
    return data


def set_values(data: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of plain config data with ``{"dotted.key": value}`` set (as :func:`apply_overrides` does, without
    parsing values as YAML), before validation; e.g. a search trial's sampled values."""
    data = yaml.safe_load(yaml.safe_dump(data))
    for path, value in values.items():
        _set_path(data, path, to_plain(value), f"setting {path!r}")
    return data


def _set_path(data: dict[str, Any], path: str, value: Any, what: str) -> None:
    """Set ``value`` at the dotted ``path`` of ``data``, creating missing mappings on the way (a section the file
    leaves out); ``what`` names the override in the error when the path runs through a scalar or a bad index."""
    parts = path.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise error(ConfigError, what, f"'{'.'.join(parts[:i + 1])}' is not a valid list index")
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise error(ConfigError, what, f"'{'.'.join(parts[:i])}' is not a mapping")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise error(ConfigError, what, f"'{path}' is not a valid list index")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise error(ConfigError, what, f"'{'.'.join(parts[:-1])}' is not a mapping")


def field_type(key: str, cls: type | None = None) -> Any:
    """The declared type of the dotted config key ``key`` (e.g. ``training.lr`` -> float) in ``cls`` (default
    :class:`RunConfig`), walking its dataclasses: list items by index (``fusion.weights.0``, ``teachers.1.arch``),
    free mappings by any sub-key (``student.arch_args.channels`` -> Any). An unknown key raises
    :class:`ConfigError` with the closest match."""
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
                raise error(ConfigError, f"config key '{where}'", f"'{part}' is not a list index")
            tp = items[0] if items[-1] is Ellipsis else items[int(part)]
        elif typing.get_origin(tp) is dict or tp is Any:
            return Any
        else:
            raise error(ConfigError, f"unknown config key '{where}'", f"'{'.'.join(parts[:i])}' has no sub-keys")
    return tp

"""Plain data (as YAML gives it) into frozen dataclasses and back, checking types and unknown keys on the way in.

Generic over any frozen dataclass whose fields are typed with ``bool``, ``int``, ``float``, ``str``, ``Any``,
``Literal[...]``, ``X | None``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``dict[str, Any]`` or another such dataclass;
after a dataclass is built, its own ``_validate(prefix)`` checks ranges and relations (``prefix`` is the dotted
path of the section, e.g. ``"teachers[1]."``). It knows nothing of the run config's sections (``schema.py``), so
those sections, and any other module's dataclasses (a teacher's description file), are built by the same code.

Errors name the key as a dotted path with list indices (``teachers[1].arch``)::

    config key 'training.epochs': got 'ten'; expected an integer
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from nakt_ray.errors import ConfigError, error, expected


def type_name(tp: Any) -> str:
    """What a value of the field type ``tp`` must be, in words (``"a list, each an integer"``); the wording of
    the type errors and of the key table in ``docs/config.md``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(type_name(a) for a in args) + " or null"
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list, each {type_name(args[0])}"
        return f"a list of {len(args)} values ({', '.join(type_name(a) for a in args)})"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, key: str) -> Any:
    """``value`` as the field type ``tp`` (lists become tuples, ints in float fields floats), or ConfigError."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        options = typing.get_args(tp)
        # (True == 1 in Python: a bool is a valid option only where the options are bools)
        if value not in options or isinstance(value, bool) != any(isinstance(o, bool) for o in options):
            close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise error(ConfigError, f"config key '{key}'", expected(value, hint + type_name(tp)))
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise error(ConfigError, f"config key '{key}'", expected(value, type_name(tp)))
        non_null = [a for a in args if a is not type(None)]
        errors = []
        for arg in non_null:
            try:
                return _convert(arg, value, key)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:  # X | None: the error of X says more than "X or null"
            raise errors[0]
        raise error(ConfigError, f"config key '{key}'", expected(value, type_name(tp)))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise error(ConfigError, f"config key '{key}'", expected(value, type_name(tp)))
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise error(ConfigError, f"config key '{key}'", expected(value, type_name(tp)))
        return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise error(ConfigError, f"config key '{key}'", expected(value, "a mapping with string keys"))
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise error(ConfigError, f"config key '{key}'", expected(value, "true or false"))
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise error(ConfigError, f"config key '{key}'", expected(value, "an integer"))
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error(ConfigError, f"config key '{key}'", expected(value, "a number"))
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise error(ConfigError, f"config key '{key}'", expected(value, "a string"))
        return value
    if tp is Any:
        return value
    raise TypeError(f"config type {tp!r} of '{key}' is not supported")  # a bug in a dataclass, not user input


def build(cls: type, data: Any, prefix: str = "", defaults: Any = None) -> Any:
    """Validate plain data into the dataclass ``cls`` (a config section, a Ray Tune trial's dict, a teacher's
    description): unknown and missing keys, types, then ``cls._validate``. ``prefix`` is the dotted key of ``data``
    in the file it came from (``""`` at the top level), for the messages.

    ``defaults``: an instance of ``cls`` whose values stand for the keys ``data`` leaves out (else the class's
    own defaults). A section whose field has its own default instance (``training``, ``finetune``: a
    TrainingConfig with other values) is built on it, so that naming one key keeps the section's other defaults."""
    where = prefix or "the config file's top level"
    if not isinstance(data, Mapping):
        raise error(ConfigError, f"config key '{where}'", expected(data, "a mapping of keys to values"))
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
        if name in data and dataclasses.is_dataclass(hints[name]) and f.default_factory is not dataclasses.MISSING:
            kwargs[name] = build(hints[name], data[name], f"{dot}{name}", defaults=f.default_factory())
        elif name in data:
            kwargs[name] = _convert(hints[name], data[name], f"{dot}{name}")
        elif defaults is not None:
            kwargs[name] = getattr(defaults, name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"config key '{dot}{name}' is required ({type_name(hints[name])})")
    obj = cls(**kwargs)
    obj._validate(dot)
    return obj


def to_plain(obj: Any) -> Any:
    """Dataclasses as dicts, tuples as lists, recursively: data ``yaml.safe_dump`` and :func:`build` take back."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested plain data (or a dataclass) into ``{"a.b.c": value}`` (for MLflow parameters). Lists of
    scalars stay one value (``preprocess.size: [128, 128]``); lists of sections are indexed (``teachers.1.arch``)."""
    if dataclasses.is_dataclass(data):
        data = to_plain(data)
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

"""The errors nakt raises for bad input, one type per failure kind, and the one way their messages are worded.

Every message says *where* (a config key, a file, a teacher and its source), *what* was found and what was
*expected*, so a user can fix the input without reading code::

    raise error(ConfigError, "config key 'training.lr'", expected(-1.0, "a number > 0"))
    # ConfigError: config key 'training.lr': got -1.0; expected a number > 0

A bad *record* inside a large run (one unreadable image, one NaN prediction) is not raised to the user: the stage
catches it, writes it as an error row with the reason, and goes on (see ``docs/annotations.md``).
"""
from __future__ import annotations

from typing import Any, TypeVar

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ExportError",
    "NaktError",
    "TeacherLoadError",
    "TeacherOutputError",
    "error",
    "expected",
]


class NaktError(ValueError):
    """Bad input: the message names where, what was found and what was expected."""


class ConfigError(NaktError):
    """A configuration value that is missing, unknown, of the wrong type or out of range."""


class DataError(NaktError):
    """An input file (image, mask, volume) that cannot be read or does not fit the run."""


class CheckpointError(NaktError):
    """A nakt model file that cannot be read or whose weights do not fit its architecture."""


class TeacherLoadError(NaktError):
    """A teacher that cannot be found, loaded, described or probed: raised before any work starts."""


class TeacherOutputError(NaktError):
    """A teacher's prediction that cannot be used (NaN, wrong class count or size, probabilities that are not):
    raised at prediction time, for the batch at hand."""


class ExportError(NaktError):
    """An export whose file cannot be written or does not reproduce the model within tolerance."""


E = TypeVar("E", bound=NaktError)


def error(kind: type[E], where: str, message: str) -> E:
    """The error ``kind`` with the message ``'<where>: <message>'``; raise it (``raise error(...)``)."""
    return kind(f"{where}: {message}")


def expected(value: Any, allowed: str) -> str:
    """``"got <value>; expected <allowed>"``: the usual second half of a message."""
    return f"got {value!r}; expected {allowed}"

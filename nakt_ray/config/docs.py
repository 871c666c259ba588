"""The key table of docs/config.md, generated from the config dataclasses (so the docs cannot drift).

    .venv/bin/python -m nakt_ray.config.docs     # rewrites the table under "## All keys" in docs/config.md

``tests/test_config.py`` fails when the committed table differs from what this renders.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from nakt_ray import config
from nakt_ray.config.convert import type_name

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"
HEADER = "## All keys"


def _rows(cls: type, prefix: str, defaults: Any = None) -> list[tuple[str, str, str]]:
    """Rows of ``cls``'s keys; ``defaults`` is the section's default instance where it is not the class's own
    (e.g. ``finetune`` is a TrainingConfig with other epochs and lr)."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        inner = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else None
        if dataclasses.is_dataclass(tp):
            rows += _rows(tp, f"{key}.", _default(f))
            continue
        if inner is not None and dataclasses.is_dataclass(inner):  # a list of sections, e.g. teachers
            rows += _rows(inner, f"{key}[].")
            continue
        value = getattr(defaults, f.name) if defaults is not None else _default(f)
        text = "(required)" if value is dataclasses.MISSING else str(list(value) if isinstance(value, tuple) else value)
        rows.append((key, type_name(tp), text))
    return rows


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def key_table() -> str:
    # teachers first: the one required section
    rows = _rows(config.RunConfig, "")
    rows.sort(key=lambda r: not r[0].startswith("teachers"))
    lines = ["| key | type | default |", "|---|---|---|"]
    lines += [f"| `{k}` | {t} | `{d}` |" for k, t, d in rows]
    return "\n".join(lines) + "\n"


def render(text: str) -> str:
    """``text`` (docs/config.md) with its key table replaced by the current one."""
    head, sep, _ = text.partition(HEADER)
    if not sep:
        raise ValueError(f"{DOC} has no '{HEADER}' section")
    return f"{head}{HEADER}\n\n{key_table()}"


if __name__ == "__main__":
    DOC.write_text(render(DOC.read_text()))
    print(f"written: {DOC}")

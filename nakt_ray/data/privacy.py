"""Pseudonymous case ids: a keyed hash replaces each case's id wherever it leaves the input.

A ``case_id`` is the image's path under ``images/`` without its extension (``readers.list_cases``), and DICOM
exports are often named after the patient. With ``data.pseudonymize: true`` (or ``nakt predict --pseudonymize``)
each case becomes ``case-<20 hex>``, an HMAC-SHA256 of its id under a secret key, keeping the ``#<slice>`` suffix
of volume slices. The hash is keyed so that nobody without the key can test a guessed patient id against it, and
stable so that a resumed run, a student's evaluation and a later prediction give a case the same pseudonym.

What changes downstream when a case is pseudonymous: its ``case_id`` everywhere (Parquet, ``errors.json``,
evaluation tables, prediction file names, MLflow artifacts), the Parquet ``source`` column (the pseudonym instead
of the file's path), and error messages (the case's file paths, file names and original id are replaced by the
pseudonym: :func:`scrub`). Patient attributes of DICOM headers are never read (``readers.py`` reads pixel and
geometry tags only).

The key comes from the environment, never from a config file: ``NAKT_PSEUDONYM_KEY`` (the key itself) or
``NAKT_PSEUDONYM_KEY_FILE`` (a file holding it, e.g. a mounted Kubernetes Secret). It must be at least 16 bytes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path

from nakt_ray.data.readers import Case
from nakt_ray.errors import ConfigError, error

KEY_ENV = "NAKT_PSEUDONYM_KEY"
KEY_FILE_ENV = "NAKT_PSEUDONYM_KEY_FILE"
MIN_KEY_BYTES = 16
PREFIX = "case-"


def pseudonym_key(environ: Mapping[str, str] | None = None) -> bytes:
    """The pseudonymisation key from ``NAKT_PSEUDONYM_KEY`` or the file named by ``NAKT_PSEUDONYM_KEY_FILE``."""
    env = os.environ if environ is None else environ
    if env.get(KEY_ENV):
        key = env[KEY_ENV].encode()
    elif env.get(KEY_FILE_ENV):
        path = Path(env[KEY_FILE_ENV])
        try:
            key = path.read_bytes().strip()
        except OSError as err:
            raise error(ConfigError, f"pseudonymisation key file {str(path)!r} (from {KEY_FILE_ENV})",
                        f"cannot be read: {err.strerror}") from None
    else:
        raise error(ConfigError, "data.pseudonymize", f"needs a secret key: set {KEY_ENV} (the key) or "
                    f"{KEY_FILE_ENV} (a file holding it, e.g. a mounted Secret); it is never read from the config")
    if len(key) < MIN_KEY_BYTES:
        raise error(ConfigError, f"pseudonymisation key ({KEY_ENV} / {KEY_FILE_ENV})",
                    f"has {len(key)} bytes; expected at least {MIN_KEY_BYTES}")
    return key


def pseudonym(case_id: str, key: bytes) -> str:
    """``case-<20 hex>`` for ``case_id``, keeping a volume slice's ``#<slice>`` suffix."""
    base, sep, slice_part = case_id.partition("#")
    digest = hmac.new(key, base.encode(), hashlib.sha256).hexdigest()[:20]
    return f"{PREFIX}{digest}{sep}{slice_part}"


def pseudonymize(cases: list[Case], key: bytes) -> list[Case]:
    """The same cases under pseudonymous ids, sorted by them (so the original order, which is by name, is lost)."""
    out = [dataclasses.replace(c, case_id=pseudonym(c.case_id, key), original_id=c.case_id) for c in cases]
    return sorted(out, key=lambda c: c.case_id)


def cases_for(cases: list[Case], enabled: bool) -> list[Case]:
    """``cases`` pseudonymised with the environment's key when ``enabled`` (``data.pseudonymize``), else as they are."""
    return pseudonymize(cases, pseudonym_key()) if enabled else cases


def scrub(text: str, case_id: str, original_id: str, *paths: str) -> str:
    """``text`` with the case's file paths, file names, stems and original id replaced by its pseudonym."""
    names: set[str] = {original_id, original_id.partition("#")[0]}
    for p in paths:
        if p:
            names |= {p, os.path.basename(p), Path(p).name.split(".")[0]}
    # longest first (paths before their stems); names under 3 characters would garble the message
    for name in sorted((n for n in names if len(n) >= 3), key=len, reverse=True):
        text = text.replace(name, case_id)
    return text

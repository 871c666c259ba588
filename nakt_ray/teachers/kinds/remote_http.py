"""HTTP for remote teachers (``remote.py``): one request with a timeout, retries with backoff on transient
failures, the credential, TLS. The protocols' requests and answers: ``remote_oip.py``, ``remote_mlflow.py``.

A request that cannot succeed raises :class:`RequestFailed` with a reason fit for an error row; the caller decides
whether that is a load error (at load time) or a case's error (at prediction time). ``auth`` marks a refused
credential (401/403) and ``fatal`` a TLS failure: both hold for every request, so they are never retried and never
made error rows.
"""
from __future__ import annotations

import math
import random
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["FLOAT_TYPES", "Http", "RequestFailed", "as_scores"]

# Statuses worth another try: the server is busy, restarting, or a gateway in front of it is (429, 5xx). Any other
# 4xx says the request itself is refused, so sending it again would be refused again.
TRANSIENT = frozenset({408, 425, 429}) | frozenset(range(500, 600))
# The longest wait between two tries, whatever the backoff or a server's Retry-After asks.
MAX_WAIT_S = 30.0
# OIP tensor datatypes a teacher's scores may come in (JSON carries them as numbers either way).
FLOAT_TYPES = ("FP32", "FP16", "FP64", "BF16")


class RequestFailed(Exception):
    """A request that did not succeed: ``reason`` (no credential in it); ``auth``: the credential was refused;
    ``fatal``: it cannot succeed for any request (TLS); ``status``: the HTTP status, if one came back."""

    def __init__(self, reason: str, *, auth: bool = False, fatal: bool = False, status: int | None = None):
        super().__init__(reason)
        self.reason, self.auth, self.fatal, self.status = reason, auth, fatal, status


def _short(err: Exception) -> str:
    """A connection error in a few words: requests nests the OS error deep in a long message."""
    text = str(err)
    for pattern in (r"\[Errno -?\d+\] ([^'\")]+)", r"\[SSL: [A-Z_]+\] ([^'\"(]+)"):
        found = re.search(pattern, text)
        if found:
            return found.group(1).strip()
    return f"{type(err).__name__}: {text[:200]}"


def _server_message(resp: Any) -> str:
    """What the server said about a refused request (OIP and MLflow answer ``{"error": ...}`` or
    ``{"message": ...}``), shortened."""
    try:
        body = resp.json()
        text = (body.get("error") or body.get("message") or body.get("detail")) if isinstance(body, dict) else None
    except ValueError:
        text = None
    text = str(text if text is not None else resp.text).strip().replace("\n", " ")
    return text[:300] or resp.reason or ""


class Http:
    """Requests to one base URL: ``timeout_s`` per try, ``retries`` more tries after a transient failure (a
    connection error, no answer in time, 429, 5xx) with exponential backoff from ``backoff_s`` (or the server's
    ``Retry-After``), capped at ``MAX_WAIT_S``, with jitter so that many actors do not retry in step.

    ``token`` goes out as ``Authorization: Bearer <token>`` and nowhere else (not in messages, not in ``repr``).
    When the server refuses it (401/403), ``reread()`` (if given) is asked for the credential again; a different one
    (a rotated Kubernetes Secret) is taken and the request sent again, the same one is the refusal's answer.
    ``verify``: True (the system's CA bundle), a CA bundle file, or False. Each thread has its own session (one
    keep-alive connection per thread), since a ``requests.Session`` is not documented as thread-safe.
    """

    def __init__(self, base: str, token: str | None, verify: bool | str, timeout_s: float, retries: int,
                 backoff_s: float, reread: Callable[[], str | None] | None = None):
        try:
            import requests
        except ImportError as err:  # mlflow depends on it, so it is there unless nakt runs without mlflow
            raise ImportError("remote teachers need 'requests': pip install 'nakt-ray[remote]'") from err
        self._requests = requests
        self.base, self.verify = base.rstrip("/"), verify
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._reread = reread
        self._local = threading.local()
        self._random = random.Random()

    def __repr__(self) -> str:
        return f"Http({self.base!r}, credential={'yes' if self._headers else 'no'})"

    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._requests.Session()
            session.trust_env = True  # proxies and REQUESTS_CA_BUNDLE from the environment, as curl would
        return session

    def _wait(self, attempt: int, retry_after: str | None) -> None:
        wait = self.backoff_s * 2 ** attempt * (0.5 + self._random.random() / 2)
        if retry_after is not None:
            try:
                wait = max(wait, float(retry_after))
            except ValueError:  # an HTTP date: keep the backoff
                pass
        time.sleep(min(wait, MAX_WAIT_S))

    def request(self, method: str, path: str, body: bytes | None = None, *, may_rotate: bool = True) -> Any:
        """The 2xx answer to ``method path``; else :class:`RequestFailed` (after the retries, when transient)."""
        requests = self._requests
        url = self.base + path
        for attempt in range(self.retries + 1):
            headers = dict(self._headers)
            if body is not None:
                headers["Content-Type"] = "application/json"
            retry_after = None
            try:
                resp = self._session().request(method, url, data=body, headers=headers, timeout=self.timeout_s,
                                               verify=self.verify)
            except requests.exceptions.SSLError as err:  # before ConnectionError, its base class: never transient
                raise RequestFailed(f"TLS failed for {url}: {_short(err)} (a private CA: set ca_file)",
                                    fatal=True) from None
            except requests.exceptions.Timeout:
                reason = f"no answer from {url} within {self.timeout_s:g} s"
            except requests.exceptions.ConnectionError as err:
                reason = f"cannot connect to {url}: {_short(err)}"
            else:
                if resp.status_code < 300:
                    return resp
                reason = f"{url} answered HTTP {resp.status_code}: {_server_message(resp)}"
                if resp.status_code in (401, 403) and may_rotate and self._rotated():
                    return self.request(method, path, body, may_rotate=False)
                if resp.status_code in (401, 403):
                    raise RequestFailed(f"{reason}; the credential was refused (credential_env / credential_file)",
                                        auth=True, status=resp.status_code)
                if resp.status_code not in TRANSIENT:
                    raise RequestFailed(reason, status=resp.status_code)
                retry_after = resp.headers.get("Retry-After")
            if attempt == self.retries:
                tries = f" (after {self.retries + 1} tries)" if self.retries else ""
                raise RequestFailed(reason + tries)
            self._wait(attempt, retry_after)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _rotated(self) -> bool:
        """Whether the credential was replaced since it was read (then the header now holds the new one)."""
        token = self._reread() if self._reread is not None else None
        if not token or self._headers.get("Authorization") == f"Bearer {token}":
            return False
        self._headers = {"Authorization": f"Bearer {token}"}
        return True

    def get_json(self, path: str) -> Any:
        resp = self.request("GET", path)
        try:
            return resp.json()
        except ValueError:
            raise RequestFailed(f"{self.base + path} did not answer JSON: {resp.text[:200]!r}") from None


def as_scores(data: Any, shape: list[int] | None, what: str) -> np.ndarray:
    """JSON numbers (flat with ``shape``, or nested) as float32 scores; else :class:`RequestFailed`."""
    try:
        arr = np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError):
        raise RequestFailed(f"{what} holds values that are not numbers") from None
    if shape is not None:
        if arr.size != math.prod(shape):
            raise RequestFailed(f"{what} says shape {shape} but holds {arr.size} values")
        arr = arr.reshape(shape)
    return arr

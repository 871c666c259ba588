"""The ``remote`` kind: a teacher that is an HTTP inference endpoint, so its weights never leave their owner.

The source is a teacher YAML with ``url:`` (instead of ``file:``); the description keys are a TorchScript
teacher's (``nakt_ray/teachers/description.py``)::

    kind: remote                          # optional: a teacher YAML with url: is a remote teacher
    protocol: oip                         # oip: Open Inference Protocol v2 (KServe, Triton, MLServer); or mlflow
    url: https://seg.hospital-a.example   # the server's base URL: no protocol path, no credential, no query
    model: liver                          # oip: the model's name on the server; mlflow: recorded (fingerprint)
    version: "3"                          # oip: pin a version (required when the server lists several)
    credential_env: HOSPITAL_A_TOKEN      # or credential_file: /var/run/secrets/hospital-a/token
    concurrency: 4                        # requests in flight, per teacher and per actor process
    max_batch: 8                          # images per request (a server's fixed batch overrides it)
    timeout_s: 30                         # per try
    retries: 3                            # more tries after a connection error, a timeout, 429 or 5xx
    backoff_s: 0.5                        # the first wait; doubled at each try (a Retry-After is honoured)
    tls_verify: true                      # or ca_file: hospital-a-ca.pem (relative to this YAML)
    labels: [background, liver]
    in_channels: 1
    input_size: [256, 256]
    outputs: logits

The credential (sent as ``Authorization: Bearer``) is read from the environment variable or the file (a mounted
Kubernetes Secret) when the teacher loads; a credential-like key in the YAML is refused. It is never in a message,
the manifest or MLflow: the lineage records only where it comes from.

How it plugs in (``docs/decisions.md``, 62): :func:`load` returns a ``RawTeacher`` whose forward is a
:class:`RemoteForward`: ``[B, C, ...]`` in, the server's scores out, at the model's ``input_size``. So
:class:`~nakt_ray.teachers.inference.LoadedTeacher` resamples, tiles (sliding window), flips (TTA) and checks
the scores exactly as for a local model. Loading asks the server's health and (OIP) the model's metadata, checks
the metadata against the description, and sends one zero image; anything wrong, an unreachable server first, is a
``TeacherLoadError`` naming the endpoint, raised in the driver before any work starts
(``annotation.pools.check_teachers``). The fingerprint is the endpoint, the model's name and its version (from
the server's metadata for OIP).

Prediction: a batch goes out as requests of ``max_batch`` images, ``concurrency`` at a time (a thread pool per
teacher in each actor process: the limit holds per actor, so a pool of N actors may have N x concurrency requests
in flight). A request that still fails after its retries makes the batch a ``TeacherOutputError``; the actor
(``annotation.pools.TeacherPredictor``) then predicts the batch case by case, and each case whose own request
failed becomes an error row with the reason. The answers and single-image failures of the failed batch are kept
(bounded) and handed to that re-run, so a case is not sent, nor waited for, twice. A refused credential (401/403)
or a TLS failure holds for every case: it is a ``TeacherLoadError`` and stops the run.

HTTP (timeouts, retries, the credential, TLS): ``remote_http.py``; the protocols: ``remote_oip.py``,
``remote_mlflow.py``.
"""
from __future__ import annotations

import difflib
import hashlib
import ipaddress
import json
import os
import threading
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import numpy as np
import torch
import yaml

from nakt_ray.config import ConfigError, build
from nakt_ray.errors import TeacherLoadError, TeacherOutputError, error, expected
from nakt_ray.models.model_file import fingerprint as file_fingerprint
from nakt_ray.teachers.description import (
    DESCRIPTION_SUFFIXES,
    TeacherDescription,
    build_description,
    read_description_yaml,
    teacher_where,
)
from nakt_ray.teachers.inference import RawTeacher
from nakt_ray.teachers.kinds.remote_http import Http, RequestFailed
from nakt_ray.teachers.kinds.remote_mlflow import MLflowServer
from nakt_ray.teachers.kinds.remote_oip import OIP

__all__ = ["EXPECTS", "KIND", "EndpointConfig", "RemoteForward", "detect", "load"]

KIND = "remote"
EXPECTS = ("a teacher YAML with 'url:' and 'protocol: oip' (KServe, Triton, MLServer) or 'protocol: mlflow' (MLflow's "
           "scoring server): an HTTP inference endpoint")
# Keys that would put a credential into a file that is shared, copied into run folders and read by everyone.
CREDENTIAL_KEYS = ("token", "credential", "credentials", "password", "api_key", "apikey", "secret", "headers",
                   "authorization", "bearer")
# The answers of a failed batch kept for its case-by-case re-run, in bytes (oldest dropped first).
KEEP_BYTES = 64 * 2**20


@dataclass(frozen=True)
class EndpointConfig:
    """The endpoint keys of a remote teacher YAML (the module docstring shows each)."""

    protocol: Literal["oip", "mlflow"]
    url: str
    kind: Literal["remote"] = "remote"
    model: str | None = None
    version: str | None = None
    credential_env: str | None = None
    credential_file: str | None = None
    concurrency: int = 4
    max_batch: int = 8
    timeout_s: float = 30.0
    retries: int = 3
    backoff_s: float = 0.5
    tls_verify: bool = True
    ca_file: str | None = None
    input_name: str | None = None
    output_name: str | None = None

    def _validate(self, p: str) -> None:
        url = urlsplit(self.url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise error(ConfigError, f"config key '{p}url'", expected(self.url, "an http:// or https:// URL"))
        if url.username or url.password or url.query or url.fragment:
            raise error(ConfigError, f"config key '{p}url'",
                        "holds a user, password, query or fragment; give the server's base URL, and the credential "
                        "with credential_env or credential_file")
        if "/v2/" in url.path + "/" or url.path.rstrip("/").endswith(("/invocations", "/infer")):
            raise error(ConfigError, f"config key '{p}url'",
                        expected(self.url, "the server's base URL, without /v2/models/... or /invocations"))
        if self.protocol == "oip" and not self.model:
            raise ConfigError(f"config key '{p}model' is required with protocol: oip (the model's name on the "
                              "server)")
        if self.credential_env and self.credential_file:
            raise error(ConfigError, f"config key '{p}credential_env'", "give credential_env or credential_file, "
                                                                        "not both")
        for key, low in (("concurrency", 1), ("max_batch", 1), ("retries", 0)):
            if getattr(self, key) < low:
                raise error(ConfigError, f"config key '{p}{key}'", expected(getattr(self, key), f"an integer >= {low}"))
        if self.timeout_s <= 0 or self.backoff_s < 0:
            key = "timeout_s" if self.timeout_s <= 0 else "backoff_s"
            raise error(ConfigError, f"config key '{p}{key}'", expected(getattr(self, key), "a number > 0 (timeout) "
                                                                                            "or >= 0 (backoff)"))
        if self.ca_file and not self.tls_verify:
            raise error(ConfigError, f"config key '{p}ca_file'", "verifies TLS with that CA, but tls_verify is false")


ENDPOINT_KEYS = frozenset(f for f in EndpointConfig.__dataclass_fields__)


def detect(source: str) -> bool:
    """A YAML file whose mapping has ``url:`` (or ``kind: remote``)."""
    path = Path(source)
    if path.suffix.lower() not in DESCRIPTION_SUFFIXES or not path.is_file():
        return False
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False  # not ours to explain: the teacher_yaml kind says why it cannot be read
    return isinstance(data, dict) and ("url" in data or data.get("kind") == KIND)


def read_teacher_yaml(name: str, source: str) -> tuple[EndpointConfig, TeacherDescription]:
    """The endpoint and the description a remote teacher YAML holds.

    Raises:
        TeacherLoadError: a credential-like key, an unknown key, a bad value; the message names the file and key.
    """
    where, path = teacher_where(name, source), Path(source)
    data = read_description_yaml(name, source, path)
    secret = sorted(k for k in data if str(k).lower() in CREDENTIAL_KEYS)
    if secret:
        raise error(TeacherLoadError, where,
                    f"teacher YAML {source!r} has {secret}: a credential is never read from the teacher YAML (it is "
                    "copied, shared and logged); set credential_env: <VARIABLE> or credential_file: <a mounted "
                    "Kubernetes Secret>")
    allowed = sorted(ENDPOINT_KEYS) + [k for k in TeacherDescription.__dataclass_fields__ if k != "file"]
    for key in data:
        if key not in allowed and key != "file":
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise error(TeacherLoadError, where, f"teacher YAML {source!r}: unknown key '{key}'; {hint}allowed keys: "
                                                 f"{', '.join(allowed)}")
    endpoint = {k: v for k, v in data.items() if k in ENDPOINT_KEYS}
    if isinstance(endpoint.get("version"), int) and not isinstance(endpoint["version"], bool):
        endpoint["version"] = str(endpoint["version"])  # version: 3 means "3"
    rest = {k: v for k, v in data.items() if k not in ENDPOINT_KEYS}
    try:
        if "file" in rest:
            raise ConfigError("config key 'file': a remote teacher has url:, not file:")
        cfg = build(EndpointConfig, endpoint, "")
        description = build_description(rest)
    except ConfigError as err:
        raise error(TeacherLoadError, where, f"teacher YAML {source!r}: {err}") from None
    return cfg, description


def _beside(yaml_path: Path, file: str) -> Path:
    path = Path(file).expanduser()
    return path if path.is_absolute() else yaml_path.parent / path


def _credential(cfg: EndpointConfig, where: str, yaml_path: Path) -> str | None:
    """The token from ``credential_env`` or ``credential_file``; its value appears in no message."""
    if cfg.credential_env:
        token = os.environ.get(cfg.credential_env, "").strip()
        if not token:
            raise error(TeacherLoadError, where,
                        f"credential_env: the environment variable {cfg.credential_env} is not set (or empty) in this "
                        "process; set it wherever the teacher runs (on a cluster: the Ray job's runtime_env, or a "
                        "Kubernetes Secret as env), or use credential_file")
    elif cfg.credential_file:
        path = _beside(yaml_path, cfg.credential_file)
        try:
            token = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as err:
            raise error(TeacherLoadError, where, f"credential_file {str(path)!r} cannot be read: "
                                                 f"{getattr(err, 'strerror', None) or type(err).__name__}") from None
        if not token:
            raise error(TeacherLoadError, where, f"credential_file {str(path)!r} is empty")
    else:
        return None
    if any(c in token for c in "\r\n"):
        raise error(TeacherLoadError, where, "the credential holds more than one line; expected one token")
    return token


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class RemoteForward:
    """A remote teacher's forward: ``[B, C, ...]`` float32 -> the server's scores ``[B, K, ...]`` (see the module
    docstring for batching, concurrency and the failed-batch re-run). Failures raise ``TeacherOutputError`` (a
    request that failed after its retries) or ``TeacherLoadError`` (credential refused, TLS), naming the teacher
    and the endpoint."""

    def __init__(self, where: str, url: str, http: Http, protocol: OIP | MLflowServer, step: int, fixed_batch: bool,
                 concurrency: int):
        self.where, self.url, self.http, self.protocol = where, url, http, protocol
        self.step, self.fixed_batch, self.concurrency = step, fixed_batch, concurrency
        self._pool: ThreadPoolExecutor | None = None
        self._kept: OrderedDict[bytes, np.ndarray | RequestFailed] = OrderedDict()
        self._kept_bytes = 0
        self._lock = threading.Lock()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        try:
            out = self.scores(x.detach().cpu().numpy().astype(np.float32, copy=False))
        except RequestFailed as err:
            kind = TeacherLoadError if (err.auth or err.fatal) else TeacherOutputError
            raise error(kind, self.where, f"endpoint {self.url}: {err.reason}") from None
        return torch.from_numpy(out).to(x.device)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """The scores of ``x``, or :class:`RequestFailed`."""
        if len(x) == 1 and self._kept:
            kept = self._take(_key(x[0]))
            if isinstance(kept, RequestFailed):
                raise kept
            if kept is not None:
                return kept[None]
        chunks = [x[i:i + self.step] for i in range(0, len(x), self.step)]
        if len(chunks) == 1 or self.concurrency == 1:
            outcomes = [self._send(c) for c in chunks]
        else:
            if self._pool is None:  # threads only for teachers whose batches need several requests
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="nakt-remote")
            outcomes = list(self._pool.map(self._send, chunks))
        failed = [o for o in outcomes if isinstance(o, RequestFailed)]
        if not failed:
            try:
                return np.concatenate(outcomes) if len(outcomes) > 1 else outcomes[0]
            except ValueError:  # answers of different shapes: kept, so that the re-run checks each case's own
                self._keep(chunks, outcomes)
                raise RequestFailed(f"the requests of one batch returned different shapes "
                                    f"{sorted({tuple(o.shape) for o in outcomes})}") from None
        self._keep(chunks, outcomes)
        for f in failed:
            if f.auth or f.fatal:
                raise f
        if len(chunks) > 1:
            raise RequestFailed(f"{failed[0].reason} ({len(failed)} of {len(chunks)} requests of the batch failed)")
        raise failed[0]

    def _send(self, chunk: np.ndarray) -> np.ndarray | RequestFailed:
        n = len(chunk)
        if self.fixed_batch and n < self.step:  # a server with a fixed batch: zero-pad the last request
            chunk = np.concatenate([chunk, np.zeros((self.step - n, *chunk.shape[1:]), chunk.dtype)])
        try:
            out = self.protocol.infer(self.http, np.ascontiguousarray(chunk))
        except RequestFailed as err:
            return err
        if out.ndim != chunk.ndim or out.shape[0] != len(chunk):
            return RequestFailed(f"the server returned shape {list(out.shape)} for a request of shape "
                                 f"{list(chunk.shape)}; expected [{len(chunk)}, K, ...]")
        return out[:n]

    def _keep(self, chunks: list[np.ndarray], outcomes: list[np.ndarray | RequestFailed]) -> None:
        """Keep a failed batch's answers, and the failures of single-image requests, for its case-by-case re-run
        (a case of a failed multi-image request is sent again alone: only its own request says whether it fails)."""
        with self._lock:
            for chunk, outcome in zip(chunks, outcomes):
                if isinstance(outcome, RequestFailed):
                    if len(chunk) == 1:
                        self._put(_key(chunk[0]), outcome, 256)
                elif len(outcome) == len(chunk):
                    for image, scores in zip(chunk, outcome):
                        self._put(_key(image), scores, scores.nbytes)
            while self._kept_bytes > KEEP_BYTES and self._kept:
                _, old = self._kept.popitem(last=False)
                self._kept_bytes -= old.nbytes if isinstance(old, np.ndarray) else 256

    def _put(self, key: bytes, value: np.ndarray | RequestFailed, size: int) -> None:
        if key not in self._kept:
            self._kept[key] = value
            self._kept_bytes += size

    def _take(self, key: bytes) -> np.ndarray | RequestFailed | None:
        with self._lock:
            value = self._kept.pop(key, None)
            if value is not None:
                self._kept_bytes -= value.nbytes if isinstance(value, np.ndarray) else 256
            return value


def _key(image: np.ndarray) -> bytes:
    """An image's identity for the failed-batch re-run: its shape and bytes, hashed."""
    return hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16,
                           person=str(image.shape).encode()[:16]).digest()


def endpoint_fingerprint(protocol: str, url: str, model: str, version: str) -> str:
    """16 hex characters naming the weights behind an endpoint: the protocol, the URL, the model and its version."""
    text = json.dumps({"protocol": protocol, "url": url.rstrip("/"), "model": model, "version": version},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load(name: str, source: str, device: torch.device) -> RawTeacher:
    """A remote teacher: its YAML read, its credential found, the server and its model checked and probed.

    Raises:
        TeacherLoadError: a bad YAML, a missing credential, an unreachable server, a refused credential, metadata
            that contradict the description, or a zero image the server cannot infer; the message names the
            teacher and the endpoint.
    """
    where, yaml_path = teacher_where(name, source), Path(source)
    cfg, description = read_teacher_yaml(name, source)
    token = _credential(cfg, where, yaml_path)

    def credential() -> str | None:  # read again when refused: a mounted Secret may have been rotated meanwhile
        try:
            return _credential(cfg, where, yaml_path)
        except TeacherLoadError:
            return None
    verify: bool | str = cfg.tls_verify
    if cfg.ca_file:
        ca = _beside(yaml_path, cfg.ca_file)
        if not ca.is_file():
            raise error(TeacherLoadError, where, f"ca_file {str(ca)!r} does not exist")
        verify = str(ca)
    host = urlsplit(cfg.url).hostname or ""
    if not cfg.tls_verify:
        warnings.warn(f"{where}: tls_verify is false: the server's identity is not checked", UserWarning, stacklevel=3)
    if token and cfg.url.startswith("http://") and not _loopback(host):
        warnings.warn(f"{where}: the credential goes to {host} over plain http, unencrypted; use https",
                      UserWarning, stacklevel=3)
    http = Http(cfg.url, token, verify, cfg.timeout_s, cfg.retries, cfg.backoff_s, credential)
    protocol: OIP | MLflowServer = (OIP(cfg.model or "", cfg.version, cfg.input_name, cfg.output_name, description)
                                     if cfg.protocol == "oip" else
                                     MLflowServer(cfg.model, cfg.version, cfg.output_name))
    try:
        server = protocol.connect(http)
        fixed = server.pop("fixed_batch")
        forward = RemoteForward(where, cfg.url, http, protocol, fixed or cfg.max_batch, fixed is not None,
                                cfg.concurrency)
        forward.scores(np.zeros((1, description.in_channels, *description.input_size), np.float32))
    except RequestFailed as err:
        raise error(TeacherLoadError, where, f"endpoint {cfg.url}: {err.reason}") from None
    credential = (f"env {cfg.credential_env}" if cfg.credential_env else
                  f"file {_beside(yaml_path, cfg.credential_file)!s}" if cfg.credential_file else None)
    details = {"protocol": cfg.protocol, "url": cfg.url, **server, "credential": credential,
               "tls": "not verified" if not cfg.tls_verify else (f"ca_file {verify}" if cfg.ca_file else "verified"),
               "concurrency": cfg.concurrency, "max_batch": fixed or cfg.max_batch, "timeout_s": cfg.timeout_s,
               "retries": cfg.retries, "description_file": str(yaml_path.resolve()),
               "description_fingerprint": file_fingerprint(yaml_path)}
    fp = endpoint_fingerprint(cfg.protocol, cfg.url, server["model"], server["version"])
    return RawTeacher(forward, description, fp, details, autocast=False)

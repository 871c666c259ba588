"""What a ``nakt`` command shows on the console: its own progress and results, with Ray's output in a log file.

A run of ``nakt demo`` printed ~970 lines of which ~25 were nakt's: Ray Data's progress logs, Ray Train's
controller messages forwarded from its actors, the C++ core worker's ``E`` lines, MLflow's store messages. Those
are written by Python loggers, by ``print`` in Ray's log-forwarding thread, by tqdm, and by C++ code straight to
file descriptors 1 and 2, so no logging handler alone can catch them all. In quiet mode (the default of every
command that starts Ray; ``--verbose`` or ``NAKT_VERBOSE=1`` turns it off) :func:`divert` points descriptors 1 and
2 at ``<log_dir>/ray.log`` before Ray starts, and nakt's own lines go to the console through :func:`out` and
:func:`err`, which write to copies of the original descriptors. Workers' output still reaches the driver (Ray's
``log_to_driver``), so it lands in the same file; Ray's per-process logs stay in its session folder, whose path
the file's first lines give.

Warnings raised by nakt's own code (``warnings.warn`` in ``nakt_ray``) stay on the console; everybody else's go to
the file. The state is per process; :func:`session` sets it up and puts everything back (so that a caller that
runs ``nakt_ray.cli.main`` in its own process, as ``jobs/common.py`` and the tests do, gets its descriptors back).
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

VERBOSE_ENV = "NAKT_VERBOSE"
LOG_NAME = "ray.log"
_PACKAGE = str(Path(__file__).resolve().parents[1])  # warnings from files under here are nakt's own


class _State:
    def __init__(self) -> None:
        self.active = False  # inside session(): divert() may act
        self.verbose = True
        self.log_path: Path | None = None
        self.out: TextIO | None = None  # the console, while diverted
        self.err: TextIO | None = None
        self.saved_fds: list[tuple[int, int]] = []  # (descriptor, its saved copy)
        self.showwarning = None


_state = _State()


def verbose_from_env() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def out() -> TextIO:
    """Where nakt's results go: the console's stdout (``sys.stdout`` unless output is diverted)."""
    return _state.out or sys.stdout


def err() -> TextIO:
    """Where nakt's own messages and warnings go: the console's stderr."""
    return _state.err or sys.stderr


def say(*parts: object, error: bool = False) -> None:
    """``print`` to the console (stdout, or stderr with ``error=True``), flushed."""
    print(*parts, file=err() if error else out(), flush=True)


def log_path() -> Path | None:
    """The file Ray's output goes to in this session; None when it is not diverted."""
    return _state.log_path


def diverted() -> bool:
    return _state.log_path is not None


@contextlib.contextmanager
def session(verbose: bool = False, keep: bool = False) -> Iterator[None]:
    """One command's console. Inside, :func:`divert` acts unless ``verbose``. On leaving, descriptors and warnings
    are put back, except with ``keep`` when the block ends normally: a ``nakt`` process keeps Ray's late output
    (its shutdown at exit) in the log file. An exception always restores them first, so its traceback reaches the
    console."""
    if _state.active:  # nested (a command calling another): the outer session decides
        yield
        return
    _state.active, _state.verbose = True, verbose
    try:
        yield
    except BaseException:
        restore()
        raise
    else:
        if not keep:
            restore()
    finally:
        _state.active = False


def divert(log_dir: str | Path) -> Path | None:
    """Send descriptors 1 and 2 (Ray, MLflow, C++ logs, tqdm) to ``<log_dir>/ray.log``, appending; nakt's lines
    keep going to the console. A no-op outside :func:`session`, in verbose mode, or when already diverted. Returns
    the log file (None when nothing was diverted)."""
    if not _state.active or _state.verbose:
        return None
    if _state.log_path is not None:
        return _state.log_path
    path = Path(log_dir) / LOG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    console = {}
    for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
        stream.flush()
        console[fd] = _console_stream(stream, fd)
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for fd in (1, 2):
            _state.saved_fds.append((fd, os.dup(fd)))
            os.dup2(log_fd, fd)
    finally:
        os.close(log_fd)
    _state.out, _state.err, _state.log_path = console[1], console[2], path
    _state.showwarning = warnings.showwarning
    warnings.showwarning = _show_warning
    os.write(1, f"\n==== nakt {' '.join(sys.argv[1:]) or '(in-process)'} | {time.strftime('%Y-%m-%d %H:%M:%S')} | "
                f"pid {os.getpid()} ====\n".encode())
    say(f"nakt: Ray's own output goes to {path} (--verbose shows it here)", error=True)
    return path


def note_ray_session() -> None:
    """Write where Ray keeps its per-process logs into the log file (call once Ray has started)."""
    if not diverted():
        return
    try:
        import ray

        logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    except Exception:  # noqa: BLE001 - a cluster joined by address may not expose its node here; nothing to note
        return
    os.write(1, f"nakt: Ray's per-process logs (workers, raylet, GCS) are in {logs} on the head node\n".encode())


def restore() -> None:
    """Put descriptors 1 and 2 and the warnings hook back; flush what the console streams hold."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    for fd, saved in reversed(_state.saved_fds):
        os.dup2(saved, fd)
        os.close(saved)
    _state.saved_fds.clear()
    for stream in (_state.out, _state.err):
        if stream is not None and getattr(stream, "_nakt_owned", False):
            with contextlib.suppress(Exception):
                stream.close()
    if _state.showwarning is not None:
        warnings.showwarning = _state.showwarning
    _state.out = _state.err = _state.log_path = _state.showwarning = None


def _console_stream(stream: TextIO, fd: int) -> TextIO:
    """A stream that keeps writing where ``stream`` writes once descriptor ``fd`` points elsewhere: a copy of the
    descriptor when ``stream`` writes to it, else ``stream`` itself (pytest's capture, a ``redirect_stdout``)."""
    try:
        own = stream.fileno() == fd
    except (AttributeError, ValueError, io.UnsupportedOperation):
        own = False
    if not own:
        return stream
    console = open(os.dup(fd), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8",
                   errors="backslashreplace", closefd=True)
    console._nakt_owned = True  # type: ignore[attr-defined]
    return console


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """nakt's warnings to the console, everybody else's to the log file (through the hook in place before)."""
    if str(filename).startswith(_PACKAGE):
        err().write(warnings.formatwarning(message, category, filename, lineno, line))
        err().flush()
    elif _state.showwarning is not None:
        _state.showwarning(message, category, filename, lineno, file, line)

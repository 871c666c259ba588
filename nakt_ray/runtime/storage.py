"""Where files live: a local (or shared-volume) path, or an object-store URI read and written through pyarrow.

A *location* is a string: ``runs/x/annotations`` or ``/data/runs/x`` (local), or a URI that
``pyarrow.fs.FileSystem.from_uri`` understands: ``s3://bucket/prefix`` (``?region=...&endpoint_override=...``
for S3-compatible stores), ``gs://bucket/prefix``, ``hdfs://...``, ``file:///abs/path``. Credentials come from the
environment as pyarrow reads them (``AWS_*``, ``GOOGLE_APPLICATION_CREDENTIALS``, instance/workload identity).

Ray Data (``read_parquet``/``write_parquet``) and Ray Train (``RunConfig(storage_path=...)``) take the same URIs
natively; this module covers what the driver itself reads and writes (manifests, summaries, listings). A URI is
never turned into a ``pathlib.Path``: that would fold ``s3://b/k`` into the relative path ``s3:/b/k``.
"""
from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any


def is_uri(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def filesystem(location: str | os.PathLike) -> tuple[Any, str]:
    """``(pyarrow FileSystem, path inside it)`` for a local path or a URI."""
    import pyarrow.fs as pafs

    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location).resolve())
    try:
        return pafs.FileSystem.from_uri(str(location))
    except (ValueError, OSError) as err:  # unknown scheme, malformed URI, a scheme this pyarrow lacks
        raise ValueError(f"storage location {str(location)!r} is not a path or a URI pyarrow can open "
                         f"(s3://, gs://, hdfs://, file://): {err}") from None


def join(location: str | os.PathLike, *names: str) -> str:
    """``location/name/...`` in the location's own form (a URI keeps its scheme and its query string)."""
    if not is_uri(location):
        return str(Path(location).joinpath(*names))
    base, sep, query = str(location).partition("?")
    return posixpath.join(base.rstrip("/"), *names) + sep + query


def absolute(location: str | os.PathLike) -> str:
    """A URI as it is; a local path made absolute (for lineage records and for Ray, whose workers have other
    working directories)."""
    return str(location) if is_uri(location) else str(Path(location).resolve())


def exists(location: str | os.PathLike) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_files(location: str | os.PathLike, suffix: str = "") -> list[str]:
    """Files directly under ``location`` whose names end with ``suffix``, sorted, each as a location of the same
    form. An absent folder lists as empty (an object store has no folders, only key prefixes)."""
    if not is_uri(location):  # as before URIs were supported: the given (possibly relative) paths
        return sorted(str(p) for p in Path(location).glob(f"*{suffix}") if p.is_file())
    _, paths = listing(location, suffix)
    return [join(location, posixpath.basename(p)) for p in paths]


def listing(location: str | os.PathLike, suffix: str = "") -> tuple[Any, list[str]]:
    """``(filesystem, sorted paths inside it)`` of the files directly under ``location`` ending with ``suffix``:
    one filesystem for many files (opening an S3 filesystem from a URI may cost a request)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return fs, sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))


def is_empty(location: str | os.PathLike) -> bool:
    """True when nothing lies under ``location`` (or it does not exist)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return True
    return not fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))


def make_dirs(location: str | os.PathLike) -> None:
    fs, path = filesystem(location)
    fs.create_dir(path, recursive=True)


def read_bytes(location: str | os.PathLike) -> bytes:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(location: str | os.PathLike) -> str:
    return read_bytes(location).decode("utf-8")


def write_text(location: str | os.PathLike, text: str) -> None:
    fs, path = filesystem(location)
    with fs.open_output_stream(path) as f:
        f.write(text.encode("utf-8"))


def size(location: str | os.PathLike) -> int:
    fs, path = filesystem(location)
    return int(fs.get_file_info(path).size)


def delete_file(location: str | os.PathLike) -> None:
    fs, path = filesystem(location)
    fs.delete_file(path)

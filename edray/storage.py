"""Files anywhere edray keeps them: a local path or a remote URI, resolved through ``pyarrow.fs``.

Logit stores, teacher checkpoints, trained students, the node cache's sources and probe
files all go through here. Local paths are memory-mapped by the logit store's reader. Remote stores (``s3://bucket/prefix``,
``gs://bucket/prefix``, ``hdfs://...``) are opened with
``pyarrow.fs.FileSystem.from_uri`` and read with ``open_input_file``; credentials come
from the usual places (``AWS_*`` variables or ``~/.aws``, ``GOOGLE_APPLICATION_CREDENTIALS``
or the metadata server), as pyarrow reads them. A remote shard is read into memory on
first use, so a worker touches only the shards its rows live in. ``file://`` URIs take the
remote code path too, which is what lets it be tested offline.

A store is written shard by shard: on a path (a shared NFS/EFS mount counts) through a
staging directory renamed when complete; on object storage straight into its folder,
where the manifest, written last, is what makes it a store (an object PUT is atomic).
:func:`write_bytes`, :func:`read_bytes` and :func:`list_files` do the same for any file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TypedDict

import pyarrow as pa
import pyarrow.fs as pafs

from edray.errors import EdrayError

__all__ = [
    "discard", "exists", "is_uri", "join", "list_files", "local_path", "ray_storage", "read_bytes", "resolve",
    "write_bytes",
]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_uri(location: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...`` (``s3://``, ``gs://``, ``file://``), False for a plain path."""
    return isinstance(location, str) and bool(_SCHEME.match(location))


def local_path(location: str | os.PathLike[str]) -> Path | None:
    """The absolute local path of ``location``, or ``None`` when it is a URI (``file://`` included)."""
    if is_uri(location):
        return None
    return Path(location).expanduser().resolve()


def resolve(location: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path inside it)`` for a local path or a URI.

    Raises:
        EdrayError: the scheme is unknown, or pyarrow cannot reach it (no credentials,
            no S3/GCS support in this pyarrow build).
    """
    path = local_path(location)
    if path is not None:
        return pafs.LocalFileSystem(), str(path)
    uri = str(location)
    if uri.startswith("s3://") and "allow_delayed_open" not in uri:
        # Small files (all of edray's but big shards) then go up in one PutObject instead
        # of a multipart upload: fewer requests, and S3 emulators (moto) accept it.
        uri += ("&" if "?" in uri else "?") + "allow_delayed_open=true"
    try:
        fs, inner = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise EdrayError(
            str(location), f"cannot open this location ({e})", "use a local path, s3:// or gs://, and check credentials"
        ) from e
    return fs, inner.rstrip("/")


class RayStorage(TypedDict):
    """The keyword arguments of a Ray ``RunConfig`` (and ``Tuner.restore``) that say where it writes."""

    storage_path: str
    storage_filesystem: pafs.FileSystem | None  # None (Ray's default): a local path


def ray_storage(location: str) -> RayStorage:
    """``storage_path`` (+ ``storage_filesystem`` for a URI) for a Ray Tune/Train ``RunConfig``,
    so Ray writes through the same filesystem settings as edray."""
    if local_path(location) is not None:
        return {"storage_path": str(local_path(location)), "storage_filesystem": None}
    fs, inner = resolve(location)
    return {"storage_path": inner, "storage_filesystem": fs}


def join(base: str, *parts: str) -> str:
    """Join ``pyarrow.fs`` paths, which always use ``/`` (never ``os.sep``)."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def exists(location: str) -> bool:
    """Whether a file is at ``location`` (a path or a URI)."""
    fs, path = resolve(location)
    return fs.get_file_info(path).type == pafs.FileType.File


def read_bytes(location: str) -> bytes:
    """The bytes of the file at ``location`` (a path or a URI)."""
    fs, path = resolve(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(location: str, data: bytes | memoryview | pa.Buffer) -> None:
    """Write a whole file at ``location``: atomically on a path (temp file + rename, see
    :mod:`edray.atomic`); on object storage one PUT, which readers see whole or not at all.

    Raises:
        EdrayError: the file cannot be written (full disk, read-only folder, no credentials).
    """
    path = local_path(location)
    if path is not None:
        from edray import atomic

        atomic.write_bytes(path, memoryview(data))
        return
    fs, inner = resolve(location)
    try:
        if isinstance(fs, pafs.LocalFileSystem):  # file://; object stores have no folders to make
            fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(inner) as f:
            f.write(memoryview(data))
    except (OSError, pa.ArrowException) as e:
        raise EdrayError(location, f"cannot write ({e})", "check the location and its credentials") from e


def discard(location: str) -> None:
    """Delete the file at ``location`` if it can be: a file left behind costs only bytes
    (probe files, a finished store's bookkeeping), never a failed command."""
    try:
        fs, inner = resolve(location)
        fs.delete_file(inner)
    except (EdrayError, OSError, pa.ArrowException):
        pass


def list_files(location: str) -> dict[str, int]:
    """Every file under the folder ``location``: relative path -> size (``{}`` when absent)."""
    fs, base = resolve(location)
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    out = {}
    for info in fs.get_file_info(selector):
        if info.type == pafs.FileType.File:
            out[info.path[len(base):].lstrip("/")] = info.size
    return out

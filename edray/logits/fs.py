"""Where a store lives: a local path or a remote URI, resolved through ``pyarrow.fs``.

Local paths are memory-mapped by the reader. Remote stores (``s3://bucket/prefix``,
``gs://bucket/prefix``, ``hdfs://...``) are opened with
``pyarrow.fs.FileSystem.from_uri`` and read with ``open_input_file``; credentials come
from the usual places (``AWS_*`` variables or ``~/.aws``, ``GOOGLE_APPLICATION_CREDENTIALS``
or the metadata server), as pyarrow reads them. A remote shard is read into memory on
first use, so a worker touches only the shards its rows live in. ``file://`` URIs take the
remote code path too, which is what lets it be tested offline.

Writes are local only: atomic rename and ``flock`` need a POSIX file system (a shared
NFS/EFS mount counts). Precompute into such a directory and copy it to object storage.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from edray.errors import EdrayError

__all__ = ["is_uri", "resolve", "join", "local_path"]

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
    try:
        fs, inner = pafs.FileSystem.from_uri(str(location))
    except (pa.ArrowException, OSError, ValueError) as e:
        raise EdrayError(
            str(location), f"cannot open this location ({e})", "use a local path, s3:// or gs://, and check credentials"
        ) from e
    return fs, inner.rstrip("/")


def join(base: str, *parts: str) -> str:
    """Join ``pyarrow.fs`` paths, which always use ``/`` (never ``os.sep``)."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])

"""One way to write a file so that nobody ever sees half of it.

Everything edray writes for another process or a later run (checkpoints, best.yaml,
sweep state, reports, figures, store shards) goes through here: the bytes go to a temp
file beside the target, are fsync'd, renamed over the target, and the directory is
fsync'd. On any failure the temp file is removed, and an ``OSError`` (full disk,
read-only mount) becomes one :class:`EdrayError` naming the path, exit code 2.
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edray.errors import EdrayError

__all__ = ["DEFAULT_FIX", "atomic_path", "exclusive_lock", "fsync_dir", "write_bytes", "write_text", "write_torch"]

DEFAULT_FIX = "free space or choose another --workdir"

log = logging.getLogger(__name__)


@contextmanager
def atomic_path(path: str | Path, *, fix: str = DEFAULT_FIX, field: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on a clean exit it becomes ``path``.

    For writers that want a file name (``savefig``, pyarrow). The writer's output is
    fsync'd and renamed; on any exception the temp file is removed.

    Args:
        path: the file to write; its directory is created.
        fix: the fix the error names.
        field: the flag or spec field the user gave the path with (``--save-model``);
            the error then reads ``--save-model: cannot write PATH (reason)``.

    Raises:
        EdrayError: an ``OSError`` while writing (full disk, read-only mount).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as err:
        reason = err.strerror or err
        if field:
            raise EdrayError(field, f"cannot write {path} ({reason})", fix) from None
        raise EdrayError(str(path), f"cannot write ({reason})", fix) from None
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass  # renamed into place, never created, or gone with its directory


def write_bytes(path: str | Path, data: bytes | bytearray | memoryview, *, fix: str = DEFAULT_FIX,
                field: str | None = None) -> None:
    """Write ``data`` (anything with the buffer protocol, e.g. a ``pyarrow.Buffer``) to
    ``path`` atomically (see the module docstring and :func:`atomic_path`)."""
    with atomic_path(path, fix=fix, field=field) as tmp, open(tmp, "wb") as f:
        f.write(memoryview(data))


def write_text(path: str | Path, text: str, *, fix: str = DEFAULT_FIX, field: str | None = None) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"), fix=fix, field=field)


def write_torch(path: str | Path, obj: object, *, fix: str = DEFAULT_FIX, field: str | None = None) -> None:
    """``torch.save(obj)`` to ``path`` atomically. Serialised in memory first: torch's zip
    writer reports a full disk as a ``RuntimeError``, which would hide the ``OSError``."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getbuffer(), fix=fix, field=field)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """fsync a directory, so a rename inside it survives a power cut (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # some filesystems (and platforms) cannot open a directory; the rename stands
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def exclusive_lock(path: str | Path, *, what: str = "", fix: str = DEFAULT_FIX) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if absent) until the block ends.

    One builder per cached artefact (a logit store, a decoded-image cache): a second
    process waits here, then finds the artefact finished. The lock file stays (removing
    it would race with a process about to lock it); the kernel drops the lock when the
    holder closes it or dies. ``what`` names the artefact in the "waiting" log line.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise EdrayError(str(path), f"cannot write ({err.strerror or err})", fix) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is building %s; waiting for it",
                     what or path.name.removesuffix(".lock").lstrip("."))
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock

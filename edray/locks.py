"""One process at a time per file: an exclusive ``flock``, waited for, released on exit or death."""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edray.atomic import DEFAULT_FIX
from edray.errors import EdrayError

__all__ = ["file_lock"]

log = logging.getLogger(__name__)


@contextmanager
def file_lock(path: str | Path, *, what: str = "", fix: str = DEFAULT_FIX) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing; it stays, removing it would race).

    A second process asking for the same lock waits; the lock goes with the file
    descriptor, so a killed holder never leaves it stuck.

    Raises:
        EdrayError: the lock file cannot be created (naming it, with ``fix``).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise EdrayError(str(path), f"cannot write ({e.strerror or e})", fix) from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process holds %s; waiting for it", what or path.name)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)

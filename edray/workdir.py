"""The one work directory every command's outputs go under (see :mod:`edray.layout`)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["resolve_workdir"]

DEFAULT_WORKDIR = "edray-out"


def resolve_workdir(flag: str | None = None) -> Path:
    """``--workdir``, else ``$EDRAY_WORKDIR``, else ``./edray-out`` (absolute)."""
    return Path(flag or os.environ.get("EDRAY_WORKDIR") or DEFAULT_WORKDIR).expanduser().resolve()

"""The one work directory every output goes under (checkpoints, stores, Ray, MLflow)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["images_dir", "resolve_workdir"]

DEFAULT_WORKDIR = "edray-out"


def resolve_workdir(flag: str | None = None) -> Path:
    """``--workdir``, else ``$EDRAY_WORKDIR``, else ``./edray-out`` (absolute)."""
    return Path(flag or os.environ.get("EDRAY_WORKDIR") or DEFAULT_WORKDIR).expanduser().resolve()


def images_dir(workdir: str | Path) -> Path:
    """Where decoded-image caches live: beside the logit stores (``WORKDIR/logits``)."""
    return Path(workdir) / "images"

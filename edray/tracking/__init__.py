"""MLflow records of a sweep (a parent run, a child run per trial) and its figures.

Imports are lazy: ``edray best`` needs none of MLflow's, Ray's or matplotlib's start-up
cost just to import this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "SweepTracker",
    "TrackingCallback",
    "check_tracking",
    "redact",
    "render_figures",
    "resolve_tracking_uri",
]

_WHERE = {
    "SweepTracker": "edray.tracking.tracker",
    "TrackingCallback": "edray.tracking.callback",
    "check_tracking": "edray.tracking.uri",
    "redact": "edray.tracking.secrets",
    "render_figures": "edray.tracking.figures",
    "resolve_tracking_uri": "edray.tracking.uri",
}

if TYPE_CHECKING:
    from edray.tracking.callback import TrackingCallback
    from edray.tracking.figures import render_figures
    from edray.tracking.secrets import redact
    from edray.tracking.tracker import SweepTracker
    from edray.tracking.uri import check_tracking, resolve_tracking_uri


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'edray.tracking' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)

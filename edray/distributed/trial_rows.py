"""One row per Tune trial, read once from Tune's ``ResultGrid``.

The sweep summary (best config, counts, placement) and the parent run's results table
(``results.json``, the figures) are both built from these rows, so they agree on every
trial's id and status (the one rule of :mod:`edray.trial_status`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edray.names import METRIC
from edray.trial_status import trial_status

__all__ = ["RESULT_COLUMNS", "trial_rows"]

# What the parent run's results table keeps of a row.
RESULT_COLUMNS = ("trial_id", "status", "config", METRIC)


def trial_rows(grid: Any) -> list[dict[str, Any]]:
    """``trial_id``, ``status``, ``config``, the metric, ``epoch``, ``model_path`` and ``node``
    of every trial in ``grid`` (Tune's ``ResultGrid``, or any iterable of its ``Result``)."""
    rows = []
    for r in grid:
        metrics = r.metrics or {}
        rows.append({
            # Tune puts its trial id in every result; a trial that never reported has only its folder.
            "trial_id": metrics.get("trial_id") or Path(r.path).name,
            "status": trial_status(metrics, r.error).value,
            "config": dict(r.config or {}),
            METRIC: metrics.get(METRIC),
            "epoch": int(metrics.get("epoch", 0)),
            "model_path": metrics.get("model_path"),
            "node": metrics.get("node"),
        })
    return rows

"""The one rule for how a trial ended: completed, pruned or errored (as Optuna's ``TrialState``).

A trial whose last result is before its final epoch was stopped by the scheduler: it is
PRUNED, never COMPLETED with a partial score. The searcher (what Optuna is told), the
sweep summary and the MLflow status tags all ask this module.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

__all__ = ["TrialStatus", "trial_status", "was_stopped_early"]


class TrialStatus(str, enum.Enum):
    COMPLETED = "completed"
    PRUNED = "pruned"
    ERRORED = "errored"

    @property
    def mlflow_run_status(self) -> str:
        """How the trial's MLflow run is closed: a pruned trial ran as told, so it FINISHED too."""
        return "FAILED" if self is TrialStatus.ERRORED else "FINISHED"


def was_stopped_early(result: Mapping[str, Any] | None, total_epochs: int | None = None) -> bool:
    """A trial whose last result is before its final epoch did not finish.

    ``total_epochs`` comes from the result itself (trials report it) unless given.
    A result that says neither is taken as finished: there is nothing to compare.
    """
    if not result or "epoch" not in result:
        return False
    total = total_epochs if total_epochs is not None else result.get("total_epochs")
    if total is None:
        return False
    return int(result["epoch"]) < int(total)


def trial_status(result: Mapping[str, Any] | None, error: Any = None, total_epochs: int | None = None) -> TrialStatus:
    """How a trial ended, from its last result and its error (if any)."""
    if error:
        return TrialStatus.ERRORED
    return TrialStatus.PRUNED if was_stopped_early(result, total_epochs) else TrialStatus.COMPLETED

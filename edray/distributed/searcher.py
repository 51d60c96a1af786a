"""Optuna through Ray Tune, telling Optuna the truth about trials stopped early.

Ray's ``OptunaSearch`` tells Optuna COMPLETE with the last reported value for a trial
that the scheduler stopped: a partial score then poses as a finished one and skews the
sampler. Here a trial that ended before its last epoch is told as PRUNED.
"""

from __future__ import annotations

import optuna
from ray.tune.search.optuna import OptunaSearch

from edray.clusters.ray_private import optuna_completed_trials, optuna_study, optuna_trials
from edray.trial_status import TrialStatus, trial_status

__all__ = ["PruneStoppedOptunaSearch"]


class PruneStoppedOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that reports early-stopped trials as pruned."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        told = optuna_completed_trials(self)
        if trial_status(result, error) is TrialStatus.PRUNED and trial_id not in told:
            self.study.tell(optuna_trials(self)[trial_id], None, state=optuna.trial.TrialState.PRUNED)
            told.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)

    @property
    def study(self) -> optuna.Study:
        return optuna_study(self)

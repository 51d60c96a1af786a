"""Ray Tune -> MLflow: a Tune callback that feeds a :class:`SweepTracker`.

Tune calls its callbacks in the driver process, so the tracker is the only writer to
the store (SQLite allows one). A tracking failure is logged and never stops a sweep:
the trials' checkpoints are worth more than a missing chart. The callback pickles (Tune
saves it with the experiment; ``--resume`` gives the restored Tuner a new one, see
:mod:`edray.distributed.tune_run`), and a tracker made after a crash finds the runs again.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

from ray.tune import Callback

from edray.distill.loop import EpochMetrics
from edray.tracking.guard import is_transient
from edray.tracking.tracker import SweepTracker
from edray.trial_status import TrialStatus, trial_status

__all__ = ["EPOCH_METRICS", "TrackingCallback"]

log = logging.getLogger(__name__)

# Every field the ED loop reports per epoch, but the epoch itself: it is the MLflow step.
EPOCH_METRICS = tuple(f.name for f in dataclasses.fields(EpochMetrics) if f.name != "epoch")


class TrackingCallback(Callback):
    """Log every Tune trial as a child run of the sweep's parent run.

    Args:
        tracker: the sweep's tracker, ``start_sweep`` already called.
        resolve: a trial config (``spec path -> value``) -> the resolved spec as a dict.
        total_epochs: a trial whose last epoch is below this was stopped early (pruned),
            unless its results carry their own ``total_epochs``.
        metrics: which numeric result keys are logged per epoch.
        log_models: ``all`` logs each trial's ``model_path`` result as ``model/student.pt`` and
            as the MLflow model ``student``; ``best`` and ``none`` leave that to the end of the sweep.
    """

    def __init__(self, tracker: SweepTracker, *, resolve: Callable[[dict], dict], total_epochs: int,
                 metrics: Sequence[str] = EPOCH_METRICS, log_models: str = "all"):
        if log_models not in ("all", "best", "none"):
            raise ValueError(f"log_models must be all, best or none, got {log_models!r}")
        self.tracker = tracker
        self.resolve = resolve
        self.total_epochs = int(total_epochs)
        self.metrics = tuple(metrics)
        self.log_models = log_models

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        config = dict(trial.config or {})
        try:
            resolved = self.resolve(config)
        except Exception as err:  # the trial itself will fail on the same config and say why
            log.warning("trial %s: config does not resolve (%s); logging its params only", trial.trial_id, err)
            resolved = {}
        self._safely(trial, "start", lambda: self.tracker.trial_run(trial.trial_id, params=config,
                                                                    resolved_spec=resolved))

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        epoch = result.get("epoch", result.get("training_iteration"))
        if epoch is None:
            return
        values = {k: result[k] for k in self.metrics if k in result}
        self._safely(trial, "result", lambda: self.tracker.log_epoch(trial.trial_id, values, epoch=int(epoch)))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        result = trial.last_result or {}
        status = trial_status(result, total_epochs=result.get("total_epochs", self.total_epochs))
        model = result.get("model_path") if self.log_models == "all" else None
        if model:  # before the run is closed: a failure here still closes it below
            self._safely(trial, "student model", lambda: self.tracker.log_trial_model(trial.trial_id, str(model)))
        self._safely(trial, "complete", lambda: self.tracker.end_trial(
            trial.trial_id, status, model_path=str(model) if model else None))

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._safely(trial, "error", lambda: self.tracker.end_trial(trial.trial_id, TrialStatus.ERRORED))

    @staticmethod
    def _safely(trial, event: str, call: Callable[[], Any]) -> None:
        try:
            call()
        except Exception as err:
            if is_transient(err):  # the tracker has said, once, that the server does not answer
                return
            log.exception("MLflow: could not record the %s of trial %s", event, trial.trial_id)

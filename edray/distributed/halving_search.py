"""Successive halving driven from Ray Tune's searcher: Optuna draws configs, rungs promote them.

One Optuna trial per config; one Tune trial per config per rung it reaches (a promoted
config is trained again, from scratch, at the next budget: see
:mod:`edray.distributed.halving`). Optuna hears the copy's value as an intermediate
value at step = its epochs, then PRUNED if the rung does not promote the config, or
COMPLETE with the full run's value. The scheduler stays FIFO: nothing is stopped inside
a run, configs are stopped between rungs.
"""

from __future__ import annotations

from typing import Any, cast

import optuna
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from edray.clusters.ray_private import optuna_completed_trials, optuna_study, optuna_trials
from edray.distributed.halving import BUDGET_KEY, SuccessiveHalving
from edray.trial_status import TrialStatus, trial_status

__all__ = ["HalvingOptunaSearch"]


class HalvingOptunaSearch(OptunaSearch):
    """``OptunaSearch`` whose trials are copies of configs at the budgets of ``halving``'s rungs.

    Args:
        halving: the rungs (the full budget last) and how many configs start.
        **kwargs: passed to ``OptunaSearch`` (space, metric, mode, sampler, ...).
    """

    def __init__(self, *, halving: SuccessiveHalving, **kwargs: Any):
        super().__init__(**kwargs)
        self._halving = halving
        self._full = halving.rungs[-1].epochs
        self._configs: dict[int, dict[str, Any]] = {}  # Optuna trial number -> its drawn config
        self._optuna_trial_of: dict[int, Any] = {}  # Optuna trial number -> its Optuna trial
        self._runs: dict[str, tuple[int, int]] = {}  # Tune trial id -> (config, epochs)
        self._queue: list[tuple[int, int]] = []  # promoted (config, epochs) not started yet
        self._started = [0] * len(halving.rungs)

    @property
    def study(self) -> optuna.Study:
        return optuna_study(self)

    def _budgeted(self, config: dict[str, Any], epochs: int) -> dict[str, Any]:
        return {**config, BUDGET_KEY: epochs} if epochs < self._full else dict(config)

    # Ray annotates suggest as dict | None, but its own Searcher.FINISHED, a str, is a documented return.
    def suggest(self, trial_id: str) -> dict | str | None:  # type: ignore[override]
        rungs = self._halving.rungs
        if self._queue:
            key, epochs = self._queue.pop(0)
            optuna_trials(self)[trial_id] = self._optuna_trial_of[key]
        elif self._started[0] < rungs[0].expected:
            config = super().suggest(trial_id)
            if config is None:
                return None
            key, epochs = optuna_trials(self)[trial_id].number, rungs[0].epochs
            self._configs[key], self._optuna_trial_of[key] = config, optuna_trials(self)[trial_id]
        else:
            last = len(rungs) - 1
            decided = all(i in self._halving.decided for i in range(last))
            finished = decided and self._started[last] >= rungs[last].expected
            return Searcher.FINISHED if finished else None  # None: wait for a rung to decide
        self._started[self._halving.rung_of(epochs)] += 1
        self._runs[trial_id] = (key, epochs)
        return self._budgeted(self._configs[key], epochs)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Per-epoch values of a short copy are not those of the full run: Optuna hears one
        # value per rung (below), never a curve it would mix across budgets.
        return

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        told = optuna_completed_trials(self)
        if trial_id in told or trial_id not in self._runs:
            return
        told.add(trial_id)
        key, epochs = self._runs[trial_id]
        ot_trial = self._optuna_trial_of[key]
        status = trial_status(result, error)
        value = (result or {}).get(self.metric)
        if epochs == self._full:  # the config's own run: the one rule says how it ended
            state = {TrialStatus.COMPLETED: optuna.trial.TrialState.COMPLETE,
                     TrialStatus.PRUNED: optuna.trial.TrialState.PRUNED}.get(status, optuna.trial.TrialState.FAIL)
            self.study.tell(ot_trial, value if state is optuna.trial.TrialState.COMPLETE else None, state=state)
            return
        try:
            if status is TrialStatus.ERRORED or value is None or result is None:  # (value None if result is)
                raise ValueError("no result")
            self._halving.record(key, epochs, value, grade=int(result["grade"]), epoch=int(result["epoch"]))
        except (ValueError, KeyError):  # failed, or ended before the end of its copy: out of the rung
            self._halving.fail(key, epochs)
            self.study.tell(ot_trial, None, state=optuna.trial.TrialState.FAIL)
        else:
            ot_trial.report(float(value), step=epochs)
        self._settle(epochs)

    def _settle(self, epochs: int) -> None:
        """Once a rung is complete: queue its promoted configs, tell Optuna the others are pruned."""
        decision = self._halving.decide(epochs)
        if decision is None:
            return
        promoted, pruned = decision
        next_epochs = self._halving.rungs[self._halving.rung_of(epochs) + 1].epochs
        # This searcher records its configs under their Optuna trial numbers.
        self._queue.extend((cast(int, key), next_epochs) for key in promoted)
        for key in pruned:
            self.study.tell(self._optuna_trial_of[cast(int, key)], None, state=optuna.trial.TrialState.PRUNED)

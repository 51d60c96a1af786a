"""A resumed sweep's searcher made to agree with the trials Tune restored.

Why. Tune saves the experiment state (its trials) and the searcher's state as two files,
and uploads them to the shared location as they change. A driver killed between the two
leaves them from different moments, and the restored sweep then misbehaved:

- searcher state older: a trial that had finished is still running to the searcher.
  ``ConcurrencyLimiter`` kept its slot for good, so with ``--max-concurrent 1`` the resumed
  sweep waited forever after its restored trial (seen once in ~20 runs of the lost-driver
  test); Optuna never heard the result; and ``SearchGenerator`` had counted fewer trials
  than Tune has, so it would start more than ``num_samples``.
- searcher state newer: the searcher saw a trial start that the restored experiment never
  had (it is closed as lost in MLflow at the end, ``sweep._close_lost_trials``); its slot
  and its place in ``num_samples`` were held for good in the same way.

What this does. On the restored driver's first step, before Tune asks for a new trial:
each trial the limiter holds as running that Tune restored as finished is told to the
searcher with its last result (Optuna: COMPLETE or PRUNED, by the one rule); each it
holds that Tune does not have is told failed (Optuna: FAIL, which is what became of it);
and the generator's count of trials created is set to the trials Tune has.
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

__all__ = ["ReconcileSearcher"]

_FINISHED = "TERMINATED"  # Tune's Trial.TERMINATED: ended, not to run again (an ERROR trial resumes)


class ReconcileSearcher(Callback):
    """A Tune callback for a restored sweep. ``search_alg``: the restored Tuner's (a
    ``SearchGenerator`` around a ``ConcurrencyLimiter``, or a sweep's older bare limiter)."""

    def __init__(self, search_alg: Any) -> None:
        self.search_alg = search_alg
        self.finished: list[str] = []  # told with their last result
        self.lost: list[str] = []  # told failed
        self._done = False

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if self._done:
            return
        self._done = True
        limiter = getattr(self.search_alg, "searcher", self.search_alg)
        live = getattr(limiter, "live_trials", None)
        if isinstance(live, set):
            restored = {t.trial_id: t for t in trials}
            for trial_id in sorted(live):
                trial = restored.get(trial_id)
                if trial is None:
                    self.lost.append(trial_id)
                    limiter.on_trial_complete(trial_id, result=None, error=True)
                elif trial.status == _FINISHED:
                    self.finished.append(trial_id)
                    limiter.on_trial_complete(trial_id, result=trial.last_result or None)
        if limiter is not self.search_alg and hasattr(self.search_alg, "get_state"):
            # Every trial Tune has came from the generator; num_samples counts them.
            self.search_alg.set_state({**self.search_alg.get_state(), "counter": len(trials)})

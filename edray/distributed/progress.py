"""Progress lines for a driver nobody watches in a terminal (issue 18: a driver you can watch).

Under ``ray job submit`` stdout and stderr are not a terminal: Tune's live table is off and
``ray job logs --follow`` would show nothing for the whole sweep. :class:`ProgressLines`
(a Tune callback) writes plain lines instead:

- one when a trial starts (with its searched values) and one when it ends (completed,
  pruned or errored, as :mod:`edray.trial_status` decides, with its ``val_acc``); one when
  Tune restarts a failed trial, saying whether its worker was lost (a node gone, a process
  killed) or what the trial raised;
- a status line once the first epoch is in (the first estimate), then at most every 60 s:
  trials running / completed / pruned / errored, the best ``val_acc`` so far (of each
  trial's latest result, as the sweep ranks them), epochs done of those planned, the time
  elapsed and an estimate of what is left (the epochs left at the pace so far; pruned
  trials end early, so it errs long).

Numbers are rounded for reading (accuracies to 4 places, times to seconds or minutes).

A resumed sweep (``--resume``, maybe from a new driver) starts its lines with what the
stopped one had finished: one line, then every count and the best score include those
trials, and the estimate uses only this driver's pace. A trial that continues from a
checkpoint says so (``trial ... resumed at epoch N``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback

from edray.trial_status import TrialStatus, trial_status

__all__ = ["ProgressLines", "format_duration"]

STATUS_EVERY_S = 60.0


# Ray's errors for a worker that went away (its node, its process, its memory), not the trial's own.
# Tune's error file names some by class, others only by their message ("The actor ... is unavailable").
_LOST_WORKER = ("ActorDiedError", "RayActorError", "NodeDiedError", "ActorUnavailableError", "WorkerCrashedError",
                "OutOfMemoryError", "ObjectLostError", "is unavailable", "actor died", "RpcError")


def _why_it_failed(error_file: str | None) -> str:
    """What the restart line says: a lost worker, or what the trial raised (the last line of its
    traceback). Without a traceback of the trial's code the error is Ray's: a lost worker."""
    try:
        text = Path(error_file).read_text(errors="replace") if error_file else ""
    except OSError:
        text = ""
    last_failure = text.rsplit("Failure # ", 1)[-1]  # Tune appends one entry per failure
    if 'File "' not in last_failure or any(marker in last_failure for marker in _LOST_WORKER):
        return "lost its worker (a node gone or a process ended)"
    lines = [line.strip() for line in last_failure.splitlines() if line.strip()]
    return f"failed ({lines[-1][:200]})"


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2 h 05 min``."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60:02d} min"


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return str(v)


class ProgressLines(Callback):
    """Plain progress lines for a sweep (see the module docstring).

    Args:
        write: where a line goes (the CLI: stderr).
        planned_epochs: epochs of every trial planned (what ``plan_line`` states).
        total_epochs: a trial's full length (shorter ends are pruned).
        metric: the score the sweep maximises.
        every_s: the least time between two status lines.
        clock: seconds, monotonic (a test gives its own).
    """

    def __init__(self, write: Callable[[str], None], *, planned_epochs: int, total_epochs: int,
                 metric: str = "val_acc", every_s: float = STATUS_EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        self.write = write
        self.planned_epochs = int(planned_epochs)
        self.total_epochs = int(total_epochs)
        self.metric = metric
        self.every_s = every_s
        self.clock = clock
        self.start = clock()
        self.last_status = self.start
        self.running: set[str] = set()
        self.ended: dict[str, TrialStatus] = {}
        self.epochs: dict[str, int] = {}  # trial -> epochs done (its last result)
        self.scores: dict[str, float] = {}  # trial -> its latest score (what the sweep ranks by)
        self.seen_trials = False  # the trials Tune restored (--resume) were taken in
        self.estimated = False  # a status line with this driver's first epoch was written
        self.epochs_before = 0  # epochs a stopped driver had done: not this driver's pace

    # -------------------------------------------------------------- Tune's events

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if not self.seen_trials:
            self.seen_trials = True
            self._take_in(trials)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self.running.add(trial.trial_id)
        values = ", ".join(f"{k}={_value(v)}" for k, v in sorted((trial.config or {}).items()))
        epoch = (trial.last_result or {}).get("epoch")  # a checkpoint's trial, restarted (resume, lost node)
        said = f"resumed at epoch {epoch}" if epoch else "started"
        self.write(f"trial {trial.trial_id} {said}" + (f": {values}" if values else ""))

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        epoch = result.get("epoch", result.get("training_iteration"))
        if epoch is not None:
            self.epochs[trial.trial_id] = int(epoch)
        score = result.get(self.metric)
        if isinstance(score, (int, float)):
            self.scores[trial.trial_id] = float(score)
        self._maybe_status()

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        result = trial.last_result or {}
        status = trial_status(result, total_epochs=result.get("total_epochs", self.total_epochs))
        score = result.get(self.metric)
        said = f", {self.metric} {score:.4f}" if isinstance(score, (int, float)) else ""
        epoch = self.epochs.get(trial.trial_id)
        at = f" at epoch {epoch}/{self.total_epochs}" if epoch is not None else ""
        self._end(trial.trial_id, status, f"trial {trial.trial_id} {status.value}{at}{said}")

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        epoch = self.epochs.get(trial.trial_id)
        limit = getattr(trial, "max_failures", None)
        self.write(f"trial {trial.trial_id} {_why_it_failed(getattr(trial, 'error_file', None))}"
                   + (f" after epoch {epoch}/{self.total_epochs}" if epoch is not None else "")
                   + f": restarting it from its last checkpoint (restart {getattr(trial, 'num_failures', '?')}"
                   + (f" of at most {limit})" if limit is not None else ")"))

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._end(trial.trial_id, TrialStatus.ERRORED, f"trial {trial.trial_id} errored (see its error file: "
                  f"{getattr(trial, 'error_file', None) or 'ray logs'})")

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        self._maybe_status()  # also while no trial reports (all waiting for nodes)

    def on_experiment_end(self, trials: list, **info) -> None:
        self.write(self.status_line())

    # -------------------------------------------------------------- the lines

    def _take_in(self, trials: list) -> None:
        """Trials of a restored experiment: the ended ones counted, epochs done kept apart."""
        ended = 0
        for trial in trials:
            result = trial.last_result or {}
            epoch = result.get("epoch")
            if epoch is None:
                continue  # not started before the stop
            self.epochs[trial.trial_id] = int(epoch)
            score = result.get(self.metric)
            if isinstance(score, (int, float)):
                self.scores[trial.trial_id] = float(score)
            if getattr(trial, "status", None) in ("TERMINATED", "ERROR"):
                status = (TrialStatus.ERRORED if trial.status == "ERROR"
                          else trial_status(result, total_epochs=result.get("total_epochs", self.total_epochs)))
                self.ended[trial.trial_id] = status
                ended += 1
        self.epochs_before = sum(self.epochs.values())
        if self.epochs:
            going = len(self.epochs) - ended
            self.write(f"resumed: {ended} trial{'s' * (ended != 1)} ended before the stop, {going} "
                       f"continue{'s' * (going == 1)} from a checkpoint; {self.status_line()}")

    def _end(self, trial_id: str, status: TrialStatus, line: str) -> None:
        self.running.discard(trial_id)
        self.ended[trial_id] = status
        self.write(line)

    def _maybe_status(self) -> None:
        now = self.clock()
        first = not self.estimated and sum(self.epochs.values()) > self.epochs_before
        if first or now - self.last_status >= self.every_s:
            self.estimated = self.estimated or first
            self.last_status = now
            self.write(self.status_line())

    def status_line(self) -> str:
        counts = {s: sum(v == s for v in self.ended.values()) for s in TrialStatus}
        done = sum(self.epochs.values())
        here = done - self.epochs_before  # the pace of this driver only
        elapsed = self.clock() - self.start
        best = f"{max(self.scores.values()):.4f}" if self.scores else "-"
        left = max(0, self.planned_epochs - done)
        estimate = (f", about {format_duration(elapsed / here * left)} left" if here > 0 and left
                    else "" if here > 0 or not left else ", no estimate yet")
        return (f"status: {len(self.running)} running, {counts[TrialStatus.COMPLETED]} completed, "
                f"{counts[TrialStatus.PRUNED]} pruned, {counts[TrialStatus.ERRORED]} errored; "
                f"best {self.metric} {best}; epochs {done}/{self.planned_epochs}; "
                f"elapsed {format_duration(elapsed)}{estimate}")

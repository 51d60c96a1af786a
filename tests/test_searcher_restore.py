"""A resumed sweep whose searcher state and experiment state come from different moments (a
driver killed between Tune's two uploads) gets a searcher that agrees with Tune's trials
(distributed/searcher_restore.py), on the real searcher a sweep builds: Optuna behind Tune's
ConcurrencyLimiter and SearchGenerator."""

from __future__ import annotations

from dataclasses import dataclass, field

import optuna
from ray.tune.search import SearchGenerator

from edray.clusters.ray_private import optuna_study
from edray.distributed.search_setup import make_searcher
from edray.distributed.searcher_restore import ReconcileSearcher

from .conftest import fast_spec

_SPEC = fast_spec("search.early_stopping.kind=none", "search.params[0].min_grade_epochs=1")
_STATE = optuna.trial.TrialState


@dataclass
class _Trial:
    """The part of a restored Tune trial the callback reads."""

    trial_id: str
    status: str = "RUNNING"
    last_result: dict = field(default_factory=dict)


def _searcher(max_concurrent: int, started: list[str], counted: int):
    """The sweep's searcher as its saved state left it: ``started`` suggested (and running to it),
    ``counted`` trials created by the generator."""
    searcher, limiter = make_searcher(_SPEC, max_concurrent=max_concurrent, num_samples=4)
    generator = SearchGenerator(limiter)
    for trial_id in started:
        assert limiter.suggest(trial_id)
    generator.set_state({**generator.get_state(), "counter": counted})
    return searcher, limiter, generator


def test_an_older_searcher_state_hears_of_the_trial_that_finished_and_frees_its_slot():
    # Saved while trial "a" ran; Tune's state is later: "a" finished, "b" started. With one
    # trial at a time the limiter held a's slot for good: the resumed sweep waited forever.
    searcher, limiter, generator = _searcher(1, ["a"], counted=1)
    done = {"epoch": 8, "val_acc": 0.8, "total_epochs": 8, "final_grade_epochs": 3}
    reconcile = ReconcileSearcher(generator)

    reconcile.on_step_begin(0, [_Trial("a", "TERMINATED", done), _Trial("b")])

    assert reconcile.finished == ["a"] and reconcile.lost == [] and limiter.live_trials == set()
    (told,) = optuna_study(searcher).trials
    assert (told.state, told.value) == (_STATE.COMPLETE, 0.8)
    assert generator.get_state()["counter"] == 2  # b counts too: 2 more to start, not 3
    assert limiter.suggest("c")  # the slot is free again
    reconcile.on_step_begin(1, [])  # once only
    assert generator.get_state()["counter"] == 2


def test_a_newer_searcher_state_fails_the_trial_tune_never_had_and_gives_its_place_back():
    searcher, limiter, generator = _searcher(2, ["kept", "lost"], counted=2)
    assert limiter.suggest("third") is None  # the limit: 2 at once
    reconcile = ReconcileSearcher(generator)

    reconcile.on_step_begin(0, [_Trial("kept")])  # the restored experiment knows only "kept"

    assert reconcile.lost == ["lost"] and reconcile.finished == [] and limiter.live_trials == {"kept"}
    assert [t.state for t in optuna_study(searcher).trials] == [_STATE.RUNNING, _STATE.FAIL]
    assert generator.get_state()["counter"] == 1  # one more config to start in its place
    assert limiter.suggest("in its place")


def test_states_from_the_same_moment_change_nothing():
    _, limiter, generator = _searcher(1, ["kept"], counted=2)
    reconcile = ReconcileSearcher(generator)
    reconcile.on_step_begin(0, [_Trial("kept"), _Trial("done before", "TERMINATED", {"epoch": 8})])
    assert reconcile.lost == reconcile.finished == [] and limiter.live_trials == {"kept"}
    assert generator.get_state()["counter"] == 2

"""Grade-aware early stopping, fed with the real per-epoch results of real ED trials.

Three short digits runs go through the sweep's own trial function (``trial.train_trial``), so
the results carry exactly what Tune sees (``final_grade_epochs``, ``total_epochs``):
an early switch, a late switch and an early switch with a poor learning rate. They are
then fed, epoch by epoch and interleaved as concurrent trials would be, to the sweep's
ASHA scheduler and to a naive epoch-counting ASHA; trials the scheduler stops are told
to the sweep's Optuna searcher, as Tune's controller does.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from edray.clusters.ray_private import optuna_study
from edray.distributed import sweep, trial
from edray.distributed.searcher import PruneStoppedOptunaSearch
from edray.distributed.space import resolve_config
from edray.layout import Layout
from edray.trial_status import was_stopped_early

from .conftest import fast_spec

EPOCHS = 6
# grace 1, factor 2: rungs after 1, 2 and 4 epochs, the most eager ASHA there is.
ES = [f"optim.epochs={EPOCHS}", "ed.switch_epochs=[2, 4]", "search.params[0].min_grade_epochs=1",
      "search.early_stopping.kind=asha", "search.early_stopping.grace_epochs=1",
      "search.early_stopping.reduction_factor=2", "teachers.logits=live"]
CONFIGS = {
    "early": {"ed.switch_epochs[0]": 1, "ed.switch_epochs[1]": 2},
    "late": {"ed.switch_epochs[0]": 4, "ed.switch_epochs[1]": 5},
    "early_low_lr": {"ed.switch_epochs[0]": 1, "ed.switch_epochs[1]": 2, "optim.lr": 0.01},
}


@pytest.fixture(scope="module")
def results(teacher_workdir: Path, tmp_path_factory) -> dict[str, list[dict]]:
    """Per-epoch results of each config, as its Tune trial reports them."""
    base = fast_spec(*ES)
    tmp = tmp_path_factory.mktemp("es")
    ctx = trial.TrialContext(base_spec=base.model_dump(mode="json"), layout=Layout.at(teacher_workdir),
                             models_dir=str(tmp / "models"))
    out: dict[str, list[dict]] = {}
    for name, config in CONFIGS.items():
        reported: list[dict] = []
        trial.train_trial(resolve_config(base, config), ctx, trial_id=name,
                          report_fn=lambda metrics, _dir, into=reported: into.append(dict(metrics)))
        out[name] = reported
    return out


def _replay(scheduler, results: dict[str, list[dict]], names: list[str], *, searcher=None) -> dict[str, list[str]]:
    """Feed the results epoch by epoch, trials interleaved; a stopped trial reports no more.

    Returns each trial's decisions, one per result it reported.
    """
    trials = {name: Trial("edray_trial", config=CONFIGS[name], trial_id=name, stub=True) for name in names}
    for t in trials.values():
        scheduler.on_trial_add(None, t)
        if searcher is not None:
            searcher.suggest(t.trial_id)
    decisions: dict[str, list[str]] = {name: [] for name in names}
    live = list(names)
    for epoch in range(EPOCHS):
        for name in list(live):
            result = {**results[name][epoch], "training_iteration": epoch + 1}  # Tune adds the counter
            action = scheduler.on_trial_result(None, trials[name], result)
            decisions[name].append(action)
            if searcher is not None and action != TrialScheduler.STOP:
                searcher.on_trial_result(name, result)  # Tune reports only results that continue
            if action == TrialScheduler.STOP or epoch + 1 == EPOCHS:
                # What Tune's controller does when a trial stops or ends (stop_trial).
                scheduler.on_trial_complete(None, trials[name], result)
                if searcher is not None:
                    searcher.on_trial_complete(name, result=result)
                live.remove(name)
    return decisions


def test_results_carry_what_the_scheduler_counts(results, digits_data):
    for name, rows in results.items():
        assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
        switches = CONFIGS[name]["ed.switch_epochs[0]"], CONFIGS[name]["ed.switch_epochs[1]"]
        for r in rows:
            assert r["grade"] == 1 + sum(r["epoch"] > s for s in switches)
            assert r["final_grade_epochs"] == max(0, r["epoch"] - switches[1])
            assert r["total_epochs"] == EPOCHS
            assert not any("test" in key for key in r), "trials must not evaluate the test split"
    # The premise of the test: in grade 1 the late trial trails the early one on all-class
    # accuracy, because it has not yet seen most classes. By construction: a grade-1 student
    # predicts only group-1 classes, so its all-class accuracy is at most their share of val.
    share = (digits_data.val.labels < 3).float().mean().item()  # group 1 = classes 0-2 (natural order)
    late, early = results["late"], results["early"]
    assert [r["grade"] for r in late[:4]] == [1] * 4
    assert all(r["val_acc"] <= share + 1e-9 for r in late[:4])
    # By epoch 4 (a rung of both schedulers) the early trial has trained 2 epochs on all
    # classes: 0.74 against a bound of 0.30 on a Xeon; the 0.2 asked for leaves 0.24 to spare.
    assert early[3]["grade"] == 3 and early[3]["val_acc"] > share + 0.2


def test_naive_epoch_asha_stops_a_late_switch_while_it_is_in_grade_one(results):
    naive = ASHAScheduler(time_attr="epoch", metric="val_acc", mode="max", max_t=EPOCHS, grace_period=1,
                          reduction_factor=2)
    decisions = _replay(naive, results, ["early", "late"])
    assert TrialScheduler.STOP in decisions["late"]
    stopped_at = decisions["late"].index(TrialScheduler.STOP)
    assert results["late"][stopped_at]["grade"] == 1


def test_grade_aware_asha_lets_a_late_switch_reach_its_final_grade(results):
    spec = fast_spec(*ES)
    scheduler = sweep.make_scheduler(spec)
    assert scheduler._time_attr == "final_grade_epochs"
    decisions = _replay(scheduler, results, ["early", "late"])
    late = results["late"]
    in_early_grades = [d for d, r in zip(decisions["late"], late) if r["grade"] < spec.ed.grades]
    assert len(in_early_grades) == 5
    assert in_early_grades == [TrialScheduler.CONTINUE] * 5
    assert len(decisions["late"]) == EPOCHS  # it reported every epoch: never stopped before its last


def test_grade_aware_asha_still_stops_a_poor_trial_in_the_final_grade(results):
    """Not a scheduler that never stops anything: a poor trial facing all classes is cut."""
    spec = fast_spec(*ES)
    searcher, _ = sweep.make_searcher(spec, 2)
    decisions = _replay(sweep.make_scheduler(spec), results, ["early", "early_low_lr"], searcher=searcher)
    assert decisions["early"] == [TrialScheduler.CONTINUE] * EPOCHS
    poor = decisions["early_low_lr"]
    assert poor[-1] == TrialScheduler.STOP and len(poor) < EPOCHS
    stopped = results["early_low_lr"][len(poor) - 1]
    assert stopped["grade"] == spec.ed.grades and stopped["final_grade_epochs"] >= 1
    # ... and the searcher tells Optuna the truth: pruned, not complete with a partial score.
    states = {t.number: t.state for t in searcher.study.trials}
    assert states == {0: optuna.trial.TrialState.COMPLETE, 1: optuna.trial.TrialState.PRUNED}
    assert searcher.study.trials[0].value == results["early"][-1]["val_acc"]
    # A pruned trial keeps its last intermediate value: the last result it continued after.
    assert searcher.study.trials[1].value == results["early_low_lr"][len(poor) - 2]["val_acc"]


def test_searcher_tells_pruned_where_plain_optuna_search_tells_complete(results):
    spec = fast_spec(*ES)
    partial = results["early_low_lr"][2]
    full = results["early"][-1]
    assert was_stopped_early(partial) and not was_stopped_early(full)

    ours, _ = sweep.make_searcher(spec, 2)
    assert isinstance(ours, PruneStoppedOptunaSearch)
    plain = OptunaSearch(space=ours._space, metric="val_acc", mode="max", sampler=optuna.samplers.RandomSampler(seed=0))
    for search in (ours, plain):
        search.suggest("a")
        search.suggest("b")
        search.on_trial_complete("a", result=full)
        search.on_trial_complete("b", result=partial)
    assert [t.state for t in ours.study.trials] == [optuna.trial.TrialState.COMPLETE,
                                                    optuna.trial.TrialState.PRUNED]
    # What the searcher fixes: Ray's own OptunaSearch passes the partial score off as final.
    assert [t.state for t in optuna_study(plain).trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert optuna_study(plain).trials[1].value == partial["val_acc"]

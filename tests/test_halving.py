"""Budget-scaled successive halving (distributed/halving.py) on hand-made learning curves,
and its Tune searcher telling Optuna what happened to each config (real Optuna study)."""

from __future__ import annotations

import optuna
import pytest
from ray.tune.search import Searcher

from edray.distributed.halving import (
    BUDGET_KEY,
    SuccessiveHalving,
    fidelity_spec,
    halving_plan,
    rung_epochs,
)
from edray.distributed.halving_search import HalvingOptunaSearch
from edray.distributed.space import compile_space, resolve_config
from edray.errors import EdrayError
from edray.trial_status import TrialStatus, trial_status

from .conftest import fast_spec

HALVING = ["optim.epochs=40", "ed.switch_epochs=[8, 16]", "search.early_stopping.kind=halving",
           "search.early_stopping.reduction_factor=4"]

# Hand-made curves: (epoch, grade, val_acc over all classes) per epoch of each trial's copy at
# 8 epochs (grades 1..3). "late" switches late: it trails everyone while in grade 1, and ends best.
CURVES = {
    "early": [(1, 1, 0.30), (2, 2, 0.55), (3, 3, 0.70), (4, 3, 0.80), (5, 3, 0.84), (6, 3, 0.85), (7, 3, 0.86),
              (8, 3, 0.86)],
    "late": [(1, 1, 0.10), (2, 1, 0.20), (3, 1, 0.30), (4, 1, 0.31), (5, 1, 0.32), (6, 2, 0.60), (7, 3, 0.90),
             (8, 3, 0.95)],
    "poor": [(1, 1, 0.20), (2, 2, 0.35), (3, 3, 0.40), (4, 3, 0.45), (5, 3, 0.50), (6, 3, 0.52), (7, 3, 0.53),
             (8, 3, 0.53)],
    "middling": [(1, 1, 0.25), (2, 1, 0.30), (3, 2, 0.50), (4, 2, 0.60), (5, 3, 0.70), (6, 3, 0.75), (7, 3, 0.78),
                 (8, 3, 0.80)],
}


def _result(curve, row: int) -> dict:
    epoch, grade, acc = curve[row]
    return {"epoch": epoch, "grade": grade, "val_acc": acc, "total_epochs": 40}


def test_a_rung_never_compares_trials_in_different_grades():
    halving = SuccessiveHalving([8, 40], num_configs=4, eta=4, grades=3)
    # Mid-copy results (grade 1 for "late", grade 2 for "middling") are refused, whatever their value.
    for name, row in (("late", 3), ("middling", 3), ("early", 1)):
        with pytest.raises(ValueError, match="grade 3"):
            halving.record(name, 8, CURVES[name][row][2], grade=CURVES[name][row][1], epoch=CURVES[name][row][0])
    assert halving.rungs[0].values == {}
    # A last epoch in grade 3 that is not the copy's last is refused too.
    with pytest.raises(ValueError):
        halving.record("early", 8, 0.85, grade=3, epoch=6)
    for name, curve in CURVES.items():
        epoch, grade, acc = curve[-1]
        halving.record(name, 8, acc, grade=grade, epoch=epoch)
    promoted, pruned = halving.decide(8)
    # Ranked on the copies' ends, all in grade 3: the late switch that trailed in grade 1 wins.
    assert promoted == ["late"]
    assert sorted(pruned) == ["early", "middling", "poor"]
    assert halving.decide(8) is None  # a rung decides once


def test_a_rung_waits_for_every_config_and_counts_failures():
    halving = SuccessiveHalving([2, 5, 40], num_configs=5, eta=2, grades=3)
    assert halving.plan.configs == [5, 3, 2] and halving.plan.epochs == 5 * 2 + 3 * 5 + 2 * 40
    for i, acc in enumerate([0.5, 0.9, 0.7, 0.6]):
        halving.record(i, 2, acc, grade=3, epoch=2)
        assert halving.decide(2) is None
    halving.fail(4, 2)
    assert halving.decide(2) == ([1, 2, 3], [0])


def test_plan_cost_matches_the_measured_digits_design():
    plan = halving_plan([8, 40], 16, 4)
    assert plan.configs == [16, 4] and plan.trials == 20
    assert 16 * 40 / plan.epochs > 2.0  # the target of issue 12


def test_fidelity_copy_scales_switches_and_keeps_every_grade():
    spec = fast_spec(*HALVING)
    assert rung_epochs(spec) == [8, 40]
    copy = fidelity_spec(spec, 8)
    assert copy.optim.epochs == 8 and copy.ed.switch_epochs == [2, 3]
    late = fidelity_spec(resolve_config(spec, {"ed.switch_epochs[0]": 36, "ed.switch_epochs[1]": 39}), 8)
    assert late.ed.switch_epochs == [6, 7]  # each grade keeps at least one epoch
    early = fidelity_spec(resolve_config(spec, {"ed.switch_epochs[0]": 1, "ed.switch_epochs[1]": 2}), 8)
    assert early.ed.switch_epochs == [1, 2]
    step = fast_spec(*HALVING, "optim.schedule.kind=multistep", "optim.schedule.milestones=[20, 30]")
    assert fidelity_spec(step, 8).optim.schedule.milestones == [4, 6]
    # The budget travels in the trial's config; resolve_config makes the copy.
    assert resolve_config(spec, {BUDGET_KEY: 8}).ed.switch_epochs == [2, 3]


def test_baseline_copies_are_valid_specs():
    """KD and CE specs keep ED's (unused) switch epochs: a copy must still fit them."""
    for method in ("kd", "ce", "mtkd"):
        spec = fast_spec("search.early_stopping.kind=halving", f"method={method}")  # 8 epochs, copies of 2 -> 3
        epochs = rung_epochs(spec)
        assert epochs == [3, 8]
        assert fidelity_spec(spec, epochs[0]).optim.epochs == 3


def test_budgets_too_short_for_every_grade_are_refused():
    assert rung_epochs(fast_spec(*HALVING, "search.early_stopping.budgets=[0.05]")) == [3, 40]  # one per grade
    with pytest.raises(EdrayError, match=r"budgets\[0\]"):
        rung_epochs(fast_spec(*HALVING, "optim.epochs=3", "ed.switch_epochs=[1, 2]"))
    with pytest.raises(EdrayError, match=r"budgets\[1\]"):
        rung_epochs(fast_spec(*HALVING, "search.early_stopping.budgets=[0.2, 0.21]"))


def _searcher(spec, num_configs: int):
    halving = SuccessiveHalving(rung_epochs(spec), num_configs, spec.search.early_stopping.reduction_factor, grades=3)
    search = HalvingOptunaSearch(halving=halving, space=compile_space(spec), metric="val_acc", mode="max",
                                 sampler=optuna.samplers.RandomSampler(seed=0))
    return search


def test_searcher_prunes_what_a_rung_drops_and_completes_the_promoted_run():
    spec = fast_spec(*HALVING)
    search = _searcher(spec, 4)
    names = list(CURVES)
    configs = {f"t{i}": search.suggest(f"t{i}") for i in range(4)}
    assert all(c[BUDGET_KEY] == 8 for c in configs.values())
    assert search.suggest("t4") is None  # the rung has not decided: wait
    for i, name in enumerate(names):
        result = _result(CURVES[name], -1) | {"epoch": 8}
        # The one rule: a copy that ran 8 of 40 epochs is a stopped trial.
        assert trial_status(result) is TrialStatus.PRUNED
        search.on_trial_complete(f"t{i}", result=result)
    promoted = search.suggest("t4")
    assert BUDGET_KEY not in promoted
    assert promoted == {k: v for k, v in configs["t1"].items() if k != BUDGET_KEY}  # "late" won the rung
    assert search.suggest("t5") == Searcher.FINISHED
    search.on_trial_complete("t4", result={"epoch": 40, "total_epochs": 40, "grade": 3, "val_acc": 0.97})
    trials = search.study.trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE,
                                         optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.PRUNED]
    assert trials[1].value == 0.97 and trials[1].intermediate_values == {8: 0.95}
    assert trials[0].intermediate_values == {8: 0.86}  # TPE ranks pruned trials by their rung value


def test_searcher_fails_a_copy_that_errored_and_promotes_from_the_rest():
    spec = fast_spec(*HALVING)
    search = _searcher(spec, 2)
    search.suggest("a")
    search.suggest("b")
    search.on_trial_complete("a", result=None, error=True)
    search.on_trial_complete("b", result={"epoch": 8, "total_epochs": 40, "grade": 3, "val_acc": 0.5})
    assert BUDGET_KEY not in search.suggest("c")
    assert search.study.trials[0].state == optuna.trial.TrialState.FAIL


def test_optuna_search_private_state_is_where_ray_private_reads_it():
    """edray's searchers reach OptunaSearch's private state only through ray_private; a Ray
    upgrade that renames it fails here, by name, not inside a sweep."""
    from ray.tune.search.optuna import OptunaSearch

    from edray.clusters.ray_private import optuna_completed_trials, optuna_study, optuna_trials

    search = OptunaSearch(space=compile_space(fast_spec(*HALVING)), metric="val_acc", mode="max",
                          sampler=optuna.samplers.RandomSampler(seed=0))
    search.suggest("t0")
    assert isinstance(optuna_study(search), optuna.Study)
    assert list(optuna_trials(search)) == ["t0"] and isinstance(optuna_trials(search)["t0"], optuna.Trial)
    search.on_trial_complete("t0", result={"val_acc": 0.5})
    assert optuna_completed_trials(search) == {"t0"}

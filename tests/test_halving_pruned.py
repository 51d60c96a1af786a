"""Successive halving over three rungs with a real Optuna study: each rung promotes its
best configs (by the value each copy ended with), and every config a rung stops is
PRUNED in the study, with the value it was stopped at."""

from __future__ import annotations

import random

import optuna
from ray.tune.search import Searcher

from edray.distributed.halving import BUDGET_KEY, SuccessiveHalving, rung_epochs
from edray.distributed.halving_search import HalvingOptunaSearch
from edray.distributed.space import compile_space

from .conftest import fast_spec

THREE_RUNGS = ["optim.epochs=40", "ed.switch_epochs=[8, 16]", "search.early_stopping.kind=halving",
               "search.early_stopping.budgets=[0.1, 0.3]", "search.early_stopping.reduction_factor=3"]


def _key(config: dict) -> tuple:
    """A config by two of its drawn floats (a Tune config also holds derived values Optuna does not)."""
    return config["optim.lr"], config["ed.alpha"]


def test_each_rung_promotes_its_best_and_the_study_prunes_the_rest():
    spec = fast_spec(*THREE_RUNGS)
    epochs = rung_epochs(spec)
    assert len(epochs) == 3 and epochs[-1] == 40
    halving = SuccessiveHalving(epochs, 9, 3, grades=3)
    assert halving.plan.configs == [9, 3, 1]
    search = HalvingOptunaSearch(halving=halving, space=compile_space(spec), metric="val_acc", mode="max",
                                 sampler=optuna.samplers.RandomSampler(seed=0))
    rng = random.Random(1)
    value: dict[tuple, dict[int, float]] = {}  # config -> rung epochs -> the value its copy ended with
    trial = 0
    alive = None
    for rung, budget in enumerate(epochs):
        started = []
        while True:
            config = search.suggest(f"t{trial}")
            if not isinstance(config, dict):
                break
            assert config.get(BUDGET_KEY, 40) == budget
            started.append((f"t{trial}", _key(config)))
            trial += 1
        assert len(started) == halving.plan.configs[rung]
        if alive is not None:  # exactly the configs the last rung promoted
            assert {k for _, k in started} == alive
        for tid, key in started:
            acc = round(rng.uniform(0.2, 0.9), 4)
            value.setdefault(key, {})[budget] = acc
            search.on_trial_complete(tid, result={"epoch": budget, "total_epochs": 40, "grade": 3, "val_acc": acc})
        if rung + 1 < len(epochs):
            ranked = sorted((k for _, k in started), key=lambda k: value[k][budget], reverse=True)
            alive = set(ranked[: halving.plan.configs[rung + 1]])
    assert search.suggest(f"t{trial}") == Searcher.FINISHED

    trials = search.study.trials
    assert len(trials) == 9
    states = [t.state for t in trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 1
    assert states.count(optuna.trial.TrialState.PRUNED) == 8
    for t in trials:
        # Each Optuna trial heard one value per rung its config reached, at step = the copy's epochs.
        reached = {b: v for b, v in value[_key(t.params)].items() if b < 40}
        assert t.intermediate_values == reached
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.value == value[_key(t.params)][40]
            # The config trained in full is the best of the last rung.
            last = epochs[-2]
            assert reached[last] == max(val[last] for val in value.values() if last in val)

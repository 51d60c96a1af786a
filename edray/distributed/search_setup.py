"""The search of a sweep: Optuna searcher, Tune scheduler, and what they will cost.

Built from the spec alone (no Ray connection), so ``--dry-run`` and ``--compare`` can say
the cost before anything starts.
"""

from __future__ import annotations

from typing import Any

from edray.distributed.space import compile_space, default_point
from edray.names import METRIC
from edray.search_space import search_section
from edray.spec import Spec

__all__ = ["halving_for", "make_scheduler", "make_searcher", "plan_line", "planned_epochs"]


def make_scheduler(spec: Spec):
    """The sweep's trial scheduler: grade-aware ASHA, or FIFO (no early stopping, or successive halving,
    which stops configs between rungs in the searcher)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    es = search_section(spec).early_stopping
    if es.kind in ("none", "halving"):  # halving stops configs between rungs, in the searcher
        return FIFOScheduler()
    # Rungs count epochs in the final grade (see trial._extra_metrics): trials are only
    # compared once each faces all classes, with equal time spent doing so.
    return ASHAScheduler(
        time_attr="final_grade_epochs",
        metric=METRIC,
        mode="max",
        max_t=spec.optim.epochs,
        grace_period=es.grace_epochs,
        reduction_factor=es.reduction_factor,
    )


def halving_for(spec: Spec, num_samples: int):
    """The rungs of successive halving for this sweep, or None when it stops trials otherwise.

    Raises:
        EdrayError: budgets too short for the grades.
    """
    from edray.distributed.halving import SuccessiveHalving, rung_epochs

    es = search_section(spec).early_stopping
    if es.kind != "halving":
        return None
    grades = spec.ed.grades if spec.method == "ed" else 1
    return SuccessiveHalving(rung_epochs(spec), num_samples, es.reduction_factor, grades=grades)


def planned_epochs(spec: Spec, num_samples: int) -> tuple[int, int]:
    """(Tune trials, epochs) the sweep will run: exact for halving and none, an upper bound for asha."""
    halving = halving_for(spec, num_samples)
    if halving is None:
        return num_samples, num_samples * spec.optim.epochs
    return halving.plan.trials, halving.plan.epochs


def plan_line(spec: Spec, num_samples: int) -> str:
    """What the sweep will cost, said before it starts."""
    trials, epochs = planned_epochs(spec, num_samples)
    full = num_samples * spec.optim.epochs
    es = search_section(spec).early_stopping
    if es.kind == "halving":
        halving = halving_for(spec, num_samples)
        rungs = ", ".join(f"{n} at {e}" for n, e in zip(halving.plan.configs, halving.plan.rungs))
        return (f"{spec.method}: {num_samples} configs by successive halving (configs at epochs: {rungs}): "
                f"{trials} trials, {epochs} epochs ({full / epochs:.1f}x fewer than {full})")
    if es.kind == "asha":
        return f"{spec.method}: {num_samples} trials of {spec.optim.epochs} epochs, at most {full} epochs (asha)"
    return f"{spec.method}: {num_samples} trials of {spec.optim.epochs} epochs, {full} epochs"


def make_searcher(spec: Spec, max_concurrent: int, num_samples: int | None = None):
    """The sweep's Optuna searcher (it tells early-stopped trials as pruned; with successive halving, it
    also runs the rungs) and the same searcher behind a limit of ``max_concurrent`` trials at once, as
    Tune is given it. ``num_samples``: configs to start (default: ``search.num_samples``)."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    from edray.distributed.halving_search import HalvingOptunaSearch
    from edray.distributed.searcher import PruneStoppedOptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = search_section(spec)
    points = search.points_to_evaluate
    if points is None:
        point = default_point(spec)
        points = [point] if point else None
    sampler = (
        optuna.samplers.RandomSampler(seed=search.seed)
        if search.sampler == "random"
        else optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=min(4, search.num_samples))
    )
    storage = optuna.storages.RDBStorage(search.storage) if search.storage else None
    kwargs: dict[str, Any] = dict(space=compile_space(spec), metric=METRIC, mode="max", points_to_evaluate=points,
                                  sampler=sampler, storage=storage, study_name=spec.name if storage else None)
    halving = halving_for(spec, num_samples or search.num_samples)
    searcher = PruneStoppedOptunaSearch(**kwargs) if halving is None else HalvingOptunaSearch(halving=halving, **kwargs)
    return searcher, ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)

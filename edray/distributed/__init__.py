"""Ray around the ED loop (see docs/design.md#the-sweep and #clusters).

- :mod:`~edray.distributed.sweep`: ``edray sweep``, the driver (teachers, stores, Tune, results).
- :mod:`~edray.distributed.space`: the spec's ``search`` section compiled for Optuna.
- :mod:`~edray.distributed.searcher`: Optuna through Tune, stopped trials told as pruned.
- :mod:`~edray.distributed.halving`: budget-scaled successive halving (rungs, promotion; no Ray).
- :mod:`~edray.distributed.halving_search`: that halving driven from Tune's searcher.
- :mod:`~edray.distributed.trial`: one trial, the ED loop wrapped for Tune (inline or Ray Train).
- :mod:`~edray.distributed.cluster`: teachers, stores and the final evaluation as Ray work on nodes.
- :mod:`~edray.distributed.compare`: ``--compare``, ED against baselines tuned the same way.
- :mod:`~edray.distributed.tune_restore`: a killed sweep's Tune state made restorable.
- :mod:`~edray.distributed.faults`: fault injection for the reliability tests (off unless asked).

``sweep`` drives a sweep through ``connect`` (joining Ray), ``search_setup`` (searcher,
scheduler, cost), ``sweep_state`` (resume), ``tune_run`` (the Tuner) and ``results``
(summary, best.yaml, final evaluation); ``trial`` is what each Tune trial runs, with the
``resources`` it asks for; ``cluster`` runs preparation and the final evaluation on the
nodes; ``compare`` sweeps baselines beside ED; ``space``, ``searcher``,
``halving``, ``halving_search``, ``trial_rows`` and ``tune_restore`` serve the search.

Submodules import Ray lazily where they can: ``edray validate`` and ``--dry-run`` need
no cluster.
"""

__all__ = [
    "cluster", "compare", "connect", "faults", "halving", "halving_search", "resources", "results", "search_setup",
    "searcher", "space", "sweep", "sweep_state", "trial", "trial_rows", "tune_restore", "tune_run",
]

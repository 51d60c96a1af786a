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

Submodules import Ray lazily where they can: ``edray validate`` and ``--dry-run`` need
no cluster.
"""

__all__ = ["cluster", "compare", "faults", "halving", "halving_search", "searcher", "space", "sweep", "trial",
           "tune_restore"]

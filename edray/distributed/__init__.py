"""Ray around the ED loop: the search-space compiler, the Tune trial, the sweep driver.

``sweep`` drives a sweep through ``connect`` (joining Ray), ``search_setup`` (searcher,
scheduler, cost), ``sweep_state`` (resume), ``tune_run`` (the Tuner) and ``results``
(summary, best.yaml, final evaluation); ``trial`` is what each Tune trial runs, with the
``resources`` it asks for; ``cluster`` runs preparation and the final evaluation on the
nodes; ``compare`` sweeps baselines beside ED; ``space``, ``searcher``,
``halving_search``, ``schedulers`` and ``tune_restore`` serve the search.

Submodules import Ray lazily where they can: ``edray validate`` and ``--dry-run`` need
no cluster.
"""

__all__ = [
    "cluster", "compare", "connect", "halving_search", "resources", "results", "schedulers", "search_setup",
    "searcher", "space", "sweep", "sweep_state", "trial", "tune_restore", "tune_run",
]

"""Ray around the ED loop: the search-space compiler, the Tune trial, the sweep driver.

Submodules import Ray lazily where they can: ``edray validate`` and ``--dry-run`` need
no cluster.
"""

__all__ = ["space", "searcher", "sweep", "trial"]

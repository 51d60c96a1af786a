"""Every private Ray symbol edray uses, behind one door.

The offline cluster-file checks (:mod:`edray.clusters.launcher`, :mod:`edray.clusters.kuberay`) run what ``ray up`` and
the KubeRay autoscaler run before they touch a cloud; Ray exposes those steps only from
``ray.autoscaler._private``, which any Ray release may move. Each symbol is named once
in :data:`PRIVATE`; tests/test_cluster_files.py resolves every one, so a Ray upgrade that
moves one fails there, naming it, instead of deep inside ``edray validate``.

edray's searchers subclass Ray Tune's ``OptunaSearch`` and tell Optuna themselves how a
trial ended; the state they need has no public accessor, so the three functions at the
end read it (tests/test_halving.py calls each on a real ``OptunaSearch``). A resumed sweep
reaches what a restored ``Tuner`` holds: its run config and search algorithm
(:mod:`edray.distributed.tune_run`, :mod:`edray.distributed.searcher_restore`).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
from collections.abc import Iterator
from typing import Any

__all__ = [
    "PRIVATE", "RayPrivateMoved", "optuna_completed_trials", "optuna_study", "optuna_trials", "quiet", "resolve",
    "local_tuner", "restored_search_alg",
]

# name used in edray -> (module, attribute) in Ray, as of the ray>=2.51,<3 pyproject.toml pins
PRIVATE: dict[str, tuple[str, str]] = {
    # provider type -> its default-config loader: the launcher's known providers
    "default_provider_configs": ("ray.autoscaler._private.providers", "_DEFAULT_CONFIGS"),
    # {"type": "aws"} -> the launcher's default cluster config for that provider
    "provider_default_config": ("ray.autoscaler._private.providers", "_get_default_config"),
    # what `ray up` does before touching a cloud: merge defaults, then its own checks
    "prepare_config": ("ray.autoscaler._private.util", "prepare_config"),
    "validate_config": ("ray.autoscaler._private.util", "validate_config"),
    # a Kubernetes quantity ("500m", "16Gi") as the KubeRay autoscaler reads it
    "parse_quantity": ("ray.autoscaler._private.kuberay.utils", "parse_quantity"),
    # a RayCluster object -> the autoscaler's node types, as KubeRay derives them at run time
    "derive_autoscaling_config": (
        "ray.autoscaler._private.kuberay.autoscaling_config", "_derive_autoscaling_config_from_ray_cr",
    ),
    # "auto" or host:port -> the GCS address ray.init would join (edray sweep checks it answers first)
    "canonicalize_bootstrap_address": ("ray._private.services", "canonicalize_bootstrap_address"),
}


class RayPrivateMoved(ImportError):
    """A private Ray symbol edray relies on is not where :data:`PRIVATE` says."""


def resolve(name: str) -> Any:
    """The Ray object behind ``name`` (a key of :data:`PRIVATE`).

    Raises:
        RayPrivateMoved: this Ray has no such module or attribute; the message names both.
    """
    module, attr = PRIVATE[name]
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        import ray

        raise RayPrivateMoved(
            f"edray needs {module}.{attr}, which Ray {ray.__version__} does not have ({err}); "
            f"install the Ray version pyproject.toml pins, or update edray/clusters/ray_private.py"
        ) from None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Ray's launcher and KubeRay code print and log as they prepare a config; a check should not."""
    logger = logging.getLogger("ray.autoscaler")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


# ---- Ray Tune's OptunaSearch: private state its subclasses must reach (ray>=2.51,<3)


def optuna_study(search: Any) -> Any:
    """The ``optuna.Study`` an ``OptunaSearch`` asks and tells."""
    return search._ot_study


def optuna_trials(search: Any) -> dict[str, Any]:
    """An ``OptunaSearch``'s Tune trial id -> the ``optuna.Trial`` it drew that config from (writable)."""
    return search._ot_trials


def optuna_completed_trials(search: Any) -> set[str]:
    """The Tune trial ids an ``OptunaSearch`` has already told Optuna about (writable)."""
    return search._completed_trials


# ---- Ray Tune's Tuner: what a restored one will run (ray>=2.51,<3)


def local_tuner(tuner: Any) -> Any:
    """The ``TunerInternal`` behind a ``Tuner`` (ray-project/ray#41364 names
    ``_local_tuner.get_run_config()`` as the way to change a restored run config); None on
    Ray Client (ray://), where the Tuner runs remotely and keeps what it restored."""
    return getattr(tuner, "_local_tuner", None)


def restored_search_alg(tuner: Any) -> Any:
    """The search algorithm a restored ``Tuner`` will run (unpickled from the stopped sweep);
    None on Ray Client."""
    local = local_tuner(tuner)
    return None if local is None else local._tune_config.search_alg

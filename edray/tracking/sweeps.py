"""Finding a sweep again in an MLflow store: the one rule ``edray best`` and ``edray report`` share.

The store must exist (a ``sqlite:///`` path that is not there is a wrong ``--workdir``, not
an empty store to create); the experiment must be there; "the latest sweep" is the newest
FINISHED ED sweep, else the newest finished sweep of any method. ED comes first because
``edray sweep --compare`` runs the baselines into the same experiment after ED's sweep:
newest-of-any-method would hand back a baseline's config.
"""

from __future__ import annotations

import os
from typing import Any

from edray.errors import EdrayError
from edray.tracking import tags
from edray.tracking.secrets import redact_text
from edray.tracking.uri import sqlite_path

__all__ = [
    "finished_sweeps", "latest_sweep", "open_experiment", "raise_no_finished_sweep", "require_store", "sweep_method",
    "sweeps_by_preference",
]

_FINISHED = f"{tags.SWEEP_FILTER} and attributes.status = 'FINISHED'"
_NEWEST_FIRST = ["attributes.start_time DESC"]


def require_store(uri: str) -> None:
    """Fail when ``uri`` is a ``sqlite:///`` file that does not exist (other stores: left to MLflow).

    Raises:
        EdrayError: naming the missing file.
    """
    path = sqlite_path(uri)
    if path is not None and not path.expanduser().is_file():
        raise EdrayError(str(path), "no MLflow store here",
                         "run `edray sweep` first, or pass the --workdir (or --tracking-uri) of a sweep")


def open_experiment(uri: str, experiment: str) -> tuple[Any, Any]:
    """``(MlflowClient, experiment)`` of an existing store and an active experiment in it.

    Raises:
        EdrayError: no store at ``uri``; no such experiment (names the ones there are).
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.tracking import MlflowClient

    require_store(uri)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage != "active":
        names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        fix = f"use one of: {', '.join(names)}" if names else "run `edray sweep` first: this store has no experiment"
        raise EdrayError("EXPERIMENT", f"no experiment {experiment!r} in {redact_text(uri)}", fix)
    return client, exp


def finished_sweeps(client, experiment_id: str) -> list:
    """The experiment's finished sweep (parent) runs, newest first."""
    return list(client.search_runs([experiment_id], filter_string=_FINISHED, order_by=_NEWEST_FIRST,
                                   max_results=1000))


def sweep_method(run) -> str:
    """The method a sweep run searched (its spec's ``method`` param; ED when it has none)."""
    return str(run.data.params.get("method") or "ed")


def sweeps_by_preference(client, experiment_id: str) -> list:
    """Finished sweeps in the order "the latest sweep" is chosen: ED's newest first, then the others'."""
    finished = finished_sweeps(client, experiment_id)
    return sorted(finished, key=lambda run: sweep_method(run) != "ed")  # a stable sort: newest first within each


def latest_sweep(client, exp) -> Any:
    """The sweep run a command reads when none is named: the first of :func:`sweeps_by_preference`.

    Raises:
        EdrayError: no finished sweep (names the sweeps there are and their state).
    """
    ranked = sweeps_by_preference(client, exp.experiment_id)
    if ranked:
        return ranked[0]
    raise_no_finished_sweep(client, exp)


def raise_no_finished_sweep(client, exp) -> None:
    """Raise the one error for "nothing finished here", naming up to 20 sweeps and their state."""
    sweeps = client.search_runs([exp.experiment_id], filter_string=tags.SWEEP_FILTER, order_by=_NEWEST_FIRST,
                                max_results=20)
    if sweeps:
        seen = ", ".join(f"{r.info.run_name} ({r.info.status.lower()})" for r in sweeps)
        problem = f"experiment {exp.name!r} has no finished sweep, only: {seen}"
    else:
        problem = f"experiment {exp.name!r} has no sweep run"
    raise EdrayError("EXPERIMENT", problem, "run `edray sweep SPEC` to the end (or continue one with --resume)")

"""``edray best``: the best config of an experiment's latest sweep, read back from MLflow."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from edray.atomic import write_text
from edray.errors import EdrayError

__all__ = ["BestSweep", "best_spec_yaml", "best_sweep", "write_best_spec"]


@dataclass(frozen=True)
class BestSweep:
    """What ``edray best`` reads of a sweep: its ``best.yaml`` and, when the sweep registered
    its best student as an MLflow model, that version's ``models:/NAME/VERSION``."""

    spec_yaml: str
    model_uri: str | None


def best_spec_yaml(experiment: str, workdir: Path, *, tracking_uri: str | None = None) -> str:
    """The ``best.yaml`` artifact of ``experiment``'s latest sweep (see :func:`best_sweep`)."""
    return best_sweep(experiment, workdir, tracking_uri=tracking_uri).spec_yaml


def best_sweep(experiment: str, workdir: Path, *, tracking_uri: str | None = None) -> BestSweep:
    """The best config (and registered student) of ``experiment``'s latest sweep (see
    :mod:`edray.tracking.sweeps`: ED's newest finished sweep first, so a ``--compare``
    baseline never stands in for it).

    Raises:
        EdrayError: no store, no such experiment, or no finished sweep with a best config.
    """
    from edray.tracking import tags
    from edray.tracking.sweeps import open_experiment, raise_no_finished_sweep, sweep_method, sweeps_by_preference
    from edray.tracking.uri import workdir_tracking_uri

    client, exp = open_experiment(workdir_tracking_uri(workdir, tracking_uri), experiment)
    ranked = sweeps_by_preference(client, exp.experiment_id)
    if not ranked:
        raise_no_finished_sweep(client, exp)
    method = sweep_method(ranked[0])
    for run in (r for r in ranked if sweep_method(r) == method):  # never another method's config
        with tempfile.TemporaryDirectory() as d:
            try:
                path = client.download_artifacts(run.info.run_id, "best.yaml", d)
            except Exception:  # no trial of this sweep completed: it has no best config
                continue
            return BestSweep(Path(path).read_text(), run.data.tags.get(tags.MODEL_URI))
    raise EdrayError("EXPERIMENT", f"no finished sweep of {experiment!r} has a best config",
                     "run `edray sweep` until a trial completes")


def write_best_spec(experiment: str, workdir: Path, out: Path, *, tracking_uri: str | None = None) -> BestSweep:
    """Write the best config of :func:`best_sweep` to ``out`` atomically; return what was read.

    Raises:
        EdrayError: as :func:`best_spec_yaml`; or ``out`` cannot be written (full disk).
    """
    best = best_sweep(experiment, workdir, tracking_uri=tracking_uri)
    write_text(Path(out), best.spec_yaml, fix="free space or choose another -o/--output")
    return best

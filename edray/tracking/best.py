"""``edray best``: the best config of an experiment's latest sweep, read back from MLflow."""

from __future__ import annotations

import tempfile
from pathlib import Path

from edray.atomic import write_text
from edray.errors import EdrayError

__all__ = ["best_spec_yaml", "write_best_spec"]


def best_spec_yaml(experiment: str, workdir: Path, *, tracking_uri: str | None = None) -> str:
    """The ``best.yaml`` artifact of ``experiment``'s latest sweep (see :mod:`edray.tracking.sweeps`:
    ED's newest finished sweep first, so a ``--compare`` baseline never stands in for it).

    Raises:
        EdrayError: no store, no such experiment, or no finished sweep with a best config.
    """
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
            return Path(path).read_text()
    raise EdrayError("EXPERIMENT", f"no finished sweep of {experiment!r} has a best config",
                     "run `edray sweep` until a trial completes")


def write_best_spec(experiment: str, workdir: Path, out: Path, *, tracking_uri: str | None = None) -> Path:
    """Write :func:`best_spec_yaml` to ``out`` atomically and return the path.

    Raises:
        EdrayError: as :func:`best_spec_yaml`; or ``out`` cannot be written (full disk).
    """
    text = best_spec_yaml(experiment, workdir, tracking_uri=tracking_uri)
    out = Path(out)
    write_text(out, text, fix="free space or choose another -o/--output")
    return out

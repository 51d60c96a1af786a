"""``edray best``: the best config of an experiment's latest sweep, read back from MLflow."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from edray.atomic import write_text
from edray.errors import EdrayError

__all__ = ["best_spec_yaml", "write_best_spec"]


def best_spec_yaml(experiment: str, workdir: Path, *, tracking_uri: str | None = None) -> str:
    """The ``best.yaml`` artifact of the newest finished sweep run of ``experiment``.

    Raises:
        EdrayError: no such experiment, or no sweep of it has finished.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.tracking import MlflowClient

    from edray.tracking.uri import workdir_tracking_uri

    uri = workdir_tracking_uri(workdir, tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise EdrayError("--workdir", f"no MLflow store at {uri.removeprefix('sqlite:///')}",
                         "pass the --workdir of the sweep, or --tracking-uri")
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise EdrayError("EXPERIMENT", f"no experiment {experiment!r} in {uri}", f"use one of {names}")
    runs = client.search_runs(
        [exp.experiment_id], filter_string="tags.`edray.kind` = 'sweep'", order_by=["attributes.start_time DESC"]
    )
    for run in runs:
        with tempfile.TemporaryDirectory() as d:
            try:
                path = client.download_artifacts(run.info.run_id, "best.yaml", d)
            except Exception:  # this sweep has not finished: try the one before
                continue
            return Path(path).read_text()
    raise EdrayError("EXPERIMENT", f"no finished sweep of {experiment!r} has a best config", "run `edray sweep` first")


def write_best_spec(experiment: str, workdir: Path, out: Path, *, tracking_uri: str | None = None) -> Path:
    """Write :func:`best_spec_yaml` to ``out`` atomically and return the path.

    Raises:
        EdrayError: as :func:`best_spec_yaml`; or ``out`` cannot be written (full disk).
    """
    text = best_spec_yaml(experiment, workdir, tracking_uri=tracking_uri)
    out = Path(out)
    write_text(out, text, fix="free space or choose another -o/--output")
    return out

"""``edray report``: one self-contained HTML page about a sweep, read back from MLflow.

:mod:`edray.report.source` reads the sweep (and the baselines it is compared with),
:func:`~edray.tracking.figures.render_figures` draws its figures (the same code as at
the end of the sweep), :mod:`edray.report.html` lays the page out.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from edray.atomic import write_text
from edray.report.html import render_html
from edray.report.source import SweepRecord, load_sweep
from edray.tracking.uri import workdir_tracking_uri

__all__ = ["SweepRecord", "load_sweep", "render_html", "write_report"]


def write_report(experiment: str, workdir: Path, out: Path, *, tracking_uri: str | None = None,
                 run_id: str | None = None) -> Path:
    """Write the report of ``experiment``'s newest finished ED sweep (or of ``run_id``) to ``out``.

    The store is ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else the workdir's
    ``mlflow.db``. The file is written atomically: a failed report leaves no half page.

    Raises:
        EdrayError: no store, no such experiment, or no finished sweep (each names what exists);
            ``out`` cannot be written (full disk, read-only directory).
    """
    from edray.tracking.figures import render_figures

    record = load_sweep(experiment, workdir_tracking_uri(workdir, tracking_uri), run_id=run_id)
    with tempfile.TemporaryDirectory(prefix="edray-report-") as tmp:
        paths = render_figures(record.results, record.history, record.space, Path(tmp), metric=record.metric)
        figures = {name: Path(path).read_bytes() for name, path in paths.items()}
    page = render_html(record, figures, version=_version())
    out = Path(out).expanduser().resolve()
    write_text(out, page, fix="free space or choose another -o/--output")
    return out


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edray")
    except PackageNotFoundError:
        return "(not installed)"

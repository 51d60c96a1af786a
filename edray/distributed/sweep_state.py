"""A sweep's resume state: ``<workdir>/sweeps/<name>/sweep.json``.

Written once the MLflow parent run is open, read by ``--resume``: the run name (which
names the Tune experiment), the parent run, and where Tune keeps the experiment.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edray.atomic import write_text
from edray.errors import EdrayError
from edray.layout import Layout
from edray.spec import Spec
from edray.storage import join

__all__ = ["SweepState", "load_state", "start_tracking", "state_path"]


@dataclass(frozen=True)
class SweepState:
    run_name: str
    parent_run_id: str
    experiment_path: str  # Tune's experiment: <shared>/ray_results/<run_name>


def state_path(layout: Layout, sweep: str) -> Path:
    """The resume state of sweep ``sweep``."""
    return layout.sweep_dir(sweep) / "sweep.json"


def load_state(spec: Spec, layout: Layout, resume: bool) -> SweepState | None:
    """The state of the sweep to resume, or None for a new sweep.

    Raises:
        EdrayError: ``--resume`` with no sweep to resume.
    """
    if not resume:
        return None
    path = state_path(layout, spec.name)
    if not path.is_file():
        raise EdrayError("--resume", f"no sweep to resume at {path}", "start it without --resume")
    return SweepState(**json.loads(path.read_text()))


def start_tracking(spec: Spec, tracker, state: SweepState | None, layout: Layout) -> SweepState:
    """Open (or reopen) the MLflow parent run and record the sweep's state for ``--resume``."""
    run_name = state.run_name if state else f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    parent_id = tracker.start_sweep(run_name=run_name, spec_dict=spec.model_dump(mode="json"),
                                    resume_run_id=state.parent_run_id if state else None)
    if spec.search is not None and spec.search.storage:
        _tag_study(tracker, parent_id, spec.name, spec.search.storage)
    new = SweepState(run_name, parent_id, join(layout.ray_results, run_name))
    write_text(state_path(layout, spec.name), json.dumps(asdict(new), indent=2))
    return new


def _tag_study(tracker, parent_id: str, study: str, storage: str) -> None:
    """Where the sweep's Optuna study lives (the searcher names it after the spec), on its parent run."""
    from sqlalchemy.engine import make_url

    from edray.tracking import tags

    shown = make_url(storage).render_as_string(hide_password=True)
    tracker.client.set_tag(parent_id, tags.OPTUNA_STUDY, study)
    tracker.client.set_tag(parent_id, tags.OPTUNA_STORAGE, shown)


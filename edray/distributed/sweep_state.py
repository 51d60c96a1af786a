"""A sweep's resume state: ``sweep.json`` in the work directory, and on the shared location.

Written once the MLflow parent run is open, read by ``--resume``: the run name (which
names the Tune experiment), the parent run, and where Tune keeps the experiment. On a
cluster a copy goes to ``<shared>/sweeps/<name>/sweep.json`` too, so a new driver (a
replaced head, a fresh ``--workdir``, only ``EDRAY_SHARED``) resumes the sweep: Tune's
experiment, the teachers, the stores and the students are all on the shared location
already, and the parent run is on the tracking server.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from edray.atomic import write_text
from edray.errors import EdrayError
from edray.layout import Layout
from edray.spec import Spec
from edray.storage import exists, join, read_bytes, write_bytes

__all__ = ["SweepState", "has_state", "load_state", "shared_state_location", "start_tracking", "state_path"]


@dataclass(frozen=True)
class SweepState:
    run_name: str
    parent_run_id: str
    experiment_path: str  # Tune's experiment: <shared>/ray_results/<run_name>


def state_path(layout: Layout, sweep: str) -> Path:
    """The resume state of sweep ``sweep`` in the work directory."""
    return layout.sweep_dir(sweep) / "sweep.json"


def shared_state_location(layout: Layout, sweep: str) -> str | None:
    """Its copy on the shared location (a path or a URI); None on one machine, where the
    shared root is the work directory and :func:`state_path` is that copy."""
    return join(layout.shared_sweep_dir(sweep), "sweep.json") if layout.on_cluster else None


def _found(layout: Layout, sweep: str) -> str | None:
    """Where the state to resume is: the work directory's (this driver's own sweep), else
    the shared location's (the last sweep of this spec any driver started there)."""
    local = state_path(layout, sweep)
    if local.is_file():
        return str(local)
    shared = shared_state_location(layout, sweep)
    return shared if shared is not None and exists(shared) else None


def has_state(layout: Layout, sweep: str) -> bool:
    """Whether ``--resume`` finds a state for sweep ``sweep``."""
    return _found(layout, sweep) is not None


def load_state(spec: Spec, layout: Layout, resume: bool) -> SweepState | None:
    """The state of the sweep to resume, or None for a new sweep.

    Raises:
        EdrayError: ``--resume`` with no sweep to resume, or a state file that is not one.
    """
    if not resume:
        return None
    where = _found(layout, spec.name)
    if where is None:
        shared = shared_state_location(layout, spec.name)
        places = f"{state_path(layout, spec.name)}" + (f" or {shared}" if shared else "")
        raise EdrayError("--resume", f"no sweep to resume at {places}", "start it without --resume")
    try:
        data = json.loads(read_bytes(where))
        return SweepState(**{f.name: str(data[f.name]) for f in fields(SweepState)})
    except (ValueError, TypeError, KeyError) as e:
        raise EdrayError("--resume", f"{where} is not a sweep's state ({e!r})",
                         "start the sweep without --resume") from e


def start_tracking(spec: Spec, tracker, state: SweepState | None, layout: Layout) -> SweepState:
    """Open (or reopen) the MLflow parent run and record the sweep's state for ``--resume``."""
    run_name = state.run_name if state else f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    parent_id = tracker.start_sweep(run_name=run_name, spec_dict=spec.model_dump(mode="json"),
                                    resume_run_id=state.parent_run_id if state else None)
    if spec.search is not None and spec.search.storage:
        _tag_study(tracker, parent_id, spec.name, spec.search.storage)
    new = SweepState(run_name, parent_id, join(layout.ray_results, run_name))
    text = json.dumps(asdict(new), indent=2)
    write_text(state_path(layout, spec.name), text)
    shared = shared_state_location(layout, spec.name)
    if shared is not None:  # atomic too: a path is renamed into place, an object PUT is whole or absent
        write_bytes(shared, text.encode())
    return new


def _tag_study(tracker, parent_id: str, study: str, storage: str) -> None:
    """Where the sweep's Optuna study lives (the searcher names it after the spec), on its parent run."""
    from sqlalchemy.engine import make_url

    from edray.tracking import tags

    shown = make_url(storage).render_as_string(hide_password=True)
    tracker.client.set_tag(parent_id, tags.OPTUNA_STUDY, study)
    tracker.client.set_tag(parent_id, tags.OPTUNA_STORAGE, shown)

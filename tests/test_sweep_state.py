"""A sweep's resume state, in the work directory and on the shared location (issue 18: a
driver you can lose). A new driver with a fresh ``--workdir`` and only ``EDRAY_SHARED``
finds the sweep and reopens the same MLflow parent run; the shared location is reached by
a ``file://`` URI, which takes the same code path as ``s3://`` (edray.storage).
End to end, on S3 and Ray's autoscaler: tests/test_autoscaling.py."""

from __future__ import annotations

import json

import pytest

from edray.distributed.sweep_state import has_state, load_state, shared_state_location, start_tracking, state_path
from edray.errors import EdrayError
from edray.layout import Layout
from edray.storage import read_bytes, write_bytes
from edray.tracking import SweepTracker

from .conftest import fast_spec


@pytest.fixture
def setup(tmp_path):
    spec = fast_spec()
    shared = (tmp_path / "shared").as_uri()  # file:///...: the remote code path
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the tracking server both drivers reach
    return spec, shared, uri, tmp_path


def test_a_new_driver_with_a_fresh_workdir_resumes_from_the_shared_state(setup):
    spec, shared, uri, tmp = setup
    old = Layout.at(tmp / "old-head", shared=shared)
    artifacts = tmp / "mlflow-artifacts"  # not the current directory (MLflow's default)
    first = start_tracking(spec, SweepTracker(uri, spec.name, artifact_root=artifacts), None, old)
    local = json.loads(state_path(old, spec.name).read_text())
    assert json.loads(read_bytes(shared_state_location(old, spec.name))) == local
    assert local["experiment_path"].startswith(f"{shared}/ray_results/")  # Tune's, on the shared root

    new = Layout.at(tmp / "new-head", shared=shared)  # the old work directory is gone
    assert has_state(new, spec.name)
    state = load_state(spec, new, resume=True)
    assert state == first
    again = start_tracking(spec, SweepTracker(uri, spec.name, artifact_root=artifacts), state, new)
    assert again == first  # the same parent run reopened, the same Tune experiment
    assert json.loads(state_path(new, spec.name).read_text()) == local


def test_the_work_directory_state_comes_first_and_nothing_anywhere_is_one_line(setup):
    spec, shared, uri, tmp = setup
    layout = Layout.at(tmp / "w", shared=shared)
    with pytest.raises(EdrayError) as err:
        load_state(spec, layout, resume=True)
    where = shared_state_location(layout, spec.name)
    assert str(err.value).startswith(f"--resume: no sweep to resume at {state_path(layout, spec.name)} or {where}")
    assert "\n" not in str(err.value) and not has_state(layout, spec.name)
    assert load_state(spec, layout, resume=False) is None

    write_bytes(where, json.dumps({"run_name": "b", "parent_run_id": "2", "experiment_path": "y"}).encode())
    assert load_state(spec, layout, resume=True).run_name == "b"
    write_bytes(str(state_path(layout, spec.name)),
                json.dumps({"run_name": "a", "parent_run_id": "1", "experiment_path": "x"}).encode())
    assert load_state(spec, layout, resume=True).run_name == "a"  # this driver's own sweep


def test_a_state_that_is_not_one_is_refused_in_one_line(setup):
    spec, shared, _, tmp = setup
    layout = Layout.at(tmp / "w", shared=shared)
    where = shared_state_location(layout, spec.name)
    write_bytes(where, b'{"run_name": "a"}')
    with pytest.raises(EdrayError, match=r"^--resume: .*sweep\.json is not a sweep's state"):
        load_state(spec, layout, resume=True)


def test_one_machine_keeps_one_copy(tmp_path):
    layout = Layout.at(tmp_path / "w")
    assert shared_state_location(layout, "digits") is None  # the shared root is the work directory
    assert layout.shared_sweep_dir("digits") == str(layout.sweep_dir("digits"))


def test_a_resume_against_another_tracking_store_is_refused_before_anything_starts(setup, monkeypatch, capsys):
    """The state is on the shared location, but the new driver's tracking store (here the
    default SQLite of its fresh work directory) does not hold the sweep's parent run: one line
    at once, before Ray, teachers or stores, and nothing written."""
    from edray.cli import main

    from .conftest import DIGITS_YAML

    spec, shared, uri, tmp = setup
    start_tracking(spec, SweepTracker(uri, spec.name, artifact_root=tmp / "mlflow-artifacts"), None,
                   Layout.at(tmp / "old-head", shared=shared))
    monkeypatch.setenv("EDRAY_SHARED", shared)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    before = sorted((tmp / "shared").rglob("*"))
    assert main(["sweep", str(DIGITS_YAML), "--workdir", str(tmp / "new-head"), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --resume: sweep run ") and "is not in experiment" in err[0], err
    assert "tracking.uri or MLFLOW_TRACKING_URI" in err[0]
    assert sorted((tmp / "shared").rglob("*")) == before  # nothing prepared, nothing half-written
    assert not (tmp / "new-head" / "teachers").exists() and not (tmp / "new-head" / "logits").exists()

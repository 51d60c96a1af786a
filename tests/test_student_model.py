"""The student as an MLflow model (edray.tracking.student_model): a fresh process with only
mlflow and torch loads ``models:/NAME@champion`` and gets the accuracy edray reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edray.distill.loop import _evaluate, run_ed
from edray.distill.precision import resolve_precision
from edray.tracking.student_model import (
    CHAMPION,
    StudentModel,
    log_student_model,
    register_student,
    registered_model_name,
)
from tests.conftest import fast_spec
from tests.helpers import MlflowServer

# Only mlflow, torch and numpy: no edray, so the model must carry everything it needs.
LOAD = r"""
import json, sys
import mlflow, numpy as np, torch
uri, data = sys.argv[1], np.load(sys.argv[2])
mlflow.set_tracking_uri(uri)
x, y = data["x"], data["y"]
name = sys.argv[3]
native = mlflow.pytorch.load_model(f"models:/{name}@champion")
with torch.no_grad():
    native_acc = float((native(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@champion")
pyfunc_acc = float((np.asarray(pyfunc.predict(x)).argmax(1) == y).mean())
print(json.dumps({"native": native_acc, "pyfunc": pyfunc_acc, "class_names": pyfunc.metadata.metadata["class_names"],
                  "edray_imported": sorted(m for m in sys.modules if m.split(".")[0] == "edray")}))
"""


@pytest.fixture(scope="module")
def trained(digits_data):
    result = run_ed(fast_spec("method=ce", "optim.epochs=3", "ed.switch_epochs=[1, 2]"), digits_data, None)
    classes = torch.arange(digits_data.num_classes)
    acc, _ = _evaluate(result.model, digits_data.test, classes, len(classes), "cpu", resolve_precision("fp32", "cpu"))
    test_rows = torch.arange(len(digits_data.test))
    student = StudentModel(model=result.model, example=digits_data.test.load(test_rows[:4]),
                           class_names=digits_data.class_names, normalisation=digits_data.normalisation)
    return student, acc, digits_data.test.load(test_rows), digits_data.test.labels


@pytest.fixture
def sqlite_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path / "srv.db", tmp_path / "artifacts", tmp_path / "mlflow.log").start()
    try:
        yield server.url
    finally:
        server.stop()


def _parent_run(uri: str, experiment: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    # A SQLite store's artifacts beside it, not in MLflow's default ./mlruns (the repository).
    where = {"artifact_location": str(Path(uri.removeprefix("sqlite:///")).parent / "artifacts")} \
        if uri.startswith("sqlite:") else {}
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment, **where)
    return client.create_run(exp_id, run_name="sweep").info.run_id


def _load_in_fresh_process(uri: str, name: str, x: torch.Tensor, y: torch.Tensor, tmp_path: Path) -> dict:
    data = tmp_path / "test_split.npz"
    np.savez(data, x=x.numpy().astype(np.float32), y=y.numpy())
    out = subprocess.run([sys.executable, "-c", LOAD, uri, str(data), name], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_champion_loads_in_a_fresh_process_with_the_reported_accuracy(request, trained, tmp_path, store):
    uri = request.getfixturevalue("sqlite_uri" if store == "sqlite" else "mlflow_server")
    student, test_acc, x, y = trained
    name = registered_model_name("digits", "ed")
    run_id = _parent_run(uri, "digits")
    model_uri = log_student_model(uri, run_id, student)
    reg = register_student(uri, model_uri, name, test_acc=test_acc, protocol="digits/test", sweep_run_id=run_id)
    assert reg.champion and reg.version == "1" and reg.champion_uri == f"models:/{name}@{CHAMPION}"

    loaded = _load_in_fresh_process(uri, name, x, y, tmp_path)
    assert loaded["edray_imported"] == []
    assert loaded["native"] == test_acc and loaded["pyfunc"] == test_acc
    assert loaded["class_names"] == [str(c) for c in range(10)]

    from mlflow import MlflowClient

    version = MlflowClient(uri).get_model_version_by_alias(name, CHAMPION)
    assert version.tags["edray.sweep_run_id"] == run_id and float(version.tags["edray.test_acc"]) == test_acc


def test_champion_moves_only_to_a_better_version_on_the_same_test_set(trained, sqlite_uri):
    from mlflow import MlflowClient

    student, _, _, _ = trained
    before = os.environ.get("MLFLOW_TRACKING_URI")
    name = registered_model_name("digits", "kd")
    run_id = _parent_run(sqlite_uri, "digits")
    model_uri = log_student_model(sqlite_uri, run_id, student)
    client = MlflowClient(sqlite_uri)
    # Logged by run id, not inside a fluent run: the sweep's run is still running (the sweep
    # sets its final status itself), and the model is in the run's experiment, on its Models tab.
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and run.info.end_time is None
    [logged] = client.search_logged_models([run.info.experiment_id])
    assert logged.source_run_id == run_id and model_uri == logged.model_uri

    def champion() -> str:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)

    first = register_student(sqlite_uri, model_uri, name, test_acc=0.90, protocol="p", sweep_run_id=run_id)
    worse = register_student(sqlite_uri, model_uri, name, test_acc=0.85, protocol="p", sweep_run_id=run_id)
    assert first.champion and not worse.champion and champion() == first.version
    equal = register_student(sqlite_uri, model_uri, name, test_acc=0.90, protocol="p", sweep_run_id=run_id)
    assert not equal.champion and champion() == first.version
    other_set = register_student(sqlite_uri, model_uri, name, test_acc=0.99, protocol="q", sweep_run_id=run_id)
    assert not other_set.champion and "another test set" in other_set.reason and champion() == first.version
    better = register_student(sqlite_uri, model_uri, name, test_acc=0.95, protocol="p", sweep_run_id=run_id)
    assert better.champion and champion() == better.version == "5"
    # MLflow's process-wide URI (and MLFLOW_TRACKING_URI, which it sets) is left as it was.
    assert os.environ.get("MLFLOW_TRACKING_URI") == before


@pytest.mark.slow
def test_a_log_models_all_sweep_logs_each_finished_trials_student_on_its_own_run(small_sweep):
    """conftest's sweep sets ``tracking.log_models: all``: every trial that trained to the end
    has its student as an MLflow model on its child run (the run's Models tab); stopped ones
    have none. (test_sweep checks that the default logs only the best, on the parent.)"""
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{small_sweep / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("digits").experiment_id
    trials = client.search_runs([experiment], "tags.`edray.kind` = 'trial'")
    models = {m.source_run_id: m for m in client.search_logged_models([experiment])}
    completed = {r.info.run_id for r in trials if r.data.tags["edray.status"] == "completed"}
    assert completed and set(models) == completed
    mlflow.set_tracking_uri(uri)
    try:
        for run_id in completed:
            assert models[run_id].name == "student"
            student = mlflow.pytorch.load_model(f"runs:/{run_id}/student")
            assert student(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    assert all(r.info.status == "FINISHED" for r in trials)


@pytest.mark.slow
def test_tunes_live_table_in_a_terminal_shows_val_acc_and_the_searched_values(small_sweep):
    """conftest's sweep runs with stderr on a terminal: Tune's table has a column for
    val_acc and one for each value the digits space searches (headed by the path's last part)."""
    from tests.conftest import sweep_terminal

    terminal = sweep_terminal(small_sweep).read_text()
    headers = [line for line in terminal.splitlines() if "Trial name" in line]
    assert headers, terminal[-3000:]
    columns = {c.strip() for c in headers[-1].split("|")}
    searched = {"switch_epochs[0]", "switch_epochs[1]", "split_ratios[0]", "split_ratios[1]", "split_ratios[2]",
                "temperatures[0]", "temperatures[1]", "temperatures[2]", "alpha", "lr", "replay",
                "optimizer_at_switch"}
    assert {"val_acc", "seen acc", "grade", "epoch", *searched} <= columns, headers[-1]

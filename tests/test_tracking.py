"""MLflow records of a sweep (real SQLite store, read back with MlflowClient) and its figures (real PNGs)."""

from __future__ import annotations

import copy
import http.server
import itertools
import pickle
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE
from mlflow.tracking import MlflowClient
from PIL import Image

from edray.errors import EdrayError
from edray.spec import set_path, spec_from_dict
from edray.tracking import SweepTracker, check_tracking, redact, render_figures, resolve_tracking_uri
from edray.tracking import guard as guard_module
from edray.tracking.figures import FIGURES, build_study

from .conftest import fast_spec

_names = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, Path]:
    """One SQLite store for the module (creating its schema takes seconds); one experiment per test."""
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root / 'mlflow.db'}", root / "mlflow-artifacts"


def _tracker(store, **kw) -> SweepTracker:
    uri, artifacts = store
    return SweepTracker(uri, f"exp-{next(_names)}", artifact_root=artifacts, **kw)


def _spec_dict() -> dict:
    spec = fast_spec("tracking.uri=postgresql://bob:hunter2@db.internal/mlflow")
    return spec.model_dump(mode="json")


def _resolved(base: dict, config: dict) -> dict:
    raw = copy.deepcopy(base)
    for path, value in config.items():
        set_path(raw, path, value)
    return spec_from_dict(raw).model_dump(mode="json")


def _download(client: MlflowClient, run_id: str, path: str, dst: Path) -> Path:
    return Path(client.download_artifacts(run_id, path, str(dst)))


def _steps(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


# ---------------------------------------------------------------------- parent, children, metrics


def test_parent_and_children_are_nested_with_flat_params_metrics_statuses(store, tmp_path):
    tracker = _tracker(store)
    client = MlflowClient(tracking_uri=tracker.uri)
    base = _spec_dict()
    parent = tracker.start_sweep(run_name="sweep-1", spec_dict=base)
    assert tracker.parent_run_id == parent

    run = client.get_run(parent)
    assert run.data.tags["edray.kind"] == "sweep"
    assert run.info.run_name == "sweep-1"
    p = run.data.params
    assert p["ed.alpha"] == "0.3" and p["ed.switch_epochs"] == "[2, 5]"  # lists as one string
    assert p["teachers.models.0.arch"] == "cnn_medium"  # lists of mappings indexed
    assert p["tracking.uri"] == "postgresql://bob:***@db.internal/mlflow"  # the password never reaches MLflow
    spec_yaml = _download(client, parent, "spec.yaml", tmp_path).read_text()
    assert "hunter2" not in spec_yaml and "cnn_medium" in spec_yaml
    exp = client.get_experiment(tracker.experiment_id)
    assert exp.artifact_location.startswith((store[1]).as_uri())  # embedded store: artifacts in the workdir

    configs = {
        "t1": {"ed.alpha": 0.55, "ed.switch_epochs[0]": 3, "ed.switch_epochs[1]": 6},
        "t2": {"ed.alpha": 0.2, "ed.switch_epochs[0]": 2, "ed.switch_epochs[1]": 4},
        "t3": {"ed.alpha": 0.8, "ed.switch_epochs[0]": 1, "ed.switch_epochs[1]": 5},
    }
    runs = {t: tracker.trial_run(t, params=c, resolved_spec=_resolved(base, c)) for t, c in configs.items()}
    assert len(set(runs.values())) == 3
    child = client.get_run(runs["t1"])
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert child.data.tags["edray.trial_id"] == "t1" and child.data.tags["edray.status"] == "running"
    assert child.data.params["ed.switch_epochs.0"] == "3"  # searched value, key made MLflow-safe
    assert child.data.params["ed.switch_epochs"] == "[3, 6]"  # resolved spec
    assert child.data.params["ed.alpha"] == "0.55"
    assert child.data.params["optim.epochs"] == "8"
    config_yaml = _download(client, runs["t1"], "config.yaml", tmp_path / "c").read_text()
    assert "switch_epochs: [3, 6]" in config_yaml and "hunter2" not in config_yaml

    for epoch in range(1, 6):
        tracker.log_epoch("t1", {"val_acc": 0.1 * epoch, "grade": 1 + (epoch >= 3), "note": "text", "ok": True},
                         epoch=epoch)
    assert _steps(client, runs["t1"], "val_acc") == [(e, pytest.approx(0.1 * e)) for e in range(1, 6)]
    assert [s for s, _ in _steps(client, runs["t1"], "grade")] == [1, 2, 3, 4, 5]
    # Columns the runs table sorts by: the method as a tag, switch epochs and epochs as numbers.
    assert child.data.tags["edray.method"] == "ed"
    assert child.data.metrics == {"switch_epoch_1": 3.0, "switch_epoch_2": 6.0, "budget_epochs": 8.0}
    assert set(client.get_run(runs["t1"]).data.metrics) == {"val_acc", "grade", "switch_epoch_1", "switch_epoch_2",
                                                            "budget_epochs"}  # text and bools are not metrics

    model = tmp_path / "t1.pt"
    torch.save({"w": torch.arange(6.0)}, model)
    tracker.end_trial("t1", "completed", model_path=model, final_metrics={"best_val_acc": 0.5})
    tracker.end_trial("t2", "pruned")
    tracker.end_trial("t3", "errored")
    with pytest.raises(ValueError, match="status"):
        tracker.end_trial("t3", "done")

    got = {t: client.get_run(r) for t, r in runs.items()}
    assert {t: (r.data.tags["edray.status"], r.info.status) for t, r in got.items()} == {
        "t1": ("completed", "FINISHED"), "t2": ("pruned", "FINISHED"), "t3": ("errored", "FAILED")}
    assert got["t1"].data.metrics["best_val_acc"] == 0.5
    assert [f.path for f in client.list_artifacts(runs["t1"], "model")] == ["model/student.pt"]
    saved = torch.load(_download(client, runs["t1"], "model/student.pt", tmp_path / "m"))
    assert torch.equal(saved["w"], torch.arange(6.0))
    children = client.search_runs([tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(children) == 3


def test_experiment_is_tagged_as_model_training_so_the_ui_opens_on_runs(store):
    from edray.tracking.tags import EXPERIMENT_KIND as EXPERIMENT_KIND_TAG

    tracker = _tracker(store)
    client = MlflowClient(tracking_uri=tracker.uri)
    assert client.get_experiment(tracker.experiment_id).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    # An experiment made before edray tagged them gets the tag; a kind the user chose in the UI is kept.
    older = client.create_experiment(f"exp-{next(_names)}")
    SweepTracker(tracker.uri, client.get_experiment(older).name)
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    chosen = client.create_experiment(f"exp-{next(_names)}", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    SweepTracker(tracker.uri, client.get_experiment(chosen).name)
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_resume_finds_the_same_runs_and_never_duplicates_steps(store):
    first = _tracker(store)
    client = MlflowClient(tracking_uri=first.uri)
    parent = first.start_sweep(run_name="s", spec_dict={"name": "x"})
    run_id = first.trial_run("t1", params={"ed.alpha": 0.3}, resolved_spec={"ed": {"alpha": 0.3}})
    for epoch in range(1, 6):
        first.log_epoch("t1", {"val_acc": float(epoch)}, epoch=epoch)
    first.log_epoch("t1", {"val_acc": 99.0}, epoch=3)  # same process, an epoch repeated: skipped
    assert first.trial_run("t1", params={}, resolved_spec={}) == run_id

    # The driver crashed: a new tracker on the same store reopens the sweep.
    second = SweepTracker(first.uri, first.experiment, artifact_root=store[1])
    assert second.experiment_id == first.experiment_id
    assert second.start_sweep(run_name="s", spec_dict={"name": "x"}, resume_run_id=parent) == parent
    assert client.get_run(parent).info.status == "RUNNING"
    assert second.trial_run("t1", params={"ed.alpha": 0.3}, resolved_spec={"ed": {"alpha": 0.3}}) == run_id
    for epoch in range(1, 4):  # the trial resumes from an older checkpoint and repeats epochs 1..3
        second.log_epoch("t1", {"val_acc": -1.0}, epoch=epoch)
    second.log_epoch("t1", {"val_acc": 6.0}, epoch=6)
    assert _steps(client, run_id, "val_acc") == [(e, float(e)) for e in range(1, 7)]

    # Tune pickles its callbacks into the experiment state; the copy finds the runs again.
    third = pickle.loads(pickle.dumps(second))
    assert third.parent_run_id == parent
    third.log_epoch("t1", {"val_acc": -1.0}, epoch=6)
    third.log_epoch("t1", {"val_acc": 7.0}, epoch=7)
    assert _steps(client, run_id, "val_acc")[-2:] == [(6, 6.0), (7, 7.0)]
    children = client.search_runs([first.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert [r.info.run_id for r in children] == [run_id]

    with pytest.raises(EdrayError, match="--resume"):
        SweepTracker(first.uri, first.experiment).start_sweep(run_name="s", spec_dict={}, resume_run_id="0" * 32)


def test_a_resumed_sweep_closes_the_runs_of_trials_its_lost_driver_started_unrecorded(store):
    first = _tracker(store)
    client = MlflowClient(tracking_uri=first.uri)
    parent = first.start_sweep(run_name="s", spec_dict={"name": "x"})
    done, lost, ended = (first.trial_run(t, params={}, resolved_spec={}) for t in ("t1", "t2", "t3"))
    first.end_trial("t1", "completed")
    first.end_trial("t3", "errored")
    # The driver is lost; Tune's restored state knows t1 only, and the search runs t4 instead of t2.
    second = SweepTracker(first.uri, first.experiment, artifact_root=store[1])
    second.start_sweep(run_name="s", spec_dict={"name": "x"}, resume_run_id=parent)
    second.trial_run("t4", params={}, resolved_spec={})
    assert second.close_lost_trials(["t1", "t4"]) == ["t2"]
    assert client.get_run(lost).info.status == "KILLED" and client.get_run(lost).data.tags["edray.status"] == "lost"
    assert client.get_run(done).info.status == "FINISHED" and client.get_run(ended).info.status == "FAILED"
    assert second.close_lost_trials(["t1", "t4"]) == []  # closed once


def test_metrics_survive_a_store_that_is_down(store, monkeypatch):
    """Transient failures are retried with backoff, and a batch that still fails is sent later."""
    sleeps: list[float] = []
    tracker = _tracker(store, sleep=sleeps.append)
    client = MlflowClient(tracking_uri=tracker.uri)
    tracker.start_sweep(run_name="s", spec_dict={})
    run_id = tracker.trial_run("t", params={}, resolved_spec={})

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setattr(guard_module, "DOWN_PAUSE_S", 0.0)  # try again at the next call, not 30 s later
    healthy, tracker.client = tracker.client, MlflowClient(tracking_uri=f"http://127.0.0.1:{_closed_port()}")
    tracker.log_epoch("t", {"val_acc": 0.25}, epoch=1)  # the store is down: kept, not raised, not lost
    assert sleeps == [0.5, 1.0]  # three tries, exponential backoff
    tracker.client = healthy
    tracker.log_epoch("t", {"val_acc": 0.5}, epoch=2)
    assert _steps(client, run_id, "val_acc") == [(1, 0.25), (2, 0.5)]

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE)
        return "ok"

    def bug():
        calls.append(1)
        raise MlflowException("bad key", error_code=INVALID_PARAMETER_VALUE)

    assert tracker._retry(flaky) == "ok" and len(calls) == 3
    calls.clear()
    with pytest.raises(MlflowException, match="bad key"):  # a bug is not retried
        tracker._retry(bug)
    assert len(calls) == 1


# ---------------------------------------------------------------------- the end of a sweep and figures


def _fake_sweep(more: bool = False) -> tuple[list[dict], dict[str, list[dict]]]:
    """Four realistic trials of the digits space: three completed, one stopped early (``more``:
    two more completed, enough for parameter importance)."""
    trials = [
        ("a1", "completed", 6, 12, 0.30, [0.33, 0.33], [4.0, 4.0, 4.0], 0.05, "sequential", 0.952),
        ("b2", "completed", 4, 16, 0.62, [0.25, 0.40], [2.0, 6.5, 3.1], 0.11, "mixed", 0.961),
        ("c3", "pruned", 10, 20, 0.15, [0.45, 0.30], [7.5, 1.2, 2.2], 0.19, "mixed", 0.801),
        ("d4", "completed", 8, 14, 0.81, [0.30, 0.22], [1.1, 3.0, 5.0], 0.02, "sequential", 0.934),
    ]
    if more:
        trials += [("e5", "completed", 5, 18, 0.45, [0.28, 0.35], [3.0, 2.5, 6.0], 0.08, "mixed", 0.957),
                   ("f6", "completed", 12, 22, 0.70, [0.40, 0.25], [5.5, 4.5, 1.5], 0.03, "sequential", 0.921)]
    results, history = [], {}
    for tid, status, n, m, alpha, ratios, temps, lr, replay, acc in trials:
        config = {"ed.switch_epochs[0]": n, "ed.switch_epochs[1]": m, "ed.alpha": alpha, "optim.lr": lr,
                  "ed.replay": replay, "ed.optimizer_at_switch": "reset",
                  "ed.split_ratios[0]": ratios[0], "ed.split_ratios[1]": ratios[1],
                  "ed.split_ratios[2]": round(1 - sum(ratios), 10),
                  **{f"ed.temperatures[{g}]": t for g, t in enumerate(temps)}}
        last = 30 if status == "completed" else m + 4
        recs = []
        for epoch in range(1, last + 1):
            grade = 1 + (epoch > n) + (epoch > m)
            seen = (ratios[0], ratios[0] + ratios[1], 1.0)[grade - 1]
            val = acc * (1 - 0.6 * 0.85 ** epoch) * (seen if grade < 3 else 1)
            recs.append({"epoch": epoch, "grade": grade, "val_acc": val, "val_acc_seen": min(0.99, val / seen),
                         "train_loss": 2.0 * 0.9 ** epoch})
        results.append({"trial_id": tid, "status": status, "config": config, "val_acc": recs[-1]["val_acc"]})
        history[tid] = recs
    return results, history


def _png_note(path: Path) -> str:
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 100 and img.height > 100
        return img.text.get("Description", "")


@pytest.fixture(scope="module")
def figures(tmp_path_factory) -> dict[str, Path]:
    results, history = _fake_sweep(more=True)
    return render_figures(results, history, fast_spec().search.params, tmp_path_factory.mktemp("fig"))


def test_render_figures_draws_four_real_plots(figures):
    assert set(figures) == set(FIGURES)
    for name, path in figures.items():
        assert path.is_file() and path.stat().st_size > 5000, name
        assert not _png_note(path).startswith("placeholder"), name  # each is the real plot
    assert not list(figures["learning_curves"].parent.glob(".*.tmp"))


def test_build_study_keeps_states_and_params():
    results, history = _fake_sweep()
    study = build_study(results, fast_spec().search.params, history=history)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"]
    assert study.best_trial.user_attrs["trial_id"] == "b2"
    assert study.trials[1].params["ed.switch_epochs[1]"] == 16 and study.trials[1].params["ed.replay"] == "mixed"
    assert max(study.trials[2].intermediate_values) == 24  # the pruned trial's epochs


def test_render_figures_with_one_trial_or_none_does_not_crash(tmp_path):
    results, history = _fake_sweep()
    space = fast_spec().search.params
    one = render_figures(results[:1], {"a1": history["a1"]}, space, tmp_path / "one")
    assert set(one) == set(FIGURES) and all(p.stat().st_size > 0 for p in one.values())
    assert _png_note(one["param_importances"]).startswith("placeholder: too few completed trials")
    assert not _png_note(one["learning_curves"]).startswith("placeholder")
    none = render_figures([{"trial_id": "x", "status": "errored", "config": {}, "val_acc": None}], {}, space,
                          tmp_path / "none")
    assert all(_png_note(p).startswith("placeholder") for p in none.values())


def test_finish_sweep_logs_best_config_results_and_figures(store, figures, tmp_path):
    tracker = _tracker(store)
    client = MlflowClient(tracking_uri=tracker.uri)
    parent = tracker.start_sweep(run_name="s", spec_dict=_spec_dict())
    results, _ = _fake_sweep()
    best = results[1]["config"]
    tracker.finish_sweep(
        best_config=best, best_spec_yaml="name: digits\ned:\n  alpha: 0.62\ntracking:\n  uri: http://u:pw@h:5000\n",
        results=results, figures=figures, summary={"trials": 4, "best_val_acc": 0.961, "experiment": "digits",
                                                   "final_test_acc_mean": None},
    )
    run = client.get_run(parent)
    assert run.info.status == "FINISHED" and run.data.tags["edray.status"] == "finished"
    assert run.data.params["best.ed.alpha"] == "0.62" and run.data.params["best.ed.switch_epochs.1"] == "16"
    assert run.data.metrics == {"trials": 4.0, "best_val_acc": 0.961}
    assert run.data.tags["edray.summary.experiment"] == "digits"
    names = {f.path for f in client.list_artifacts(parent)} | {f.path for f in client.list_artifacts(parent, "figures")}
    assert {"best.yaml", "results.csv", "results.json", "spec.yaml"} <= names
    assert {f"figures/{n}.png" for n in FIGURES} <= names
    best_yaml = _download(client, parent, "best.yaml", tmp_path).read_text()
    assert "alpha: 0.62" in best_yaml and "pw@" not in best_yaml
    lines = _download(client, parent, "results.csv", tmp_path).read_text().splitlines()
    assert len(lines) == 5 and "config.ed.alpha" in lines[0] and lines[2].startswith("b2,completed,")
    png = _download(client, parent, "figures/learning_curves.png", tmp_path / "f")
    assert png.read_bytes() == figures["learning_curves"].read_bytes()


# ---------------------------------------------------------------------- secrets and the store's address


def test_redact_masks_secrets_and_keeps_the_rest():
    raw = {"api_key": "sk-123", "AWS_SECRET_ACCESS_KEY": "abc", "password": "hunter2", "AWS_ACCESS_KEY_ID": "AKIA",
           "name": "digits", "keyword": "kept", "nested": {"token": "t", "lr": 0.1},
           "uri": "postgresql://bob:hunter2@db/x", "empty_token": ""}
    clean = redact(raw)
    assert clean["api_key"] == clean["AWS_SECRET_ACCESS_KEY"] == clean["password"] == clean["AWS_ACCESS_KEY_ID"]
    assert clean["api_key"] == "***"
    assert clean["name"] == "digits" and clean["keyword"] == "kept" and clean["nested"] == {"token": "***", "lr": 0.1}
    assert clean["uri"] == "postgresql://bob:***@db/x" and clean["empty_token"] == ""
    assert raw["api_key"] == "sk-123"  # the input is untouched


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_tracking_fails_fast_on_a_dead_server():
    uri = f"http://127.0.0.1:{_closed_port()}"
    tic = time.monotonic()
    with pytest.raises(EdrayError) as err:
        check_tracking(uri)
    assert time.monotonic() - tic < 5
    assert err.value.path == "tracking.uri" and "cannot reach MLflow" in err.value.problem and uri in err.value.problem
    assert "start the server" in err.value.fix


def test_check_tracking_names_a_server_that_is_not_mlflow():
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(EdrayError, match="not an MLflow tracking server"):
            check_tracking(f"http://127.0.0.1:{server.server_address[1]}", timeout_s=3)
    finally:
        server.shutdown()
        server.server_close()


def test_check_tracking_local_stores(tmp_path):
    check_tracking(f"sqlite:///{tmp_path}/new/dir/mlflow.db")
    assert (tmp_path / "new" / "dir").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(EdrayError, match="cannot create"):
        check_tracking(f"sqlite:///{tmp_path}/file/mlflow.db")
    with pytest.raises(EdrayError, match="file store"):
        check_tracking(str(tmp_path / "mlruns"))


def test_resolve_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(fast_spec(), tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://head:5000")
    assert resolve_tracking_uri(fast_spec(), tmp_path) == "http://head:5000"
    assert resolve_tracking_uri(fast_spec("tracking.uri=http://other:5000"), tmp_path) == "http://other:5000"


# ---------------------------------------------------------------------- the Tune callback, in a real Tune run


def _trainable(config):
    from ray import tune

    for epoch in range(1, config["epochs"] + 1):
        metrics = {"epoch": epoch, "val_acc": 0.2 * epoch, "grade": 1 + (epoch > 1), "train_loss": 1.0 / epoch,
                   "note": "not a metric"}
        if epoch == config["epochs"] and config["model"]:
            metrics["model_path"] = config["model"]
        tune.report(metrics)
    if config["fail"]:
        raise RuntimeError("trial failed on purpose")


def test_tracking_callback_in_a_real_tune_run(store, tmp_path, digits_data):
    import mlflow
    import ray
    from ray import tune

    from edray.distributed.trial import _model_file
    from edray.models import build_backbone
    from edray.tracking import TrackingCallback

    tracker = _tracker(store)
    client = MlflowClient(tracking_uri=tracker.uri)
    parent = tracker.start_sweep(run_name="tune", spec_dict={"name": "t"})
    # A student file as a trial saves it (an untrained cnn_small: its shape is what is checked).
    model = tmp_path / "student-of-a-trial.pt"
    student = build_backbone("cnn_small", num_classes=10, in_channels=1, image_size=digits_data.image_size,
                             load_weights=False)
    torch.save(_model_file(fast_spec(), digits_data, student.state_dict()), model)
    callback = TrackingCallback(tracker, resolve=lambda c: {"optim": {"epochs": 3}, "ed": {"alpha": c["alpha"]}},
                                total_epochs=3)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        tuner = tune.Tuner(
            _trainable,
            param_space={"alpha": tune.grid_search([0.1, 0.2, 0.3]), "epochs": tune.sample_from(
                lambda spec: {0.1: 3, 0.2: 2, 0.3: 3}[spec.config.alpha]),
                "fail": tune.sample_from(lambda spec: spec.config.alpha == 0.3),
                "model": tune.sample_from(lambda spec: str(model) if spec.config.alpha == 0.1 else "")},
            run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), callbacks=[callback], verbose=0),
        )
        tuner.fit()
    finally:
        if started:
            ray.shutdown()
    children = client.search_runs([tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    by_alpha = {r.data.params["alpha"]: r for r in children}
    assert len(children) == 3 and set(by_alpha) == {"0.1", "0.2", "0.3"}
    assert {a: (r.data.tags["edray.status"], r.info.status) for a, r in by_alpha.items()} == {
        "0.1": ("completed", "FINISHED"), "0.2": ("pruned", "FINISHED"), "0.3": ("errored", "FAILED")}
    done = by_alpha["0.1"]
    assert done.data.params["ed.alpha"] == "0.1" and done.data.params["optim.epochs"] == "3"
    assert _steps(client, done.info.run_id, "val_acc") == [(1, 0.2), (2, 0.4), (3, pytest.approx(0.6))]
    assert set(done.data.metrics) == {"val_acc", "grade", "train_loss", "budget_epochs"}
    assert [f.path for f in client.list_artifacts(done.info.run_id, "model")] == ["model/student.pt"]
    assert client.list_artifacts(by_alpha["0.2"].info.run_id, "model") == []
    # log_models: all -> the trial's student is an MLflow model on its own run (its Models tab), nowhere else.
    models = client.search_logged_models([tracker.experiment_id])
    assert [(m.name, m.source_run_id) for m in models] == [("student", done.info.run_id)]
    assert {(m.key, m.step) for m in models[0].metrics} == {("val_acc", 3), ("grade", 3), ("train_loss", 3)}
    mlflow.set_tracking_uri(tracker.uri)
    try:
        loaded = mlflow.pytorch.load_model(f"runs:/{done.info.run_id}/student")
        class_names = mlflow.models.get_model_info(models[0].model_uri).metadata["class_names"]
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    assert loaded(digits_data.val.load(torch.arange(3))).shape == (3, 10)
    assert class_names == digits_data.class_names

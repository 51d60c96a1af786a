"""``edray sweep`` end to end: a real local Ray cluster, a real SQLite MLflow store, real digits training.

One sweep is shared by most tests here: three trials one after another (max_concurrent 1,
so the order is fixed), grade-aware ASHA on. The first two trials are given: the spec's
own values, then the same with a tenth of the learning rate, which the scheduler stops
at its first rung in the final grade. The third is drawn by Optuna (TPE, seeded).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from edray import cli
from edray.data import ImageSet, load_data
from edray.distill.loop import run_ed
from edray.distributed import trial
from edray.distributed.space import compile_space, default_point, resolve_config
from edray.errors import EdrayError
from edray.layout import Layout
from edray.models import build_backbone
from edray.pipeline import make_teacher_logits, train
from edray.spec import get_path, load_spec, spec_from_dict
from edray.tracking.callback import EPOCH_METRICS
from edray.tracking.records import mlflow_key

from .conftest import DIGITS_YAML, FAST, fast_spec
from .helpers import TIMEOUT_S as _TIMEOUT_S
from .helpers import descendants, edray, edray_args, edray_env, json_summary, metric_steps, sets

EPOCHS = 6
SHORT = [*FAST, f"optim.epochs={EPOCHS}", "ed.switch_epochs=[2, 4]", "search.params[0].min_grade_epochs=1"]
SWEEP = [*SHORT, "search.final_eval.seeds=2", "search.early_stopping.kind=asha", "search.early_stopping.grace_epochs=1",
         "search.max_concurrent=1"]
LOW_LR = 0.01


# ---------------------------------------------------------------------------------- helpers


def _seed(teacher_workdir: Path, workdir: Path) -> Path:
    """A fresh work directory holding the session's trained teachers (the sweep builds its stores)."""
    workdir.mkdir(parents=True)
    shutil.copytree(teacher_workdir / "teachers", workdir / "teachers")
    return workdir


def _runs(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


def _grade_at(epoch: int, switches: list[int]) -> int:
    """Grade of 1-based ``epoch``: grade g+1 starts at (0-based) epoch switches[g-1]."""
    return 1 + sum(epoch > s for s in switches)


def _val_acc(model: torch.nn.Module, images: ImageSet) -> float:
    model.eval()
    with torch.no_grad():
        pred = model(images.load(torch.arange(len(images)))).argmax(1)
    return (pred == images.labels).double().mean().item()


@dataclass
class Swept:
    workdir: Path
    summary: dict
    client: MlflowClient
    base: dict  # the spec the sweep ran, as a dict
    points: list[dict]
    parent: object
    children: list
    rows: dict[str, dict]  # trial id -> row of the parent's results.json

    def artifact(self, run_id: str, path: str) -> Path:
        into = self.workdir.parent / f"dl-{run_id}"
        into.mkdir(exist_ok=True)
        return Path(self.client.download_artifacts(run_id, path, str(into)))


# ---------------------------------------------------------------------------------- the shared sweep


@pytest.fixture(scope="module")
def swept(tmp_path_factory, teacher_workdir) -> Swept:
    workdir = _seed(teacher_workdir, tmp_path_factory.mktemp("sweep") / "work")
    own = default_point(fast_spec(*SWEEP))
    points = [own, {**own, "optim.lr": LOW_LR}]
    extra = [f"search.points_to_evaluate={json.dumps(points)}", f"search.storage=sqlite:///{workdir / 'optuna.db'}"]
    summary = json_summary(edray("sweep", str(DIGITS_YAML), "--workdir", str(workdir), "--json", "--num-samples",
                                 "3", *sets(SWEEP + extra)))
    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    runs = _runs(client, summary["experiment"])
    parents = [r for r in runs if r.data.tags.get("edray.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == summary["parent_run_id"]]
    swept = Swept(workdir=workdir, summary=summary, client=client,
                  base=load_spec(DIGITS_YAML, SWEEP + extra).model_dump(mode="json"), points=points,
                  parent=parents[0] if len(parents) == 1 else parents, children=children, rows={})
    if len(parents) == 1:
        rows = json.loads(swept.artifact(parents[0].info.run_id, "results.json").read_text())
        swept.rows = {row["trial_id"]: row for row in rows}
    return swept


@pytest.mark.slow
def test_summary_line_has_every_field_and_adds_up(swept):
    s = swept.summary
    required = {"experiment", "parent_run_id", "tracking_uri", "trials", "completed", "pruned", "errored",
                "best_config", "best_val_acc", "wall_s", "final_test_acc_mean", "final_test_acc_std"}
    assert required <= set(s)
    assert s["experiment"] == "digits"
    assert s["tracking_uri"] == f"sqlite:///{swept.workdir / 'mlflow.db'}"
    assert s["trials"] == 3 and s["errored"] == 0
    assert s["completed"] + s["pruned"] == 3 and s["pruned"] >= 1
    assert set(swept.points[0]) | {"ed.split_ratios[2]"} == set(s["best_config"])
    finals = [float(c.data.metrics["val_acc"]) for c in swept.children if c.data.tags["edray.status"] == "completed"]
    assert s["best_val_acc"] == max(finals)
    assert len(s["final_test_accs"]) == 2
    assert s["final_test_acc_mean"] == pytest.approx(statistics.fmean(s["final_test_accs"]))
    assert s["final_test_acc_std"] == pytest.approx(statistics.pstdev(s["final_test_accs"]))
    assert 0 < s["wall_s"]


@pytest.mark.slow
def test_mlflow_has_one_parent_and_one_nested_child_per_trial(swept):
    runs = _runs(swept.client, "digits")
    assert not isinstance(swept.parent, list), f"expected one sweep run, got {len(swept.parent)}"
    assert swept.parent.info.run_id == swept.summary["parent_run_id"]
    assert swept.parent.info.status == "FINISHED" and swept.parent.data.tags["edray.status"] == "finished"
    assert len(runs) == 1 + 3 == 1 + len(swept.children)
    trial_ids = [c.data.tags["edray.trial_id"] for c in swept.children]
    assert len(set(trial_ids)) == 3
    assert set(trial_ids) == set(swept.rows)
    # ... and the same trials as Ray Tune's own records.
    ray_dirs = list((swept.workdir / "ray_results").glob("*/run_trial_*"))
    assert {d.name.split("_")[2] for d in ray_dirs} == set(trial_ids)
    for child in swept.children:
        assert child.data.tags["edray.kind"] == "trial"
        assert child.info.run_name == f"trial-{child.data.tags['edray.trial_id']}"


@pytest.mark.slow
def test_children_have_flat_params_epoch_metrics_status_and_config(swept):
    for child in swept.children:
        run_id = child.info.run_id
        row = swept.rows[child.data.tags["edray.trial_id"]]
        config = row["config"]
        params = child.data.params
        for path, value in config.items():
            assert params[mlflow_key(path)] == str(value), path
        assert params["optim.epochs"] == str(EPOCHS)
        assert params["student.arch"] == "cnn_small"
        assert params["teachers.models.0.arch"] == "cnn_medium"  # lists of mappings are indexed

        steps = metric_steps(swept.client, run_id, "val_acc")
        last = EPOCHS if row["status"] == "completed" else steps[-1]
        assert steps == list(range(1, last + 1)), "one value per epoch, step = epoch, none twice"
        assert row["status"] == "completed" or last < EPOCHS
        for key in EPOCH_METRICS:
            assert metric_steps(swept.client, run_id, key) == steps, key
        assert not [k for k in child.data.metrics if "test" in k], "trials must not evaluate the test split"
        switches = [config["ed.switch_epochs[0]"], config["ed.switch_epochs[1]"]]
        grades = {m.step: m.value for m in swept.client.get_metric_history(run_id, "grade")}
        assert grades == {e: _grade_at(e, switches) for e in steps}

        assert child.data.tags["edray.status"] == row["status"]
        assert child.info.status == "FINISHED"
        resolved = yaml.safe_load(swept.artifact(run_id, "config.yaml").read_text())
        assert resolved == resolve_config(swept.base, config).model_dump(mode="json")
        spec_from_dict(resolved)  # a valid spec


@pytest.mark.slow
def test_parent_holds_best_config_results_figures_and_the_best_student(swept):
    parent_id = swept.parent.info.run_id
    names = {a.path for a in swept.client.list_artifacts(parent_id)}
    assert {"spec.yaml", "best.yaml", "results.json", "results.csv", "figures", "model"} <= names

    best_text = swept.artifact(parent_id, "best.yaml").read_text()
    assert best_text == (swept.workdir / "sweeps" / "digits" / "best.yaml").read_text()
    best = yaml.safe_load(best_text)
    assert "search" not in best
    for path, value in swept.summary["best_config"].items():
        assert get_path(best, path) == value, path

    statuses = [row["status"] for row in swept.rows.values()]
    assert statuses.count("completed") == swept.summary["completed"]
    assert statuses.count("pruned") == swept.summary["pruned"]
    csv_lines = swept.artifact(parent_id, "results.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + 3

    figures = swept.client.list_artifacts(parent_id, "figures")
    assert {Path(f.path).name for f in figures} == {"optimization_history.png", "param_importances.png",
                                                   "parallel_coordinates.png", "learning_curves.png"}
    for f in figures:
        with Image.open(swept.artifact(parent_id, f.path)) as img:
            assert img.format == "PNG" and min(img.size) > 100

    # The default tracking.log_models (best): the best student is the one MLflow model, on the parent run.
    models = swept.client.search_logged_models([swept.parent.info.experiment_id])
    assert [(m.name, m.source_run_id) for m in models] == [("student", parent_id)]

    # The trained student of the best trial: a real model that scores the best val_acc.
    saved = torch.load(swept.artifact(parent_id, "model/student.pt"), weights_only=False)
    spec = spec_from_dict(best)
    data = load_data(spec.dataset)
    model = build_backbone(saved["arch"], num_classes=saved["num_classes"], in_channels=data.in_channels,
                           image_size=data.image_size)
    model.load_state_dict(saved["state_dict"])
    assert _val_acc(model, data.val) == pytest.approx(swept.summary["best_val_acc"], abs=1e-9)
    # Every trial that finished kept its student; the stopped ones did not get that far.
    models = swept.workdir / "sweeps" / "digits" / "models"
    kept = {p.stem for p in models.glob("*/*.pt")}
    assert kept == {tid for tid, row in swept.rows.items() if row["status"] == "completed"}


@pytest.mark.slow
def test_a_stopped_trial_is_pruned_in_optuna_not_complete(swept):
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{swept.workdir / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == swept.summary["pruned"]
    assert states.count(optuna.trial.TrialState.COMPLETE) == swept.summary["completed"]
    low = [t for t in study.trials if t.params["optim.lr"] == LOW_LR]
    assert len(low) == 1 and low[0].state == optuna.trial.TrialState.PRUNED
    # Optuna keeps a pruned trial's last intermediate value (reported while it still ran).
    assert low[0].intermediate_values and low[0].value in (None, *low[0].intermediate_values.values())
    # The same trial in MLflow: stopped in its final grade, before its last epoch.
    pruned = [c for c in swept.children if float(c.data.params["optim.lr"]) == LOW_LR]
    assert len(pruned) == 1 and pruned[0].data.tags["edray.status"] == "pruned"
    assert pruned[0].data.metrics["grade"] == 3
    assert metric_steps(swept.client, pruned[0].info.run_id, "grade")[-1] < EPOCHS
    for t in study.trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.value in [row["val_acc"] for row in swept.rows.values() if row["status"] == "completed"]


@pytest.mark.slow
def test_best_writes_a_spec_that_train_accepts(swept, tmp_path, capsys):
    out = tmp_path / "best.yaml"
    assert cli.main(["best", "digits", "--workdir", str(swept.workdir), "-o", str(out)]) == 0
    assert out.read_text() == (swept.workdir / "sweeps" / "digits" / "best.yaml").read_text()
    capsys.readouterr()
    assert cli.main(["validate", str(out)]) == 0  # the checks `edray train` runs before it trains
    assert capsys.readouterr().out.startswith(f"ok: {out}")


@pytest.mark.slow
def test_final_evaluation_is_the_best_config_on_the_test_split_over_seeds(swept):
    """``search.final_eval.seeds`` runs of the best config (seeds 0, 1), scored on the test split once each."""
    best = load_spec(swept.workdir / "sweeps" / "digits" / "best.yaml")
    data = load_data(best.dataset)
    layout = Layout.at(swept.workdir)
    accs = [train(spec_from_dict({**best.model_dump(mode="json"), "seed": seed}), layout, data=data).test_acc
            for seed in (0, 1)]
    assert accs == pytest.approx(swept.summary["final_test_accs"], abs=1e-9)


def test_points_to_evaluate_give_the_drawn_ratios_and_the_last_is_derived():
    spec = fast_spec(*SHORT)
    point = {**default_point(spec), "ed.split_ratios[0]": 0.4, "ed.split_ratios[1]": 0.25}
    compile_space(fast_spec(*SHORT, f"search.points_to_evaluate={json.dumps([point])}"))  # 0.35 is left: fine
    bad = {**point, "ed.split_ratios[1]": 0.7}
    with pytest.raises(EdrayError, match=r"search.points_to_evaluate\[0\]"):
        compile_space(fast_spec(*SHORT, f"search.points_to_evaluate={json.dumps([bad])}"))


# ---------------------------------------------------------------------------------- validation, not test


class _TestSplitRead(Exception):
    pass


class _SealedImages(ImageSet):
    """A test split that fails when a single image is read."""

    def __init__(self, labels: torch.Tensor):
        self.labels = labels

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        raise _TestSplitRead(f"{len(indices)} test images read")


def test_trials_never_read_the_test_split(teacher_workdir, tmp_path, monkeypatch):
    spec = fast_spec(*SHORT, "teachers.logits=live")
    sealed = load_data(spec.dataset)
    sealed.test = _SealedImages(sealed.test.labels)
    ctx = trial.TrialContext(base_spec=spec.model_dump(mode="json"), layout=Layout.at(teacher_workdir),
                             models_dir=str(tmp_path / "models"))
    monkeypatch.setattr(trial, "_cached_data", lambda *_args: sealed)
    reported: list[dict] = []
    trial.train_trial(spec, ctx, trial_id="t", report_fn=lambda m, _d: reported.append(m))
    assert [m["epoch"] for m in reported] == list(range(1, EPOCHS + 1))
    assert Path(reported[-1]["model_path"]).is_file()
    assert not [k for m in reported for k in m if "test" in k]
    # The probe bites: the same data through a run that does score the test split.
    with pytest.raises(_TestSplitRead):
        run_ed(spec, sealed, make_teacher_logits(spec, sealed, Layout.at(teacher_workdir)), evaluate_test=True)


# ---------------------------------------------------------------------------------- dry run


def test_dry_run_prints_the_space_and_samples_and_writes_nothing(tmp_path):
    workdir = tmp_path / "wd"
    proc = subprocess.run(edray_args("sweep", str(DIGITS_YAML), "--dry-run", "--json"), cwd=tmp_path,
                          env=edray_env(EDRAY_WORKDIR=str(workdir)), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    spec = load_spec(DIGITS_YAML)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"search space of {DIGITS_YAML}")
    for p in spec.search.params:
        assert any(line.strip().startswith(f"{p.path}:") for line in lines), p.path
    assert "sampled configs:" in lines
    summary = json.loads(lines[-1])
    assert summary["dry_run"] is True and len(summary["space"]) == len(spec.search.params)
    assert len(summary["samples"]) == 3 and len({json.dumps(c, sort_keys=True) for c in summary["samples"]}) == 3
    for config in summary["samples"]:
        assert json.dumps(config) in proc.stdout
        resolved = resolve_config(spec, config)
        n, m = resolved.ed.switch_epochs
        assert 0 < n < m < resolved.optim.epochs
        assert sum(resolved.ed.split_ratios) == pytest.approx(1.0)
    assert list(tmp_path.iterdir()) == [], "a dry run writes nothing: no work directory, no ./edray-out"


# ---------------------------------------------------------------------------------- resume


def _trial_states(workdir: Path) -> dict[str, str]:
    """Trial id -> status in Tune's latest saved experiment state (empty until there is one)."""
    files = sorted((workdir / "ray_results").glob("*/experiment_state-*.json"))
    if not files:
        return {}
    try:
        state = json.loads(files[-1].read_text())
    except (OSError, json.JSONDecodeError):  # being rewritten
        return {}
    trials = [json.loads(item[0]) for item in state["trial_data"]]
    return {t["trial_id"]: t["status"] for t in trials}


def _kill_hard(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and the Ray processes it started, as a crash of the head node would."""
    below = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for p in below:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _result_rows(workdir: Path, trial_id: str) -> list[dict]:
    (path,) = (workdir / "ray_results").glob(f"*/run_trial_{trial_id}_*/result.json")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_running_finished_trials_again(tmp_path_factory, teacher_workdir):
    workdir = _seed(teacher_workdir, tmp_path_factory.mktemp("resume") / "work")
    args = ["sweep", str(DIGITS_YAML), "--workdir", str(workdir), "--json", "--num-samples", "3", "--no-final-eval",
            *sets([*SHORT, "search.early_stopping.kind=none", "search.max_concurrent=1"])]
    with open(workdir / "first.log", "w") as log:
        proc = subprocess.Popen(edray_args(*args), env=edray_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + _TIMEOUT_S
        while "TERMINATED" not in _trial_states(workdir).values():
            assert proc.poll() is None, f"the sweep ended before the kill:\n{(workdir / 'first.log').read_text()}"
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.1)
    finally:
        _kill_hard(proc)
    killed_at = time.time()
    finished = {tid for tid, status in _trial_states(workdir).items() if status == "TERMINATED"}
    state = json.loads((workdir / "sweeps" / "digits" / "sweep.json").read_text())
    models = workdir / "sweeps" / "digits" / "models" / state["run_name"]
    before = {tid: ((models / f"{tid}.pt").stat().st_mtime_ns, _result_rows(workdir, tid)) for tid in finished}
    assert all(len(rows) == EPOCHS for _, rows in before.values())

    resumed = edray(*args, "--resume")
    summary = json_summary(resumed)
    assert summary["trials"] == 3 and summary["completed"] == 3, (summary, resumed.stderr[-6000:])
    assert summary["parent_run_id"] == state["parent_run_id"]
    assert json.loads((workdir / "sweeps" / "digits" / "sweep.json").read_text()) == state

    # Finished trials did not train again: same rows in Tune's log, same student file.
    for tid, (mtime, rows) in before.items():
        assert _result_rows(workdir, tid) == rows
        assert (models / f"{tid}.pt").stat().st_mtime_ns == mtime
    # The unfinished trials continued after the restart, to their last epoch. (Tune's own
    # result.json may lose a row it had buffered at the kill; MLflow, below, has every epoch once.)
    ids = set(_trial_states(workdir))
    assert len(ids) == 3 and finished < ids
    for tid in ids - finished:
        rows = _result_rows(workdir, tid)
        assert max(r["epoch"] for r in rows) == EPOCHS
        assert any(r["timestamp"] >= int(killed_at) for r in rows)

    # The resumed driver's progress lines (stderr is no terminal): what ended before, then the rest.
    lines = resumed.stderr.splitlines()
    took_in = [line for line in lines if line.startswith("resumed: ")]
    assert len(took_in) == 1 and took_in[0].startswith(f"resumed: {len(finished)} trial"), resumed.stderr[-4000:]
    assert f"{len(finished)} completed" in took_in[0]
    for tid in ids:
        ends = [line for line in lines if line.startswith(f"trial {tid} completed at epoch {EPOCHS}/{EPOCHS}")]
        assert len(ends) == (tid not in finished), (tid, resumed.stderr[-4000:])
    assert any(line.startswith("status: 0 running, 3 completed, ") for line in lines), resumed.stderr[-4000:]

    # MLflow: still one sweep run, one child per trial, each epoch logged once.
    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    runs = _runs(client, "digits")
    parents = [r for r in runs if r.data.tags.get("edray.kind") == "sweep"]
    assert [p.info.run_id for p in parents] == [state["parent_run_id"]]
    assert parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == state["parent_run_id"]]
    assert len(runs) == 1 + len(children)
    assert sorted(c.data.tags["edray.trial_id"] for c in children) == sorted(ids)
    for child in children:
        assert metric_steps(client, child.info.run_id, "val_acc") == list(range(1, EPOCHS + 1))
        assert child.data.tags["edray.status"] == "completed"

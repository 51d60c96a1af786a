"""``edray sweep --compare``: one real tiny sweep per method on digits (real Ray, Optuna, MLflow),
its table checked against the runs, and the report that shows it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from edray.cli import main
from edray.distributed.compare import method_spec, parse_methods
from edray.errors import EdrayError
from edray.stats import paired_difference

from .conftest import DIGITS_YAML, FAST, fast_spec

# 2 configs per method; halving with copies at 3 of 8 epochs keeps 1: 3 Tune trials per method.
COMPARE = [*FAST, "search.params[0].min_grade_epochs=1", "search.final_eval.seeds=2", "search.max_concurrent=2",
           "search.early_stopping={kind: halving, budgets: [0.2], reduction_factor: 4}"]
CHROMIUM = Path("/usr/bin/chromium")


def test_method_specs_search_their_own_knobs_in_eds_ranges():
    spec = fast_spec()
    kd = method_spec(spec, "kd")
    assert kd.method == "kd" and kd.name == "digits-kd" and kd.tracking.experiment == "digits"
    assert [p.path for p in kd.search.params] == ["ed.temperatures[2]", "ed.alpha", "optim.lr"]
    lr_ed = next(p for p in spec.search.params if p.path == "optim.lr")
    assert (kd.search.params[2].low, kd.search.params[2].high) == (lr_ed.low, lr_ed.high)
    assert kd.search.early_stopping == spec.search.early_stopping and kd.search.num_samples == spec.search.num_samples
    assert [p.path for p in method_spec(spec, "ce").search.params] == ["optim.lr"]
    with pytest.raises(EdrayError, match="--compare"):
        parse_methods("kd,ed")
    with pytest.raises(EdrayError, match="distinct"):
        parse_methods("kd,kd")
    with pytest.raises(EdrayError, match="kd cannot run"):
        method_spec(fast_spec("teachers.mode=per_group"), "kd")


def test_paired_difference_interval():
    # Differences 0.10, 0.05, 0.05: mean 0.2/3, sample sd 0.0288675, t(0.975, 2 df) = 4.302653
    # (a table value), half width 4.302653 * 0.0288675 / sqrt(3) = 0.0717109.
    d = paired_difference([0.9, 0.8, 0.85], [0.8, 0.75, 0.8])
    assert d.mean == pytest.approx(0.2 / 3)
    assert d.low == pytest.approx(0.2 / 3 - 0.0717109, abs=1e-6)
    assert d.high == pytest.approx(0.2 / 3 + 0.0717109, abs=1e-6)
    assert d.n == 3
    wide = paired_difference([0.9, 0.8, 0.85], [0.8, 0.75, 0.8], level=0.99)  # t(0.995, 2) = 9.924843
    assert wide.high - wide.mean == pytest.approx(9.924843 * 0.0288675 / 3**0.5, abs=1e-6)
    assert paired_difference([0.5], [0.4]).low is None


@pytest.fixture(scope="module")
def compared(tmp_path_factory, teacher_workdir):
    workdir = tmp_path_factory.mktemp("compare") / "work"
    workdir.mkdir()
    shutil.copytree(teacher_workdir / "teachers", workdir / "teachers")
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    sets = [a for o in [*COMPARE, f"search.storage={storage}"] for a in ("--set", o)]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "EDRAY_WORKDIR", "EDRAY_SHARED")}
    done = subprocess.run([sys.executable, "-m", "edray.cli", "sweep", str(DIGITS_YAML), "--workdir", str(workdir),
                           "--num-samples", "2", "--compare", "kd,ce", "--json", *sets],
                          env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return workdir, json.loads(done.stdout.strip().splitlines()[-1]), done.stderr, storage


@pytest.mark.slow
def test_compare_runs_one_study_and_one_parent_per_method_and_a_table_matching_the_runs(compared):
    workdir, summary, stderr, storage = compared
    assert "3 sweeps of 2 configs each" in stderr  # the cost, said before anything ran
    rows = {r["method"]: r for r in summary["compare"]}
    assert list(rows) == ["ed", "kd", "ce"]
    # One Optuna study per method, the same number of configs, pruned by the same rungs.
    studies = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    assert set(studies) == {"digits", "digits-kd", "digits-ce"}
    for name in studies:
        trials = optuna.load_study(study_name=name, storage=storage).trials
        assert sorted(t.state.name for t in trials) == ["COMPLETE", "PRUNED"], name
        # The rung (copies of 3 epochs) promoted its best config; the other was told PRUNED.
        (won,) = [t for t in trials if t.state.name == "COMPLETE"]
        (lost,) = [t for t in trials if t.state.name == "PRUNED"]
        assert set(won.intermediate_values) == set(lost.intermediate_values) == {3}, name
        assert won.intermediate_values[3] >= lost.intermediate_values[3], name
    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    exp = client.get_experiment_by_name("digits")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    for method, row in rows.items():
        parent = client.get_run(row["parent_run_id"])
        assert parent.data.tags["edray.kind"] == "sweep" and parent.data.params["method"] == method
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == row["parent_run_id"]]
        assert len(children) == row["trials"] == 3
        assert {c.data.tags["edray.method"] for c in children} == {method}
        done = [c for c in children if c.data.tags["edray.status"] == "completed"]
        assert row["best_val_acc"] == max(c.data.metrics["val_acc"] for c in done)
        assert row["epochs"] == sum(int(c.data.metrics["budget_epochs"]) for c in children) == 3 + 3 + 8  # copies of 3
        assert len(row["test_accs"]) == 2
        assert parent.data.metrics["final_test_acc_mean"] == pytest.approx(row["test_acc_mean"])
        if method != "ed":  # the mean paired difference, worked out here
            diffs = [a - b for a, b in zip(row["test_accs"], rows["ed"]["test_accs"])]
            assert row["diff_to_ed"] == pytest.approx(sum(diffs) / len(diffs))
            assert row["diff_low"] < row["diff_to_ed"] < row["diff_high"] or len(set(diffs)) == 1
    ed_parent = client.get_run(rows["ed"]["parent_run_id"])
    assert ed_parent.data.metrics["compare.kd.test_acc_mean"] == pytest.approx(rows["kd"]["test_acc_mean"])
    assert ed_parent.data.metrics["compare.ce.epochs"] == rows["ce"]["epochs"]


@pytest.mark.slow
def test_best_after_compare_is_eds_config_not_the_newest_baselines(compared, tmp_path):
    workdir, summary, _, _ = compared
    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    exp = client.get_experiment_by_name("digits")
    newest = client.search_runs([exp.experiment_id], filter_string="tags.`edray.kind` = 'sweep'",
                                order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert newest.data.params["method"] != "ed"  # the baselines ran after ED: newest-of-any would pick one
    out = tmp_path / "best.yaml"
    assert main(["best", "digits", "--workdir", str(workdir), "-o", str(out)]) == 0
    ed_parent = next(r["parent_run_id"] for r in summary["compare"] if r["method"] == "ed")
    eds = Path(client.download_artifacts(ed_parent, "best.yaml", str(tmp_path))).read_text()
    assert out.read_text() == eds and yaml.safe_load(eds)["method"] == "ed"


@pytest.mark.slow
def test_report_shows_the_comparison(compared, tmp_path):
    workdir, summary, _, _ = compared
    out = tmp_path / "report.html"
    assert main(["report", "digits", "--workdir", str(workdir), "-o", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    section = re.search(r'<section id="baselines">(.*?)</section>', page, re.S).group(1)
    for row in summary["compare"]:
        assert f"<td>{row['method']}</td>" in section
        assert f"{row['test_acc_mean']:.4f}" in section and f"{row['best_val_acc']:.4f}" in section
        if row["method"] != "ed":
            assert f"{row['diff_to_ed']:+.4f} [{row['diff_low']:+.4f}, {row['diff_high']:+.4f}]" in section
    # Two completed trials (ED's one full run): no importance bars drawn from them.
    assert "Too few completed trials for parameter importance: 1" in page
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: the page's rendering was not checked (everything else was)")
    shot = tmp_path / "shot.png"  # the page renders (the screenshot test of test_report.py, on this page)
    done = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                           "--window-size=1280,2400", out.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]


def test_unknown_compare_method_is_one_line_and_exit_2(capsys, tmp_path):
    assert main(["sweep", str(DIGITS_YAML), "--workdir", str(tmp_path), "--compare", "kd,dk"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --compare: unknown method 'dk'; fix: use some of kd, mtkd, ce (ED is always run)"]
    assert not any(tmp_path.iterdir())  # nothing half-written


@pytest.mark.slow
def test_optuna_dashboard_serves_the_studies_with_the_states_edray_told(compared, tmp_path):
    """optuna-dashboard (the ``dashboard`` extra) on loopback against the sweep's storage:
    its HTTP API lists each method's study, and each trial in the state edray told Optuna."""
    pytest.importorskip("optuna_dashboard", reason="pip install 'edray[dashboard]'")
    import urllib.request

    from tests.cluster_fixture import _http_ok, _spawn, _wait, free_port, stop_group

    _, _, _, storage = compared
    port = free_port()
    log = tmp_path / "dashboard.log"
    proc = _spawn([str(Path(sys.executable).parent / "optuna-dashboard"), storage, "--host", "127.0.0.1",
                   "--port", str(port)], dict(os.environ), log)
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> dict:
        with urllib.request.urlopen(base + path, timeout=30) as r:
            return json.load(r)

    try:
        _wait(lambda: _http_ok(f"{base}/api/meta"), "optuna-dashboard", 120, proc, log)
        served = {s["study_name"]: s["study_id"] for s in get("/api/studies")["study_summaries"]}
        assert set(served) == {"digits", "digits-kd", "digits-ce"}
        for name, study_id in served.items():
            told = optuna.load_study(study_name=name, storage=storage).trials
            detail = get(f"/api/studies/{study_id}")
            assert [(t["number"], t["state"].upper()) for t in detail["trials"]] == [
                (t.number, t.state.name) for t in told]
            assert {t["state"] for t in detail["trials"]} == {"Complete", "Pruned"}
    finally:
        stop_group(proc)


@pytest.mark.slow
def test_each_method_registers_its_best_student_and_best_prints_its_uri(compared, digits_data, tmp_path):
    """Each sweep's best student is an MLflow model registered as ``digits-<method>``, the
    champion on its first sweep; a fresh process with only mlflow and torch loads ED's
    champion and gets exactly the test accuracy edray recorded for it."""
    from tests.test_student_model import _load_in_fresh_process

    workdir, summary, stderr, _ = compared
    uri = summary["tracking_uri"]
    client = MlflowClient(tracking_uri=uri)
    for row in summary["compare"]:
        name = f"digits-{row['method']}"
        champion = client.get_model_version_by_alias(name, "champion")
        parent = client.get_run(row["parent_run_id"])
        assert parent.data.tags["edray.model_uri"] == f"models:/{name}/{champion.version}"
        assert champion.tags["edray.sweep_run_id"] == row["parent_run_id"]
        assert champion.tags["edray.test_protocol"] == digits_data.fingerprint
    assert "best student: test_acc" in stderr

    ed = client.get_model_version_by_alias("digits-ed", "champion")
    test = digits_data.test
    rows = torch.arange(len(test))
    loaded = _load_in_fresh_process(uri, "digits-ed", test.load(rows), test.labels, tmp_path)
    assert loaded["native"] == loaded["pyfunc"] == float(ed.tags["edray.test_acc"])
    assert loaded["edray_imported"] == []

    out = tmp_path / "best.yaml"
    done = subprocess.run([sys.executable, "-m", "edray", "best", "digits", "--workdir", str(workdir), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"its trained student: models:/digits-ed/{ed.version}" in done.stdout

"""``edray sweep`` flags run for real: ``search.compare`` in the spec and the table it prints,
``--max-concurrent``, Ctrl-C (SIGINT) mid-sweep, and a multi-node Ray cluster without
``EDRAY_SHARED`` (two real raylets on this machine)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from .conftest import DIGITS_YAML, FAST
from .helpers import TIMEOUT_S, default_sigint, edray, edray_args, edray_env, one_line_error, sets

SWEEP = [*FAST, "optim.epochs=3", "ed.switch_epochs=[1, 2]", "search.params[0].min_grade_epochs=1",
         "search.early_stopping.kind=none", "search.final_eval.seeds=2"]


def _seed(teacher_workdir: Path, workdir: Path) -> Path:
    shutil.copytree(teacher_workdir / "teachers", workdir / "teachers")
    return workdir


@pytest.mark.slow
def test_search_compare_in_the_spec_prints_the_table_and_runs_one_trial_at_a_time(teacher_workdir, tmp_path):
    workdir = _seed(teacher_workdir, tmp_path / "work")
    spec = yaml.safe_load(DIGITS_YAML.read_text())
    spec["search"]["compare"] = ["mtkd"]  # the spec key, not the --compare flag
    spec_file = tmp_path / "compare.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    proc = edray("sweep", str(spec_file), "--workdir", str(workdir), "--num-samples", "2", "--max-concurrent", "1",
                 *sets(SWEEP), timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("method "))
    table = {line.split()[0]: line for line in lines[header + 1 : header + 3]}
    assert list(table) == ["ed", "mtkd"] and "(reference)" in table["ed"]
    assert "over the same 2 seeds" in lines[header + 3]

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("digits")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = {r.data.params["method"]: r for r in runs if r.data.tags.get("edray.kind") == "sweep"}
    assert set(parents) == {"ed", "mtkd"}
    for method, parent in parents.items():
        children = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
                          key=lambda r: r.info.start_time)
        assert len(children) == 2 and {c.data.tags["edray.method"] for c in children} == {method}
        # The printed row is this sweep's: best val_acc and the final test mean.
        cells = table[method].split()
        assert cells[1] == f"{max(c.data.metrics['val_acc'] for c in children):.4f}"
        assert cells[2] == f"{parent.data.metrics['final_test_acc_mean']:.4f}"
        # --max-concurrent 1: the second trial started after the first had ended.
        assert children[1].info.start_time >= children[0].info.end_time, method


def _trial_states(workdir: Path) -> dict[str, str]:
    files = sorted((workdir / "ray_results").glob("*/experiment_state-*.json"))
    try:
        state = json.loads(files[-1].read_text()) if files else {"trial_data": []}
    except (OSError, json.JSONDecodeError):  # being rewritten
        return {}
    return {t["trial_id"]: t["status"] for t in (json.loads(item[0]) for item in state["trial_data"])}


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
def test_ctrl_c_during_a_sweep_exits_130_and_leaves_nothing_half_written(teacher_workdir, tmp_path):
    workdir = _seed(teacher_workdir, tmp_path / "work")
    args = ["sweep", str(DIGITS_YAML), "--workdir", str(workdir), "--json", "--num-samples", "2", "--no-final-eval",
            *sets([*SWEEP, "optim.epochs=8", "ed.switch_epochs=[2, 5]", "search.max_concurrent=1"])]
    proc = subprocess.Popen(edray_args(*args), env=edray_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,  # its own group, as a terminal's foreground job
                            preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while "RUNNING" not in _trial_states(workdir).values():
            assert proc.poll() is None, proc.stderr.read()[-4000:]
            assert time.monotonic() < deadline, "no trial started in time"
            time.sleep(0.2)
        time.sleep(random.uniform(0.0, 3.0))  # somewhere inside the trial
        group = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _in_group(int(p.name), proc.pid)]
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: the whole foreground group
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err[-4000:]
    assert "error: interrupted" in err.splitlines() and "Traceback" not in err, err[-4000:]
    assert out.strip() == "" or not out.strip().splitlines()[-1].startswith("{")  # no summary line
    # Nothing half-written: no temp file anywhere, no best spec of an unfinished sweep,
    # and the sweep state (if saved) is whole JSON.
    assert not [p for p in workdir.rglob("*.tmp")]
    assert not (workdir / "sweeps" / "digits" / "best.yaml").exists()
    state = workdir / "sweeps" / "digits" / "sweep.json"
    if state.exists():
        assert json.loads(state.read_text())["parent_run_id"]
    # The local Ray it started went down with it.
    deadline = time.monotonic() + 60
    while any(_alive(p) for p in group) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = [p for p in group if _alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, "processes of the sweep still running after it exited"


def _in_group(pid: int, pgid: int) -> bool:
    try:
        return os.getpgid(pid) == pgid
    except OSError:
        return False


@pytest.mark.slow
def test_a_multi_node_ray_cluster_without_edray_shared_is_refused(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        proc = edray("sweep", str(DIGITS_YAML), "--workdir", str(tmp_path / "work"), "--address", cluster.address,
                     *sets(SWEEP))
        one_line_error(proc, 2, "EDRAY_SHARED", "2 nodes")
        assert not (tmp_path / "work" / "teachers").exists()  # refused before any teacher trained
    finally:
        cluster.shutdown()

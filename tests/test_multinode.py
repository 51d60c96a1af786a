"""``edray sweep`` on a real multi-node Ray cluster whose nodes share only an S3 API.

The cluster (tests/cluster_fixture.py): a head with ``--num-cpus=0``, two worker nodes each
in its own mount namespace with a tmpfs over the work area (so no node sees the driver's
work directory or another node's cache), ``moto`` as the S3 API, a real ``mlflow server``
with its artifacts on that S3, token authentication on. The driver runs ``edray sweep
--address auto`` as a user would on the head.

Skipped, with the reason, where ``unshare``/``mount`` are not allowed (they need root; CI
runs as root). ``-m 'not cluster'`` skips them on a laptop.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from .cluster_fixture import BUCKET, SimCluster, start_cluster, start_worker, why_not
from .cluster_fixture import s3_client as _s3
from .cluster_fixture import s3_keys as _keys
from .conftest import DIGITS_YAML, FAST
from .helpers import json_summary, sets

EPOCHS = 4
# Two small teachers (every group averages both): two Ray Train jobs at once, four stores.
SPEC = [*FAST, f"optim.epochs={EPOCHS}", "ed.switch_epochs=[1, 2]", "search.params[0].min_grade_epochs=1",
        "teachers.models=[{arch: cnn_medium, train: {epochs: 2}}, {arch: cnn_medium, train: {epochs: 2}}]",
        "teachers.views=2", "search.early_stopping.kind=none", "search.final_eval.seeds=2",
        "tracking.log_models=all"]
TEACHERS = 2
_TIMEOUT_S = 1500  # a bound for a machine shared with other jobs; unloaded, a sweep takes a few minutes


def _sweep_cmd(workdir: Path, *extra: str, samples: int = 4) -> list[str]:
    return [sys.executable, "-m", "edray.cli", "sweep", str(DIGITS_YAML), "--address", "auto", "--json",
            "--workdir", str(workdir), "--num-samples", str(samples), "--max-concurrent", "2", *sets(SPEC), *extra]


def _objects(cluster: SimCluster, prefix: str) -> dict[str, dict]:
    pages = _s3(cluster).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"]: o for page in pages for o in page.get("Contents", [])}


def _worker(node: str | None) -> str:
    """The fixture's name of the node in a placement entry (``worker1 (ray node ...)``)."""
    return (node or "?").split(" ")[0]


@pytest.fixture(scope="module")
def sim():
    reason = why_not()
    if reason:
        pytest.skip(f"simulated cluster unavailable: {reason}")
    base = Path(tempfile.mkdtemp(prefix="edc-", dir="/tmp"))  # short: Ray's socket paths live under it
    try:
        cluster = start_cluster(base / "w", base / "logs")  # stops what it started if it fails
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def first(sim):
    """The first sweep on the cluster: trains the teachers, builds the stores, runs 4 trials."""
    workdir = sim.base / "driver-1"
    env = sim.driver_env(EDRAY_SHARED=sim.shared("run"))
    tic = time.monotonic()
    proc = subprocess.run(_sweep_cmd(workdir), env=env, capture_output=True, text=True, timeout=_TIMEOUT_S)
    summary = json_summary(proc)
    print(f"first sweep: {time.monotonic() - tic:.0f}s, steps {summary['placement'].get('steps')}, "
          f"timings {summary['placement'].get('timings')}")
    return workdir, summary, proc.stderr


@pytest.mark.slow
@pytest.mark.cluster
def test_a_sweep_runs_every_heavy_step_on_worker_nodes(sim, first, tmp_path):
    workdir, summary, _ = first
    workers = {"worker1", "worker2"}
    assert summary["trials"] == 4 and summary["errored"] == 0, summary
    assert summary["completed"] + summary["pruned"] == 4
    placement = summary["placement"]
    assert {_worker(n) for n in placement["nodes"]} == workers  # both probed
    # Teachers: one Ray Train job each, on workers, checkpoints + checksums on S3.
    assert sorted(placement["teachers"]) == [str(i) for i in range(TEACHERS)]
    assert {_worker(n) for n in placement["teachers"].values()} <= workers
    teachers = _keys(sim, "run/teachers/")
    for suffix in (".pt", ".pt.sha256", ".pt.json"):  # checkpoint, checksum (written last), who trained it
        assert len([k for k in teachers if k.endswith(suffix)]) == TEACHERS, teachers
    # Stores: sharded by rows across the workers, one store each, manifest last.
    stores = placement["stores"]
    assert len(stores) == 2 * TEACHERS and all(len(nodes) == 2 for nodes in stores.values())  # (train, val) each
    assert {_worker(n) for nodes in stores.values() for n in nodes} == workers
    for name, nodes in stores.items():
        manifest = json.loads(_s3(sim).get_object(Bucket=BUCKET, Key=f"run/logits/{name}/manifest.json")["Body"].read())
        assert [s["node"] for s in manifest["shards"]] == nodes
    assert not [k for k in _keys(sim, "run/logits/") if k.endswith((".done", "layout.json"))]
    # Trials and the final evaluation on workers; the driver's head offers no CPU.
    assert {_worker(n) for n in placement["trials"].values()} <= workers and len(placement["trials"]) == 4
    assert len(placement["final_eval"]) == 2 and {_worker(n) for n in placement["final_eval"]} <= workers
    assert len(summary["final_test_accs"]) == 2
    # Students on the shared location, and the best one downloadable from MLflow (artifacts on S3).
    assert summary["best_model_path"].startswith(f"s3://{BUCKET}/run/models/")
    assert len([k for k in _keys(sim, "run/models/") if k.endswith(".pt")]) == summary["completed"]
    client = MlflowClient(tracking_uri=sim.mlflow_uri)
    os.environ.update({k: v for k, v in sim.common_env.items() if k.startswith(("AWS_", "MLFLOW_S3"))})
    student = torch.load(client.download_artifacts(summary["parent_run_id"], "model/student.pt", str(tmp_path)),
                         weights_only=False)
    assert student["num_classes"] == 10 and student["state_dict"]
    assert _keys(sim, "mlflow-artifacts/")  # the server stored them on the S3 API
    assert not list(workdir.glob("teachers")) and not list(workdir.glob("logits"))  # nothing heavy on the driver


@pytest.mark.slow
@pytest.mark.cluster
def test_a_killed_worker_node_loses_no_finished_trial(sim, first):
    """Same shared location: teachers and stores are found, not rebuilt. worker2 is killed
    (its whole process group, like a lost machine) once a trial has finished; the sweep
    finishes on worker1 with no trial errored."""
    workdir = sim.base / "driver-kill"
    env = sim.driver_env(EDRAY_SHARED=sim.shared("run"))
    before = set(_keys(sim, "run/models/"))
    proc = subprocess.Popen(_sweep_cmd(workdir, "--set", "search.seed=1", "--no-final-eval"), env=env,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(lambda: len(set(_keys(sim, "run/models/")) - before) >= 1, proc, "a finished trial")
        sim.kill_node("worker2")
        out, err = proc.communicate(timeout=_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        start_worker(sim, "worker2")  # for the tests after this one
    summary = json_summary((proc.returncode, out, err))
    # No finished trial is lost; the one on the lost node restarts from its checkpoint. Known
    # Ray Tune race, not fixed (1 run in 3 here): the dead actor's second failed task reaches
    # the trial after the first restarted it, and Tune ends the restarted (PENDING) trial as
    # ERROR. Then exactly that trial errored: it said it lost its worker, and Tune logged
    # "Trial task failed" for it twice. Any other error fails the test.
    errored = re.findall(r"^trial (\w+) errored ", err, flags=re.MULTILINE)
    for trial in errored:
        failed_twice = err.count(f"Trial task failed for trial run_trial_{trial}") == 2
        assert f"trial {trial} lost its worker" in err and failed_twice, (summary, err[-5000:])
    assert summary["trials"] == 4 and summary["errored"] == len(errored) <= 1, (summary, err[-5000:])
    assert summary["completed"] == 4 - len(errored), (summary, err[-5000:])
    assert summary["placement"]["teachers"] == {} and summary["placement"]["stores"] == {}  # trained once
    assert len([k for k in _keys(sim, "run/teachers/") if k.endswith(".pt")]) == TEACHERS


@pytest.mark.slow
@pytest.mark.cluster
def test_a_shared_directory_serves_as_the_shared_location(sim, first):
    """``EDRAY_SHARED`` as a mounted path (an NFS or FSx mount on a real cluster): a folder
    outside the work area, which every node sees. The first sweep's teachers and stores are
    copied there (as a user would sync them), so this sweep trains only its trials."""
    shared = sim.base.parent / "shared-dir"
    s3 = _s3(sim)
    keys = _keys(sim, "run/teachers/") + _keys(sim, "run/logits/")
    for key in keys:
        if any(other.startswith(key.rstrip("/") + "/") for other in keys):
            continue  # a folder marker that Arrow's S3 filesystem leaves, not a file
        target = shared / key.removeprefix("run/")
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(BUCKET, key, str(target))
    workdir = sim.base / "driver-dir"
    env = sim.driver_env(EDRAY_SHARED=str(shared))
    summary = json_summary(subprocess.run(_sweep_cmd(workdir, "--set", "search.seed=3", samples=2), env=env,
                                      capture_output=True, text=True, timeout=_TIMEOUT_S))
    assert summary["trials"] == 2 and summary["errored"] == 0, summary
    placement = summary["placement"]
    assert placement["teachers"] == {} and placement["stores"] == {}  # found in the folder, not rebuilt
    assert {_worker(n) for n in placement["trials"].values()} <= {"worker1", "worker2"}
    assert {_worker(n) for n in placement["final_eval"]} <= {"worker1", "worker2"}
    models = sorted((shared / "models").rglob("*.pt"))
    assert len(models) == summary["completed"] and summary["best_model_path"] in {str(m) for m in models}
    assert any((shared / "ray_results").iterdir())  # Tune's state where any node can resume it
    assert not list(workdir.glob("teachers")) and not list(workdir.glob("logits")) and not list(workdir.glob("models"))


@pytest.mark.slow
@pytest.mark.cluster
def test_a_dataset_missing_on_the_nodes_fails_in_one_line_naming_node_path_and_fix(sim, tmp_path):
    from PIL import Image

    root = sim.base / "driver-data" / "images"  # under the work area: the workers' tmpfs hides it
    for c in range(3):
        (root / "train" / f"class{c}").mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (8, 8), (40 * c, 10 * i, 0)).save(root / "train" / f"class{c}" / f"{i}.png")
    env = sim.driver_env(EDRAY_SHARED=sim.shared("missing-data"))
    tic = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "edray.cli", "sweep", str(DIGITS_YAML), "--address", "auto",
         "--workdir", str(sim.base / "driver-data" / "work"), *sets([*SPEC, "dataset.name=imagefolder",
                                                                      f"dataset.root={root}"])],
        env=env, capture_output=True, text=True, timeout=_TIMEOUT_S,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert lines[-1].startswith("error: dataset.root: node worker") and str(root) in lines[-1], lines[-1]
    assert "fix: copy it to that path on every node" in lines[-1] and "Traceback" not in proc.stderr
    assert time.monotonic() - tic < 120


@pytest.mark.slow
def test_an_address_that_does_not_answer_fails_fast_in_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "EDRAY_SHARED", "MLFLOW_TRACKING_URI")}
    tic = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "edray.cli", "sweep", str(DIGITS_YAML), "--address", f"127.0.0.1:{port}",
         "--workdir", str(tmp_path / "w"), *sets(SPEC)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    # Fails fast rather than in ray.init, which retries a dead address for minutes. The bound is
    # loose on purpose: the interpreter's start, imports and the spec's checks take 30-60 s on a
    # loaded 2-core machine.
    assert time.monotonic() - tic < 100
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"error: --address: no Ray cluster answers at 127.0.0.1:{port}")
    assert not (tmp_path / "w" / "teachers").exists()


def _wait_for(check, proc: subprocess.Popen, what: str, timeout_s: float = _TIMEOUT_S, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            said = log.read_text(errors="replace")[-6000:] if log is not None and log.is_file() else ""
            raise AssertionError(f"the sweep exited ({proc.returncode}) before {what}\n{said}")
        time.sleep(1)
    raise AssertionError(f"no {what} after {timeout_s} s")

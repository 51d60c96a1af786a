"""Workers from zero (issue 18): ``edray sweep`` on a cluster whose only node is a ``CPU: 0``
head, grown by Ray's real autoscaler (tests/autoscaling_fixture.py: the ``fake_multinode``
provider starts raylets on this machine where a cloud would boot machines).

- a request no node type can satisfy is refused in one line, within a minute;
- waiting for a node: the waiting line says what the autoscaler does, ``--wait-for-nodes``
  bounds the wait in one line, and a node of the right type joins;
- a sweep submitted with ``ray job submit`` shows its progress in ``ray job logs``; its driver
  is killed, and a new driver with a fresh work directory and only ``EDRAY_SHARED`` resumes it;
- last (the node it kills stays listed by the fake provider): a digits sweep from zero workers
  completes on nodes the autoscaler started, and a worker node killed while it runs a trial
  costs no trial: the trial resumes from its checkpoint on another node, no trial is lost or
  run twice.

``-m 'not cluster'`` skips them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from .autoscaling_fixture import (
    NODE_TYPES,
    kill_node,
    live_nodes,
    start_autoscaling_cluster,
    stop_autoscaling_cluster,
    trial_actor_nodes,
    why_not,
)
from .cluster_fixture import BUCKET, SimCluster, s3_client, s3_keys
from .conftest import DIGITS_YAML, FAST
from .helpers import json_summary

pytestmark = pytest.mark.cluster
_TIMEOUT_S = 1500  # a bound for a machine shared with other jobs
# Small enough for two 1-CPU nodes: two small teachers, 4 epochs a trial, two views stored.
SPEC = [*FAST, "optim.epochs=4", "ed.switch_epochs=[1, 2]", "search.params[0].min_grade_epochs=1",
        "teachers.models=[{arch: cnn_medium, train: {epochs: 2}}, {arch: cnn_medium, train: {epochs: 2}}]",
        "teachers.views=2", "search.early_stopping.kind=none", "search.final_eval.seeds=2"]


@pytest.fixture(scope="module")
def autoscaling():
    reason = why_not()
    if reason:
        pytest.skip(f"autoscaling cluster unavailable: {reason}")
    base = Path(tempfile.mkdtemp(prefix="eda-", dir="/tmp"))  # short: Ray's socket paths live under it
    cluster = None
    try:
        cluster = start_autoscaling_cluster(base / "w", base / "logs")
        yield cluster
    finally:
        left = stop_autoscaling_cluster(cluster) if cluster else []
        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"processes of the autoscaling cluster still alive: {left}"


def _sweep_cmd(workdir: Path, *sets: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "edray.cli", "sweep", str(DIGITS_YAML), "--address", "auto", "--json",
            "--workdir", str(workdir), *[a for s in (*SPEC, *sets) for a in ("--set", s)], *extra]


def _sweep(cluster, workdir: Path, *sets: str, extra: tuple[str, ...] = (), timeout: float = _TIMEOUT_S,
           **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(_sweep_cmd(workdir, *sets, extra=extra), env=cluster.driver_env(**env),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("sets, wanted", [
    (["scaling.use_gpu=true"], "{CPU: 1, GPU: 1}"),  # no node type has a GPU
    (["scaling.resources_per_worker={CPU: 4}"], "{CPU: 4}"),  # bigger than any node type
])
def test_a_request_no_node_type_can_satisfy_fails_in_one_line(autoscaling, tmp_path, sets, wanted):
    tic = time.monotonic()
    proc = _sweep(autoscaling, tmp_path / "w", *sets, timeout=300)
    took = time.monotonic() - tic
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert wanted in lines[0] and "no node type" in lines[0], lines[0]
    for name, node_type in NODE_TYPES.items():  # the node types, named with what they offer
        assert name in lines[0]
    assert took < 60, f"refused after {took:.0f} s"
    assert [n for n in live_nodes(autoscaling) if not n["head"]] == []  # nothing was started for it


_WAIT = textwrap.dedent("""
    import json, sys, time
    import ray
    from edray.clusters.capacity import cluster_node_types, wait_for_nodes
    from edray.errors import EdrayError

    ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
    lines = []
    out = {"types": {t.name: t.resources for t in cluster_node_types() or []}}
    try:
        # Shorter than any node takes (the autoscaler acts once a second, then a raylet starts).
        wait_for_nodes({"CPU": 1}, "trials", wait_s=0.6, log=lines.append, report_every_s=1)
    except EdrayError as err:
        out["bounded"] = str(err)
    tic = time.monotonic()
    wait_for_nodes({"CPU": 1}, "trials", wait_s=240, log=lines.append, report_every_s=1)
    out["first_node_s"] = time.monotonic() - tic
    out["lines"] = lines
    print(json.dumps(out))
""")


def test_waiting_for_a_node_says_what_the_autoscaler_does(autoscaling):
    assert [n for n in live_nodes(autoscaling) if not n["head"]] == []  # from zero
    proc = subprocess.run([sys.executable, "-c", _WAIT], env=autoscaling.driver_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"first worker after {out['first_node_s']:.1f} s; lines: {out['lines']}")
    # The node types, read from the running autoscaler's own config.
    assert out["types"] == {name: {k: float(v) for k, v in t["resources"].items()} for name, t in NODE_TYPES.items()}
    # --wait-for-nodes: a bound hit is one line saying what was waited for.
    assert out["bounded"].startswith("--wait-for-nodes: no node with {CPU: 1} for trials joined in 1 s")
    waiting = [line for line in out["lines"] if line.startswith("waiting for a node with {CPU: 1} for trials: ")]
    assert waiting, out["lines"]
    assert any("autoscaler launching 1 cpu_worker" in line or "autoscaler starting 1 cpu_worker" in line
               for line in waiting), out["lines"]
    workers = [n for n in live_nodes(autoscaling) if not n["head"]]
    assert workers and {n["type"] for n in workers} == {"cpu_worker"}


class _NodeLog:
    """Samples the live nodes every second on a thread: when the first worker joined, which came."""

    def __init__(self, cluster) -> None:
        self.cluster, self.seen, self.first_worker_s = cluster, {}, None
        self.joined: dict[str, float] = {}  # node id -> when it was first seen (time.monotonic())
        self.last_seen: dict[str, float] = {}  # node id -> when it was last seen alive
        self._stop = threading.Event()
        self._tic = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                nodes = live_nodes(self.cluster)
            except Exception:  # noqa: BLE001  (a slow answer: the next sample)
                continue
            for n in nodes:
                if not n["head"]:
                    self.seen.setdefault(n["node_id"], n["type"])
                    self.joined.setdefault(n["node_id"], time.monotonic())
                    self.last_seen[n["node_id"]] = time.monotonic()
                    if self.first_worker_s is None:
                        self.first_worker_s = time.monotonic() - self._tic

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _node_of(entry: str) -> str:
    """The cloud instance in a placement entry (``host (ray node ..., cpu_worker <instance>)``)."""
    return entry.rstrip(")").split(" ")[-1]


def _running_trials(stderr: str) -> list[str]:
    """Trials started and not ended, from the driver's progress lines (no terminal: plain lines)."""
    ended = set(re.findall(r"^trial (\S+) (?:completed|pruned|errored)", stderr, re.M))
    return [t for t in dict.fromkeys(re.findall(r"^trial (\S+) started", stderr, re.M)) if t not in ended]


def _kill_a_trials_node(cluster: SimCluster, proc: subprocess.Popen, stderr: Path, prefix: str) -> dict:
    """Once every running trial has a checkpoint on the shared location and none has saved its
    model (its last epoch), SIGKILL a worker node that runs one; what was killed, and when."""
    deadline = time.monotonic() + _TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the sweep ended before a trial's node was killed:\n{stderr.read_text()[-3000:]}"
        running = _running_trials(stderr.read_text())
        if running:
            keys = s3_keys(cluster, f"{prefix}/")
            checkpointed = {t for t in running if any(t in k and "/checkpoint_" in k for k in keys)}
            finished = {t for t in running if any(k.startswith(f"{prefix}/models/") and k.endswith(f"{t}.pt")
                                                  for k in keys)}
            nodes = trial_actor_nodes(cluster) - {n["node_id"] for n in live_nodes(cluster) if n["head"]}
            alive = {n["node_id"] for n in live_nodes(cluster) if not n["head"]}
            # Another node left to take the trial over: the fake provider starts none in the
            # lost one's place (tests/autoscaling_fixture.py).
            if checkpointed == set(running) and not finished and len(nodes) == len(running) and len(alive) > 1:
                victim = sorted(nodes)[0]
                at = time.monotonic()
                pids = kill_node(cluster, victim)
                return {"node": victim, "at": at, "wall": time.time(), "running": running, "alive": alive,
                        "pids": pids}
        time.sleep(0.5)
    raise AssertionError("no moment with every running trial checkpointed")


def _tune_trials(cluster: SimCluster, prefix: str) -> dict[str, dict]:
    """Tune's own record of each trial (its newest experiment state on the shared location):
    trial id -> ``num_failures`` and ``last_result``."""
    states = sorted(k for k in s3_keys(cluster, f"{prefix}/ray_results/")
                    if k.rsplit("/", 1)[-1].startswith("experiment_state-") and k.endswith(".json"))
    assert states, "no Tune experiment state on the shared location"
    out = {}
    for item in json.loads(s3_client(cluster).get_object(Bucket=BUCKET, Key=states[-1])["Body"].read())["trial_data"]:
        meta = json.loads(item[1])
        last = meta["last_result"] if isinstance(meta["last_result"], dict) else json.loads(meta["last_result"])
        out[last["trial_id"]] = {"num_failures": meta["num_failures"], "last_result": last}
    return out


# -- a driver you can watch (ray job submit) and lose (a new driver resumes) ----------------

_EPOCHS = 4  # SPEC's optim.epochs
_SAMPLES = 4  # one at a time: a trial takes 5-10 s here, and the kill must come before the last ends
_STARTED = re.compile(r"^trial (\S+) started: ")
_COMPLETED = re.compile(rf"^trial (\S+) completed at epoch {_EPOCHS}/{_EPOCHS}, val_acc \d\.\d{{4}}$")
_STATUS = re.compile(r"^status: \d+ running, \d+ completed, \d+ pruned, \d+ errored; best val_acc (\d\.\d{4}|-); "
                     rf"epochs \d+/{_SAMPLES * _EPOCHS}; elapsed ")


def _ray_job(cluster, command: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``ray job COMMAND --address DASHBOARD ARGS`` as a user runs it: token auth from the file."""
    return subprocess.run(["ray", "job", command, "--address", cluster.dashboard_url, *args],
                          env=cluster.driver_env(), capture_output=True, text=True, timeout=timeout)


def _job_info(cluster, job_id: str) -> dict:
    """The job as the dashboard's job API reports it (``status``, ``driver_info``)."""
    request = urllib.request.Request(f"{cluster.dashboard_url}/api/jobs/{job_id}",
                                     headers={"Authorization": f"Bearer {cluster.token}"})
    with urllib.request.urlopen(request, timeout=20) as r:
        return json.load(r)


def _key(location: str) -> str:
    return location.split("://", 1)[1].split("/", 1)[1]  # s3://bucket/key -> key


def _objects(cluster, prefix: str) -> dict[str, dict]:
    """Every object under ``prefix``: key -> its listing (``LastModified``)."""
    pages = s3_client(cluster).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"]: o for page in pages for o in page.get("Contents", [])}


def _read(cluster, key: str) -> bytes:
    return s3_client(cluster).get_object(Bucket=BUCKET, Key=key)["Body"].read()


def _trial_statuses(cluster, experiment: str) -> dict[str, str]:
    """Trial id -> status in the newest experiment state Tune uploaded to ``experiment``."""
    states = sorted(k for k in _objects(cluster, _key(experiment) + "/")
                    if k.rsplit("/", 1)[-1].startswith("experiment_state-") and k.endswith(".json"))
    if not states:
        return {}
    trials = [json.loads(item[0]) for item in json.loads(_read(cluster, states[-1]))["trial_data"]]
    return {t["trial_id"]: t["status"] for t in trials}


def _await_scale_down(cluster, timeout_s: float = 180) -> None:
    """Until the worker nodes of the test before are gone (idle timeout 30 s): a node leaving while
    a sweep starts is the other tests' subject, not this one's."""
    deadline = time.monotonic() + timeout_s
    while [n for n in live_nodes(cluster) if not n["head"]]:
        assert time.monotonic() < deadline, "idle worker nodes did not scale down"
        time.sleep(2)


@pytest.mark.slow
def test_a_submitted_sweep_shows_progress_and_a_new_driver_resumes_it_after_its_driver_is_lost(autoscaling, tmp_path):
    from mlflow.tracking import MlflowClient

    cluster = autoscaling
    _await_scale_down(cluster)
    shared = cluster.shared("resume")  # its own: the sweep from zero (after it) shows teachers and stores built
    state_key = f"{_key(shared)}/sweeps/digits/sweep.json"
    old_state = _objects(cluster, state_key).get(state_key, {}).get("ETag")
    sweep = ["sweep", str(DIGITS_YAML), "--address", "auto", "--json", "--num-samples", str(_SAMPLES),
             "--max-concurrent", "1", "--no-final-eval", "--wait-for-nodes", "300",
             *[a for s in SPEC for a in ("--set", s)]]
    job_id = f"edray-resume-{secrets.token_hex(4)}"
    tic = time.monotonic()
    env_vars = {"EDRAY_SHARED": shared, "MLFLOW_TRACKING_URI": cluster.mlflow_uri}
    submit = _ray_job(cluster, "submit", "--no-wait", "--submission-id", job_id, "--runtime-env-json",
                      json.dumps({"env_vars": env_vars}), "--", sys.executable, "-m", "edray.cli", *sweep,
                      "--workdir", str(tmp_path / "lost"))
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    log = tmp_path / "job.log"
    with open(log, "w") as out:  # what `ray job logs --follow` shows a user
        follow = subprocess.Popen(["ray", "job", "logs", "--address", cluster.dashboard_url, "--follow", job_id],
                                  env=cluster.driver_env(), stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    times: dict[str, float] = {}
    killed = False
    try:
        # Wait until Tune's uploaded state records a finished trial (its lines come before that).
        state: dict = {}
        while True:
            if not state and _objects(cluster, state_key).get(state_key, {}).get("ETag") not in (None, old_state):
                state = json.loads(_read(cluster, state_key))  # this sweep's, on the shared location
                times["sweep state on S3"] = time.monotonic() - tic
            tune = _trial_statuses(cluster, state["experiment_path"]) if state else {}
            if "TERMINATED" in tune.values():
                times["a trial recorded finished"] = time.monotonic() - tic
                break
            status = _job_info(cluster, job_id)["status"]
            lines = log.read_text(errors="replace").splitlines()
            assert status in ("PENDING", "RUNNING"), f"the job ended ({status}) before its driver was killed:\n" + \
                "\n".join(lines[-60:])
            assert time.monotonic() - tic < _TIMEOUT_S, "no trial finished in time:\n" + "\n".join(lines[-60:])
            time.sleep(1)
        # The head's driver is lost: SIGKILL to the entrypoint's process group, nothing runs a handler.
        # (`ray job stop` would send SIGTERM first: a stop the driver sees, not a lost head.)
        driver = int(_job_info(cluster, job_id)["driver_info"]["pid"])
        os.killpg(os.getpgid(driver), signal.SIGKILL)
        killed = True
        times["driver killed"] = time.monotonic() - tic
        deadline = time.monotonic() + 120
        while _job_info(cluster, job_id)["status"] in ("PENDING", "RUNNING"):
            assert time.monotonic() < deadline, "the job still runs after its driver was killed"
            time.sleep(1)
        follow.wait(timeout=60)
    finally:
        if follow.poll() is None:
            os.killpg(follow.pid, signal.SIGKILL)
        if not killed:
            _ray_job(cluster, "stop", job_id)
    lines = log.read_text(errors="replace").splitlines()
    print(f"ray job submit: {json.dumps({k: round(v) for k, v in times.items()})} (s)")
    tail = "\n".join(lines[-60:])
    started = {m.group(1) for line in lines if (m := _STARTED.match(line))}
    done = {m.group(1) for line in lines if (m := _COMPLETED.match(line))}
    tune = _trial_statuses(cluster, state["experiment_path"])
    finished = {t for t, status in tune.items() if status == "TERMINATED"}
    assert finished and finished <= done <= started, (finished, tail)  # what ray job logs showed
    assert any(_STATUS.match(line) for line in lines), tail
    assert len(finished) < _SAMPLES, f"every trial had finished before the kill ({tune}):\n{tail}"
    models = f"{_key(shared)}/models/digits/{state['run_name']}/"
    students = {k: o["LastModified"] for k, o in _objects(cluster, models).items()}
    assert {f"{models}{t}.pt" for t in finished} <= set(students), (finished, students)
    shutil.rmtree(tmp_path / "lost", ignore_errors=True)  # the head's work directory went with it

    # A new driver: a fresh work directory and node cache, only EDRAY_SHARED (and the tracking server).
    tic_resume = time.monotonic()
    resumed = subprocess.run([sys.executable, "-m", "edray.cli", *sweep, "--workdir", str(tmp_path / "new"),
                              "--resume"], capture_output=True, text=True, timeout=_TIMEOUT_S,
                             env=cluster.driver_env(EDRAY_SHARED=shared, EDRAY_CACHE=str(tmp_path / "new-cache")))
    times["resumed sweep"] = time.monotonic() - tic_resume
    summary = json_summary(resumed)
    assert summary["trials"] == _SAMPLES and summary["completed"] == _SAMPLES and summary["errored"] == 0, \
        (json.dumps(summary)[:3000], resumed.stderr[-4000:])
    assert summary["parent_run_id"] == state["parent_run_id"]
    ids = set(summary["placement"]["trials"])
    assert len(ids) == _SAMPLES and finished < ids
    assert set(_trial_statuses(cluster, state["experiment_path"]).items()) == {(t, "TERMINATED") for t in ids}
    # Finished trials did not run again: not started by the new driver, their students untouched.
    new_lines = resumed.stderr.splitlines()
    took_in = [line for line in new_lines if line.startswith("resumed: ")]
    assert took_in and took_in[0].startswith(f"resumed: {len(finished)} trial"), resumed.stderr[-4000:]
    print(f"the new driver: {took_in[0]}")
    for line in new_lines:
        assert not any(line.startswith(f"trial {t} ") for t in finished), line
    assert {m.group(1) for line in new_lines if (m := _COMPLETED.match(line))} == ids - finished
    last_status = [line for line in new_lines if _STATUS.match(line)][-1]
    assert last_status.startswith(f"status: 0 running, {_SAMPLES} completed, "), last_status
    after = {k: o["LastModified"] for k, o in _objects(cluster, models).items()}
    assert all(after[k] == when for k, when in students.items() if k.endswith(tuple(f"{t}.pt" for t in finished)))
    # MLflow: the same parent run, FINISHED, one FINISHED child per trial. A trial the lost driver
    # started after Tune's last upload is unknown to the restored experiment (the search ran another
    # in its place): its run is closed as lost, and the new driver says so.
    client = MlflowClient(tracking_uri=cluster.mlflow_uri)
    assert client.get_run(state["parent_run_id"]).info.status == "FINISHED"
    experiment = client.get_experiment_by_name(summary["experiment"]).experiment_id
    children = client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{state['parent_run_id']}'")
    runs: dict[str, list] = {}
    for child in children:
        runs.setdefault(child.data.tags["edray.trial_id"], []).append(child)
    seen = {t: [(c.info.status, c.data.tags.get("edray.status")) for c in cs] for t, cs in runs.items()}
    assert all([c.info.status for c in runs.get(t, [])] == ["FINISHED"] for t in ids), (seen, ids)
    lost = set(runs) - ids
    assert all(seen[t] == [("KILLED", "lost")] for t in lost), seen
    assert all(f"resume: trial {t} was started by the stopped driver" in resumed.stderr for t in lost), seen
    print(f"ray job submit, lost driver, --resume: {json.dumps({k: round(v) for k, v in times.items()})} (s); "
          f"{len(finished)} of {_SAMPLES} trials finished before the kill, {len(lost)} started but unrecorded")


# -- last: a sweep from zero workers, and a worker node lost under it --------------------------


@pytest.mark.slow
def test_a_sweep_from_zero_workers_runs_on_nodes_the_autoscaler_started(autoscaling, tmp_path):
    """From zero workers, on nodes the autoscaler starts; and once trials run, a worker node
    running one is killed (a spot reclaim): its trial resumes from its checkpoint on another
    node, no trial is lost or run twice, the final evaluation runs."""
    # Last in the module: the fake provider keeps listing the node this test kills (Ray's autoscaler
    # then counts it as a node still starting, and would start none for a later test's work).
    _await_scale_down(autoscaling)  # from zero: the nodes of the test before go after their idle timeout
    nodes = _NodeLog(autoscaling)
    prefix = "zero"
    tic = time.monotonic()
    stderr = tmp_path / "driver.err"
    with open(stderr, "w") as err:
        proc = subprocess.Popen(_sweep_cmd(tmp_path / "w", extra=("--num-samples", "4", "--max-concurrent", "2",
                                                                   "--wait-for-nodes", "300")),
                                env=autoscaling.driver_env(EDRAY_SHARED=autoscaling.shared(prefix)),
                                stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
    try:
        killed = _kill_a_trials_node(autoscaling, proc, stderr, prefix)
        out, _ = proc.communicate(timeout=_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        nodes.stop()
    wall = time.monotonic() - tic
    summary = json_summary((proc.returncode, out, stderr.read_text()))
    assert summary["trials"] == 4 and summary["errored"] == 0, summary
    assert summary["completed"] + summary["pruned"] == 4, summary
    assert len(summary["final_test_accs"]) == 2 and summary["final_test_acc_mean"] is not None
    assert "waiting for a node with {CPU: 1} for the sweep's work (teachers, stores, trials): " in stderr.read_text()
    # Every heavy step ran on nodes the autoscaler started (named by node type and instance id).
    started = set(nodes.seen)
    assert started and set(nodes.seen.values()) <= set(NODE_TYPES), nodes.seen
    placement = summary["placement"]
    did: dict[str, list[str]] = {}
    for step, entries in (("check", placement["nodes"]), ("teacher", list(placement["teachers"].values())),
                          ("store shard", [n for shards in placement["stores"].values() for n in shards]),
                          ("trial", list(placement["trials"].values())), ("final eval", placement["final_eval"])):
        assert entries, step
        for entry in entries:
            instance = _node_of(entry)
            assert instance in started and f"{nodes.seen[instance]} {instance}" in entry, (step, entry, started)
            did.setdefault(f"{nodes.seen[instance]} {instance[-5:]}", []).append(step)

    # The node lost mid-sweep: the autoscaler started a node that was not alive before.
    # The node lost mid-sweep: the GCS lists it dead; the sweep went on without it. (The
    # fake provider never reports it gone, so Ray's autoscaler starts no node in its place:
    # tests/autoscaling_fixture.py.)
    assert killed["node"] not in {n["node_id"] for n in live_nodes(autoscaling)}
    dead_s = nodes.last_seen[killed["node"]] - killed["at"]  # until the GCS no longer listed it alive
    joined_after = [n[-5:] for n, t in nodes.joined.items() if n not in killed["alive"] and t > killed["at"]]
    # Its trial restarted from its last checkpoint (Tune's own record: a failure, and fewer
    # iterations since the restore than epochs), on another node; no trial ran twice.
    tune = _tune_trials(autoscaling, prefix)
    assert sorted(tune) == sorted(placement["trials"]), (tune, placement["trials"])
    failed = {t: r for t, r in tune.items() if r["num_failures"]}
    assert failed and set(failed) <= set(killed["running"]), (failed, killed)
    for trial, record in failed.items():
        assert f"trial {trial} lost its worker" in stderr.read_text()  # what a user watching the driver sees
        last = record["last_result"]
        assert last["epoch"] == 4 and 0 < last["iterations_since_restore"] < 4, (trial, last)
        assert killed["node"] not in placement["trials"][trial], (trial, placement["trials"][trial])
    client = MlflowClient(tracking_uri=autoscaling.mlflow_uri)
    children = client.search_runs([client.get_experiment_by_name(summary["experiment"]).experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{summary['parent_run_id']}'")
    per_trial = {}
    for run in children:
        per_trial.setdefault(run.data.tags["edray.trial_id"], []).append(run)
    assert sorted(per_trial) == sorted(tune) and all(len(runs) == 1 for runs in per_trial.values()), per_trial
    for trial, (run,) in per_trial.items():
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert run.info.status == "FINISHED" and sorted(steps) == [1, 2, 3, 4], (trial, run.info.status, steps)
        assert tune[trial]["last_result"]["epoch"] == 4
    print(f"from zero workers: first worker after {nodes.first_worker_s:.0f} s, sweep {wall:.0f} s, "
          f"steps {placement.get('steps')}, timings {placement.get('timings')}; nodes started: {len(started)}; "
          f"what each did: { {n: {s: steps.count(s) for s in dict.fromkeys(steps)} for n, steps in did.items()} }; "
          f"node {killed['node'][-5:]} killed {killed['at'] - tic:.0f} s in (running {killed['running']}), "
          f"listed dead {dead_s:.0f} s later; nodes joined after it: {joined_after}; "
          "resumed: "
          f"{ {t: r['last_result']['iterations_since_restore'] for t, r in failed.items()} } epochs after the restore")

"""Faults a days-long sweep on spot machines meets, injected for real (see RELIABILITY.md).

A Ray Train worker is SIGKILLed from outside at a random moment mid-trial, MLflow is
unreachable or flaky, the disk fills up or turns read-only (a real tmpfs), a logit store
flips a bit. Each test runs the real thing (Ray, MLflow on SQLite, Arrow stores, the CLI
entry point) and checks what survives on disk and in MLflow. A SIGKILLed sweep driver is tests/test_sweep.py's.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE
from mlflow.tracking import MlflowClient

from edray.cli import main
from edray.distributed.space import resolve_config
from edray.distributed.sweep import SweepOptions, run_sweep
from edray.layout import Layout
from edray.pipeline import train
from edray.tracking.callback import EPOCH_METRICS

from .conftest import DIGITS_YAML, FAST, fast_spec, one_error_line, remount
from .helpers import default_sigint, metric_steps

EPOCHS = 6
# One fixed config (a single choice), no early stopping, no final evaluation: the trial
# is what is under test, and the sweep around it is as short as a real one can be.
SWEEP = [
    f"optim.epochs={EPOCHS}", "ed.switch_epochs=[2, 4]", "search.num_samples=1", "search.max_concurrent=1",
    "search.params=[{path: ed.replay, type: categorical, choices: [mixed]}]", "search.early_stopping.kind=none",
    "search.final_eval.seeds=0", "scaling.max_failures=2",
]
SECRETS = {
    "EDRAY_TEST_API_KEY": "sk-live-5f0c1e2d3c4b5a69",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-K7MDENG-bPxRfiCY",
    "DB_PASSWORD": "correct-horse-battery-staple",
}
URL_PASSWORD = "hunter2-in-a-url"


def _cli_args(*overrides: str) -> list[str]:
    return [arg for o in (*FAST, *overrides) for arg in ("--set", o)]


def _workdir(root: Path, teacher_workdir: Path, *, logits: bool = True) -> Path:
    """A fresh work directory holding the session's trained teachers (and stores, if built)."""
    work = root / "work"
    shutil.copytree(teacher_workdir / "teachers", work / "teachers")
    if logits and (teacher_workdir / "logits").is_dir():
        shutil.copytree(teacher_workdir / "logits", work / "logits")
    return work


def _shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _children(client: MlflowClient, parent) -> list:
    return client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")


def _non_loopback_ipv4() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.123", 9))  # no packet is sent: this only picks the outgoing interface
        except OSError:
            return None
        ip = s.getsockname()[0]
    return None if ip.startswith("127.") else ip


class _FlakyMetrics:
    """``MlflowClient.log_batch`` that fails like an overloaded server (HTTP 503) on chosen
    metric calls: three failures in a row outlast the tracker's retries, so that batch must
    be kept and sent later; a single failure is retried at once."""

    def __init__(self, original, fail_calls: set[int]):
        self.original, self.fail_calls, self.calls, self.failed = original, fail_calls, 0, 0

    def __call__(self, client, run_id, metrics=(), params=(), tags=(), **kw):
        if metrics:
            self.calls += 1
            if self.calls in self.fail_calls:
                self.failed += 1
                raise MlflowException("503 Service Unavailable", error_code=TEMPORARILY_UNAVAILABLE)
        return self.original(client, run_id, metrics=metrics, params=params, tags=tags, **kw)


# ---------------------------------------------------------------------- 1. a worker dies mid-trial


class _WorkerKiller(threading.Thread):
    """SIGKILLs the trial's Ray Train worker from outside, once, at a random moment after its
    first checkpoint was persisted, as a spot machine's end would. The worker is found with
    Ray's state API; the checkpoint on disk, in the sweep's work directory."""

    def __init__(self, workdir: Path, timeout_s: float = 600):
        super().__init__(daemon=True)
        self.workdir, self.timeout_s = workdir, timeout_s
        self.pid: int | None = None
        self.killed_at: float | None = None
        self.error: str | None = None

    def _checkpoints(self) -> list[Path]:
        return [p for p in self.workdir.rglob("checkpoint_*") if p.is_dir()]

    def run(self) -> None:
        import ray
        from ray.util.state import list_actors

        deadline = time.monotonic() + self.timeout_s
        try:
            while not self._checkpoints():
                if time.monotonic() > deadline:
                    self.error = "no checkpoint was persisted in time"
                    return
                time.sleep(0.1)
            time.sleep(random.uniform(0.0, 1.5))  # somewhere in the next epochs
            # This sweep's Ray (other Ray instances may run on the machine).
            address = ray.get_runtime_context().gcs_address
            while True:
                actors = list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000)
                alive = [a for a in actors if a.class_name.endswith("RayTrainWorker")]
                if alive or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            if len(alive) != 1:
                self.error = f"expected one live Ray Train worker, found {[a.class_name for a in actors]}"
                return
            self.pid = alive[0].pid
            os.kill(self.pid, signal.SIGKILL)
            self.killed_at = time.time()
        except Exception as err:  # reported by the test, not lost in the thread
            self.error = repr(err)


@pytest.mark.slow
def test_killed_train_worker_resumes_same_grade_and_epoch_and_mlflow_has_each_epoch_once(
    tmp_path, teacher_workdir, monkeypatch
):
    """One real sweep with every fault of a bad day at once: the Ray Train worker gets SIGKILL
    from outside mid-trial, MLflow answers 503 four times, secrets sit in the environment and
    in a URL of the spec. Train restarts the worker, which resumes from the last checkpoint;
    the trial ends with the metrics of a run that never stopped, and
    MLflow holds every epoch exactly once."""
    import ray
    from ray.util.state import list_actors

    _shutdown_ray()  # the environment below must reach the Ray processes this sweep starts
    work = _workdir(tmp_path, teacher_workdir)
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # notice the death sooner (default 2 s)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    flaky = _FlakyMetrics(MlflowClient.log_batch, fail_calls={2, 3, 4, 7})
    monkeypatch.setattr(MlflowClient, "log_batch", lambda self, *a, **kw: flaky(self, *a, **kw))
    spec = fast_spec(*SWEEP, "scaling.trainer=torch_trainer",
                     f"dataset.root=https://bob:{URL_PASSWORD}@data.example/digits")  # digits reads no root
    killer = _WorkerKiller(work)
    killer.start()
    try:
        result = run_sweep(spec, Layout.at(work), SweepOptions(progress=False, final_eval=False), log=lambda _m: None)
        workers = [a for a in list_actors(address=ray.get_runtime_context().gcs_address, limit=1000)
                   if a.class_name.endswith("RayTrainWorker")]
        dashboard = ray._private.worker.get_dashboard_url()
        host, port = dashboard.rsplit(":", 1)
        socket.create_connection(("127.0.0.1", int(port)), timeout=5).close()  # it is up, on loopback
        outside = _non_loopback_ipv4()
        if outside is not None:  # and not reachable from the network (skipped visibly below if no such address)
            with pytest.raises(OSError):
                socket.create_connection((outside, int(port)), timeout=5).close()
    finally:
        killer.join(timeout=5)
        _shutdown_ray()

    # The worker died once, from outside; Train started another worker process for the trial.
    assert killer.error is None and killer.pid is not None, killer.error
    assert {w.pid for w in workers if w.state == "DEAD"} >= {killer.pid}
    assert len({w.pid for w in workers}) == 2
    assert (result.trials, result.completed, result.errored) == (1, 1, 0)
    # Same numbers as a run that never stopped (same spec, same stores, this process).
    reference = train(resolve_config(spec, result.best_config), Layout.at(work), evaluate_test=False)
    assert result.best_val_acc == pytest.approx(reference.val_acc, abs=1e-9)

    # MLflow: one child, every epoch of every metric exactly once, no batch lost to the 503s.
    assert flaky.failed == 4
    client = MlflowClient(result.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    (child,) = _children(client, parent)
    assert child.data.tags["edray.status"] == "completed" and child.info.status == "FINISHED"
    for key in EPOCH_METRICS:
        assert metric_steps(client, child.info.run_id, key) == list(range(1, EPOCHS + 1)), key
    logged = sorted((m.step, m.value) for m in client.get_metric_history(child.info.run_id, "val_acc"))
    assert [v for _, v in logged] == pytest.approx([m.val_acc for m in reference.history], abs=1e-9)
    grades = sorted((m.step, m.value) for m in client.get_metric_history(child.info.run_id, "grade"))
    assert [int(v) for _, v in grades] == [1, 1, 2, 2, 3, 3]

    # Secrets: not in any param, tag, metric or artifact, nor anywhere in the store's files.
    assert "***" in child.data.params["dataset.root"]
    blobs = [(work / "mlflow.db").read_bytes()]
    blobs += [p.read_bytes() for p in (work / "mlflow-artifacts").rglob("*") if p.is_file()]
    for run in (parent, child):
        blobs.append(json.dumps([run.data.params, run.data.tags, run.data.metrics]).encode())
    for secret in [*SECRETS.values(), URL_PASSWORD]:
        assert not any(secret.encode() in blob for blob in blobs), secret

    # The Ray dashboard listened on loopback only.
    assert host == "127.0.0.1", dashboard
    if outside is None:
        pytest.skip("this machine has no non-loopback IPv4 address: the dashboard's refusal from the network "
                    "was not checked (everything else was)")


def test_no_fault_hooks_ship_in_the_package():
    """Faults are injected from outside; the installed package holds no hook for them."""
    import importlib.util

    import edray

    assert importlib.util.find_spec("edray.distributed.faults") is None
    sources = Path(edray.__file__).parent.rglob("*.py")
    assert not [p for p in sources if "EDRAY_FAULT" in p.read_text()]


# ---------------------------------------------------------------------- 2. the driver dies
# A SIGKILLed ``edray sweep`` resumed with ``--resume``: tests/test_sweep.py::
# test_a_killed_sweep_resumes_without_running_finished_trials_again (not repeated here).


# ---------------------------------------------------------------------- 3. MLflow unreachable


def test_unreachable_tracking_server_fails_fast_before_anything_trains(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    work = tmp_path / "work"
    tic = time.monotonic()
    code = main(["sweep", str(DIGITS_YAML), "--workdir", str(work), "--set", f"tracking.uri=http://127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - tic < 20
    assert err == (f"error: tracking.uri: cannot reach MLflow at http://127.0.0.1:{port} (connection refused); "
                   "fix: start the server, or fix tracking.uri / MLFLOW_TRACKING_URI\n")
    assert not work.exists()  # no teacher trained, no store built, no Ray state


# ---------------------------------------------------------------------- 4. logit stores that lie


def test_bit_flipped_store_is_rebuilt_by_precompute_and_refused_when_read_by_uri(
    tmp_path, teacher_workdir, capsys
):
    """A flipped bit keeps the file's size and schema: only the checksum sees it. A store
    edray builds is hashed before use and rebuilt; one it only reads (``store_uri``) is
    refused before training, naming the shard."""
    work = _workdir(tmp_path, teacher_workdir, logits=False)
    args = [str(DIGITS_YAML), "--workdir", str(work), *_cli_args()]
    assert main(["precompute", *args]) == 0
    capsys.readouterr()
    store = next(m.parent for m in sorted((work / "logits").glob("*/manifest.json"))
                 if json.loads(m.read_text())["key"]["dataset_split"] == "train")
    shard = store / "shard-00000.arrow"  # a training store: the ones a run reads
    good = shard.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0x10
    shard.write_bytes(bytes(data))

    code = main(["train", str(DIGITS_YAML), "--workdir", str(tmp_path / "other"), *_cli_args(
        f"teachers.store_uri={work / 'logits'}", "teachers.models[0].checkpoint=" + str(_teacher_file(work, 0)),
        "teachers.models[1].checkpoint=" + str(_teacher_file(work, 1)),
        "teachers.models[2].checkpoint=" + str(_teacher_file(work, 2)))])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "checksum mismatch" in err and str(shard) in err
    assert not (tmp_path / "other").exists()
    # A sweep checks the stores on a thread while its local Ray starts: the refusal is the
    # same one error line (exit 2), raised before the parent run opens or any trial starts.
    swept = tmp_path / "swept"
    sweep = subprocess.run(
        [sys.executable, "-m", "edray.cli", "sweep", str(DIGITS_YAML), "--workdir", str(swept), *_cli_args(
            f"teachers.store_uri={work / 'logits'}", "search.params[0].min_grade_epochs=1",
            *(f"teachers.models[{i}].checkpoint={_teacher_file(work, i)}" for i in range(3)))],
        capture_output=True, text=True, timeout=300)
    last = sweep.stderr.strip().splitlines()[-1]  # after the plan line
    assert sweep.returncode == 2 and "Traceback" not in sweep.stderr, sweep.stderr[-2000:]
    assert last.startswith("error: ") and "checksum mismatch" in last and str(shard) in last
    assert not (swept / "sweeps").exists() and not (swept / "ray_results").exists()

    assert main(["precompute", *args, "--verify"]) == 0  # the corrupt store is rebuilt, then verified
    assert shard.read_bytes() == good
    assert "verified" in capsys.readouterr().out


def _teacher_file(work: Path, index: int) -> Path:
    (path,) = sorted((work / "teachers").glob(f"*-t{index}-*.pt"))
    return path


# ---------------------------------------------------------------------- 5. full disk, read-only workdir


def _leftovers(root: Path) -> list[str]:
    """Temp files, manifests, checkpoints: anything a later run could take as finished."""
    return sorted(p.name for p in root.rglob("*") if p.is_file() and (p.suffix in (".tmp", ".pt", ".arrow")
                                                                      or p.name == "manifest.json"))


def test_read_only_workdir_precompute_and_sweep_fail_cleanly(tmpfs, teacher_workdir, capsys):
    work = _workdir(tmpfs("ro", 8 * 1024), teacher_workdir, logits=False)
    remount(work.parent, "ro")
    code = main(["precompute", str(DIGITS_YAML), "--workdir", str(work), *_cli_args()])
    assert code == 2
    one_error_line(capsys, f"error: {work / 'logits'}: cannot write (Read-only file system)",
                   "choose another --workdir")
    code = main(["sweep", str(DIGITS_YAML), "--workdir", str(work), *_cli_args(*SWEEP)])
    assert code == 2  # before Ray, a trial or a checkpoint
    one_error_line(capsys, "error: tracking.uri: ", "Read-only file system", "choose a writable --workdir")
    assert sorted(p.name for p in work.iterdir()) == ["teachers"]


def test_full_disk_during_precompute_leaves_no_store_and_a_rerun_finishes(tmpfs, teacher_workdir, capsys):
    root = tmpfs("small", 4 * 1024)
    work = _workdir(root, teacher_workdir, logits=False)
    used_kb = sum(p.stat().st_size for p in work.rglob("*") if p.is_file()) // 1024
    remount(root, f"size={used_kb + 96}k")  # the teachers fit; a 240 kB training store does not
    args = ["precompute", str(DIGITS_YAML), "--workdir", str(work), *_cli_args()]
    assert main(args) == 2
    one_error_line(capsys, "cannot write (No space left on device)", "free space or choose another --workdir")
    assert _leftovers(work / "logits") == []  # no temp file, no shard, no manifest: nothing looks finished
    remount(root, "size=16m")  # space freed
    assert main([*args, "--verify"]) == 0
    assert capsys.readouterr().out.count("verified") == 6


def test_full_disk_while_saving_teachers_and_models_leaves_no_half_file(tmpfs, teacher_workdir, digits_data, capsys):
    work = tmpfs("teach", 256)  # one teacher checkpoint is ~1 MB
    assert main(["teach", str(DIGITS_YAML), "--workdir", str(work), *_cli_args()]) == 2
    one_error_line(capsys, "cannot write (No space left on device)")
    assert _leftovers(work) == []

    work = _workdir(tmpfs("big", 16 * 1024), teacher_workdir)
    if not (work / "logits").is_dir():
        from edray.preparation import precompute_stores

        precompute_stores(fast_spec(), digits_data, Layout.at(work))
    model = tmpfs("models", 16) / "student.pt"  # the student is ~100 kB
    args = ["train", str(DIGITS_YAML), "--workdir", str(work), "--save-model", str(model),
            *_cli_args("optim.epochs=4", "ed.switch_epochs=[1, 2]")]
    assert main(args) == 2
    one_error_line(capsys, f"error: --save-model: cannot write {model} (No space left on device)")
    assert _leftovers(model.parent) == []
    remount(model.parent, "size=4m")
    assert main(args) == 0
    assert isinstance(torch.load(model, weights_only=False), torch.nn.Module)


# ---------------------------------------------------------------------- 6. what listens where


def test_mlflow_ui_binds_to_loopback_unless_asked(tmp_path):
    """``edray ui`` started for real: it answers on 127.0.0.1 and refuses the machine's
    network address."""
    outside = _non_loopback_ipv4()
    if outside is None:
        pytest.skip("this machine has no non-loopback IPv4 address to try the UI from")
    work = tmp_path / "work"
    work.mkdir()
    MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}").search_experiments()  # an empty store
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([sys.executable, "-m", "edray.cli", "ui", "--workdir", str(work), "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=default_sigint)
    try:
        seen = []
        for line in proc.stdout:  # until the server answers
            seen.append(line)
            if line.startswith("MLflow UI: "):
                break
        assert seen and seen[-1].startswith(f"MLflow UI: http://127.0.0.1:{port}"), "".join(seen)
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
        with pytest.raises(OSError):
            socket.create_connection((outside, port), timeout=10).close()
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0

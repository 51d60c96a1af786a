"""``edray ui``: a real MLflow server on a real sweep's store, stopped with Ctrl-C, nothing left behind."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from edray.cli import main
from edray.errors import EdrayError
from edray.ui import serve_ui, ui_command
from tests.helpers import EXPERIMENT, default_sigint, descendants

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never via a proxy


@pytest.fixture(scope="module")
def sweep(small_sweep) -> Path:
    return small_sweep


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"


def _get(url: str) -> tuple[int, bytes]:
    with _OPENER.open(url, timeout=10) as response:
        return response.status, response.read()


def _lines(stream, sink: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        sink.put(line)
    stream.close()


def test_ui_serves_the_sweep_and_ctrl_c_leaves_no_process(sweep):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edray.cli", "ui", "--workdir", str(sweep), "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=default_sigint,
    )
    out: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, out), daemon=True).start()
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                line = out.get(timeout=0.5)
            except queue.Empty:
                continue
            if line.startswith("MLflow UI: "):
                url = line.split()[2]
        assert url == f"http://127.0.0.1:{port}", (url, proc.poll(), proc.stderr.read() if proc.poll() else "")
        runs_line = out.get(timeout=30)
        assert runs_line.startswith(f"  runs of {EXPERIMENT}: {url}/#/experiments/"), runs_line
        runs_url = runs_line.split()[-1]
        assert runs_url.endswith("/runs")
        assert _get(f"{url}/health")[0] == 200
        status, body = _get(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name={EXPERIMENT}")
        assert status == 200
        experiment = json.loads(body)["experiment"]
        assert experiment["name"] == EXPERIMENT
        assert runs_url == f"{url}/#/experiments/{experiment['experiment_id']}/runs"
        # Tagged as model training: MLflow 3's UI opens it on the runs, not on the GenAI overview.
        assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in experiment["tags"]
        request = urllib.request.Request(
            f"{url}/api/2.0/mlflow/runs/search", method="POST", headers={"Content-Type": "application/json"},
            data=json.dumps({"experiment_ids": [experiment["experiment_id"]],
                             "filter": "tags.`edray.kind` = 'sweep'"}).encode(),
        )
        with _OPENER.open(request, timeout=10) as response:
            (run,) = json.loads(response.read())["runs"]
        assert run["info"]["status"] == "FINISHED"
        # The figures logged on the parent run are served by the UI.
        status, png = _get(f"{url}/get-artifact?path=figures/learning_curves.png&run_uuid={run['info']['run_id']}")
        assert status == 200 and png.startswith(b"\x89PNG")
        server = descendants(proc.pid)
        assert len(server) >= 2, "mlflow server and its uvicorn worker"
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal sends to edray
        try:
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0, proc.stderr.read()
    assert not [pid for pid in server if _alive(pid)], "processes of the server outlived edray ui"
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, "the port still answers"


def test_missing_store_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(EdrayError, match=rf"{tmp_path}/mlflow\.db: no MLflow store here.*edray sweep"):
        serve_ui(tmp_path, port=_free_port())
    env_uri = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        assert main(["ui", "--workdir", str(tmp_path)]) == 2
    finally:
        if env_uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env_uri
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no MLflow store" in err and "edray sweep" in err


def test_port_in_use_is_refused_before_anything_starts(tmp_path, capsys):
    (tmp_path / "mlflow.db").touch()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(EdrayError, match=rf"--port: port {port} on 127.0.0.1 is in use.*--port \d+"):
            serve_ui(tmp_path, port=port)
    assert "warning" not in capsys.readouterr().err  # loopback: no warning


def test_binding_beyond_loopback_warns_that_there_is_no_authentication(tmp_path, capsys):
    (tmp_path / "mlflow.db").touch()
    with socket.socket() as busy:  # busy, so that nothing is actually served on every interface
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(EdrayError, match="in use"):
            serve_ui(tmp_path, port=port, host="0.0.0.0")
    err = capsys.readouterr().err
    assert err.startswith("warning: the MLflow UI has no authentication") and err.count("\n") == 1


def test_a_server_uri_or_a_bad_port_is_refused(tmp_path):
    with pytest.raises(EdrayError, match=r"http://me:\*\*\*@127\.0\.0\.1:1 is already an MLflow server") as err:
        serve_ui(tmp_path, tracking_uri="http://me:hunter2@127.0.0.1:1")
    assert "hunter2" not in str(err.value)
    with pytest.raises(EdrayError, match="file store"):
        serve_ui(tmp_path, tracking_uri=str(tmp_path / "mlruns"))
    (tmp_path / "mlflow.db").touch()
    with pytest.raises(EdrayError, match=r"--port: must be in 1\.\.65535"):
        serve_ui(tmp_path, port=70000)


def test_a_server_that_dies_at_start_is_a_runtime_error_and_leaves_nothing(tmp_path):
    """A store MLflow cannot open (no driver, or nothing listening): exit 1 with the server's last words."""
    before = descendants(os.getpid())
    with pytest.raises(EdrayError, match="exited with code") as err:
        serve_ui(tmp_path, port=_free_port(), tracking_uri="postgresql://edray:secret@127.0.0.1:1/none")
    assert err.value.exit_code == 1 and "secret" not in str(err.value)
    assert not [pid for pid in descendants(os.getpid()) - before if _alive(pid)]


def test_the_command_keeps_a_password_off_the_command_line(tmp_path):
    cmd, env = ui_command(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "a", host="127.0.0.1", port=5000)
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path}/mlflow.db"
    assert cmd[cmd.index("--artifacts-destination") + 1] == str(tmp_path / "a")
    assert cmd[cmd.index("--workers") + 1] == "1" and env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    cmd, env = ui_command("postgresql://me:pw@db/mlflow", tmp_path / "a", host="127.0.0.1", port=5000)
    assert "--backend-store-uri" not in cmd and not any("me:pw@" in part for part in cmd)
    assert env["MLFLOW_BACKEND_STORE_URI"] == "postgresql://me:pw@db/mlflow"

"""Helpers shared by several test modules: running the real CLI and reading its output,
MLflow metric steps, processes below a pid, store keys, and image folders on disk."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

TIMEOUT_S = 420
EXPERIMENT = "digits"  # the MLflow experiment of the digits spec (its name)


def edray_env(**extra: str) -> dict[str, str]:
    """The CLI's environment: nothing inherited that redirects its outputs. It keeps the
    suite's OMP_NUM_THREADS (conftest: 1 unless set), which Ray workers follow too."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "EDRAY_WORKDIR", "EDRAY_SHARED", "RAY_ADDRESS")}
    return {**env, **extra}


def edray_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "edray.cli", *args]


def edray(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
          timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """``edray ARGS`` in a fresh interpreter, its output captured."""
    return subprocess.run(edray_args(*args), env=env or edray_env(), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def with_tty_stderr(args: list[str], *, env: dict[str, str] | None = None,
                    timeout: float = TIMEOUT_S) -> tuple[int, str, str]:
    """Run ``args`` with stderr on a terminal (a pty: where edray shows progress and Tune its
    live table), stdout captured; returns (code, stdout, stderr)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(args, env=env or edray_env(), stdout=subprocess.PIPE, stderr=follower, text=True)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([leader], [], [], 1.0)[0]:
                continue
            try:
                data = os.read(leader, 65536)
            except OSError:  # the terminal closed: the process has exited
                break
            if not data:
                break
            chunks.append(data)
        else:
            proc.kill()
            raise subprocess.TimeoutExpired(args, timeout)
        out = proc.stdout.read() if proc.stdout else ""
        proc.wait(timeout=60)
    finally:
        os.close(leader)
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


def sets(overrides: list[str]) -> list[str]:
    """``--set`` flags for each override."""
    return [arg for item in overrides for arg in ("--set", item)]


def json_summary(proc: subprocess.CompletedProcess | tuple[int, str, str]) -> dict:
    """The ``--json`` line of a command that must have succeeded (a finished process, or its
    ``(returncode, stdout, stderr)``)."""
    code, out, err = (proc.returncode, proc.stdout, proc.stderr) if hasattr(proc, "returncode") else proc
    assert code == 0, f"exit {code}\n{err[-6000:]}"
    return json.loads(out.strip().splitlines()[-1])


def one_line_error(proc: subprocess.CompletedProcess, code: int, *parts: str) -> str:
    """A failed command's stderr: one ``error: ...`` line, no traceback, with every part."""
    err = proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}\n{err[-4000:]}"
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in err, err
    return err


def metric_steps(client, run_id: str, key: str) -> list[int]:
    """The steps at which ``key`` was logged in an MLflow run, in order (repeats kept)."""
    return [m.step for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))]


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (read from /proc): the ones a test started through it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rfind(")") + 2:].split()[1]), []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def store_key(**changes: Any):
    """A logit-store key with plausible fields; ``changes`` replace any of them."""
    from edray.logits import StoreKey

    fields = dict(
        teacher_arch="cnn_medium", teacher_sha256="ab" * 32, dataset_name="digits", dataset_split="train",
        dataset_samples=64, dataset_fingerprint="f00d", crop_padding=1, hflip=False, image_size=None,
        normalisation="mean=0.5,std=0.5", views=2, seed=0,
    )
    return StoreKey(**{**fields, **changes})


def write_image_folder(root: Path, *, classes: int = 3, per_class: int = 5, seed: int = 0) -> Path:
    """An ImageFolder of noisy JPEGs of varied sizes (so resize and crop really run)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        for i in range(per_class):
            w, h = int(rng.integers(18, 60)), int(rng.integers(18, 60))
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            path = root / "train" / f"class{c}" / f"{i:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path, quality=90)
    return root


class MlflowServer:
    """A real ``mlflow server`` (SQLite backend, artifacts in a folder, one worker, on 127.0.0.1)
    as its own process group; :meth:`stop` ends the group, :meth:`start` runs it again on the
    same port and database (a server that went away and came back)."""

    def __init__(self, db: Path, artifacts: Path, log: Path, port: int | None = None):
        from tests.cluster_fixture import free_port

        self.db, self.artifacts, self.log = db, artifacts, log
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        from tests.cluster_fixture import _http_ok, _spawn, _wait

        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        self.proc = _spawn([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.db}",
                            "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1",
                            "--port", str(self.port), "--workers", "1"],
                           {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, self.log)
        _wait(lambda: _http_ok(f"{self.url}/health"), "mlflow server", 240, self.proc, self.log)
        return self

    def stop(self) -> None:
        from tests.cluster_fixture import stop_group

        if self.proc is not None:
            stop_group(self.proc)
            self.proc = None


def default_sigint() -> None:
    """``preexec_fn`` of a child a test sends Ctrl-C (SIGINT): SIGINT as a terminal's
    foreground job has it. A shell's background job (CI, a script with ``&``) ignores
    SIGINT, and its children would inherit that and never stop."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def kill_pids(pids) -> None:
    """SIGKILL each of ``pids``; one that has exited meanwhile is skipped."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


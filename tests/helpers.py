"""Helpers shared by several test modules: running the real CLI, reading its output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TIMEOUT_S = 420


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


def sets(overrides: list[str]) -> list[str]:
    """``--set`` flags for each override."""
    return [arg for item in overrides for arg in ("--set", item)]


def summary(proc: subprocess.CompletedProcess) -> dict:
    """The ``--json`` line of a command that must have succeeded."""
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def one_line_error(proc: subprocess.CompletedProcess, code: int, *parts: str) -> str:
    """A failed command's stderr: one ``error: ...`` line, no traceback, with every part."""
    err = proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}\n{err[-4000:]}"
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in err, err
    return err

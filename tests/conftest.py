"""Shared fixtures: a small real digits spec and its trained teachers (built once per session)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from edray.spec import Spec, load_spec
from tests.helpers import with_tty_stderr

ROOT = Path(__file__).resolve().parents[1]
DIGITS_YAML = ROOT / "search_spaces" / "digits.yaml"

# Tiny models on 2 shared cores: one thread each is several times faster than two
# threads contending (and subprocesses inherit it). A run that asks for more threads gets
# them here too: float results depend on the thread count, and tests compare this
# process's runs exactly with those of Ray workers, which follow OMP_NUM_THREADS.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Few epochs, small teachers: the suite checks behaviour, benchmarks check accuracy.
FAST = [
    "optim.epochs=8",
    "optim.batch_size=32",
    "ed.switch_epochs=[2, 5]",
    "teachers.models[0].train.epochs=4",
    "teachers.models[1].train.epochs=4",
    "teachers.models[2].train.epochs=4",
    "teachers.models[0].arch=cnn_medium",
    "teachers.models[1].arch=cnn_medium",
    "teachers.models[2].arch=cnn_medium",
]


def fast_spec(*overrides: str) -> Spec:
    return load_spec(DIGITS_YAML, [*FAST, *overrides])


@pytest.fixture(scope="session")
def digits_data():
    from edray.data import load_data

    return load_data(fast_spec().dataset)


@pytest.fixture(scope="session")
def teacher_workdir(tmp_path_factory, digits_data) -> Path:
    """A work directory holding the trained shared teachers of the fast spec."""
    from edray.layout import Layout
    from edray.pipeline import teach

    workdir = tmp_path_factory.mktemp("teachers")
    teach(fast_spec(), Layout.at(workdir), data=digits_data)
    return workdir


@pytest.fixture(scope="session")
def small_sweep(tmp_path_factory, teacher_workdir) -> Path:
    """The work directory of one real ``edray sweep`` (3 trials, ``tracking.log_models: all``),
    run once per session (test_report, test_ui, test_atomic, test_student_model read it)."""
    import shutil
    import sys

    workdir = tmp_path_factory.mktemp("sweep")
    shutil.copytree(teacher_workdir / "teachers", workdir / "teachers")  # trained once for the session
    overrides = [*FAST, "search.params[0].min_grade_epochs=1", "search.early_stopping.kind=asha",
                 "tracking.log_models=all"]
    cmd = [sys.executable, "-m", "edray.cli", "sweep", str(DIGITS_YAML), "--workdir", str(workdir),
           "--num-samples", "3", "--no-final-eval", *(a for o in overrides for a in ("--set", o))]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    # In a terminal, as a user runs it: what it showed is kept beside the work directory
    # (Tune prints its table to stdout, edray its lines to stderr).
    code, out, err = with_tty_stderr(cmd, env={**env, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert code == 0, err[-3000:]
    sweep_terminal(workdir).write_text(f"{out}\n{err}")
    return workdir


def sweep_terminal(workdir: Path) -> Path:
    """Where ``small_sweep`` keeps what the sweep showed in its terminal (stdout, then stderr)."""
    return workdir.with_name(f"{workdir.name}-terminal.txt")


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(name, size_kb)``: a real, small filesystem to fill up or turn read-only
    (root ignores permission bits, not a read-only mount). Skipped where mounting is not
    allowed; test_logit_store covers the store itself with a file-size limit instead."""
    mounts: list[Path] = []

    def mount(name: str, size_kb: int) -> Path:
        path = tmp_path / name
        path.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                             capture_output=True, text=True)
        if res.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()})")
        mounts.append(path)
        return path

    yield mount
    for path in reversed(mounts):
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, options: str) -> None:
    """Change a :func:`tmpfs` mount's options (``ro``, ``size=4m``)."""
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def one_error_line(capsys, *parts: str) -> str:
    """The CLI's stderr: one ``error: ...`` line, no traceback, containing every part."""
    _out, err = capsys.readouterr()
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in err, err
    return err


@pytest.fixture
def postgres():
    """A real PostgreSQL server of the test's own (tests/postgres_fixture.py), stopped after it;
    the test skips, saying why, where the server is not installed."""
    from tests.postgres_fixture import start_postgres, why_no_postgres

    reason = why_no_postgres()
    if reason:
        pytest.skip(reason)
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


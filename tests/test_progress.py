"""Progress lines for a driver without a terminal (issue 18 item 3: ``ray job logs --follow``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edray.distributed.progress import ProgressLines, format_duration

from .conftest import DIGITS_YAML, FAST


@dataclass
class _Trial:
    """The part of a Tune trial a callback reads."""

    trial_id: str
    config: dict = field(default_factory=dict)
    last_result: dict = field(default_factory=dict)
    status: str = "PENDING"
    num_failures: int = 0
    max_failures: int = 2
    error_file: str | None = None


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lines_for_trial_events_and_a_status_at_most_every_minute(tmp_path):
    lines: list[str] = []
    clock = _Clock()
    progress = ProgressLines(lines.append, planned_epochs=16, total_epochs=4, clock=clock)
    a = _Trial("a_00000", {"ed.alpha": 0.123456, "ed.switch_epochs": [1, 2]})
    b = _Trial("a_00001", {"ed.alpha": 0.5})
    progress.on_trial_start(0, [], a)
    progress.on_trial_start(0, [], b)
    assert lines == ["trial a_00000 started: ed.alpha=0.1235, ed.switch_epochs=[1, 2]",
                     "trial a_00001 started: ed.alpha=0.5"]
    for epoch in (1, 2, 3, 4):
        clock.now += 20
        progress.on_trial_result(0, [], a, {"epoch": epoch, "val_acc": 0.5 + epoch / 10 + 1e-9})
    progress.on_trial_result(0, [], b, {"epoch": 1, "val_acc": 0.2})
    b.num_failures = 1
    progress.on_trial_recover(0, [], b)  # its node lost: Tune restarts it
    assert lines[-1] == ("trial a_00001 lost its worker (a node gone or a process ended) after epoch 1/4: "
                         "restarting it from its last checkpoint (restart 1 of at most 2)")
    # A trial that raised is not a lost worker: the line says what it raised (Tune's error file).
    b.error_file = str(tmp_path / "error.txt")
    Path(b.error_file).write_text("Failure # 1 (occurred at 2026-12-08_00-31-50)\nray::ImplicitFunc.train() (pid=1)\n"
                                  "  File \"trial.py\", line 106, in _load_state\n"
                                  "FileNotFoundError: [Errno 2] No such file or directory: '/tmp/c/state.pt'\n")
    b.num_failures = 2
    progress.on_trial_recover(0, [], b)
    assert lines.pop() == ("trial a_00001 failed (FileNotFoundError: [Errno 2] No such file or directory: "
                           "'/tmp/c/state.pt') after epoch 1/4: restarting it from its last checkpoint "
                           "(restart 2 of at most 2)")
    # Ray's own error for a node gone, as Tune writes it (no class name, no traceback): a lost worker.
    Path(b.error_file).write_text("Failure # 1 (occurred at 2026-12-07_22-49-18)\nThe actor ecae33a5 is unavailable: "
                                  "The actor is temporarily unavailable: RpcError: RPC error: recvmsg:Connection "
                                  "reset by peer rpc_code: 14.\n")
    progress.on_trial_recover(0, [], b)
    assert lines.pop().startswith("trial a_00001 lost its worker (a node gone or a process ended) after epoch 1/4")
    status = [line for line in lines if line.startswith("status:")]
    # The first epoch's (the first estimate), then one a minute later: not one per result.
    assert len(status) == 2, lines
    assert status[0] == ("status: 2 running, 0 completed, 0 pruned, 0 errored; best val_acc 0.6000; epochs 1/16; "
                         "elapsed 20 s, about 5 min left")
    assert status[1].startswith("status: 2 running, 0 completed, 0 pruned, 0 errored; best val_acc 0.9000;")
    a.last_result = {"epoch": 4, "val_acc": 0.9000000001}
    progress.on_trial_complete(0, [], a)
    b.last_result = {"epoch": 1, "val_acc": 0.2}
    progress.on_trial_complete(0, [], b)  # stopped before its last epoch: pruned
    assert lines[-2:] == ["trial a_00000 completed at epoch 4/4, val_acc 0.9000",
                          "trial a_00001 pruned at epoch 1/4, val_acc 0.2000"]
    clock.now += 10
    progress.on_step_end(0, [])  # less than a minute since the last status line
    assert not lines[-1].startswith("status:")
    progress.on_experiment_end([])
    # 90 s elapsed for 5 epochs: 11 left at that pace.
    assert lines[-1] == ("status: 0 running, 1 completed, 1 pruned, 0 errored; best val_acc 0.9000; epochs 5/16; "
                         "elapsed 2 min, about 3 min left")


def test_a_resumed_sweep_counts_what_the_stopped_driver_finished_and_times_only_its_own_pace():
    lines: list[str] = []
    clock = _Clock()
    progress = ProgressLines(lines.append, planned_epochs=12, total_epochs=4, clock=clock)
    done = _Trial("a_00000", {"ed.alpha": 0.1}, {"epoch": 4, "val_acc": 0.9}, "TERMINATED")
    pruned = _Trial("a_00001", {"ed.alpha": 0.2}, {"epoch": 1, "val_acc": 0.3}, "TERMINATED")
    halfway = _Trial("a_00002", {"ed.alpha": 0.3}, {"epoch": 2, "val_acc": 0.5}, "PENDING")
    trials = [done, pruned, halfway]
    progress.on_step_begin(0, trials)
    assert lines == ["resumed: 2 trials ended before the stop, 1 continues from a checkpoint; status: 0 running, "
                     "1 completed, 1 pruned, 0 errored; best val_acc 0.9000; epochs 7/12; elapsed 0 s, "
                     "no estimate yet"]
    progress.on_step_begin(1, trials)  # once only
    assert len(lines) == 1
    progress.on_trial_start(1, trials, halfway)
    assert lines[-1] == "trial a_00002 resumed at epoch 2: ed.alpha=0.3"
    clock.now += 60  # this driver's first epoch: 1 a minute, 4 left
    progress.on_trial_result(1, trials, halfway, {"epoch": 3, "val_acc": 0.6})
    assert lines[-1].endswith("epochs 8/12; elapsed 60 s, about 4 min left"), lines[-1]
    said = len(lines)
    clock.now += 1
    progress.on_trial_result(1, trials, halfway, {"epoch": 4, "val_acc": 0.7})
    assert len(lines) == said  # then at most a line a minute


def test_durations_read_as_seconds_minutes_hours():
    assert [format_duration(s) for s in (0, 44.6, 89, 90, 3000, 7200, 7500)] == \
        ["0 s", "45 s", "89 s", "2 min", "50 min", "2 h 00 min", "2 h 05 min"]


def _sweep(workdir: Path) -> subprocess.CompletedProcess:
    sets = [*FAST, "optim.epochs=3", "ed.switch_epochs=[1, 2]", "search.params[0].min_grade_epochs=1",
            "search.early_stopping.kind=none", "search.max_concurrent=1", "search.final_eval.seeds=0"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "EDRAY_WORKDIR", "EDRAY_SHARED", "RAY_ADDRESS")}
    cmd = [sys.executable, "-m", "edray.cli", "sweep", str(DIGITS_YAML), "--workdir", str(workdir), "--json",
           "--num-samples", "2", *[a for s in sets for a in ("--set", s)]]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)  # stderr: not a terminal


@pytest.mark.slow
def test_a_sweep_without_a_terminal_prints_progress_lines(teacher_workdir, tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    shutil.copytree(teacher_workdir / "teachers", workdir / "teachers")
    proc = _sweep(workdir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    lines = proc.stderr.splitlines()
    started = [line for line in lines if line.startswith("trial ") and " started: " in line]
    ended = [line for line in lines if line.startswith("trial ") and " completed at epoch 3/3, val_acc " in line]
    assert len(started) == 2 and len(ended) == 2, proc.stderr[-4000:]
    assert all("ed.alpha=" in line for line in started)  # the searched values
    final = [line for line in lines if line.startswith("status: 0 running, 2 completed, 0 pruned, 0 errored; ")]
    assert final and "epochs 6/6" in final[-1] and f"best val_acc {summary['best_val_acc']:.4f}" in final[-1]

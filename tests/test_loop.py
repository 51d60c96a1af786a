"""The ED loop end to end on real digits: every method, resume, replay and optimizer modes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from edray.distill.loop import run_ed
from edray.errors import EdrayError
from edray.layout import Layout
from edray.pipeline import make_teacher_logits, teach, train

from .conftest import DIGITS_YAML, FAST, fast_spec


@pytest.mark.parametrize("method", ["ed", "kd", "mtkd", "ce"])
def test_every_method_learns_digits(method, digits_data, teacher_workdir):
    spec = fast_spec(f"method={method}")
    result = train(spec, Layout.at(teacher_workdir), data=digits_data)
    assert result.test_acc > 0.6, result.summary()
    assert len(result.history) == spec.optim.epochs
    if method == "ed":
        assert [m.grade for m in result.history] == [1, 1, 2, 2, 2, 3, 3, 3]
        assert [m.seen_classes for m in result.history][:2] == [3, 3]
        assert result.switch_epochs == [2, 5]
    else:
        assert {m.grade for m in result.history} == {1} and result.switch_epochs == []
    # the finished student is a plain module over natural class ids
    x = digits_data.test.load(torch.arange(64))
    pred = result.model(x).argmax(1)
    acc = (pred == digits_data.test.labels[:64]).float().mean().item()
    assert acc > 0.5


def test_early_grades_see_only_their_classes(digits_data, teacher_workdir):
    spec = fast_spec()
    result = train(spec, Layout.at(teacher_workdir), data=digits_data)
    first = result.history[0]
    # grade 1 knows 3 of 10 classes: all-class accuracy is bounded by their share of val
    share = (digits_data.val.labels < 3).float().mean().item()
    assert first.val_acc <= share + 1e-9
    assert first.val_acc_seen > first.val_acc


@pytest.mark.parametrize(
    "overrides",
    [
        ["ed.replay=mixed", "ed.optimizer_at_switch=carry"],
        ["ed.replay=sequential", "ed.optimizer_at_switch=carry", "ed.class_order=shuffled"],
        ["optim.optimizer=adamw", "optim.lr=0.003", "optim.schedule.kind=multistep", "optim.schedule.milestones=[6]"],
    ],
)
def test_modes_run(overrides, digits_data, teacher_workdir):
    result = train(fast_spec(*overrides), Layout.at(teacher_workdir), data=digits_data)
    assert [m.grade for m in result.history] == [1, 1, 2, 2, 2, 3, 3, 3] and result.switch_epochs == [2, 5]
    assert result.history[-1].seen_classes == digits_data.num_classes
    # It learnt, whatever the mode: 3x chance (0.1). After 8 epochs the weakest mode (sequential,
    # carry, shuffled) measured 0.56 on a Xeon and 0.49 on an AMD EPYC, the others 0.80-0.89.
    assert result.test_acc > 0.3, result.summary()


def _run_collecting(spec, data, teachers, **kw):
    states = {}

    def report(metrics, checkpoint):
        states[metrics["epoch"]] = checkpoint

    result = run_ed(spec, data, teachers, report=report, **kw)
    return result, states


@pytest.mark.parametrize("mode", ["reset", "carry"])
def test_resume_mid_grade_equals_uninterrupted(mode, digits_data, teacher_workdir):
    spec = fast_spec(f"ed.optimizer_at_switch={mode}")
    teachers = make_teacher_logits(spec, digits_data, Layout.at(teacher_workdir))
    full, states = _run_collecting(spec, digits_data, teachers)
    # epoch 3 is inside grade 2 (switches at 2 and 5): resume from there
    resumed, _ = _run_collecting(spec, digits_data, teachers, resume=states[3])
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m.val_acc for m in full.history] == [m.val_acc for m in resumed.history]
    assert full.test_acc == resumed.test_acc


def test_checkpoint_survives_a_file_round_trip(tmp_path, digits_data, teacher_workdir):
    spec = fast_spec("method=ce", "optim.epochs=3", "ed.switch_epochs=[1, 2]")
    full, states = _run_collecting(spec, digits_data, None)
    torch.save(states[1], tmp_path / "state.pt")
    resumed, _ = _run_collecting(spec, digits_data, None, resume=torch.load(tmp_path / "state.pt", weights_only=False))
    assert full.test_acc == resumed.test_acc


def test_per_group_teachers(tmp_path, digits_data):
    spec = fast_spec("teachers.mode=per_group")
    teachers = teach(spec, Layout.at(tmp_path), data=digits_data)
    assert [len(t.classes) for t in teachers] == [3, 3, 4]
    result = train(spec, Layout.at(tmp_path), data=digits_data)
    assert result.test_acc > 0.6


def test_missing_teachers_are_a_clear_error(tmp_path, digits_data):
    with pytest.raises(EdrayError, match="edray teach"):
        train(fast_spec(), Layout.at(tmp_path), data=digits_data)


def test_cli_train_json(teacher_workdir):
    cmd = [sys.executable, "-m", "edray.cli", "train", str(DIGITS_YAML), "--json", "--workdir", str(teacher_workdir)]
    for o in FAST:
        cmd += ["--set", o]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    for key in ("method", "val_acc", "test_acc", "epochs", "switch_epochs", "wall_s"):
        assert key in summary
    assert summary["method"] == "ed" and summary["switch_epochs"] == [2, 5] and summary["test_acc"] > 0.6
    assert res.stderr == ""  # not a terminal: no progress lines


def test_cli_train_without_teachers_exits_2(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "edray.cli", "train", str(DIGITS_YAML), "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 2 and res.stderr.startswith("error: teachers.models[0].checkpoint: no trained teacher")
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("before", [(False, False), (True, False)])
def test_a_deterministic_run_leaves_the_process_as_it_found_it(before, digits_data, monkeypatch):
    """Deterministic kernels, the cuBLAS variable and the global RNGs are set for the run only."""
    import os
    import random

    import numpy as np

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    flags = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    try:
        torch.manual_seed(1234)
        np.random.seed(1234)
        random.seed(1234)
        expected = torch.rand(3), np.random.rand(3), random.random()
        torch.manual_seed(1234)
        np.random.seed(1234)
        random.seed(1234)
        spec = fast_spec("method=ce", "optim.epochs=1", "ed.switch_epochs=[]", "ed.grades=1", "ed.split_ratios=[1.0]",
                         "ed.temperatures=[4.0]", "deterministic=true")
        during: list[bool] = []
        run_ed(spec, digits_data, None, evaluate_test=False,
               progress=lambda _m: during.append(torch.are_deterministic_algorithms_enabled()))
        assert during == [True]  # on for the run ...
        assert torch.are_deterministic_algorithms_enabled() is before[0]  # ... and back as it was after
        assert torch.is_deterministic_algorithms_warn_only_enabled() is before[1]
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        after = torch.rand(3), np.random.rand(3), random.random()
        assert torch.equal(after[0], expected[0]) and np.array_equal(after[1], expected[1]) and after[2] == expected[2]
    finally:
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])

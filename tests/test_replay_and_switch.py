"""What ``ed.replay`` and ``ed.optimizer_at_switch`` do, not only that they run.

Replay: a teacher that records every request the loop makes (real teachers behind it)
shows which training rows each epoch holds, in which group, and how they are grouped
into passes and batches. Optimizer: a real student, real SGD steps, and the momentum
buffers read back after a grade switch, against values worked out from the gradients.
"""

from __future__ import annotations

import math

import pytest
import torch

from edray.distill.loop import _optimizer_for_grade, run_ed
from edray.distill.plan import make_plan
from edray.layout import Layout
from edray.models import GrowingStudent, build_backbone
from edray.pipeline import make_teacher_logits

from .conftest import fast_spec

# 3 epochs, one per grade: every grade's epoch order can be read on its own.
SHORT = ["optim.epochs=3", "ed.switch_epochs=[1, 2]", "teachers.logits=live"]


class RecordingTeachers:
    """The real (live) teachers, with a log of every request: (epoch, group, rows, width)."""

    def __init__(self, inner):
        self.inner = inner
        self.views = inner.views
        self.epoch = 0
        self.calls: list[tuple[int, int, torch.Tensor, int]] = []

    def group_logits(self, group, x, rows, views):
        out = self.inner.group_logits(group, x, rows, views)
        self.calls.append((self.epoch, group, rows.clone(), out.shape[1]))
        return out

    def next_epoch(self, _metrics) -> None:
        self.epoch += 1


_RECORDED: dict[str, tuple] = {}


def _record(replay: str, digits_data, teacher_workdir):
    """One recorded 3-epoch run per replay mode (shared by the tests below)."""
    if replay not in _RECORDED:
        _RECORDED[replay] = _run_recorded(replay, digits_data, teacher_workdir)
    return _RECORDED[replay]


def _run_recorded(replay: str, digits_data, teacher_workdir):
    spec = fast_spec(*SHORT, f"ed.replay={replay}")
    recorder = RecordingTeachers(make_teacher_logits(spec, digits_data, Layout.at(teacher_workdir)))
    run_ed(spec, digits_data, recorder, progress=recorder.next_epoch, evaluate_test=False)
    return spec, make_plan(spec, digits_data.num_classes), recorder.calls


def _group_rows(plan, digits_data) -> list[torch.Tensor]:
    """Training rows of each class group, computed from the labels here."""
    labels = digits_data.train.labels
    return [torch.isin(labels, torch.tensor(group)).nonzero().flatten() for group in plan.classes.groups]


@pytest.mark.parametrize("replay", ["sequential", "mixed"])
def test_each_epoch_holds_every_seen_sample_once_and_teacher_k_serves_group_k(replay, digits_data, teacher_workdir):
    spec, plan, calls = _record(replay, digits_data, teacher_workdir)
    by_group = _group_rows(plan, digits_data)
    for epoch in range(spec.optim.epochs):
        grade = epoch + 1  # one epoch per grade
        mine = [c for c in calls if c[0] == epoch]
        assert {g for _, g, _, _ in mine} == set(range(grade)), (epoch, replay)
        rows = torch.cat([r for _, _, r, _ in mine])
        # Every sample of the groups seen so far, each exactly once; none of a later group.
        assert sorted(rows.tolist()) == sorted(torch.cat(by_group[:grade]).tolist())
        for _, group, group_rows, width in mine:
            # The loss of group k gets teacher logits over group k's classes, for group-k rows only.
            assert width == len(plan.classes.groups[group])
            assert torch.isin(group_rows, by_group[group]).all()


def test_sequential_replay_is_one_pass_per_group_in_grade_order(digits_data, teacher_workdir):
    spec, plan, calls = _record("sequential", digits_data, teacher_workdir)
    batch = spec.optim.batch_size
    sizes = [len(r) for r in _group_rows(plan, digits_data)]
    for epoch in range(spec.optim.epochs):
        groups = [g for e, g, _, _ in calls if e == epoch]
        # Group 0's pass, then group 1's, ...: the group sequence never goes back.
        assert groups == sorted(groups)
        # Every batch holds one group: ceil(n_k / B) requests for group k, each a whole batch
        # except the last of the pass.
        for k in range(epoch + 1):
            lengths = [len(r) for e, g, r, _ in calls if e == epoch and g == k]
            assert len(lengths) == math.ceil(sizes[k] / batch)
            assert all(n == batch for n in lengths[:-1]) and sum(lengths) == sizes[k]


def test_mixed_replay_is_one_shuffled_pass_over_the_union(digits_data, teacher_workdir):
    spec, plan, calls = _record("mixed", digits_data, teacher_workdir)
    batch = spec.optim.batch_size
    sizes = [len(r) for r in _group_rows(plan, digits_data)]
    for epoch in range(1, spec.optim.epochs):
        mine = [(g, r) for e, g, r, _ in calls if e == epoch]
        groups = [g for g, _ in mine]
        batches = math.ceil(sum(sizes[: epoch + 1]) / batch)
        # Batches mix the groups: more requests than batches (one per group present in a
        # batch), and the group sequence goes back to group 0 again and again.
        assert len(mine) > batches
        assert sum(1 for a, b in zip(groups, groups[1:]) if b < a) >= batches // 2
        # Within a batch the loop asks group by group, in order: cut the requests into
        # batches where the group goes back, and each holds at most B rows.
        cuts, current = [], 0
        for i, g in enumerate(groups):
            if i and g <= groups[i - 1]:
                cuts.append(current)
                current = 0
            current += len(mine[i][1])
        cuts.append(current)
        assert len(cuts) == batches and all(n <= batch for n in cuts)


def _student(spec, digits_data) -> GrowingStudent:
    torch.manual_seed(0)
    plan = make_plan(spec, digits_data.num_classes)
    backbone = build_backbone(spec.student.arch, num_classes=digits_data.num_classes,
                              in_channels=digits_data.in_channels, image_size=digits_data.image_size)
    return GrowingStudent(backbone, plan.classes.grade_classes)


def _step(student: GrowingStudent, optimizer, digits_data) -> dict[torch.nn.Parameter, torch.Tensor]:
    """One real SGD step on 16 digits; returns each parameter's d_p = grad + wd * p (before the step)."""
    x = digits_data.train.load(torch.arange(16))
    y = digits_data.train.labels[:16] % student(x).shape[1]
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(student(x), y).backward()
    wd = optimizer.param_groups[0]["weight_decay"]
    d_p = {p: (p.grad + wd * p).detach().clone() for g in optimizer.param_groups for p in g["params"]
           if p.grad is not None}
    optimizer.step()
    return d_p


@pytest.mark.parametrize("mode", ["reset", "carry"])
def test_grade_switch_resets_or_carries_the_momentum(mode, digits_data):
    spec = fast_spec(f"ed.optimizer_at_switch={mode}")
    momentum = spec.optim.momentum
    assert spec.optim.optimizer == "sgd" and momentum > 0
    student = _student(spec, digits_data)
    first = _optimizer_for_grade(spec, student, 1, None)
    _step(student, first, digits_data)
    old_buffers = {p: first.state[p]["momentum_buffer"].clone() for p in student.grade_parameters(1)}

    student.set_grade(2)
    second = _optimizer_for_grade(spec, student, 2, first)
    params = [p for g in second.param_groups for p in g["params"]]
    if mode == "reset":
        # A new optimizer over everything grade 2 trains, with no state at all.
        assert second is not first and len(second.state) == 0 and len(second.param_groups) == 1
        assert {id(p) for p in params} == {id(p) for p in student.grade_parameters(2)}
    else:
        # The same optimizer: grade 1's group and its buffers kept, grade 2's segment and head added.
        assert second is first and len(second.param_groups) == 2
        assert [id(p) for p in second.param_groups[1]["params"]] == [id(p) for p in student.new_parameters(2)]
        for p, buf in old_buffers.items():
            assert torch.equal(second.state[p]["momentum_buffer"], buf)
        assert not any(p in second.state for p in student.new_parameters(2))
    assert len(params) == len({id(p) for p in params})  # no parameter twice

    # The next step: SGD's buffer is d_p on a fresh state, momentum * old + d_p when carried.
    d_p = _step(student, second, digits_data)
    shared = [p for p in student.grade_parameters(1) if p in d_p and p in old_buffers]
    assert shared
    for p in shared:
        expected = d_p[p] if mode == "reset" else momentum * old_buffers[p] + d_p[p]
        torch.testing.assert_close(second.state[p]["momentum_buffer"], expected)
    for p in student.new_parameters(2):
        torch.testing.assert_close(second.state[p]["momentum_buffer"], d_p[p])


@pytest.mark.parametrize("mode", ["reset", "carry"])
def test_the_loop_checkpoints_the_optimizer_each_mode_builds(mode, digits_data, teacher_workdir):
    spec = fast_spec(*SHORT, f"ed.optimizer_at_switch={mode}", "method=ed")
    saved: list[dict] = []
    run_ed(spec, digits_data, make_teacher_logits(spec, digits_data, Layout.at(teacher_workdir)),
           report=lambda _m, ckpt: saved.append(ckpt["optimizer"]), evaluate_test=False)
    student = _student(spec, digits_data)
    for grade, state in enumerate(saved, start=1):
        sizes = [len(g["params"]) for g in state["param_groups"]]
        if mode == "reset":
            assert sizes == [len(student.grade_parameters(grade))]
        else:
            assert sizes == [len(student.new_parameters(g)) for g in range(1, grade + 1)]

"""Which teacher teaches which class group (edray/distill/plan.py), and that group k is
taught with teacher k's logits cut to group k's classes (real trained teachers)."""

from __future__ import annotations

import pytest
import torch

from edray.distill.plan import make_plan
from edray.distill.teachers import LiveTeachers, load_teacher
from edray.layout import Layout

from .conftest import fast_spec

TEACHER = "{arch: cnn_medium, train: {epochs: 4, lr: 0.05, batch_size: 64}}"
TWO_TEACHERS = f"teachers.models=[{TEACHER}, {TEACHER}]"


@pytest.mark.parametrize(
    ("overrides", "method", "teachers", "groups", "grades"),
    [
        # ED, one shared teacher per grade: teacher k teaches group k.
        ([], "ed", ((0,), (1,), (2,)), 3, [1, 2, 3]),
        # ED, per-group teachers: teacher k is group k's own.
        (["teachers.mode=per_group"], "ed", ((0,), (1,), (2,)), 3, [1, 2, 3]),
        # ED, shared teachers of another count: every group averages all of them.
        ([TWO_TEACHERS], "ed", ((0, 1), (0, 1), (0, 1)), 3, [1, 2, 3]),
        # MTKD with shared teachers: one group of all classes, every teacher averaged, one grade.
        (["method=mtkd"], "mtkd", ((0, 1, 2),), 1, [1]),
        # MTKD with per-group teachers: ED's groups, each its own teacher, the full student from epoch 0.
        (["method=mtkd", "teachers.mode=per_group"], "mtkd", ((0,), (1,), (2,)), 3, [3]),
        (["method=kd"], "kd", ((0,),), 1, [1]),
        (["method=ce"], "ce", ((),), 1, [1]),
    ],
)
def test_each_method_assigns_its_teachers(overrides, method, teachers, groups, grades):
    spec = fast_spec(*overrides)
    plan = make_plan(spec, 10)
    assert plan.method == method
    assert plan.group_teachers == teachers
    assert len(plan.classes.groups) == groups
    assert [g.groups for g in plan.grades] == grades
    assert sorted(c for group in plan.classes.groups for c in group) == list(range(10))
    if method == "ce":
        assert plan.alpha == 1.0 and plan.teachers_used == []
    else:
        assert plan.alpha == spec.ed.alpha
    if method == "ed":
        assert [g.start_epoch for g in plan.grades] == [0, *spec.ed.switch_epochs]
        assert [g.temperature for g in plan.grades] == spec.ed.temperatures
    else:
        assert [g.start_epoch for g in plan.grades] == [0]


def _sliced(teacher, x: torch.Tensor, classes: tuple[int, ...]) -> torch.Tensor:
    """Teacher logits of the given natural classes, picked here column by column."""
    with torch.no_grad():
        full = teacher.model(x)
    return torch.stack([full[:, teacher.classes.index(c)] for c in classes], dim=1)


@pytest.mark.parametrize("overrides", [["ed.class_order=shuffled"], ["ed.class_order=shuffled", TWO_TEACHERS]])
def test_group_k_gets_its_teachers_logits_cut_to_its_classes(overrides, digits_data, teacher_workdir):
    spec = fast_spec(*overrides)
    plan = make_plan(spec, digits_data.num_classes)
    assert plan.classes.groups[0] != (0, 1, 2)  # shuffled: the slice is not the first columns
    loaded = [load_teacher(spec, i, digits_data, Layout.at(teacher_workdir)) for i in range(len(spec.teachers.models))]
    live = LiveTeachers(loaded, plan.classes, plan.group_teachers)
    rows = torch.arange(40)
    x = digits_data.train.load(rows)
    for k, group in enumerate(plan.classes.groups):
        got = live.group_logits(k, x, rows, torch.zeros_like(rows))
        expected = torch.stack([_sliced(loaded[i], x, group) for i in plan.group_teachers[k]]).mean(0)
        assert got.shape == (len(rows), len(group))
        torch.testing.assert_close(got, expected)
    if len(loaded) == 3:  # one teacher per grade: group k never hears another teacher
        assert not torch.allclose(live.group_logits(1, x, rows, rows), _sliced(loaded[0], x, plan.classes.groups[1]))

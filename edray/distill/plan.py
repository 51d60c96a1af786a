"""A method (``ed``, ``kd``, ``mtkd``, ``ce``) resolved into one shape the loop runs.

Every method is a list of grades. ED has G grades that add classes, segments and
teachers; the baselines are one grade with the full student from epoch 0, so they
run in the same loop, on the same data and budget, and differ only where the method
says they do.
"""

from __future__ import annotations

from dataclasses import dataclass

from edray.data.groups import ClassGroups, split_classes
from edray.spec import Spec

__all__ = ["Grade", "Plan", "make_plan"]


@dataclass(frozen=True)
class Grade:
    """One grade of the run.

    Attributes:
        start_epoch: first epoch (0-based) of this grade.
        groups: number of class groups seen (1..G); the student has as many segments.
        temperature: KD temperature of this grade.
    """

    start_epoch: int
    groups: int
    temperature: float


@dataclass(frozen=True)
class Plan:
    """What the loop needs to know about the method.

    Attributes:
        method: the spec's method.
        classes: the class groups that order the logits and slice the KD loss.
        grades: the grades in order.
        group_teachers: for each group, indices into ``spec.teachers.models`` whose
            logits (averaged) teach that group; empty for ``ce``.
        alpha: cross-entropy weight (1.0 for ``ce``).
        student_grades: number of segments the student is cut into.
        replay: ``sequential`` or ``mixed``.
    """

    method: str
    classes: ClassGroups
    grades: tuple[Grade, ...]
    group_teachers: tuple[tuple[int, ...], ...]
    alpha: float
    replay: str

    @property
    def teachers_used(self) -> list[int]:
        """Indices of the teachers some group learns from, in order (each once)."""
        return sorted({i for group in self.group_teachers for i in group})

    @property
    def switch_epochs(self) -> list[int]:
        return [g.start_epoch for g in self.grades[1:]]

    def grade_at(self, epoch: int) -> int:
        """1-based grade index of ``epoch``."""
        return sum(epoch >= g.start_epoch for g in self.grades)


def _ed_classes(spec: Spec, num_classes: int) -> ClassGroups:
    return split_classes(num_classes, spec.ed.split_ratios, order=spec.ed.class_order, seed=spec.ed.class_order_seed)


def _shared_assignment(num_teachers: int, num_groups: int) -> tuple[tuple[int, ...], ...]:
    # One shared teacher per grade: teacher k teaches group k ("more teachers as the
    # grade rises"). Any other count: every group averages all teachers.
    if num_teachers == num_groups:
        return tuple((k,) for k in range(num_groups))
    return tuple(tuple(range(num_teachers)) for _ in range(num_groups))


def make_plan(spec: Spec, num_classes: int) -> Plan:
    """Resolve ``spec.method`` into a :class:`Plan` for a dataset of ``num_classes``."""
    ed = spec.ed
    num_teachers = len(spec.teachers.models)
    full_t = ed.temperatures[-1]
    if spec.method == "ed":
        classes = _ed_classes(spec, num_classes)
        starts = [0, *ed.switch_epochs]
        grades = tuple(Grade(s, g + 1, ed.temperatures[g]) for g, s in enumerate(starts))
        teachers: tuple[tuple[int, ...], ...]
        if spec.teachers.mode == "per_group":
            teachers = tuple((k,) for k in range(ed.grades))
        else:
            teachers = _shared_assignment(num_teachers, ed.grades)
        return Plan("ed", classes, grades, teachers, ed.alpha, ed.replay)
    one_group = split_classes(num_classes, [1.0])
    if spec.method == "ce":
        return Plan("ce", one_group, (Grade(0, 1, full_t),), ((),), 1.0, "mixed")
    if spec.method == "kd":
        return Plan("kd", one_group, (Grade(0, 1, full_t),), ((0,),), ed.alpha, "mixed")
    # mtkd: several teachers at once, full student from epoch 0. Per-group teachers each
    # teach their own slice (the ED groups, no curriculum); shared ones are averaged.
    if spec.teachers.mode == "per_group":
        classes = _ed_classes(spec, num_classes)
        last = Grade(0, ed.grades, full_t)
        return Plan("mtkd", classes, (last,), tuple((k,) for k in range(ed.grades)), ed.alpha, "mixed")
    return Plan("mtkd", one_group, (Grade(0, 1, full_t),), (tuple(range(num_teachers)),), ed.alpha, "mixed")

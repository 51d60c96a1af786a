"""The steps of ``edray teach`` and ``edray train``: spec -> data -> teachers -> ED loop.

Kept apart from the CLI so that a Ray Train worker, a benchmark or a notebook runs the
same steps with the same checks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edray.data import DataSplits, load_data
from edray.distill.loop import EpochMetrics, ReportFn, RunResult, run_ed
from edray.distill.plan import make_plan
from edray.distill.teachers import (
    LiveTeachers,
    TeacherCheckpoint,
    TeacherLogits,
    load_teacher,
    teacher_path,
    train_teacher,
)
from edray.spec import Spec

__all__ = ["ensure_teachers", "make_teacher_logits", "teach", "train"]


def teach(
    spec: Spec,
    workdir: Path,
    *,
    data: DataSplits | None = None,
    force: bool = False,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> list[TeacherCheckpoint]:
    """Train every teacher that has a recipe and no checkpoint yet (all with ``force``).

    Teachers given by ``checkpoint`` path are loaded, never retrained.
    """
    data = data or load_data(spec.dataset)
    out = []
    for i, t in enumerate(spec.teachers.models):
        if t.checkpoint is None and (force or not _exists(spec, i, data, workdir)):
            out.append(train_teacher(spec, i, data, workdir, device=device, progress=progress))
        else:
            out.append(load_teacher(spec, i, data, workdir, device=device))
    return out


def _exists(spec: Spec, index: int, data: DataSplits, workdir: Path) -> bool:
    return teacher_path(spec, index, data, workdir).is_file()


def ensure_teachers(spec: Spec, data: DataSplits, workdir: Path, *, device: str = "cpu",
                    progress: Callable[[str], None] | None = None) -> list[TeacherCheckpoint]:
    """Load the teachers, training the missing ones that have a recipe (``edray sweep`` does this)."""
    return teach(spec, workdir, data=data, device=device, progress=progress)


def make_teacher_logits(
    spec: Spec, data: DataSplits, workdir: Path, *, device: str = "cpu", build_stores: bool = False
) -> TeacherLogits | None:
    """The source of teacher logits for ``spec.method``: None for ``ce``; the Arrow stores
    when ``teachers.logits`` is ``precomputed``; else the teachers themselves, live."""
    if spec.method == "ce":
        return None
    if spec.teachers.logits == "precomputed":
        from edray.distill.precompute import precompute_stores
        from edray.distill.stored_teachers import open_teacher_stores

        if build_stores and spec.teachers.store_uri is None:
            precompute_stores(spec, data, workdir, device=device)  # finds finished stores at once
        # A run that builds its stores also checks the ones it did not build (store_uri).
        verify = build_stores and spec.teachers.store_uri is not None
        return open_teacher_stores(spec, data, workdir, device=device, verify=verify)
    plan = make_plan(spec, data.num_classes)
    needed = sorted({i for group in plan.group_teachers for i in group})
    loaded = {i: load_teacher(spec, i, data, workdir, device=device) for i in needed}
    teachers = [loaded.get(i) for i in range(len(spec.teachers.models))]
    return LiveTeachers(teachers, plan.classes, plan.group_teachers)


def train(
    spec: Spec,
    workdir: Path,
    *,
    data: DataSplits | None = None,
    device: str = "cpu",
    report: ReportFn | None = None,
    progress: Callable[[EpochMetrics], None] | None = None,
    evaluate_test: bool = True,
) -> RunResult:
    """One training run of ``spec.method`` with the spec's teachers."""
    data = data or load_data(spec.dataset)
    teachers = make_teacher_logits(spec, data, workdir, device=device, build_stores=True)
    return run_ed(spec, data, teachers, report=report, device=device, progress=progress, evaluate_test=evaluate_test)

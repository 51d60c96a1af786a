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
from edray.errors import EdrayError
from edray.layout import Layout
from edray.spec import DatasetSpec, Spec
from edray.storage import is_uri
from edray.workdir import images_dir

__all__ = ["ensure_teachers", "local_dataset", "local_teachers", "make_teacher_logits", "teach", "train"]


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
    data = data or load_data(spec.dataset, image_cache=images_dir(workdir))
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


_ROOTLESS_DATASETS = frozenset({"digits", "synthetic"})  # built in or generated: no files


def local_dataset(dataset: DatasetSpec, layout: Layout | None) -> DatasetSpec:
    """``dataset`` with a shared ``root`` URI replaced by this node's copy (fetched once).

    Embedded and generated datasets read no root, so theirs is never fetched.
    """
    if layout is None or not dataset.root or not is_uri(dataset.root) or dataset.name in _ROOTLESS_DATASETS:
        return dataset
    from edray.cache import cached_tree

    return dataset.model_copy(update={"root": str(cached_tree(dataset.root, layout.cache()))})


def local_teachers(spec: Spec, data: DataSplits, workdir: Path, layout: Layout | None,
                   indices: list[int] | None = None) -> Path:
    """The folder to load teachers from on this node: the work directory on one machine;
    on a cluster this node's cache, into which the shared checkpoints are fetched once.

    Raises:
        EdrayError: a teacher that was never trained (with the command that trains it),
            or a shared location this node cannot read.
    """
    if layout is None or not layout.needs_fetch(layout.teachers):
        return workdir
    from edray.cache import cached_file
    from edray.storage import join

    cache = layout.cache()
    for i in range(len(spec.teachers.models)) if indices is None else indices:
        if spec.teachers.models[i].checkpoint:
            continue  # given by path: every node has it at that path
        name = teacher_path(spec, i, data, cache).name
        try:
            cached_file(join(layout.teachers, name), cache, "teachers")
        except FileNotFoundError:
            raise EdrayError(f"teachers.models[{i}]", f"no trained teacher at {join(layout.teachers, name)}",
                             "run `edray sweep` (it trains missing teachers) or `edray teach` with EDRAY_SHARED set") \
                from None
    return cache


def make_teacher_logits(
    spec: Spec, data: DataSplits, workdir: Path, *, device: str = "cpu", build_stores: bool = False,
    layout: Layout | None = None,
) -> TeacherLogits | None:
    """The source of teacher logits for ``spec.method``: None for ``ce``; the Arrow stores
    when ``teachers.logits`` is ``precomputed``; else the teachers themselves, live.

    With a cluster ``layout``, teachers and stores are read from this node's cache
    (fetched from the shared location once per node); stores are never built here.
    """
    if spec.method == "ce":
        return None
    plan = make_plan(spec, data.num_classes)
    needed = plan.teachers_used
    teacher_dir = local_teachers(spec, data, workdir, layout, needed)
    if spec.teachers.logits == "precomputed":
        from edray.distill.precompute import precompute_stores
        from edray.distill.stored_teachers import open_teacher_stores

        on_cluster = layout is not None and layout.on_cluster
        if build_stores and spec.teachers.store_uri is None and not on_cluster:
            precompute_stores(spec, data, workdir, device=device)  # finds finished stores at once
        # A run that builds its stores also checks the ones it did not build (store_uri).
        verify = build_stores and spec.teachers.store_uri is not None and not on_cluster
        return open_teacher_stores(spec, data, teacher_dir, device=device, verify=verify, layout=layout)
    loaded = {i: load_teacher(spec, i, data, teacher_dir, device=device) for i in needed}
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
    layout: Layout | None = None,
) -> RunResult:
    """One training run of ``spec.method`` with the spec's teachers (read through this
    node's cache with a cluster ``layout``, where the decoded images are cached too)."""
    image_cache = images_dir(layout.cache() if layout is not None else workdir)
    data = data or load_data(local_dataset(spec.dataset, layout), image_cache=image_cache)
    teachers = make_teacher_logits(spec, data, workdir, device=device, build_stores=True, layout=layout)
    return run_ed(spec, data, teachers, report=report, device=device, progress=progress, evaluate_test=evaluate_test)

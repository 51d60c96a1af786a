"""The steps of ``edray teach`` and ``edray train``: spec -> data -> teachers -> ED loop.

Kept apart from the CLI so that a Ray Train worker, a benchmark or a notebook runs the
same steps with the same checks. Every step takes the command's
:class:`~edray.layout.Layout` (where teachers, stores and caches are) and prepares what is
missing through :mod:`edray.preparation`.
"""

from __future__ import annotations

from collections.abc import Callable

from edray.data import DataSplits, load_data
from edray.distill.loop import EpochMetrics, ReportFn, RunResult, run_ed
from edray.distill.plan import make_plan
from edray.distill.teachers import LiveTeachers, TeacherCheckpoint, TeacherLogits, load_teacher
from edray.layout import Layout
from edray.spec import DatasetSpec, Spec
from edray.storage import is_uri

__all__ = ["load_run_data", "local_dataset", "make_teacher_logits", "teach", "train"]


def teach(
    spec: Spec,
    layout: Layout,
    *,
    data: DataSplits | None = None,
    force: bool = False,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> list[TeacherCheckpoint]:
    """Train every teacher that has a recipe and is not trained yet (all with ``force``),
    publish them where ``layout`` keeps teachers, and return every teacher, loaded.

    Teachers given by ``checkpoint`` path are loaded, never retrained.
    """
    from edray.preparation import LocalRunner, plan_preparation, prepare

    data = data or load_run_data(spec, layout)
    plan = plan_preparation(spec, data, layout, stores="none", force=force)
    prepare(plan, spec, data, layout, LocalRunner(device, progress), device=device)
    return [load_teacher(spec, i, data, layout, device=device) for i in range(len(spec.teachers.models))]


_ROOTLESS_DATASETS = frozenset({"digits", "synthetic"})  # built in or generated: no files


def local_dataset(dataset: DatasetSpec, layout: Layout) -> DatasetSpec:
    """``dataset`` with a shared ``root`` URI replaced by this node's copy (fetched once).

    Embedded and generated datasets read no root, so theirs is never fetched.
    """
    if not dataset.root or not is_uri(dataset.root) or dataset.name in _ROOTLESS_DATASETS:
        return dataset
    from edray.cache import cached_tree

    return dataset.model_copy(update={"root": str(cached_tree(dataset.root, layout.cache()))})


def load_run_data(spec: Spec, layout: Layout, *, verify_cache: bool = False) -> DataSplits:
    """The spec's dataset as this node reads it: a shared root through the node cache, file
    datasets decoded once into this node's image cache."""
    return load_data(local_dataset(spec.dataset, layout), image_cache=layout.images(), verify_cache=verify_cache)


def make_teacher_logits(spec: Spec, data: DataSplits, layout: Layout, *, device: str = "cpu") -> TeacherLogits | None:
    """The source of teacher logits for ``spec.method``: None for ``ce``; the Arrow stores
    when ``teachers.logits`` is ``precomputed``; else the teachers themselves, live.

    Teachers and stores are read where ``layout`` says (through this node's cache when they
    are shared); nothing is built here (see :mod:`edray.preparation`).
    """
    if spec.method == "ce":
        return None
    if spec.teachers.logits == "precomputed":
        from edray.distill.stored_teachers import open_teacher_stores

        return open_teacher_stores(spec, data, layout, device=device)
    plan = make_plan(spec, data.num_classes)
    loaded = {i: load_teacher(spec, i, data, layout, device=device) for i in plan.teachers_used}
    teachers = [loaded.get(i) for i in range(len(spec.teachers.models))]
    return LiveTeachers(teachers, plan.classes, plan.group_teachers)


def train(
    spec: Spec,
    layout: Layout,
    *,
    data: DataSplits | None = None,
    device: str = "cpu",
    report: ReportFn | None = None,
    progress: Callable[[EpochMetrics], None] | None = None,
    evaluate_test: bool = True,
    prepare_stores: bool = True,
) -> RunResult:
    """One training run of ``spec.method`` with the spec's teachers.

    With ``prepare_stores`` (``edray train``), the logit stores a ``precomputed`` run reads
    are built first when missing, or hashed once when ``teachers.store_uri`` gives them; a
    run whose stores were prepared already (a sweep's final evaluation) passes False.
    """
    data = data or load_run_data(spec, layout)
    if prepare_stores:
        from edray.preparation import LocalRunner, plan_preparation, prepare

        plan = plan_preparation(spec, data, layout, teachers=False)
        prepare(plan, spec, data, layout, LocalRunner(device), device=device)
    teachers = make_teacher_logits(spec, data, layout, device=device)
    return run_ed(spec, data, teachers, report=report, device=device, progress=progress, evaluate_test=evaluate_test)

"""Teachers and logit stores made ready before any run reads them: one plan, two runners.

Every command that needs teachers or stores (``edray teach``, ``precompute``, ``train``,
``sweep``) asks the same two questions, once, here:

1. :func:`plan_preparation`: *what* is missing. The teachers with a recipe that are not
   trained where the :class:`~edray.layout.Layout` keeps them; the stores the method reads
   (:func:`store_jobs`: each used teacher's train split with V views, its val split with
   one); whether those are built (no ``teachers.store_uri``) or, given read-only, hashed
   once (``store_uri`` on this machine; a node fetching them hashes them on the way in).
2. :func:`prepare`: *do* it, with a :class:`Runner`. :class:`LocalRunner` trains and
   computes on this machine; the Ray runner (:class:`edray.distributed.cluster.RayRunner`)
   trains each teacher as a Ray Train job and computes each store's shards as Ray tasks
   spread over the nodes. Both write to the same places (teachers published under
   ``layout.teachers``, stores under ``layout.stores``), through the same store writer
   (:func:`~edray.logits.writer.building`), so a store half-built by one is finished by
   the other.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

from edray.cache import node_name
from edray.data import DataSplits
from edray.distill.plan import make_plan
from edray.distill.precompute import StoreInfo, store_key, teacher_logits
from edray.distill.teachers import TeacherCheckpoint, load_teacher, teacher_trained, train_teacher
from edray.layout import Layout
from edray.logits.reader import open_store
from edray.logits.writer import ShardInfo, StorePlan, building, default_rows_per_shard, finish_store, write_shard
from edray.spec import Spec

__all__ = [
    "LocalRunner", "Prepared", "PreparationPlan", "Runner", "ShardWork", "StoreJob", "plan_preparation",
    "precompute_stores", "prepare", "store_jobs",
]

StoreMode = Literal["none", "needed", "build"]


@dataclass(frozen=True)
class StoreJob:
    """One logit store: a teacher's logits over one split, ``views`` views per sample."""

    teacher: int
    split: str  # "train" or "val"
    views: int


@dataclass(frozen=True)
class PreparationPlan:
    """What is missing before runs can read their teachers and stores.

    Attributes:
        teachers: indices of the teachers to train (a recipe, and no trained checkpoint,
            or every one with a recipe when forced).
        build: stores to build under ``layout.stores`` (a finished one is found at once).
        verify: read-only stores (``teachers.store_uri``) to hash once before any run reads them.
    """

    teachers: tuple[int, ...] = ()
    build: tuple[StoreJob, ...] = ()
    verify: tuple[StoreJob, ...] = ()


@dataclass(frozen=True)
class ShardWork:
    """A store being built and the shards of it still to compute (``store.todo``)."""

    job: StoreJob
    store: StorePlan
    teacher: TeacherCheckpoint  # loaded on this machine (it names the key); a Ray task loads its own


@dataclass
class Prepared:
    """What :func:`prepare` did.

    Attributes:
        teachers: index -> node, of each teacher trained now.
        stores: every store of the plan's ``build`` list, found or built.
        shards: store name -> the node of each shard computed now (stores built now only;
            "" for a shard computed by the one process that wrote the whole store).
        teachers_s, stores_s: wall seconds of the two steps.
    """

    teachers: dict[int, str] = field(default_factory=dict)
    stores: list[StoreInfo] = field(default_factory=list)
    shards: dict[str, list[str]] = field(default_factory=dict)
    teachers_s: float = 0.0
    stores_s: float = 0.0


class Runner(Protocol):
    """Where the work of a plan runs: this machine, or the Ray cluster's nodes."""

    spread: int
    """Nodes a store's shards are spread over: each store gets at least this many shards."""

    def train_teachers(self, spec: Spec, data: DataSplits, layout: Layout, indices: tuple[int, ...]) -> dict[int, str]:
        """Train these teachers and publish them where ``layout`` keeps teachers; return index -> node."""
        ...

    def compute_shards(self, spec: Spec, data: DataSplits, layout: Layout,
                       work: list[ShardWork]) -> dict[str, dict[int, ShardInfo]]:
        """Compute and write every shard in ``work``; return store name -> shard index -> its info."""
        ...


def store_jobs(spec: Spec, num_classes: int) -> tuple[StoreJob, ...]:
    """The stores the method reads: each used teacher's train split with ``teachers.views``
    views, and its val split with one (view 0, the evaluation transform)."""
    return tuple(StoreJob(i, split, views)
                 for i in make_plan(spec, num_classes).teachers_used
                 for split, views in (("train", spec.teachers.views), ("val", 1)))


def plan_preparation(spec: Spec, data: DataSplits, layout: Layout, *, teachers: bool = True,
                     stores: StoreMode = "needed", force: bool = False) -> PreparationPlan:
    """The work missing for ``spec`` (see the module docstring).

    Args:
        teachers: train the teachers that have a recipe and are not trained yet (all of
            them with ``force``); ``edray teach`` and ``sweep`` do.
        stores: ``"needed"`` (``train``, ``sweep``): the stores a ``precomputed`` run reads,
            built unless ``teachers.store_uri`` gives them, then hashed once instead;
            ``"build"`` (``precompute``): build (or find) them at ``layout.stores`` whatever
            the method; ``"none"`` (``teach``).
    """
    train = tuple(i for i, t in enumerate(spec.teachers.models)
                  if teachers and t.checkpoint is None and (force or not teacher_trained(spec, i, data, layout)))
    jobs = store_jobs(spec, data.num_classes)
    if stores == "build":
        return PreparationPlan(train, build=jobs)
    if stores == "none" or spec.method == "ce" or spec.teachers.logits != "precomputed":
        return PreparationPlan(train)
    if spec.teachers.store_uri is None:
        return PreparationPlan(train, build=jobs)
    if layout.needs_fetch(layout.stores):
        return PreparationPlan(train)  # each node hashes its copy as it fetches it
    return PreparationPlan(train, verify=tuple(j for j in jobs if j.split == "train"))  # what runs read


def prepare(plan: PreparationPlan, spec: Spec, data: DataSplits, layout: Layout, runner: Runner, *,
            device: str = "cpu") -> Prepared:
    """Run ``plan``: teachers first (the stores' keys hash their checkpoints), then every
    missing shard of every store at once, then each store's manifest; then the checks.

    Raises:
        EdrayError: a teacher or store that cannot be made or read (one line, naming it).
    """
    done = Prepared()
    tic = time.monotonic()
    if plan.teachers:
        done.teachers = runner.train_teachers(spec, data, layout, plan.teachers)
    done.teachers_s, tic = time.monotonic() - tic, time.monotonic()
    loaded: dict[int, TeacherCheckpoint] = {}

    def teacher(i: int) -> TeacherCheckpoint:
        if i not in loaded:
            loaded[i] = load_teacher(spec, i, data, layout, device=device)
        return loaded[i]

    with ExitStack() as stack:  # every store's write lock (local roots) until its manifest is written
        built, work = [], []
        for job in plan.build:
            t = teacher(job.teacher)
            key = store_key(spec, t, data, job.split, views=job.views)
            rows, outputs = len(getattr(data, job.split)), len(t.classes)
            # One shard per node at least (the work spreads), never above the writer's size.
            most = default_rows_per_shard(job.views, outputs)
            per = min(most, math.ceil(rows / runner.spread)) if runner.spread > 1 else None
            store = stack.enter_context(building(layout.stores, key, rows=rows, views=job.views, outputs=outputs,
                                                 sample_ids=torch.arange(rows), rows_per_shard=per))
            built.append((job, key, store))
            if store.final is None and store.todo:
                work.append(ShardWork(job, store, t))
        infos = runner.compute_shards(spec, data, layout, work) if work else {}
        for name, shards in infos.items():
            done.shards[name] = [shards[s].node for s in sorted(shards)]
        for job, key, store in built:
            location = finish_store(store, infos.get(store.name))
            opened = open_store(location, key)
            done.stores.append(StoreInfo(job.teacher, job.split, location, opened.rows, opened.views, opened.nbytes))
    for job in plan.verify:  # read-only stores: every byte checked once, before any run reads them
        open_store(layout.stores, store_key(spec, teacher(job.teacher), data, job.split, views=job.views), verify=True)
    done.stores_s = time.monotonic() - tic
    return done


@dataclass
class LocalRunner:
    """Runs a plan on this machine, one step after the other, on ``device``."""

    device: str = "cpu"
    progress: Callable[[str], None] | None = None
    spread: int = 1

    def train_teachers(self, spec: Spec, data: DataSplits, layout: Layout, indices: tuple[int, ...]) -> dict[int, str]:
        for i in indices:
            train_teacher(spec, i, data, layout, device=self.device, progress=self.progress)
        return dict.fromkeys(indices, node_name())

    def compute_shards(self, spec: Spec, data: DataSplits, layout: Layout,
                       work: list[ShardWork]) -> dict[str, dict[int, ShardInfo]]:
        out: dict[str, dict[int, ShardInfo]] = {}
        for w in work:
            compute = teacher_logits(spec, w.teacher, getattr(data, w.job.split), w.job.views, self.device)
            rows_done = sum(info.rows for info in w.store.done.values())
            for index in w.store.todo:
                start, stop = w.store.shard_span(index)
                out.setdefault(w.store.name, {})[index] = write_shard(w.store, index, compute(start, stop))
                rows_done += stop - start
                if self.progress:
                    self.progress(f"teacher {w.job.teacher} {w.job.split}: {rows_done}/{w.store.rows} rows")
        return out


def precompute_stores(
    spec: Spec,
    data: DataSplits,
    layout: Layout,
    *,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> list[StoreInfo]:
    """``edray precompute``: build (or find) the train and validation stores of every
    teacher the method uses, at ``layout.stores``, on this machine."""
    plan = plan_preparation(spec, data, layout, teachers=False, stores="build")
    return prepare(plan, spec, data, layout, LocalRunner(device, progress), device=device).stores

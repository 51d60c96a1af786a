"""Teacher logits read from the Arrow stores ``edray precompute`` built.

:class:`StoreTeachers` adapts :class:`~edray.logits.LogitStore` readers to the loop's
:class:`~edray.distill.teachers.TeacherLogits`: the drop-in for
:class:`~edray.distill.teachers.LiveTeachers`. It lives here, above :mod:`edray.logits`,
so that the store code never imports the ED loop.
"""

from __future__ import annotations

import torch

from edray.data import DataSplits
from edray.distill.plan import make_plan
from edray.distill.precompute import store_key
from edray.distill.teachers import load_teacher
from edray.layout import Layout
from edray.logits.reader import LogitStore, open_store
from edray.spec import Spec
from edray.storage import join

__all__ = ["StoreTeachers", "open_teacher_stores"]


class StoreTeachers:
    """Teacher logits read from Arrow stores, one store per teacher.

    Args:
        stores: teacher index -> its training-split store.
        classes: teacher index -> natural class ids of its outputs, in output order.
        groups: each class group's natural class ids.
        group_teachers: the teachers that teach each group (their logits are averaged).
    """

    views: int | None
    """Views per sample in the stores (V): the loop draws a view in ``1..V-1`` per sample
    and epoch, and replays its augmentation on the student's input."""

    def __init__(self, stores: dict[int, LogitStore], classes: dict[int, list[int]],
                 groups: tuple[tuple[int, ...], ...], group_teachers: tuple[tuple[int, ...], ...]):
        self.stores = stores
        self.group_teachers = group_teachers
        self.views = next(iter(stores.values())).views
        # Column indices of each group inside each teacher's outputs, computed once.
        self._columns = {
            (k, i): torch.tensor([classes[i].index(c) for c in groups[k]])
            for k, teachers in enumerate(group_teachers) for i in teachers
        }

    def group_logits(self, group: int, x: torch.Tensor, rows: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        outs = [self.stores[i].logits(rows, views)[:, self._columns[(group, i)]] for i in self.group_teachers[group]]
        return torch.stack(outs).mean(0)


def open_teacher_stores(spec: Spec, data: DataSplits, layout: Layout, *, device: str = "cpu") -> StoreTeachers:
    """The train stores of the method's teachers at ``layout.stores``, checked against this
    run's key. Where ``layout`` says they are read through this node's cache (a URI, a
    shared mount), they are fetched once, hashed on the way in, and memory-mapped from there.
    (A store given read-only by ``teachers.store_uri`` is hashed whole once before any run
    reads it, by :mod:`edray.preparation`.)

    Raises:
        EdrayError: a store is missing (run ``edray precompute``) or was built for another
            teacher, dataset, transform, view count or seed.
    """
    plan = make_plan(spec, data.num_classes)
    root = layout.stores
    fetch = layout.needs_fetch(root)
    stores: dict[int, LogitStore] = {}
    classes: dict[int, list[int]] = {}
    for i in plan.teachers_used:
        teacher = load_teacher(spec, i, data, layout, device=device)
        key = store_key(spec, teacher, data, "train", views=spec.teachers.views)
        if fetch:
            from edray.cache import cached_store

            stores[i] = cached_store(join(root, key.name), layout.cache(), key)
        else:
            stores[i] = open_store(root, key)
        classes[i] = teacher.classes
    return StoreTeachers(stores, classes, plan.classes.groups, plan.group_teachers)

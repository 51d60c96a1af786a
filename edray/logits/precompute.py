"""``edray precompute``: run each teacher once over the data, store raw logits in Arrow.

For every teacher: V views of each training sample (view 0 the evaluation transform,
views 1..V-1 replayable augmentations, see :mod:`edray.data.views`) and view 0 of each
validation sample. Trials then read the stores instead of running the teachers; the
student sees exactly the pixels of the view whose logits it is taught from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from edray.data import DataSplits, ImageSet, apply_views, view_params
from edray.distill.plan import make_plan
from edray.distill.teachers import TeacherCheckpoint, load_teacher
from edray.layout import Layout
from edray.logits.key import StoreKey, file_sha256
from edray.logits.reader import LogitStore, open_store
from edray.logits.writer import write_store
from edray.spec import Spec

__all__ = [
    "StoreTeachers", "StoreInfo", "open_teacher_stores", "precompute_stores", "store_key", "teacher_logits",
]

_BATCH = 256


@dataclass(frozen=True)
class StoreInfo:
    teacher: int
    split: str
    path: Path | str  # a URI when the stores live on object storage
    rows: int
    views: int
    nbytes: int


def _normalisation(data: DataSplits) -> str:
    return str(getattr(data, "normalisation", "") or f"{data.fingerprint}:default")


def store_key(spec: Spec, teacher: TeacherCheckpoint, data: DataSplits, split: str, *, views: int) -> StoreKey:
    """Everything the stored logits depend on (DESIGN §3)."""
    images: ImageSet = getattr(data, split)
    aug = spec.dataset.augmentation
    return StoreKey(
        teacher_arch=teacher.arch,
        teacher_sha256=file_sha256(teacher.path),
        dataset_name=spec.dataset.name,
        dataset_split=split,
        dataset_samples=len(images),
        dataset_fingerprint=data.fingerprint,
        crop_padding=aug.crop_padding,
        hflip=aug.hflip,
        image_size=data.image_size,
        normalisation=_normalisation(data),
        views=views,
        seed=spec.teachers.view_seed,
    )


def _store_root(spec: Spec, workdir: Path) -> str:
    """``teachers.store_uri`` (a local path or s3:// / gs:// URI), else ``WORKDIR/logits``."""
    return spec.teachers.store_uri or str(workdir / "logits")


def teacher_logits(spec: Spec, teacher: TeacherCheckpoint, images: ImageSet, views: int, device: str):
    aug = spec.dataset.augmentation
    model = teacher.model.to(device).eval()

    @torch.no_grad()  # here, not on the outer function: the writer calls this later, outside it
    def compute(start: int, stop: int) -> torch.Tensor:
        out = torch.empty(stop - start, views, len(teacher.classes))
        for s in range(start, stop, _BATCH):
            rows = torch.arange(s, min(stop, s + _BATCH))
            x = images.load(rows)
            for v in range(views):
                xv = apply_views(x, view_params(spec.teachers.view_seed, rows, v, aug), aug)
                out[s - start : s - start + len(rows), v] = model(xv.to(device)).float().cpu()
        return out

    return compute


def precompute_stores(
    spec: Spec,
    data: DataSplits,
    workdir: Path,
    *,
    views: int | None = None,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> list[StoreInfo]:
    """Build (or find) the train and validation stores of every teacher the method uses."""
    views = views or spec.teachers.views
    plan = make_plan(spec, data.num_classes)
    needed = plan.teachers_used
    out = []
    for i in needed:
        teacher = load_teacher(spec, i, data, workdir, device=device)
        for split, v in (("train", views), ("val", 1)):
            images: ImageSet = getattr(data, split)
            key = store_key(spec, teacher, data, split, views=v)

            def shard_progress(done: int, total: int, i=i, split=split) -> None:
                if progress:
                    progress(f"teacher {i} {split}: shard {done}/{total}")

            path = write_store(
                _store_root(spec, workdir), key, rows=len(images), views=v, outputs=len(teacher.classes),
                sample_ids=torch.arange(len(images)), compute_shard=teacher_logits(spec, teacher, images, v, device),
                progress=shard_progress,
            )
            store = open_store(path, key)
            out.append(StoreInfo(i, split, path, store.rows, store.views, store.nbytes))
    return out


def open_teacher_stores(
    spec: Spec, data: DataSplits, workdir: Path, *, device: str = "cpu", verify: bool = False,
    layout: Layout | None = None,
) -> StoreTeachers:
    """The train stores of the method's teachers, checked against this run's key
    (``verify``: every shard hashed too, which finds bit flips; the sweep driver does it
    once for stores it did not build, e.g. read from ``teachers.store_uri``).

    ``workdir`` holds the teachers (their checkpoints name the keys). With a cluster
    ``layout`` the stores are read from ``layout.stores`` through this node's cache:
    fetched once, hashed on the way in, memory-mapped.

    Raises:
        EdrayError: a store is missing (run ``edray precompute``) or was built for another
            teacher, dataset, transform, view count or seed.
    """
    plan = make_plan(spec, data.num_classes)
    needed = plan.teachers_used
    root = layout.stores if layout is not None else _store_root(spec, workdir)
    fetch = layout is not None and layout.needs_fetch(root)
    stores: dict[int, LogitStore] = {}
    classes: dict[int, list[int]] = {}
    for i in needed:
        teacher = load_teacher(spec, i, data, workdir, device=device)
        key = store_key(spec, teacher, data, "train", views=spec.teachers.views)
        location = f"{root.rstrip('/')}/{key.name}"
        if fetch:
            from edray.cache import cached_store

            stores[i] = cached_store(location, layout.cache(), key)
        else:
            stores[i] = open_store(location, key, verify=verify)
        classes[i] = teacher.classes
    return StoreTeachers(stores, classes, plan.classes.groups, plan.group_teachers)


class StoreTeachers:
    """Teacher logits read from Arrow stores: the drop-in for :class:`LiveTeachers`."""

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

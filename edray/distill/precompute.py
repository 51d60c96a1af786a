"""``edray precompute``: run each teacher once over the data, store raw logits in Arrow.

For every teacher: V views of each training sample (view 0 the evaluation transform,
views 1..V-1 replayable augmentations, see :mod:`edray.data.views`) and view 0 of each
validation sample. Trials then read the stores instead of running the teachers
(:mod:`edray.distill.stored_teachers`); the student sees exactly the pixels of the view
whose logits it is taught from. Here, not in :mod:`edray.logits`: it runs the teachers,
and the store code stays below the ED loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from edray.data import DataSplits, ImageSet, batch_views, view_params
from edray.distill.precision import prepare_model, resolve_precision, to_device
from edray.distill.teachers import TeacherCheckpoint
from edray.logits.key import StoreKey, file_sha256
from edray.spec import Spec

__all__ = ["StoreInfo", "store_key", "teacher_logits"]

_BATCH = 256


@dataclass(frozen=True)
class StoreInfo:
    teacher: int
    split: str
    path: Path | str  # a URI when the stores live on object storage
    rows: int
    views: int
    nbytes: int


def store_key(spec: Spec, teacher: TeacherCheckpoint, data: DataSplits, split: str, *, views: int) -> StoreKey:
    """Everything the stored logits depend on (docs/design.md#the-logit-store)."""
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
        normalisation=data.normalisation,
        views=views,
        seed=spec.teachers.view_seed,
    )


def teacher_logits(spec: Spec, teacher: TeacherCheckpoint, images: ImageSet, views: int, device: str):
    aug = spec.dataset.augmentation
    model = prepare_model(teacher.model, device).eval()
    precision = resolve_precision(spec.optim.precision, device)  # the run's autocast; stored as fp16 either way

    @torch.no_grad()  # here, not on the outer function: the writer calls this later, outside it
    def compute(start: int, stop: int) -> torch.Tensor:
        out = torch.empty(stop - start, views, len(teacher.classes))
        for s in range(start, stop, _BATCH):
            rows = torch.arange(s, min(stop, s + _BATCH))
            x = to_device(images.load_pixels(rows), device)  # one copy per batch; the V views are cut on the device
            for v in range(views):
                xv = batch_views(x, view_params(spec.teachers.view_seed, rows, v, aug), aug, images.stats)
                with precision.autocast():
                    out[s - start : s - start + len(rows), v] = model(xv).float().cpu()
        return out

    return compute

"""Teachers: where they are on disk, how ``edray teach`` trains them, and how a batch
gets its teacher logits per class group.

A teacher is a plain :class:`~edray.models.backbone.Backbone`. In ``per_group`` mode
teacher k knows only group k's classes (``|group k|`` outputs, in the group's sorted
natural order); in ``shared`` mode every teacher knows all classes and group k reads
its slice. Either way the loop asks one question: "logits of these samples over group
k's classes", answered by :class:`LiveTeachers` or by a precomputed Arrow store.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from edray.data import DataSplits, ImageSet, apply_views, iterate_batches, subset, view_params
from edray.data.groups import ClassGroups, split_classes
from edray.distill.optim import lr_at, make_optimizer, set_lr
from edray.distill.precision import prepare_model, resolve_precision, to_device
from edray.errors import EdrayError
from edray.models import Backbone, build_backbone
from edray.spec import OptimSpec, ScheduleSpec, Spec, TeacherSpec

__all__ = [
    "LiveTeachers",
    "TeacherCheckpoint",
    "TeacherLogits",
    "load_teacher",
    "teacher_classes",
    "teacher_path",
    "train_teacher",
]


class TeacherLogits(Protocol):
    """Logits over group ``k``'s classes for a batch of group-k samples."""

    def group_logits(
        self, group: int, x: torch.Tensor, rows: torch.Tensor, views: torch.Tensor
    ) -> torch.Tensor: ...


@dataclass
class TeacherCheckpoint:
    """A trained teacher as saved by ``edray teach``."""

    arch: str
    classes: list[int]  # natural class ids of its outputs, in output order
    model: Backbone
    val_acc: float
    path: Path


def teacher_classes(spec: Spec, index: int, num_classes: int) -> list[int]:
    """Natural class ids teacher ``index`` is trained on: its group, or all classes."""
    if spec.teachers.mode == "shared":
        return list(range(num_classes))
    groups = split_classes(
        num_classes, spec.ed.split_ratios, order=spec.ed.class_order, seed=spec.ed.class_order_seed
    )
    return list(groups.groups[index])


def _identity(spec: Spec, index: int, data: DataSplits, classes: list[int]) -> str:
    t = spec.teachers.models[index]
    blob = json.dumps(
        {
            "arch": t.arch,
            **({"pretrained": t.pretrained} if t.pretrained else {}),  # absent when unset: old teachers keep their path
            "recipe": t.train.model_dump(),
            "data": data.fingerprint,
            "augmentation": spec.dataset.augmentation.model_dump(),
            "classes": classes,
            "index": index,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def teacher_path(spec: Spec, index: int, data: DataSplits, workdir: Path) -> Path:
    """Where teacher ``index`` is: its ``checkpoint`` if given, else under the work directory.

    The file name carries a hash of everything the teacher depends on (recipe, data,
    classes), so a changed split or recipe never picks up a stale teacher.
    """
    t = spec.teachers.models[index]
    if t.checkpoint:
        return Path(t.checkpoint).expanduser()
    classes = teacher_classes(spec, index, data.num_classes)
    return workdir / "teachers" / f"{spec.name}-t{index}-{t.arch}-{_identity(spec, index, data, classes)}.pt"


def load_teacher(spec: Spec, index: int, data: DataSplits, workdir: Path, *, device: str = "cpu") -> TeacherCheckpoint:
    """Load teacher ``index``.

    Raises:
        EdrayError: no checkpoint there (with the command that makes one), or a
            checkpoint whose architecture or classes do not fit this spec.
    """
    path = teacher_path(spec, index, data, workdir)
    field = f"teachers.models[{index}].checkpoint"
    if not path.is_file():
        fix = "check the path" if spec.teachers.models[index].checkpoint else "run `edray teach SPEC` first"
        raise EdrayError(field, f"no trained teacher at {path}", fix)
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise EdrayError(field, f"cannot read teacher checkpoint {path} ({err})",
                         "retrain it with `edray teach`") from None
    classes = teacher_classes(spec, index, data.num_classes)
    t = spec.teachers.models[index]
    if blob.get("arch") != t.arch or blob.get("classes") != classes:
        raise EdrayError(
            field,
            f"{path} holds a {blob.get('arch')} teacher of {len(blob.get('classes', []))} classes; "
            f"this spec needs {t.arch} over {len(classes)} classes",
            "point to the right file or retrain with `edray teach`",
        )
    model = build_backbone(t.arch, num_classes=len(classes), in_channels=data.in_channels, image_size=data.image_size,
                           pretrained=t.pretrained, load_weights=False)  # the layout; the weights are the checkpoint's
    model.load_state_dict(blob["state_dict"])
    model.to(device).eval()
    return TeacherCheckpoint(t.arch, classes, model, float(blob.get("val_acc", float("nan"))), path)


def _rows_of(labels: torch.Tensor, classes: list[int]) -> torch.Tensor:
    return torch.isin(labels, torch.tensor(classes)).nonzero().flatten()


@torch.no_grad()
def _accuracy(model: torch.nn.Module, images: ImageSet, local: torch.Tensor, batch_size: int, device: str) -> float:
    model.eval()
    correct = 0
    for x, _, idx in iterate_batches(images, torch.arange(len(images)), batch_size):
        correct += (model(x.to(device)).argmax(1).cpu() == local[idx]).sum().item()
    return correct / max(1, len(images))


def train_teacher(
    spec: Spec,
    index: int,
    data: DataSplits,
    workdir: Path,
    *,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> TeacherCheckpoint:
    """Train teacher ``index`` with cross-entropy on its classes and save it atomically."""
    t: TeacherSpec = spec.teachers.models[index]
    classes = teacher_classes(spec, index, data.num_classes)
    local_of = torch.full((data.num_classes,), -1, dtype=torch.long)
    local_of[torch.tensor(classes)] = torch.arange(len(classes))
    train = subset(data.train, _rows_of(data.train.labels, classes))
    val = subset(data.val, _rows_of(data.val.labels, classes))
    train_y, val_y = local_of[train.labels], local_of[val.labels]

    torch.manual_seed(t.train.seed * 1000 + index)
    model = build_backbone(t.arch, num_classes=len(classes), in_channels=data.in_channels, image_size=data.image_size,
                           pretrained=t.pretrained, field=f"teachers.models[{index}].pretrained")
    model = prepare_model(model, device)
    precision = resolve_precision(spec.optim.precision, device)
    scaler = precision.grad_scaler()
    optim = OptimSpec(
        lr=t.train.lr,
        momentum=t.train.momentum,
        weight_decay=t.train.weight_decay,
        epochs=t.train.epochs,
        batch_size=t.train.batch_size,
        schedule=ScheduleSpec(kind="cosine"),
    )
    optimizer = make_optimizer(optim, model.parameters())
    aug = spec.dataset.augmentation
    start = time.monotonic()
    for epoch in range(t.train.epochs):
        model.train()
        set_lr(optimizer, lr_at(optim, epoch))
        gen = torch.Generator().manual_seed(t.train.seed * 7919 + index * 104729 + epoch)
        order = torch.randperm(len(train), generator=gen)
        for x, _, idx in iterate_batches(train, order, t.train.batch_size, num_workers=spec.optim.num_workers):
            views = torch.randint(1, 2**31 - 1, (len(idx),), generator=gen)
            x = apply_views(to_device(x, device), view_params(t.train.seed + index + 1, idx, views, aug), aug)
            with precision.autocast():
                logits = model(x)
            loss = F.cross_entropy(logits.float(), train_y[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if progress:
            progress(f"teacher {index} ({t.arch}) epoch {epoch + 1}/{t.train.epochs} loss {loss.item():.3f}")
    val_acc = _accuracy(model, val, val_y, 256, device)
    path = teacher_path(spec, index, data, workdir)
    _save_atomic(
        {"arch": t.arch, "classes": classes, "state_dict": model.state_dict(), "val_acc": val_acc,
         "train_s": time.monotonic() - start},
        path,
    )
    return TeacherCheckpoint(t.arch, classes, model.eval(), val_acc, path)


def _save_atomic(obj: dict, path: Path) -> None:
    """Write to a temp file beside ``path`` and rename, so a crash leaves no half file.

    The checkpoint is serialised in memory first: torch's zip writer reports a full disk
    as a RuntimeError ("unexpected pos"), a plain write as the OSError it is.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    buf = io.BytesIO()
    torch.save(obj, buf)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise EdrayError(str(path), f"cannot write ({err.strerror or err})",
                         "free space or choose another --workdir") from None


class LiveTeachers:
    """Runs the teachers on each batch (the slow path the logit store replaces)."""

    def __init__(
        self, teachers: list[TeacherCheckpoint], classes: ClassGroups, group_teachers: tuple[tuple[int, ...], ...]
    ):
        self.teachers = teachers
        self.classes = classes
        self.group_teachers = group_teachers

    @torch.no_grad()
    def group_logits(self, group: int, x: torch.Tensor, rows: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        wanted = list(self.classes.groups[group])
        outs = []
        for i in self.group_teachers[group]:
            teacher = self.teachers[i]
            logits = teacher.model(x)
            if teacher.classes != wanted:
                # A shared teacher: pick the group's columns (its outputs are natural ids).
                logits = logits[:, torch.tensor([teacher.classes.index(c) for c in wanted], device=logits.device)]
            outs.append(logits.float())
        return torch.stack(outs).mean(0)

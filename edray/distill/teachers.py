"""Teachers: where they are on disk, how ``edray teach`` trains them, and how a batch
gets its teacher logits per class group.

A teacher is a plain :class:`~edray.models.backbone.Backbone`. In ``per_group`` mode
teacher k knows only group k's classes (``|group k|`` outputs, in the group's sorted
natural order); in ``shared`` mode every teacher knows all classes and group k reads
its slice. Either way the loop asks one question: "logits of these samples over group
k's classes", answered by :class:`LiveTeachers` or by a precomputed Arrow store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from edray import atomic
from edray.atomic import write_torch
from edray.cache import cached_file, node_name
from edray.data import DataSplits, ImageSet, subset
from edray.data.groups import ClassGroups, split_classes
from edray.data.views import counter_hash
from edray.distill.loop import EpochMetrics, TeacherLogits, run_ed
from edray.errors import EdrayError
from edray.layout import Layout
from edray.models import Backbone, build_backbone
from edray.names import SHA256_SUFFIX
from edray.spec import EDSpec, OptimSpec, ScalingSpec, ScheduleSpec, Spec, StudentSpec, TeacherSpec, TeachersSpec
from edray.storage import exists, read_bytes, write_bytes

__all__ = [
    "LiveTeachers",
    "TeacherCheckpoint",
    "TeacherLogits",
    "load_teacher",
    "publish_teacher",
    "teacher_classes",
    "teacher_name",
    "teacher_path",
    "teacher_trained",
    "train_teacher",
    "trained_by",
]

TEACHER_RECORD = ".json"  # beside a published checkpoint: the node that trained it, its val_acc


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


def teacher_name(spec: Spec, index: int, data: DataSplits) -> str:
    """The file name of teacher ``index``'s checkpoint (one with a recipe, not given by path).

    It carries a hash of everything the teacher depends on (recipe, data, classes), so a
    changed split or recipe never picks up a stale teacher.
    """
    t = spec.teachers.models[index]
    classes = teacher_classes(spec, index, data.num_classes)
    return f"{spec.name}-t{index}-{t.arch}-{_identity(spec, index, data, classes)}.pt"


def teacher_path(spec: Spec, index: int, data: DataSplits, layout: Layout) -> Path:
    """Where this node reads teacher ``index``: its ``checkpoint`` if given, else this node's
    teacher folder (``WORKDIR/teachers`` on one machine; see :meth:`Layout.node_teachers`)."""
    t = spec.teachers.models[index]
    if t.checkpoint:
        return Path(t.checkpoint).expanduser()
    return layout.node_teachers() / teacher_name(spec, index, data)


def teacher_trained(spec: Spec, index: int, data: DataSplits, layout: Layout) -> bool:
    """Whether teacher ``index`` (one with a recipe) is trained where ``layout`` keeps teachers:
    its file on one machine; on a shared root its ``.sha256`` (published last)."""
    location = layout.teacher(teacher_name(spec, index, data))
    if layout.teachers_apart():
        return exists(location + SHA256_SUFFIX)
    return Path(location).is_file()


def _local_checkpoint(spec: Spec, index: int, data: DataSplits, layout: Layout) -> Path:
    """Teacher ``index``'s checkpoint on this node, fetched once from the shared root when it lives there.

    Raises:
        EdrayError: no checkpoint (with the command that makes one).
    """
    path = teacher_path(spec, index, data, layout)
    field = f"teachers.models[{index}].checkpoint"
    if spec.teachers.models[index].checkpoint:
        if not path.is_file():
            raise EdrayError(field, f"no trained teacher at {path}", "check the path")
        return path
    if not layout.teachers_apart():
        if not path.is_file():
            raise EdrayError(field, f"no trained teacher at {path}", "run `edray teach SPEC` first")
        return path
    location = layout.teacher(path.name)
    try:
        return cached_file(location, layout.cache(), "teachers")
    except FileNotFoundError:
        raise EdrayError(field, f"no trained teacher at {location}",
                         "run `edray sweep` (it trains missing teachers) or `edray teach` with EDRAY_SHARED set") \
            from None


def load_teacher(spec: Spec, index: int, data: DataSplits, layout: Layout, *, device: str = "cpu") -> TeacherCheckpoint:
    """Load teacher ``index`` (through this node's cache when ``layout`` shares it).

    Raises:
        EdrayError: no checkpoint there (with the command that makes one), or a
            checkpoint whose architecture or classes do not fit this spec.
    """
    path = _local_checkpoint(spec, index, data, layout)
    field = f"teachers.models[{index}].checkpoint"
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
                           pretrained=t.pretrained, load_weights=False)  # the shape; the weights are the checkpoint's
    model.load_state_dict(blob["state_dict"])
    model.to(device).eval()
    return TeacherCheckpoint(t.arch, classes, model, float(blob.get("val_acc", float("nan"))), path)


def train_teacher(
    spec: Spec,
    index: int,
    data: DataSplits,
    layout: Layout,
    *,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> TeacherCheckpoint:
    """Train teacher ``index`` with cross-entropy on its classes and save it atomically in
    this node's teacher folder; with a shared root, publish it there too (:func:`publish_teacher`).

    The teacher is a run of method ``ce`` in the ED loop (:func:`run_ed`) over its own
    classes, so it trains, evaluates and seeds exactly as a student does.
    """
    t: TeacherSpec = spec.teachers.models[index]
    classes = teacher_classes(spec, index, data.num_classes)

    def epoch_line(m: EpochMetrics) -> None:
        if progress is not None:  # passed to run_ed only when progress is given
            progress(f"teacher {index} ({t.arch}) epoch {m.epoch}/{t.train.epochs} loss {m.train_loss:.3f}")

    start = time.monotonic()
    try:
        result = run_ed(_teacher_spec(spec, index), _class_data(data, classes), None, device=device,
                        progress=epoch_line if progress else None, evaluate_test=False)
    except EdrayError as err:  # name the teacher's field, not the ce run's student
        if err.path != "student.pretrained":
            raise
        raise EdrayError(f"teachers.models[{index}].pretrained", err.problem, err.fix) from None
    model = result.model
    assert model is not None, "run_ed returns its finished model"
    path = layout.node_teachers() / teacher_name(spec, index, data)
    write_torch(path, {"arch": t.arch, "classes": classes, "state_dict": model.state_dict(),
                       "val_acc": result.val_acc, "train_s": time.monotonic() - start})
    if layout.teachers_apart():
        publish_teacher(path, layout, result.val_acc)
    return TeacherCheckpoint(t.arch, classes, model.to(device).eval(), result.val_acc, path)


def publish_teacher(path: Path, layout: Layout, val_acc: float) -> None:
    """Copy a checkpoint trained on this node to the shared root: the file, a ``.json``
    record (node, val_acc), then its ``.sha256``, last, since that says "trained"."""
    blob = path.read_bytes()
    sha = hashlib.sha256(blob).hexdigest()
    location = layout.teacher(path.name)
    write_bytes(location, blob)
    record = {"node": node_name(), "val_acc": val_acc, "sha256": sha}
    write_bytes(location + TEACHER_RECORD, json.dumps(record).encode())
    write_bytes(location + SHA256_SUFFIX, f"{sha}\n".encode())
    atomic.write_text(path.with_name(path.name + SHA256_SUFFIX), f"{sha}\n")  # this node's cache has it too


def trained_by(spec: Spec, index: int, data: DataSplits, layout: Layout) -> str:
    """The node that trained teacher ``index``, from the record published beside it ("?" if none)."""
    try:
        return json.loads(read_bytes(layout.teacher(teacher_name(spec, index, data)) + TEACHER_RECORD))["node"]
    except Exception:  # noqa: BLE001  (a record is a courtesy, never a reason to fail)
        return "?"


def _teacher_spec(spec: Spec, index: int) -> Spec:
    """Teacher ``index`` as a ``ce`` run: its architecture, its recipe, cosine learning rate.

    Its seed (model init, data order, views) hashes the recipe's seed with the teacher's
    index, so teachers of one recipe differ, and the student's seed never changes them.
    """
    t = spec.teachers.models[index]
    recipe = t.train
    seed = int(counter_hash(recipe.seed, index)[0]) >> 33  # 31 bits: the loop derives larger seeds from it
    optim = OptimSpec(lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay, epochs=recipe.epochs,
                      batch_size=recipe.batch_size, schedule=ScheduleSpec(kind="cosine"),
                      num_workers=spec.optim.num_workers, precision=spec.optim.precision)
    return Spec(
        name=spec.name, seed=seed, method="ce", deterministic=spec.deterministic, dataset=spec.dataset,
        teachers=TeachersSpec(models=[t], view_seed=seed), student=StudentSpec(arch=t.arch, pretrained=t.pretrained),
        ed=EDSpec(grades=1, split_ratios=[1.0], temperatures=[1.0], switch_epochs=[]), optim=optim,
        # the loader's CPUs (not the data-parallel layout: a teacher trains in one process)
        scaling=ScalingSpec(resources_per_worker=spec.scaling.resources_per_worker),
    )


def _class_data(data: DataSplits, classes: list[int]) -> DataSplits:
    """The splits restricted to ``classes``, labelled by position in ``classes`` (the teacher's outputs)."""
    local_of = torch.full((data.num_classes,), -1, dtype=torch.long)
    local_of[torch.tensor(classes)] = torch.arange(len(classes))

    def part(images: ImageSet) -> ImageSet:
        rows = subset(images, torch.isin(images.labels, torch.tensor(classes)).nonzero().flatten())
        rows.labels = local_of[rows.labels]
        return rows

    return dataclasses.replace(data, train=part(data.train), val=part(data.val), test=part(data.test),
                               num_classes=len(classes), class_names=[data.class_names[c] for c in classes])


class LiveTeachers:
    """Runs the teachers on each batch (the slow path the logit store replaces)."""

    views: int | None = None  # no store: the loop draws any view, a fresh augmentation

    def __init__(
        self, teachers: list[TeacherCheckpoint | None], classes: ClassGroups,
        group_teachers: tuple[tuple[int, ...], ...],
    ):  # None: a teacher that no group uses, never loaded
        self.teachers = teachers
        self.classes = classes
        self.group_teachers = group_teachers

    @torch.no_grad()
    def group_logits(self, group: int, x: torch.Tensor, rows: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        wanted = list(self.classes.groups[group])
        outs = []
        for i in self.group_teachers[group]:
            teacher = self.teachers[i]
            assert teacher is not None  # every teacher a group uses is loaded
            logits = teacher.model(x)
            if teacher.classes != wanted:
                # A shared teacher: pick the group's columns (its outputs are natural ids).
                logits = logits[:, torch.tensor([teacher.classes.index(c) for c in wanted], device=logits.device)]
            outs.append(logits.float())
        return torch.stack(outs).mean(0)

"""The ED training loop, in plain PyTorch (no Ray, no MLflow).

``run_ed`` trains a growing student through the grades of a :class:`Plan` and calls a
``report(metrics, checkpoint)`` hook after every epoch. Ray Train, Tune and MLflow wrap
it from outside; the same loop runs under ``edray train`` and on a machine with no Ray.

Determinism: model init, data order and augmentation views are all derived from the
spec's seed and the epoch, never from hidden global RNG state, so resuming from the
checkpoint of epoch e gives the same run as not stopping (bit for bit on CPU with
``deterministic: true``).
"""

from __future__ import annotations

import copy
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist

from edray.data import DataSplits, ImageSet, apply_views, iterate_batches, view_params
from edray.distill.losses import sliced_kd_loss
from edray.distill.optim import lr_at, make_optimizer, set_lr
from edray.distill.plan import Plan, make_plan
from edray.distill.teachers import TeacherLogits
from edray.errors import EdrayError
from edray.models import Backbone, GrowingStudent, build_backbone
from edray.spec import Spec

__all__ = ["CHECKPOINT_FORMAT", "DistContext", "EpochMetrics", "ReportFn", "RunResult", "run_ed"]

CHECKPOINT_FORMAT = 1
_ANY_VIEW = 2**31 - 1


@dataclass
class EpochMetrics:
    """What one epoch reports (the ``metrics`` of the report hook, flattened)."""

    epoch: int  # epochs completed, 1-based
    grade: int
    lr: float
    train_loss: float
    val_acc: float  # over all classes (a class not yet seen counts as wrong)
    val_acc_seen: float  # over the classes seen so far
    seen_classes: int
    epochs_in_grade: int  # epochs completed since the grade began (for grade-aware early stopping)
    epoch_s: float


@dataclass
class RunResult:
    method: str
    val_acc: float
    test_acc: float | None
    epochs: int
    switch_epochs: list[int]
    wall_s: float
    history: list[EpochMetrics] = field(default_factory=list)
    model: Backbone | None = None  # the finished student, a plain model over natural class ids

    def summary(self) -> dict[str, Any]:
        """The JSON line of ``edray train --json``."""
        grade_acc: dict[str, float] = {}
        for m in self.history:
            grade_acc[str(m.grade)] = m.val_acc_seen
        return {
            "method": self.method,
            "val_acc": self.val_acc,
            "test_acc": self.test_acc,
            "epochs": self.epochs,
            "switch_epochs": self.switch_epochs,
            "wall_s": round(self.wall_s, 3),
            "val_acc_seen_per_grade": grade_acc,
        }


@dataclass(frozen=True)
class DistContext:
    """Data-parallel position of this process; ``world_size == 1`` means no collective calls.

    Each global batch is cut into ``world_size`` slices; gradients of the summed loss
    are all-reduced and divided by the global batch size, so any number of workers
    follows the same trajectory as one (up to BatchNorm statistics, which are local).
    """

    rank: int = 0
    world_size: int = 1


ReportFn = Callable[[dict[str, Any], dict[str, Any] | None], None]


def _set_determinism(spec: Spec) -> None:
    if spec.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def _epoch_generator(spec: Spec, epoch: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((spec.seed * 1_000_003 + epoch) * 31 + salt)


@torch.no_grad()
def _evaluate(
    student: torch.nn.Module, images: ImageSet, rank: torch.Tensor, seen: int, device: str, batch_size: int = 512
) -> tuple[float, float]:
    """(accuracy over all samples, accuracy over samples of seen classes), ordered space."""
    student.eval()
    correct = total = correct_seen = total_seen = 0
    for x, y, _ in iterate_batches(images, torch.arange(len(images)), batch_size):
        target = rank[y]
        pred = student(x.to(device)).argmax(1).cpu()
        hit = pred == target
        is_seen = target < seen
        correct += hit.sum().item()
        total += len(y)
        correct_seen += (hit & is_seen).sum().item()
        total_seen += is_seen.sum().item()
    return correct / max(1, total), correct_seen / max(1, total_seen)


def _optimizer_for_grade(spec: Spec, student: GrowingStudent, grade: int, old: torch.optim.Optimizer | None):
    """``reset`` rebuilds the optimizer over the grade's parameters (as the authors do);
    ``carry`` adds the new segment and head to the existing one, keeping momentum."""
    if spec.ed.optimizer_at_switch == "carry" and old is not None:
        old.add_param_group({"params": student.new_parameters(grade)})
        return old
    if spec.ed.optimizer_at_switch == "carry":
        opt = make_optimizer(spec.optim, student.new_parameters(1))
        for g in range(2, grade + 1):
            opt.add_param_group({"params": student.new_parameters(g)})
        return opt
    return make_optimizer(spec.optim, student.grade_parameters(grade))


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _export(student: GrowingStudent, plan: Plan) -> Backbone:
    """The finished student as a plain model whose outputs are natural class ids."""
    model = copy.deepcopy(student.to_backbone()).cpu().eval()
    fc = model.classifier[-1]
    rank = plan.classes.rank
    with torch.no_grad():
        fc.weight.copy_(fc.weight[rank])
        fc.bias.copy_(fc.bias[rank])
    return model


def _sync_gradients(params: list[torch.nn.Parameter], dist: DistContext) -> None:
    if dist.world_size == 1:
        return
    for p in params:
        if p.grad is not None:
            torch_dist.all_reduce(p.grad, op=torch_dist.ReduceOp.SUM)


def run_ed(
    spec: Spec,
    data: DataSplits,
    teachers: TeacherLogits | None,
    *,
    report: ReportFn | None = None,
    resume: dict[str, Any] | None = None,
    device: str = "cpu",
    progress: Callable[[EpochMetrics], None] | None = None,
    evaluate_test: bool = True,
    dist: DistContext = DistContext(),
) -> RunResult:
    """Train ``spec.method`` on ``data``, distilling from ``teachers``.

    Args:
        spec: the validated spec.
        data: train / validation / test splits.
        teachers: source of teacher logits per class group, or None for ``ce``.
        report: called after every epoch with the metrics and a checkpoint (the whole
            state: model, optimizer, grade, epoch, RNG); the caller decides to keep it.
        resume: a checkpoint from ``report``; training continues after its epoch.
        device: torch device string.
        progress: called after every epoch (for the CLI's progress line).
        evaluate_test: evaluate the finished student on the test split. A sweep turns
            it off: it ranks by validation accuracy and keeps the test split unseen.
        dist: data-parallel position (Ray Train workers).

    Raises:
        EdrayError: a method that needs teachers without them, or a foreign checkpoint.
    """
    start_wall = time.monotonic()
    _set_determinism(spec)
    plan = make_plan(spec, data.num_classes)
    if plan.method != "ce" and teachers is None:
        raise EdrayError("method", f"{plan.method} needs teachers, none were given", "train them with `edray teach`")

    torch.manual_seed(spec.seed)
    backbone = build_backbone(
        spec.student.arch, num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size
    )
    grade_classes = plan.classes.grade_classes if plan.method == "ed" else [data.num_classes]
    student = GrowingStudent(backbone, grade_classes).to(device)

    rank = plan.classes.rank
    group_of = plan.classes.group_of
    offsets = plan.classes.offsets
    train_labels = data.train.labels
    train_groups = group_of[train_labels]
    aug = spec.dataset.augmentation
    num_views = getattr(teachers, "views", None)  # a store has a fixed number of views

    first_epoch, history, optimizer, grade = 0, [], None, 0
    if resume is not None:
        if resume.get("format") != CHECKPOINT_FORMAT or resume.get("method") != plan.method:
            raise EdrayError("resume", "checkpoint is from another edray version or method", "start a fresh run")
        grade = resume["grade"]
        student.set_grade(grade)
        student.load_state_dict(resume["student"])
        optimizer = _optimizer_for_grade(spec, student, grade, None)
        optimizer.load_state_dict(resume["optimizer"])
        first_epoch = resume["epoch"]
        history = [EpochMetrics(**m) for m in resume["history"]]
        _restore_rng(resume["rng"])

    for epoch in range(first_epoch, spec.optim.epochs):
        tic = time.monotonic()
        new_grade = plan.grade_at(epoch)
        if new_grade != grade:
            student.set_grade(new_grade)
            optimizer = _optimizer_for_grade(spec, student, new_grade, optimizer)
            grade = new_grade
        g = plan.grades[grade - 1]
        seen = plan.classes.seen(g.groups)
        lr = lr_at(spec.optim, epoch)
        set_lr(optimizer, lr)
        params = [p for group in optimizer.param_groups for p in group["params"]]

        gen = _epoch_generator(spec, epoch)
        active = (train_groups < g.groups).nonzero().flatten()
        if plan.replay == "sequential":
            passes = [active[train_groups[active] == k] for k in range(g.groups)]
            passes = [p[torch.randperm(len(p), generator=gen)] for p in passes]
        else:
            passes = [active[torch.randperm(len(active), generator=gen)]]

        student.train()
        loss_sum, seen_samples = 0.0, 0
        global_batch = spec.optim.batch_size
        for order in passes:
            views_all = (
                torch.randint(1, num_views, (len(order),), generator=gen)
                if num_views and num_views > 1
                else torch.zeros(len(order), dtype=torch.long)
                if num_views == 1
                else torch.randint(1, _ANY_VIEW, (len(order),), generator=gen)
            )
            view_of = torch.zeros(len(train_labels), dtype=torch.long)  # row -> its view this epoch
            view_of[order] = views_all
            local_order, local_batch, global_sizes = _shard(order, global_batch, dist)
            batches = iterate_batches(data.train, local_order, local_batch, num_workers=spec.optim.num_workers)
            for (x, y, rows), global_size in zip(batches, global_sizes):
                views = view_of[rows]
                x = apply_views(x, view_params(spec.teachers.view_seed, rows, views, aug), aug).to(device)
                logits = student(x)
                sample_groups = group_of[y]
                teacher_logits: list[torch.Tensor | None] = [None] * len(offsets[:-1])
                if teachers is not None and plan.alpha < 1.0:
                    for k in sample_groups.unique().tolist():
                        mask = sample_groups == k
                        teacher_logits[k] = teachers.group_logits(
                            k, x[mask.to(x.device)], rows[mask], views[mask]
                        ).to(device)
                # Sum over the local slice, normalised by the global batch: all-reduced
                # gradients then equal one worker's gradient of the whole batch.
                loss = sliced_kd_loss(
                    logits, rank[y].to(device), teacher_logits, sample_groups.to(device), offsets,
                    alpha=plan.alpha, temperature=g.temperature,
                ) * len(y)
                optimizer.zero_grad(set_to_none=True)
                (loss / global_size).backward()
                _sync_gradients(params, dist)
                optimizer.step()
                loss_sum += loss.item()
                seen_samples += len(y)

        val_acc, val_acc_seen = _evaluate(student, data.val, rank, seen, device)
        in_grade = epoch + 1 - g.start_epoch
        metrics = EpochMetrics(
            epoch=epoch + 1, grade=grade, lr=lr, train_loss=loss_sum / max(1, seen_samples),
            val_acc=val_acc, val_acc_seen=val_acc_seen, seen_classes=seen,
            epochs_in_grade=in_grade, epoch_s=time.monotonic() - tic,
        )
        history.append(metrics)
        if progress:
            progress(metrics)
        if report:
            checkpoint = {
                "format": CHECKPOINT_FORMAT, "method": plan.method, "epoch": epoch + 1, "grade": grade,
                # Copies, not views of live tensors: the next step must not change a
                # checkpoint the caller still holds.
                "student": copy.deepcopy(student.state_dict()), "optimizer": copy.deepcopy(optimizer.state_dict()),
                "history": [asdict(m) for m in history], "rng": _rng_state(),
            }
            if epoch + 1 == spec.optim.epochs:
                # The finished student (natural class order), so a wrapper can keep it.
                checkpoint["final_model"] = _export(student, plan).state_dict()
            report(asdict(metrics), checkpoint)

    model = _export(student, plan)
    test_acc = None
    if evaluate_test:
        test_acc, _ = _evaluate(model, data.test, torch.arange(data.num_classes), data.num_classes, "cpu")
    return RunResult(
        method=plan.method,
        val_acc=history[-1].val_acc if history else float("nan"),
        test_acc=test_acc,
        epochs=spec.optim.epochs,
        switch_epochs=plan.switch_epochs,
        wall_s=time.monotonic() - start_wall,
        history=history,
        model=model,
    )


def _shard(order: torch.Tensor, global_batch: int, dist: DistContext) -> tuple[torch.Tensor, int, list[int]]:
    """This rank's rows, its batch size, and the size of each global batch.

    Every global batch is cut into ``world_size`` near-equal slices, so every rank runs
    the same number of steps (a collective call per step must match on all ranks). A
    last batch smaller than the world is dropped.
    """
    sizes = [min(global_batch, len(order) - s) for s in range(0, len(order), global_batch)]
    if dist.world_size == 1:
        return order, global_batch, sizes
    if global_batch % dist.world_size:
        raise EdrayError(
            "optim.batch_size", f"{global_batch} does not split over {dist.world_size} workers",
            "use a multiple of scaling.num_workers",
        )
    sizes = [n for n in sizes if n >= dist.world_size]
    chunks = order[: sum(sizes)].split(sizes)
    pieces = [chunk.tensor_split(dist.world_size)[dist.rank] for chunk in chunks]
    return (torch.cat(pieces) if pieces else order[:0]), global_batch // dist.world_size, sizes

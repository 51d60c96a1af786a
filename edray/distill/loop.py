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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, cast

import numpy as np
import torch
import torch.distributed as torch_dist

from edray.data import BatchLoader, DataSplits, ImageSet, batch_views, iterate_batches, loader_settings, view_params
from edray.data.views import LIVE_VIEW_IDS
from edray.distill.losses import sliced_kd_loss
from edray.distill.optim import lr_at, make_optimizer, set_lr
from edray.distill.plan import Plan, make_plan
from edray.distill.precision import Precision, configure_backends, prepare_model, resolve_precision, to_device
from edray.errors import EdrayError
from edray.models import Backbone, GrowingStudent, build_backbone
from edray.spec import Spec

__all__ = [
    "CHECKPOINT_FORMAT", "DistContext", "EpochMetrics", "ReportFn", "RunResult", "TeacherLogits", "accuracy", "run_ed",
]

CHECKPOINT_FORMAT = 1


class TeacherLogits(Protocol):
    """What the loop asks of its teachers: logits over group ``k``'s classes for a batch
    of group-k samples, each seen in the view the loop drew for it.

    Attributes:
        views: views per training sample a logit store holds (view 0 unaugmented), so the
            loop draws only those; None for teachers run live, which see any view.
    """

    views: int | None

    def group_logits(
        self, group: int, x: torch.Tensor, rows: torch.Tensor, views: torch.Tensor
    ) -> torch.Tensor: ...


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
    epochs_in_grade: int  # epochs completed since the grade began (logged; early stopping counts final-grade epochs)
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


_CUBLAS = "CUBLAS_WORKSPACE_CONFIG"


@contextmanager
def _process_state(spec: Spec) -> Iterator[None]:
    """Deterministic kernels (``spec.deterministic``) and the global RNGs, for this run only.

    The run seeds the global RNGs (model init) and a resumed run restores them; both
    flags and RNGs are process-wide, so they are put back as they were when the run
    ends: a reused Tune actor's next trial, or the caller's notebook, sees no change.
    """
    flags = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    cublas = os.environ.get(_CUBLAS)
    rng = _rng_state()
    try:
        if spec.deterministic:
            os.environ.setdefault(_CUBLAS, ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
        if cublas is None:
            os.environ.pop(_CUBLAS, None)
        else:
            os.environ[_CUBLAS] = cublas
        _restore_rng(rng)


def _epoch_generator(spec: Spec, epoch: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((spec.seed * 1_000_003 + epoch) * 31 + salt)


@torch.no_grad()
def _evaluate(
    student: torch.nn.Module, images: ImageSet, rank: torch.Tensor, seen: int, device: str,
    precision: Precision | None = None, batch_size: int = 512,
) -> tuple[float, float]:
    """(accuracy over all samples, accuracy over samples of seen classes), ordered space."""
    student.eval()
    precision = precision or resolve_precision("fp32", device)
    correct: float = 0  # .item() of a sum is typed int | float
    correct_seen: float = 0
    total: float = 0
    total_seen: float = 0
    for x, y, _ in iterate_batches(images, torch.arange(len(images)), batch_size):
        target = rank[y]
        with precision.autocast():
            pred = student(to_device(x, device)).argmax(1).cpu()
        hit = pred == target
        is_seen = target < seen
        correct += hit.sum().item()
        total += len(y)
        correct_seen += (hit & is_seen).sum().item()
        total_seen += is_seen.sum().item()
    return correct / max(1, total), correct_seen / max(1, total_seen)


def accuracy(model: torch.nn.Module, images: ImageSet, device: str = "cpu") -> float:
    """Accuracy of a finished (exported) model, whose outputs are the dataset's class ids, on ``images``."""
    identity = torch.arange(max(int(images.labels.max()) + 1, 1)) if len(images) else torch.arange(1)
    return _evaluate(model.to(device), images, identity, len(identity), device)[0]


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
    fc = cast(torch.nn.Linear, model.classifier[-1])  # Backbone's head ends in its Linear layer
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


@dataclass
class _Run:
    """What the steps of one run share: its inputs and the state that grows epoch by epoch."""

    spec: Spec
    plan: Plan
    data: DataSplits
    teachers: TeacherLogits | None
    student: GrowingStudent
    device: str
    dist: DistContext
    precision: Precision
    scaler: torch.amp.GradScaler
    loader: BatchLoader
    grade: int = 0
    optimizer: torch.optim.Optimizer | None = None
    history: list[EpochMetrics] = field(default_factory=list)

    @property
    def live_optimizer(self) -> torch.optim.Optimizer:
        """The grade's optimizer: _switch_grade builds it before the first epoch trains."""
        assert self.optimizer is not None, "no optimizer before the first grade"
        return self.optimizer

    @property
    def grade_spec(self):
        return self.plan.grades[self.grade - 1]


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
    with _process_state(spec):
        run = _start(spec, data, teachers, device, dist)
        first_epoch = _restore(run, resume) if resume is not None else 0
        for epoch in range(first_epoch, spec.optim.epochs):
            metrics = _run_epoch(run, epoch)
            if progress:
                progress(metrics)
            if report:
                report(asdict(metrics), _checkpoint(run, epoch))
        return _result(run, evaluate_test, start_wall)


def _start(spec: Spec, data: DataSplits, teachers: TeacherLogits | None, device: str, dist: DistContext) -> _Run:
    """The plan and a fresh student (grade 0: :func:`_switch_grade` builds grade 1)."""
    plan = make_plan(spec, data.num_classes)
    if plan.method != "ce" and teachers is None:
        raise EdrayError("method", f"{plan.method} needs teachers, none were given", "train them with `edray teach`")
    torch.manual_seed(spec.seed)
    backbone = build_backbone(
        spec.student.arch, num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size,
        pretrained=spec.student.pretrained, field="student.pretrained",
    )
    grade_classes = plan.classes.grade_classes if plan.method == "ed" else [data.num_classes]
    precision = resolve_precision(spec.optim.precision, device)  # fp16 on a CPU fails here, before any work
    configure_backends(deterministic=spec.deterministic, device=device)
    student = prepare_model(GrowingStudent(backbone, grade_classes), device)
    settings = loader_settings(spec.optim, spec.scaling, device)
    if torch.device(device).type == "cpu":  # the loader (its workers, if any) cuts the views while this trains
        loader = BatchLoader(data.train, settings, views=(spec.teachers.view_seed, spec.dataset.augmentation))
    else:  # uint8 batches where the data is decoded pixels: normalised and cut into views on the device
        loader = BatchLoader(data.train, settings, pixels=True)
    return _Run(spec, plan, data, teachers, student, device, dist, precision, precision.grad_scaler(), loader)


def _restore(run: _Run, resume: dict[str, Any]) -> int:
    """Load a checkpoint of :func:`_checkpoint` into ``run``; returns the epoch to continue at."""
    if resume.get("format") != CHECKPOINT_FORMAT or resume.get("method") != run.plan.method:
        raise EdrayError("resume", "checkpoint is from another edray version or method", "start a fresh run")
    run.grade = resume["grade"]
    run.student.set_grade(run.grade)
    run.student.load_state_dict(resume["student"])
    run.optimizer = _optimizer_for_grade(run.spec, run.student, run.grade, None)
    run.optimizer.load_state_dict(resume["optimizer"])
    if resume.get("scaler"):
        run.scaler.load_state_dict(resume["scaler"])
    run.history = [EpochMetrics(**m) for m in resume["history"]]
    _restore_rng(resume["rng"])
    return resume["epoch"]


def _switch_grade(run: _Run, epoch: int) -> None:
    """At a grade switch: grow the student and rebuild (or extend) the optimizer."""
    new_grade = run.plan.grade_at(epoch)
    if new_grade != run.grade:
        run.student.set_grade(new_grade)
        run.optimizer = _optimizer_for_grade(run.spec, run.student, new_grade, run.optimizer)
        run.grade = new_grade


def _epoch_order(run: _Run, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The epoch's passes: (training rows in order, the view of each row).

    ``sequential`` replay makes one pass per seen group, ``mixed`` one shuffled pass
    over their union. One generator per epoch draws the orders first, then the views,
    so a resumed run draws exactly what an uninterrupted one does.
    """
    gen = _epoch_generator(run.spec, epoch)
    train_groups = run.plan.classes.group_of[run.data.train.labels]
    groups = run.grade_spec.groups
    active = (train_groups < groups).nonzero().flatten()
    if run.plan.replay == "sequential":
        passes = [active[train_groups[active] == k] for k in range(groups)]
        passes = [p[torch.randperm(len(p), generator=gen)] for p in passes]
    else:
        passes = [active[torch.randperm(len(active), generator=gen)]]
    num_views = run.teachers.views if run.teachers is not None else None
    return [(order, _views_for(num_views, len(order), gen)) for order in passes]


def _views_for(num_views: int | None, n: int, gen: torch.Generator) -> torch.Tensor:
    """The view of each of ``n`` rows this epoch.

    A store of V > 1 views: one of its augmented views 1..V-1. A store of the evaluation
    view only: view 0. Live teachers (no store): any view id, each a fresh augmentation.
    """
    if not num_views:
        return torch.randint(1, LIVE_VIEW_IDS, (n,), generator=gen)
    if num_views == 1:
        return torch.zeros(n, dtype=torch.long)
    return torch.randint(1, num_views, (n,), generator=gen)


def _train_one_epoch(run: _Run, passes: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """One epoch over ``passes``; returns the mean training loss per sample."""
    spec, dist = run.spec, run.dist
    params = [p for group in run.live_optimizer.param_groups for p in group["params"]]
    run.student.train()
    loss_sum, seen_samples = 0.0, 0
    for order, views_all in passes:
        view_of = torch.zeros(len(run.data.train.labels), dtype=torch.long)  # row -> its view this epoch
        view_of[order] = views_all
        local_order, local_batch, global_sizes = _shard(order, spec.optim.batch_size, dist)
        batches = run.loader.batches(local_order, local_batch, views=view_of[local_order])
        for (x, y, rows), global_size in zip(batches, global_sizes):
            loss_sum += _train_step(run, params, x, y, rows, view_of[rows], global_size)
            seen_samples += len(y)
    return loss_sum / max(1, seen_samples)


def _train_step(
    run: _Run, params: list[torch.nn.Parameter], x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor,
    views: torch.Tensor, global_size: int,
) -> float:
    """One optimizer step on a batch; returns the batch's summed loss.

    The views are cut by the loader (CPU) or on the device after one copy of the batch
    (GPU); the forward passes run under the run's autocast, the loss in fp32 on their
    float logits.
    """
    x = to_device(x, run.device)
    if not run.loader.applies_views:
        aug = run.spec.dataset.augmentation
        x = batch_views(x, view_params(run.spec.teachers.view_seed, rows, views, aug), aug, run.data.train.stats)
    sample_groups = run.plan.classes.group_of[y]
    with run.precision.autocast():
        logits = run.student(x)
        teacher_logits = _teacher_logits(run, x, sample_groups, rows, views)
    # Sum over the local slice, normalised by the global batch: all-reduced
    # gradients then equal one worker's gradient of the whole batch.
    loss = sliced_kd_loss(
        logits.float(), run.plan.classes.rank[y].to(run.device), teacher_logits,
        sample_groups.to(run.device), run.plan.classes.offsets,
        alpha=run.plan.alpha, temperature=run.grade_spec.temperature,
    ) * len(y)
    run.live_optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss / global_size).backward()  # fp16: scaled so small gradients do not underflow
    _sync_gradients(params, run.dist)
    run.scaler.step(run.live_optimizer)  # fp16: unscales, skips the step on inf/NaN; otherwise optimizer.step()
    run.scaler.update()
    return loss.item()


def _teacher_logits(
    run: _Run, x: torch.Tensor, sample_groups: torch.Tensor, rows: torch.Tensor, views: torch.Tensor
) -> list[torch.Tensor | None]:
    """Teacher logits per class group present in the batch (None where no teacher speaks)."""
    out: list[torch.Tensor | None] = [None] * len(run.plan.classes.offsets[:-1])
    if run.teachers is None or run.plan.alpha >= 1.0:
        return out
    for k in sample_groups.unique().tolist():
        mask = sample_groups == k
        out[k] = run.teachers.group_logits(k, x[mask.to(x.device)], rows[mask], views[mask]).to(run.device).float()
    return out


def _run_epoch(run: _Run, epoch: int) -> EpochMetrics:
    """Switch grade if due, train one epoch, evaluate on the validation split."""
    tic = time.monotonic()
    _switch_grade(run, epoch)
    lr = lr_at(run.spec.optim, epoch)
    set_lr(run.live_optimizer, lr)
    train_loss = _train_one_epoch(run, _epoch_order(run, epoch))
    metrics = _epoch_metrics(run, epoch, lr, train_loss, tic)
    run.history.append(metrics)
    return metrics


def _epoch_metrics(run: _Run, epoch: int, lr: float, train_loss: float, tic: float) -> EpochMetrics:
    g = run.grade_spec
    seen = run.plan.classes.seen(g.groups)
    val_acc, val_acc_seen = _evaluate(
        run.student, run.data.val, run.plan.classes.rank, seen, run.device, run.precision
    )
    return EpochMetrics(
        epoch=epoch + 1, grade=run.grade, lr=lr, train_loss=train_loss,
        val_acc=val_acc, val_acc_seen=val_acc_seen, seen_classes=seen,
        epochs_in_grade=epoch + 1 - g.start_epoch, epoch_s=time.monotonic() - tic,
    )


def _checkpoint(run: _Run, epoch: int) -> dict[str, Any]:
    """The whole state after ``epoch``: what :func:`_restore` needs to continue bit for bit."""
    checkpoint = {
        "format": CHECKPOINT_FORMAT, "method": run.plan.method, "epoch": epoch + 1, "grade": run.grade,
        # Copies, not views of live tensors: the next step must not change a
        # checkpoint the caller still holds.
        "student": copy.deepcopy(run.student.state_dict()), "optimizer": copy.deepcopy(run.live_optimizer.state_dict()),
        "history": [asdict(m) for m in run.history], "rng": _rng_state(),
        "scaler": run.scaler.state_dict(),  # empty unless fp16
    }
    if epoch + 1 == run.spec.optim.epochs:
        # The finished student (natural class order), so a wrapper can keep it.
        checkpoint["final_model"] = _export(run.student, run.plan).state_dict()
    return checkpoint


def _result(run: _Run, evaluate_test: bool, start_wall: float) -> RunResult:
    """The finished student, exported, and (unless a sweep) its test accuracy."""
    model = _export(run.student, run.plan)
    data = run.data
    test_acc = None
    if evaluate_test:
        test_acc, _ = _evaluate(
            prepare_model(model, run.device), data.test, torch.arange(data.num_classes), data.num_classes,
            run.device, run.precision,
        )
        model.cpu().to(memory_format=torch.contiguous_format)
    return RunResult(
        method=run.plan.method,
        val_acc=run.history[-1].val_acc if run.history else float("nan"),
        test_acc=test_acc,
        epochs=run.spec.optim.epochs,
        switch_epochs=run.plan.switch_epochs,
        wall_s=time.monotonic() - start_wall,
        history=run.history,
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

"""Optimizers and the learning-rate schedule over the whole run.

The schedule is a pure function of the epoch, not a stateful scheduler object: a grade
switch that rebuilds the optimizer (``reset``) then keeps the run's schedule instead of
restarting it, and a checkpoint needs nothing but the epoch to restore it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from edray.spec import OptimSpec

__all__ = ["lr_at", "make_optimizer", "set_lr"]


def lr_at(optim: OptimSpec, epoch: int, *, epochs: int | None = None) -> float:
    """Learning rate for ``epoch`` (0-based) of a run of ``epochs`` (default ``optim.epochs``)."""
    total = epochs or optim.epochs
    sched = optim.schedule
    if sched.kind == "constant":
        return optim.lr
    if sched.kind == "multistep":
        return optim.lr * sched.gamma ** sum(epoch >= m for m in sched.milestones)
    return optim.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / total))


def make_optimizer(optim: OptimSpec, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    params = list(params)
    if optim.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr

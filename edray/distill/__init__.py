"""Distillation: the sliced KD loss, the ED loop and its baselines, teachers."""

from edray.distill.loop import DistContext, EpochMetrics, RunResult, run_ed
from edray.distill.losses import kd_kl, sliced_kd_loss
from edray.distill.plan import Grade, Plan, make_plan

__all__ = [
    "DistContext",
    "EpochMetrics",
    "Grade",
    "Plan",
    "RunResult",
    "kd_kl",
    "make_plan",
    "run_ed",
    "sliced_kd_loss",
]

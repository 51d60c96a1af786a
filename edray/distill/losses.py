"""The sliced distillation loss of ED (docs/design.md#the-method).

For a sample x of group k at grade g, with student logits z over the classes seen so
far and teacher logits t_k(x) over group k's classes::

    L = alpha * CE(z, y) + (1 - alpha) * T_g^2 * KL(softmax(t_k(x) / T_g) || softmax(z[group k] / T_g))

The softmax of both sides is taken within the group's slice, so a teacher that only
knows its own group (``per_group`` mode) and a full teacher sliced to the group
(``shared`` mode) give the same kind of target. ``T^2`` keeps gradient magnitudes
comparable across temperatures (Hinton et al. 2015).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["kd_kl", "sliced_kd_loss"]


def kd_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, shape [B]."""
    log_p_s = F.log_softmax(student / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher / temperature, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1) * temperature**2


def sliced_kd_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: list[torch.Tensor | None],
    sample_groups: torch.Tensor,
    group_offsets: list[int],
    *,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """Mean ED loss over a batch that may mix samples of several groups.

    Args:
        logits: student logits over the seen classes, ordered space, [B, C_seen].
        targets: ordered-space labels, [B].
        teacher_logits: per group k, teacher logits of the batch's group-k samples
            ([n_k, |group k|], in the order those samples appear in the batch), or None
            when no sample of group k is in the batch or there is no teacher (``ce``).
        sample_groups: 0-based group index of each sample, [B].
        group_offsets: start of each group in ordered space, plus the end.
        alpha: weight of cross-entropy; ``1 - alpha`` goes to the KL term.
        temperature: the grade's temperature.
    """
    ce = F.cross_entropy(logits, targets, reduction="sum")
    if alpha >= 1.0:
        return ce / logits.shape[0]
    kl = logits.new_zeros(())
    for k, teacher in enumerate(teacher_logits):
        if teacher is None:
            continue
        mask = sample_groups == k
        student_slice = logits[mask, group_offsets[k] : group_offsets[k + 1]]
        kl = kl + kd_kl(student_slice, teacher.to(logits.dtype), temperature).sum()
    return (alpha * ce + (1.0 - alpha) * kl) / logits.shape[0]

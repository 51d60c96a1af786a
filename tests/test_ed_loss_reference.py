"""The ED loss against a reference written here in plain Python (``math``, no torch ops):
the T^2 factor, the direction of the KL and the class slice of each group."""

from __future__ import annotations

import math
import random

import pytest
import torch

from edray.distill.losses import kd_kl, sliced_kd_loss


def _softmax(values: list[float], t: float) -> list[float]:
    top = max(values)
    exps = [math.exp((v - top) / t) for v in values]
    return [e / sum(exps) for e in exps]


def _kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) = sum p log(p / q)."""
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def _reference(logits, labels, teachers, groups, offsets, alpha, t) -> float:
    """alpha * CE + (1 - alpha) * T^2 * KL(teacher || student slice), averaged over the batch."""
    total = 0.0
    taught = {k: iter(rows) for k, rows in teachers.items()}
    for z, y, k in zip(logits, labels, groups):
        ce = -math.log(_softmax(z, 1.0)[y])
        kl = 0.0
        if k in taught:
            student = z[offsets[k] : offsets[k + 1]]
            kl = t * t * _kl(_softmax(next(taught[k]), t), _softmax(student, t))
        total += alpha * ce + (1 - alpha) * kl
    return total / len(logits)


@pytest.mark.parametrize("seed", range(5))
def test_loss_matches_the_reference_on_random_batches(seed):
    rng = random.Random(seed)
    offsets = [0, 2, 5, 9]  # three groups of 2, 3 and 4 classes
    n, t, alpha = 12, rng.uniform(0.5, 6.0), rng.uniform(0.05, 0.95)
    logits = [[rng.gauss(0, 3) for _ in range(offsets[-1])] for _ in range(n)]
    groups = [rng.randrange(3) for _ in range(n)]
    labels = [rng.randrange(offsets[k], offsets[k + 1]) for k in groups]
    teachers = {k: [[rng.gauss(0, 3) for _ in range(offsets[k + 1] - offsets[k])] for g in groups if g == k]
                for k in range(3) if k in groups}
    teacher_logits = [torch.tensor(teachers[k], dtype=torch.float64) if k in teachers else None for k in range(3)]
    got = sliced_kd_loss(torch.tensor(logits, dtype=torch.float64), torch.tensor(labels), teacher_logits,
                         torch.tensor(groups), offsets, alpha=alpha, temperature=t)
    assert got.item() == pytest.approx(_reference(logits, labels, teachers, groups, offsets, alpha, t), rel=1e-9)


def test_kl_has_the_teacher_first_and_is_scaled_by_t_squared():
    student, teacher = [2.0, -1.0, 0.5, 3.0], [0.0, 4.0, -2.0, 1.0]
    for t in (0.5, 1.0, 3.0, 7.0):
        got = kd_kl(torch.tensor([student], dtype=torch.float64), torch.tensor([teacher], dtype=torch.float64), t)
        forward = _kl(_softmax(teacher, t), _softmax(student, t))
        backward = _kl(_softmax(student, t), _softmax(teacher, t))
        assert abs(forward - backward) > 1e-3  # the two directions differ here, so the check can tell them apart
        assert got.item() == pytest.approx(t * t * forward, rel=1e-9)


def test_only_the_groups_slice_enters_the_kl():
    """Logits outside group 1's slice change the cross-entropy, never the KL term."""
    offsets, teacher = [0, 3, 5, 8], [[1.5, -0.5]]
    base = [0.3, -1.0, 2.0, 1.0, 0.0, 0.7, -0.4, 1.1]
    outside = [v + (5.0 if not 3 <= i < 5 else 0.0) for i, v in enumerate(base)]
    inside = [v + (5.0 if i == 3 else 0.0) for i, v in enumerate(base)]

    def kl_only(z):  # alpha = 0: the KL term alone
        return sliced_kd_loss(torch.tensor([z], dtype=torch.float64), torch.tensor([3]),
                              [None, torch.tensor(teacher, dtype=torch.float64), None], torch.tensor([1]),
                              offsets, alpha=0.0, temperature=2.0).item()

    expected = 4.0 * _kl(_softmax(teacher[0], 2.0), _softmax(base[3:5], 2.0))
    assert kl_only(base) == pytest.approx(expected, rel=1e-9)
    assert kl_only(outside) == pytest.approx(expected, rel=1e-9)
    assert kl_only(inside) != pytest.approx(expected, rel=1e-3)

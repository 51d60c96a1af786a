"""The sliced KD loss against values worked out by hand (see the comments)."""

import math

import pytest
import torch

from edray.distill.losses import kd_kl, sliced_kd_loss

# Sample A: group 1 (ordered classes 1..2), student z = [1, 2, 0.5], label 1, teacher [1, 0], T = 2.
#   teacher softmax([0.5, 0])  = [0.62246, 0.37754]
#   student slice softmax([2, 0.5] / 2 = [1, 0.25]) = [0.67918, 0.32082]
#   T^2 * KL = 4 * 0.0071792 = 0.0287168;  CE = log(e + e^2 + e^0.5) - 2 = 0.4643688
#   alpha = 0.3: 0.3 * 0.4643688 + 0.7 * 0.0287168 = 0.1594124
# Sample B: group 0 (one class), z = [0.2, -1, 3], label 0, teacher [5]: a one-class slice has
#   KL = 0; CE = log(e^0.2 + e^-1 + e^3) - 0.2 = 2.8761512. Batch mean of A and B = 0.5111289.
KL_A = 0.02871675653731831
LOSS_A = 0.15941236480850624
LOSS_AB = 0.5111288590517497


def test_kd_kl_matches_hand_value():
    got = kd_kl(torch.tensor([[2.0, 0.5]]), torch.tensor([[1.0, 0.0]]), 2.0)
    assert got.item() == pytest.approx(KL_A, rel=1e-5)


def test_sliced_loss_single_sample():
    loss = sliced_kd_loss(
        torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([1]), [None, torch.tensor([[1.0, 0.0]])],
        torch.tensor([1]), [0, 1, 3], alpha=0.3, temperature=2.0,
    )
    assert loss.item() == pytest.approx(LOSS_A, rel=1e-5)


def test_sliced_loss_mixed_groups_in_one_batch():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.2, -1.0, 3.0]])
    loss = sliced_kd_loss(
        logits, torch.tensor([1, 0]), [torch.tensor([[5.0]]), torch.tensor([[1.0, 0.0]])],
        torch.tensor([1, 0]), [0, 1, 3], alpha=0.3, temperature=2.0,
    )
    assert loss.item() == pytest.approx(LOSS_AB, rel=1e-5)


def test_alpha_one_is_plain_cross_entropy():
    logits = torch.randn(5, 4)
    y = torch.randint(0, 4, (5,))
    loss = sliced_kd_loss(logits, y, [torch.randn(5, 4)], torch.zeros(5, dtype=torch.long), [0, 4],
                          alpha=1.0, temperature=3.0)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)


def test_teacher_equal_to_student_gives_zero_kl():
    z = torch.randn(3, 6)
    assert kd_kl(z, z, 4.0).abs().max().item() < 1e-6
    assert math.isfinite(kd_kl(z * 100, -z * 100, 0.5).sum().item())


def test_gradient_only_reaches_the_group_slice():
    logits = torch.zeros(1, 5, requires_grad=True)
    loss = sliced_kd_loss(logits, torch.tensor([3]), [None, torch.tensor([[2.0, -1.0]])], torch.tensor([1]),
                          [0, 3, 5], alpha=0.0, temperature=1.0)
    loss.backward()
    assert torch.all(logits.grad[0, :3] == 0) and logits.grad[0, 3:].abs().sum() > 0

"""Replayable augmentation views: pure functions of (seed, sample id, view)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edray.data.views import ViewParams, apply_views, counter_hash, view_params
from edray.spec import AugmentSpec

AUG = AugmentSpec(crop_padding=4, hflip=True)
_M = (1 << 64) - 1


def _splitmix64_reference(x: int) -> int:
    """splitmix64 in plain Python integers (Vigna's reference), for cross-checking."""
    z = (x + 0x9E3779B97F4A7C15) & _M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M
    return z ^ (z >> 31)


def test_hash_matches_reference_splitmix64():
    # First output of splitmix64 seeded with 0, as published with the reference code.
    assert int(counter_hash(0)[0]) == 0xE220A8397B1DCDAF
    expected = _splitmix64_reference(_splitmix64_reference(_splitmix64_reference(7) ^ 11) ^ 3)
    assert int(counter_hash(7, 11, 3)[0]) == expected
    ids = torch.tensor([0, 5, 2**40])
    got = counter_hash(123, ids, 9)
    for i, sample in enumerate(ids.tolist()):
        ref = _splitmix64_reference(_splitmix64_reference(_splitmix64_reference(123) ^ sample) ^ 9)
        assert int(got[i]) == ref
    # Negative keys are two's complement, as in any int64 on any machine.
    assert int(counter_hash(-1)[0]) == _splitmix64_reference(_M)


def test_params_are_stable_numbers():
    # Logit stores hold views made with these numbers: a change here invalidates every store.
    p = view_params(0, torch.arange(8), 1, AUG)
    assert p.dx.tolist() == [5, 8, 7, 1, 6, 8, 6, 2]
    assert p.dy.tolist() == [7, 8, 7, 1, 5, 2, 1, 3]
    assert p.flip.tolist() == [False, False, False, False, True, True, True, False]


def test_deterministic_and_independent_of_batch_and_global_rng():
    ids = torch.tensor([3, 99, 7, 12345])
    views = torch.tensor([1, 2, 5, 7])
    a = view_params(11, ids, views, AUG)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    try:
        torch.manual_seed(999)
        np.random.seed(5)
        before = torch.get_rng_state()
        b = view_params(11, ids, views, AUG)
        assert torch.equal(before, torch.get_rng_state()), "view_params must not touch torch's global RNG"
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
    assert torch.equal(a.dx, b.dx) and torch.equal(a.dy, b.dy) and torch.equal(a.flip, b.flip)
    # One sample at a time, in another order: same parameters.
    for i in [2, 0, 3, 1]:
        one = view_params(11, ids[i : i + 1], views[i : i + 1], AUG)
        assert (one.dx.item(), one.dy.item(), one.flip.item()) == (a.dx[i].item(), a.dy[i].item(), a.flip[i].item())


def test_int_view_broadcasts_like_a_tensor():
    ids = torch.arange(10)
    a = view_params(4, ids, 3, AUG)
    b = view_params(4, ids, torch.full((10,), 3), AUG)
    assert torch.equal(a.dx, b.dx) and torch.equal(a.dy, b.dy) and torch.equal(a.flip, b.flip)


def test_view_zero_is_the_identity():
    x = torch.randn(16, 3, 12, 12)
    p = view_params(5, torch.arange(16), 0, AUG)
    assert (p.dx == AUG.crop_padding).all() and (p.dy == AUG.crop_padding).all() and not p.flip.any()
    assert torch.equal(apply_views(x, p, AUG), x)
    # View 0 inside a mixed batch too.
    mixed = view_params(5, torch.arange(16), torch.tensor([0, 1] * 8), AUG)
    out = apply_views(x, mixed, AUG)
    assert torch.equal(out[0::2], x[0::2])


def test_distinct_views_and_seeds_differ():
    ids = torch.arange(200)
    params = [view_params(0, ids, v, AUG) for v in range(1, 5)]
    keys = [torch.stack([p.dx, p.dy, p.flip.long()], 1) for p in params]
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            same = (keys[i] == keys[j]).all(1).float().mean().item()
            assert same < 0.1, f"views {i + 1} and {j + 1} agree on {same:.0%} of samples"
    other_seed = view_params(1, ids, 1, AUG)
    assert (torch.stack([other_seed.dx, other_seed.dy], 1) != keys[0][:, :2]).any(1).float().mean() > 0.8
    x = torch.randn(200, 1, 8, 8)
    differ = (apply_views(x, params[0], AUG) != apply_views(x, params[1], AUG)).flatten(1).any(1)
    assert differ.float().mean() > 0.9


def test_params_within_bounds_and_cover_every_offset():
    for pad in (0, 1, 4):
        aug = AugmentSpec(crop_padding=pad, hflip=True)
        p = view_params(3, torch.arange(4000), torch.arange(4000) % 7 + 1, aug)
        assert p.dx.dtype == torch.int64 and p.dy.dtype == torch.int64 and p.flip.dtype == torch.bool
        assert p.dx.min() >= 0 and p.dx.max() <= 2 * pad and p.dy.min() >= 0 and p.dy.max() <= 2 * pad
        assert set(p.dx.tolist()) == set(range(2 * pad + 1)) == set(p.dy.tolist())
        assert 0.45 < p.flip.float().mean().item() < 0.55


def test_hflip_off_never_flips():
    aug = AugmentSpec(crop_padding=2, hflip=False)
    p = view_params(0, torch.arange(5000), torch.arange(5000) % 13 + 1, aug)
    assert not p.flip.any()


def test_hand_checked_crop_and_flip():
    aug = AugmentSpec(crop_padding=1, hflip=True)
    x = torch.arange(1, 10, dtype=torch.float32).reshape(1, 1, 3, 3)  # [[1,2,3],[4,5,6],[7,8,9]]
    # Padded 5x5 with zeros; crop rows 2..4, cols 0..2: [[0,4,5],[0,7,8],[0,0,0]].
    params = ViewParams(dx=torch.tensor([0]), dy=torch.tensor([2]), flip=torch.tensor([False]))
    assert apply_views(x, params, aug)[0, 0].tolist() == [[0, 4, 5], [0, 7, 8], [0, 0, 0]]
    # The same crop, then mirrored left-right.
    params = ViewParams(dx=torch.tensor([0]), dy=torch.tensor([2]), flip=torch.tensor([True]))
    assert apply_views(x, params, aug)[0, 0].tolist() == [[5, 4, 0], [8, 7, 0], [0, 0, 0]]
    # Shift right by one pixel (dx = 2), flip off: [[2,3,0],[5,6,0],[8,9,0]].
    params = ViewParams(dx=torch.tensor([2]), dy=torch.tensor([1]), flip=torch.tensor([False]))
    assert apply_views(x, params, aug)[0, 0].tolist() == [[2, 3, 0], [5, 6, 0], [8, 9, 0]]


def test_vectorised_views_match_a_per_sample_reference():
    aug = AugmentSpec(crop_padding=3, hflip=True)
    x = torch.randn(32, 3, 10, 7)
    p = view_params(8, torch.arange(100, 132), torch.arange(32) % 5, aug)
    out = apply_views(x, p, aug)
    padded = F.pad(x, (3, 3, 3, 3))
    for i in range(32):
        dy, dx = p.dy[i].item(), p.dx[i].item()
        ref = padded[i, :, dy : dy + 10, dx : dx + 7]
        if p.flip[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)


def test_padding_zero_without_flip_returns_the_input():
    aug = AugmentSpec(crop_padding=0, hflip=False)
    x = torch.randn(4, 1, 5, 5)
    assert torch.equal(apply_views(x, view_params(0, torch.arange(4), 3, aug), aug), x)


def test_mismatched_sizes_are_refused():
    p = view_params(0, torch.arange(3), 1, AUG)
    with pytest.raises(ValueError):
        apply_views(torch.zeros(4, 1, 8, 8), p, AUG)
    with pytest.raises(ValueError):
        view_params(0, torch.arange(3), torch.tensor([1, 2]), AUG)
    with pytest.raises(ValueError):
        view_params(0, torch.arange(2), torch.tensor([1, -1]), AUG)


@pytest.mark.parametrize("pad", [0, 3, 9])
def test_views_of_uint8_pixels_equal_views_of_normalised_floats_exactly(pad):
    from edray.data.views import batch_views, normalise_pixels, pixel_views

    aug = AugmentSpec(crop_padding=pad, hflip=True)
    gen = torch.Generator().manual_seed(pad)
    pixels = torch.randint(0, 256, (24, 7, 8, 3), dtype=torch.uint8, generator=gen)  # H != W, pad > H too
    mean, std = torch.tensor([0.2, 0.5, 0.7]), torch.tensor([0.3, 0.25, 0.2])
    rows = torch.arange(24)
    params = view_params(5, rows, torch.randint(0, 50, (24,), generator=gen), aug)
    assert bool(params.flip.any()) and bool((~params.flip).any())
    expected = apply_views(normalise_pixels(pixels, mean, std), params, aug)
    got = pixel_views(pixels, params, aug, mean, std)
    assert got.dtype == torch.float32 and got.shape == (24, 3, 7, 8)
    assert torch.equal(got, expected)  # bit for bit: the store's logits were made from these floats
    rows_given = [row.numpy() for row in pixels]  # as the image sets hand them over: rows, not a batch
    assert torch.equal(pixel_views(rows_given, params, aug, mean, std), expected)
    assert torch.equal(batch_views(pixels, params, aug, (mean, std)), expected)
    floats = normalise_pixels(pixels, mean, std)
    assert torch.equal(batch_views(floats, params, aug, None), expected)

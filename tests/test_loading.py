"""Batch loading (edray.data.loading): worker counts from the trial's CPUs, persistent workers."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from edray.data import BatchLoader, LoaderSettings, iterate_batches, loader_settings
from edray.data.imagesets import ImageSet
from edray.errors import EdrayError
from edray.spec import OptimSpec, ScalingSpec, load_spec


class _TaggedImages(ImageSet):
    """A set whose pixels record the row and where it was loaded: ``tag()`` is the process
    (``os.getpid``, for a file-like set that needs workers) or the thread
    (``threading.get_ident``, for an in-memory set)."""

    def __init__(self, n: int, *, in_memory: bool, tag):
        self.labels = torch.arange(n) % 3
        self.in_memory = in_memory
        self.tag = tag

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        rows = torch.as_tensor(indices).reshape(-1, 1).double()
        return torch.cat([rows, torch.full_like(rows, self.tag())], 1)


@pytest.mark.parametrize(
    ("cpus", "num_workers", "expected"),
    [(1, None, 0), (2, None, 1), (8, None, 7), (2.5, None, 1), (4, 2, 2), (4, 0, 0)],
)
def test_workers_come_from_the_trials_cpus(cpus, num_workers, expected):
    settings = loader_settings(OptimSpec(num_workers=num_workers), ScalingSpec(resources_per_worker={"CPU": cpus}))
    assert settings.num_workers == expected
    assert settings.persistent_workers == (expected > 0)
    assert settings.prefetch_factor == (2 if expected else None)
    assert not settings.pin_memory
    assert loader_settings(OptimSpec(), ScalingSpec(), "cuda").pin_memory  # decided, not probed: no GPU needed


def test_more_workers_than_cpus_is_refused():
    from tests.conftest import DIGITS_YAML

    with pytest.raises(EdrayError, match=r"optim.num_workers \(8\) exceeds .*CPU = 4\)"):
        load_spec(DIGITS_YAML, ["optim.num_workers=8", "scaling.resources_per_worker={CPU: 4}"])


def test_persistent_workers_serve_every_pass_in_its_order():
    images = _TaggedImages(20, in_memory=False, tag=os.getpid)
    loader = BatchLoader(images, LoaderSettings(num_workers=2, prefetch_factor=2, persistent_workers=True))
    pids = set()
    for seed in range(3):
        order = torch.randperm(20, generator=torch.Generator().manual_seed(seed))
        got = list(loader.batches(order, 6))
        assert [len(idx) for _, _, idx in got] == [6, 6, 6, 2]
        assert torch.equal(torch.cat([idx for _, _, idx in got]), order)
        for x, y, idx in got:
            assert torch.equal(x[:, 0].long(), idx) and torch.equal(y, images.labels[idx])
        pids |= {int(p) for x, _, _ in got for p in x[:, 1]}
    assert len(pids) == 2 and os.getpid() not in pids  # the same two workers for all three passes
    plain = list(iterate_batches(images, torch.arange(20), 6))
    assert {int(p) for x, _, _ in plain for p in x[:, 1]} == {os.getpid()}


def test_in_memory_batches_are_cut_on_threads_in_order_and_only_with_cpus_to_spare():
    images = _TaggedImages(20, in_memory=True, tag=threading.get_ident)
    order = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    got = list(BatchLoader(images, LoaderSettings(num_workers=2, prefetch_factor=2)).batches(order, 3))
    assert [len(idx) for _, _, idx in got] == [3] * 6 + [2]
    assert torch.equal(torch.cat([idx for _, _, idx in got]), order)
    for x, y, idx in got:
        assert torch.equal(x[:, 0].long(), idx) and torch.equal(y, images.labels[idx])
    threads = {int(t) for x, _, _ in got for t in x[:, 1]}
    assert threading.get_ident() not in threads and 1 <= len(threads) <= 2
    plain = list(BatchLoader(images, LoaderSettings(num_workers=0)).batches(order, 3))
    assert {int(t) for x, _, _ in plain for t in x[:, 1]} == {threading.get_ident()}


def test_views_cut_by_workers_equal_views_cut_in_the_training_process(tmp_path):
    from edray.data import batch_views, view_params
    from edray.data.folders import load_imagefolder
    from edray.spec import AugmentSpec, DatasetSpec
    from tests.helpers import write_image_folder

    aug = AugmentSpec(crop_padding=3, hflip=True)
    root = write_image_folder(tmp_path)
    images = load_imagefolder(DatasetSpec(name="imagefolder", root=str(root), image_size=12)).train
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))
    views = torch.randint(1, 1000, (len(images),), generator=torch.Generator().manual_seed(2))
    loader = BatchLoader(images, LoaderSettings(num_workers=2, prefetch_factor=2, persistent_workers=True),
                         views=(7, aug))
    assert loader.applies_views
    got = list(loader.batches(order, 4, views=views))
    assert torch.equal(torch.cat([idx for _, _, idx in got]), order)
    for (x, _, idx), view in zip(got, views.split(4)):
        expected = batch_views(images.load_pixels(idx), view_params(7, idx, view, aug), aug, images.stats)
        assert torch.equal(x, expected)

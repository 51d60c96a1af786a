"""Batches of an image set in a given order, and how many processes load them.

In-memory sets (tensors, the decoded-image cache) load a batch with one gather in the
training process, on threads when the trial has CPUs to spare (the copies release the
GIL; worker processes would add a shared-memory copy each way). File sets decode JPEGs,
which is slow enough to need worker processes. How many threads or processes is decided
from the CPUs the trial was given (``scaling.resources_per_worker.CPU``), never more, so a
sweep of several trials per node does not oversubscribe it. Workers persist across epochs
(no re-spawn and re-pickle per pass) and, on CUDA, hand over pinned batches so
host-to-device copies can overlap.
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from edray.data.imagesets import ImageSet
from edray.data.views import view_params
from edray.spec import AugmentSpec, OptimSpec, ScalingSpec

__all__ = ["BatchLoader", "LoaderSettings", "iterate_batches", "loader_settings"]

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class LoaderSettings:
    """How a :class:`BatchLoader` runs.

    Attributes:
        num_workers: decoding processes (0: decode in the training process).
        prefetch_factor: batches each worker prepares ahead (None without workers).
        persistent_workers: keep the workers between passes over the data.
        pin_memory: hand over page-locked batches (CUDA: non-blocking copies).
    """

    num_workers: int = 0
    prefetch_factor: int | None = None
    persistent_workers: bool = False
    pin_memory: bool = False


def loader_settings(optim: OptimSpec, scaling: ScalingSpec, device: str | torch.device = "cpu") -> LoaderSettings:
    """Settings from the spec: ``optim.num_workers`` if set, else the worker's CPUs minus the
    one that trains (0 on a one-CPU worker). The spec refuses more workers than CPUs."""
    cpus = max(1, math.floor(scaling.resources_per_worker.get("CPU", 1)))
    workers = optim.num_workers if optim.num_workers is not None else cpus - 1
    workers = max(0, min(workers, cpus))
    return LoaderSettings(
        num_workers=workers,
        prefetch_factor=2 if workers else None,  # two decoded batches per worker hide JPEG-time jitter
        persistent_workers=workers > 0,
        pin_memory=torch.device(device).type == "cuda",
    )


# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@functools.cache
def _reuse_freed_batches() -> None:
    """Let this process reuse the memory of freed batches instead of handing it back.

    glibc serves a block above its mmap threshold (32 MB at most) straight from the kernel
    and unmaps it when freed, so every batch of 64 images at 224 px (38.5 MB of floats) is
    page-faulted in afresh: on a CPU that was about 40% of what an image from the cache
    costs. Raising the mmap and trim thresholds keeps freed batches in the heap for the next
    one (the process keeps a few batches' memory). Allocation only: no value changes. A
    thread's own heap holds blocks up to 64 MB, so larger batches cut on loader threads are
    still mapped afresh. Other C libraries: nothing is changed.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        pass


class _Rows(torch.utils.data.Dataset):
    """Item = a whole batch: the sampler yields row-id tensors, a worker decodes each whole."""

    def __init__(self, images: ImageSet, pixels: bool, views: tuple[int, AugmentSpec] | None):
        self.images = images
        self.pixels = pixels
        self.views = views

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> Batch:
        idx, view_ids = item if isinstance(item, tuple) else (item, None)
        if self.views is not None and view_ids is not None:
            seed, aug = self.views
            params = view_params(seed, idx, view_ids, aug)
            x = self.images.load_views(idx, params, aug)
        else:
            x = self.images.load_pixels(idx) if self.pixels else self.images.load(idx)
        return x, self.images.labels[idx], idx


class _Order(torch.utils.data.Sampler):
    """The batches of the current pass; the main process sets them before each pass."""

    def __init__(self) -> None:
        self.batches: list = []

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator:
        return iter(self.batches)


class BatchLoader:
    """Yields ``(x, y, idx)`` batches of ``images`` in any order, pass after pass.

    One per image set per run: with ``persistent_workers`` the worker processes (and the
    set pickled into them) live as long as the loader. With ``pixels``, batches are
    :meth:`ImageSet.load_pixels` (uint8 where the set has decoded pixels), for
    :func:`~edray.data.views.batch_views` to normalise and cut views on the device (a GPU
    run). With ``views=(seed, aug)``, the loader itself cuts the views given to
    :meth:`batches` (a CPU run: file sets' workers then decode and cut in parallel with
    the training step).
    """

    def __init__(
        self,
        images: ImageSet,
        settings: LoaderSettings = LoaderSettings(),
        *,
        pixels: bool = False,
        views: tuple[int, AugmentSpec] | None = None,
    ):
        self.images = images
        self.settings = settings
        self.applies_views = views is not None
        self._rows = _Rows(images, pixels, views)
        self._order = _Order()
        self._loader: torch.utils.data.DataLoader | None = None
        if images.in_memory:  # batches are cut in this process
            _reuse_freed_batches()
        # In-memory sets stay in this process (on threads, see _threaded): handing a float batch
        # across processes costs more CPU (a shared-memory copy each way) than gathering it here.
        if settings.num_workers > 0 and not images.in_memory:
            self._loader = torch.utils.data.DataLoader(
                self._rows, batch_size=None, sampler=self._order, num_workers=settings.num_workers,
                prefetch_factor=settings.prefetch_factor, persistent_workers=settings.persistent_workers,
                pin_memory=settings.pin_memory,
            )

    def batches(self, order: torch.Tensor, batch_size: int, views: torch.Tensor | None = None) -> Iterator[Batch]:
        """Batches following ``order`` (row ids into the set); the last may be short.

        ``views``: the view id of each row of ``order``, cut by the loader when it was made
        with ``views=(seed, aug)`` (and ignored otherwise: the caller cuts them).
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        batches: list = list(torch.as_tensor(order, dtype=torch.long).reshape(-1).split(batch_size))
        if self.applies_views and views is not None:
            batches = list(zip(batches, torch.as_tensor(views, dtype=torch.long).reshape(-1).split(batch_size)))
        if len(batches) <= 1 or self.settings.num_workers == 0:
            for idx in batches:  # in this process: pinning would be one more copy, not an overlap
                yield self._rows[idx]
        elif self._loader is None:
            yield from self._threaded(batches)
        else:
            self._order.batches = batches
            yield from self._loader

    def _threaded(self, batches: list) -> Iterator[Batch]:
        """In-memory batches cut by ``num_workers`` threads, in order, a few batches ahead:
        the gather, crop and normalisation are numpy/torch copies that release the GIL, so
        the trial's other CPUs prepare the next batches while this one trains."""
        from concurrent.futures import Future, ThreadPoolExecutor

        workers = self.settings.num_workers
        ahead = workers * (self.settings.prefetch_factor or 2)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edray-batches") as pool:
            pending: list[Future | None] = [pool.submit(self._rows.__getitem__, idx) for idx in batches[:ahead]]
            for i in range(len(batches)):
                future = pending[i]
                assert future is not None  # each is taken once, in order
                batch = future.result()
                pending[i] = None  # release it once handed over
                if i + ahead < len(batches):
                    pending.append(pool.submit(self._rows.__getitem__, batches[i + ahead]))
                yield batch


def iterate_batches(
    images: ImageSet, order: torch.Tensor, batch_size: int, *, num_workers: int | None = 0
) -> Iterator[Batch]:
    """Yield ``(x, y, idx)`` batches following ``order`` (row ids into ``images``).

    The last batch may be short. In-memory sets, or ``num_workers`` 0 or None, load in this
    process; otherwise ``num_workers`` processes decode batches ahead (for this pass only:
    a :class:`BatchLoader` keeps them across passes).
    """
    yield from BatchLoader(images, LoaderSettings(num_workers=num_workers or 0)).batches(order, batch_size)

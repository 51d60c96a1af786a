"""Synthetic class-structured images, synthesised row by row from ``(seed, row)``.

For scale and speed tests at any class count and size (e.g. 257 classes at 224 px)
without holding a single image in memory. Each class is a smooth random prototype:
per channel, a sum of a few separable low-frequency waves with class-specific
frequencies, phases and amplitudes. A sample is its class prototype shifted by a random
fraction of the image plus pixel noise, so it is learnable but not trivial. Every
number is a counter hash of the seed and the row (noise from a generator seeded by that
hash), so a row's pixels never depend on which batch it is loaded in.
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from edray.data.imagesets import ImageSet
from edray.data.splits import DATASETS, DatasetSource
from edray.data.views import counter_hash
from edray.spec import DatasetSpec

__all__ = ["SyntheticImageSet", "load_synthetic_source"]

_VERSION = 1
_COMPONENTS = 6  # waves per class and channel
_MAX_FREQ = 2  # cycles per image, per axis
_MAX_SHIFT = 0.5  # of the image side, per axis (waves are periodic: a shift wraps)
_NOISE = 2.0  # pixel noise std relative to the prototype's RMS
# Hash salts: one per independent quantity.
_FX, _FY, _PX, _PY, _AMP, _SX, _SY, _PIXELS, _JITTER = range(1, 10)
_AMP_JITTER = 1.0  # each wave's amplitude is scaled per sample by U[1 - j, 1 + j]
_SPLIT_SALT = {"train": 101, "test": 202}


def _uniform(h: np.ndarray) -> torch.Tensor:
    """Hash -> float64 uniform in [0, 1) (top 53 bits)."""
    return torch.from_numpy((h >> np.uint64(11)).astype(np.float64) / float(1 << 53))


class SyntheticImageSet(ImageSet):
    """``num_classes * per_class`` rows; row r has label ``r % num_classes``.

    Args:
        num_classes, per_class, channels, image_size: the shape of the set.
        seed: the prototypes (shared by the train and test sets of one seed).
        split: "train" or "test": which samples of those prototypes.
    """

    def __init__(self, *, num_classes: int, per_class: int, channels: int, image_size: int, seed: int, split: str):
        if split not in _SPLIT_SALT:
            raise ValueError(f"split must be one of {sorted(_SPLIT_SALT)}, got {split!r}")
        self.num_classes = num_classes
        self.per_class = per_class
        self.channels = channels
        self.image_size = image_size
        self.seed = seed
        self.split = split
        self.labels = torch.arange(num_classes * per_class, dtype=torch.long) % num_classes

    def _prototype_params(self, classes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per (row, channel, wave): x/y frequencies, x/y phases, amplitudes, each [B, C, K]."""
        c = classes.numpy()[:, None, None]
        ch = np.arange(self.channels)[None, :, None]
        k = np.arange(_COMPONENTS)[None, None, :]
        key = counter_hash(self.seed, c, ch, k)
        fx = torch.from_numpy((counter_hash(key, _FX) % np.uint64(_MAX_FREQ + 1)).astype(np.float64))
        fy = torch.from_numpy((counter_hash(key, _FY) % np.uint64(_MAX_FREQ + 1)).astype(np.float64))
        px = 2 * math.pi * _uniform(counter_hash(key, _PX))
        py = 2 * math.pi * _uniform(counter_hash(key, _PY))
        amp = 2 * _uniform(counter_hash(key, _AMP)) - 1
        return fx, fy, px, py, amp

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        rows = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        size = self.image_size
        fx, fy, px, py, amp = self._prototype_params(self.labels[rows])
        row_key = counter_hash(self.seed, _SPLIT_SALT[self.split], rows)
        sx = (2 * _uniform(counter_hash(row_key, _SX)) - 1) * _MAX_SHIFT  # [B]
        sy = (2 * _uniform(counter_hash(row_key, _SY)) - 1) * _MAX_SHIFT
        u = (torch.arange(size, dtype=torch.float64) + 0.5) / size  # pixel centres in [0, 1)
        wave_x = torch.sin(2 * math.pi * fx[..., None] * (u - sx[:, None, None, None]) + px[..., None])  # [B,C,K,W]
        wave_y = torch.sin(2 * math.pi * fy[..., None] * (u - sy[:, None, None, None]) + py[..., None])  # [B,C,K,H]
        # Mean square of each separable wave, so every prototype has unit RMS whatever its params.
        ms_x = torch.where(fx > 0, 0.5, torch.sin(px) ** 2)
        ms_y = torch.where(fy > 0, 0.5, torch.sin(py) ** 2)
        scale = ((amp**2) * ms_x * ms_y).sum(-1, keepdim=True).clamp_min(1e-6).rsqrt()  # [B, C, 1]
        # Per-sample jitter of each wave's amplitude: classes overlap, so the task is not trivial.
        ch = np.arange(self.channels)[None, :, None]
        k = np.arange(_COMPONENTS)[None, None, :]
        jitter = 1 + _AMP_JITTER * (2 * _uniform(counter_hash(row_key[:, None, None], ch, k, _JITTER)) - 1)
        pattern = torch.einsum("bck,bcky,bckx->bcyx", (amp * scale * jitter).float(), wave_y.float(), wave_x.float())
        noise = torch.empty_like(pattern)
        for i, h in enumerate(counter_hash(row_key, _PIXELS).tolist()):
            gen = torch.Generator().manual_seed(h & ((1 << 63) - 1))
            torch.randn(pattern.shape[1:], generator=gen, out=noise[i])
        return noise.mul_(_NOISE).add_(pattern).div_(math.sqrt(1 + _NOISE**2))


@DATASETS.register("synthetic")
def load_synthetic_source(spec: DatasetSpec) -> DatasetSource:
    """``spec.num_classes`` (10) classes, ``spec.samples_per_class`` (100) training and a
    quarter as many test samples per class, ``spec.channels`` (3), ``spec.image_size`` (32)."""
    num_classes = spec.num_classes or 10
    per_class = spec.samples_per_class or 100
    channels = spec.channels or 3
    size = spec.image_size or 32
    shape = dict(num_classes=num_classes, channels=channels, image_size=size, seed=spec.split_seed)
    identity = json.dumps({"version": _VERSION, "per_class": per_class, **shape}, sort_keys=True)
    return DatasetSource(
        train=SyntheticImageSet(per_class=per_class, split="train", **shape),
        test=SyntheticImageSet(per_class=max(1, per_class // 4), split="test", **shape),
        class_names=[f"class_{c:03d}" for c in range(num_classes)],
        in_channels=channels,
        image_size=size,
        identity=identity,
    )

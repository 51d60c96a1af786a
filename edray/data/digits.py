"""scikit-learn's handwritten digits: the embedded default dataset (docs/design.md#data).

1797 real 8x8 greyscale digits (values 0..16) that ship inside scikit-learn, so the
whole pipeline runs offline on a laptop CPU in minutes. There is no official test
split: :func:`~edray.data.splits.load_data` carves one.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import torch

from edray.data.imagesets import TensorImageSet
from edray.data.splits import DATASETS, DatasetSource
from edray.spec import DatasetSpec

__all__ = ["load_digits_source", "read_digits"]

# Pixel mean / std of the whole set in [0, 1] units (values / 16). Fixed constants, as
# CIFAR's are, so the normalisation never depends on how the splits are carved.
DIGITS_MEAN = (0.3053,)
DIGITS_STD = (0.3760,)
NATIVE_SIZE = 8


@DATASETS.register("digits")
def load_digits_source(spec: DatasetSpec) -> DatasetSource:
    """The 1797 digits as one training pool (test is carved), 1 channel, native size 8."""
    values, targets = read_digits()
    pixels = values.astype(np.float32) / 16.0
    images = torch.from_numpy(pixels).unsqueeze(1)  # [N, 1, 8, 8]
    labels = torch.from_numpy(targets)
    size = spec.image_size or NATIVE_SIZE
    identity = hashlib.sha256(pixels.tobytes()).hexdigest()
    return DatasetSource(
        train=TensorImageSet(images, labels, mean=DIGITS_MEAN, std=DIGITS_STD, image_size=size),
        test=None,
        class_names=[str(c) for c in range(10)],
        in_channels=1,
        image_size=size,
        identity=identity,
    )


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """(values [1797, 8, 8] in 0..16, targets [1797]): scikit-learn's ``load_digits()``.

    Read straight from the file scikit-learn ships (``datasets/data/digits.csv.gz``: 64
    values then the label per row), without importing scikit-learn, which costs ~0.9 s in
    every fresh process (each sweep trial's Ray worker); ``load_digits`` where that file is
    not where it has always been.
    """
    found = importlib.util.find_spec("sklearn")
    where = found.submodule_search_locations if found else None  # None for a module, sklearn is a package
    csv = Path(where[0]) / "datasets" / "data" / "digits.csv.gz" if where else None
    if csv is not None and csv.is_file():
        with gzip.open(csv, "rb") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float64)
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.asarray(bunch.images), np.asarray(bunch.target, dtype=np.int64)

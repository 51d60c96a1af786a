"""scikit-learn's handwritten digits: the embedded default dataset (DESIGN §7).

1797 real 8x8 greyscale digits (values 0..16) that ship inside scikit-learn, so the
whole pipeline runs offline on a laptop CPU in minutes. There is no official test
split: :func:`~edray.data.splits.load_data` carves one.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from edray.data.imagesets import TensorImageSet
from edray.data.splits import DATASETS, DatasetSource
from edray.spec import DatasetSpec

__all__ = ["load_digits_source"]

# Pixel mean / std of the whole set in [0, 1] units (values / 16). Fixed constants, as
# CIFAR's are, so the normalisation never depends on how the splits are carved.
DIGITS_MEAN = (0.3053,)
DIGITS_STD = (0.3760,)
NATIVE_SIZE = 8


@DATASETS.register("digits")
def load_digits_source(spec: DatasetSpec) -> DatasetSource:
    """The 1797 digits as one training pool (test is carved), 1 channel, native size 8."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.asarray(bunch.images, dtype=np.float32) / 16.0
    images = torch.from_numpy(pixels).unsqueeze(1)  # [N, 1, 8, 8]
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    size = spec.image_size or NATIVE_SIZE
    identity = hashlib.sha256(pixels.tobytes()).hexdigest()
    return DatasetSource(
        train=TensorImageSet(images, labels, mean=DIGITS_MEAN, std=DIGITS_STD, image_size=size),
        test=None,
        class_names=[str(c) for c in bunch.target_names],
        in_channels=1,
        image_size=size,
        identity=identity,
    )

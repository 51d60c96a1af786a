"""CIFAR-100 from its python pickles (fine labels), held in memory as uint8.

Expected layout: ``<root>/cifar-100-python/{train,test,meta}`` as extracted from
``cifar-100-python.tar.gz``. Read from disk only, never downloaded.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import torch

from edray.data.imagesets import TensorImageSet
from edray.data.splits import DATASETS, DatasetSource
from edray.errors import EdrayError
from edray.spec import DatasetSpec

__all__ = ["load_cifar100_source"]

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
NATIVE_SIZE = 32
_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_FILES = ("train", "test", "meta")


def _fix(root: str | Path) -> str:
    return f"download cifar-100-python.tar.gz from {_URL} and extract it into {root} (giving {root}/cifar-100-python/)"


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as err:
        raise EdrayError(str(path), f"cannot read the CIFAR-100 pickle ({err})", "re-extract the archive") from None


def _rows(blob: dict, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        data = np.asarray(blob[b"data"], dtype=np.uint8)
        labels = np.asarray(blob[b"fine_labels"], dtype=np.int64)
    except KeyError as err:
        problem = f"is not a CIFAR-100 pickle (no {err.args[0]!r} entry)"
        raise EdrayError(str(path), problem, "re-extract the archive") from None
    if data.ndim != 2 or data.shape[1] != 3 * NATIVE_SIZE * NATIVE_SIZE or len(data) != len(labels):
        problem = f"has data of shape {data.shape} for {len(labels)} labels"
        raise EdrayError(str(path), problem, "re-extract the archive")
    return torch.from_numpy(data.reshape(-1, 3, NATIVE_SIZE, NATIVE_SIZE).copy()), torch.from_numpy(labels)


@DATASETS.register("cifar100")
def load_cifar100_source(spec: DatasetSpec) -> DatasetSource:
    """The official 50k training and 10k test images, 100 fine classes, native size 32."""
    if spec.root is None:
        raise EdrayError("dataset.root", "no CIFAR-100 found: dataset.root is not set", _fix("<root>"))
    folder = Path(spec.root).expanduser() / "cifar-100-python"
    missing = [name for name in _FILES if not (folder / name).is_file()]
    if missing:
        searched = folder if not folder.is_dir() else folder / missing[0]
        raise EdrayError("dataset.root", f"no CIFAR-100 found at {searched}", _fix(spec.root))
    meta = _unpickle(folder / "meta")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(b"fine_label_names", [])]
    if not names:
        raise EdrayError(str(folder / "meta"), "has no fine_label_names", "re-extract the archive")
    train_x, train_y = _rows(_unpickle(folder / "train"), folder / "train")
    test_x, test_y = _rows(_unpickle(folder / "test"), folder / "test")
    for y, name in ((train_y, "train"), (test_y, "test")):
        if len(y) and (y.min() < 0 or y.max() >= len(names)):
            raise EdrayError(str(folder / name), f"has labels outside 0..{len(names) - 1}", "re-extract the archive")
    size = spec.image_size or NATIVE_SIZE
    identity = hashlib.sha256(
        "|".join(f"{name}:{(folder / name).stat().st_size}" for name in _FILES).encode()
    ).hexdigest()
    return DatasetSource(
        train=TensorImageSet(train_x, train_y, mean=CIFAR100_MEAN, std=CIFAR100_STD, image_size=size),
        test=TensorImageSet(test_x, test_y, mean=CIFAR100_MEAN, std=CIFAR100_STD, image_size=size),
        class_names=names,
        in_channels=3,
        image_size=size,
        identity=identity,
    )

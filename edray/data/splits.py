"""Train / validation / test carving and the dataset registry.

Every dataset loader returns its *source* (the official training rows, the official
test rows if any, class names); :func:`load_data` carves the rest the same way for all
of them, so the carving rules live in one place:

1. no official test split: test = a stratified ``test_fraction`` of the training rows;
2. validation = a stratified ``val_fraction`` of the remaining training rows;
3. ``train_fraction`` < 1 keeps a stratified part of what is left (at least one per class).

Each step draws from its own seed stream (``split_seed`` + a step salt), so changing
``val_fraction`` never moves a test row and changing ``train_fraction`` never moves a
validation row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np
import torch

from edray.data.imagesets import FileImageSet, ImageSet, SubsetImageSet, subset
from edray.registry import Registry
from edray.spec import DatasetSpec

__all__ = ["DATASETS", "DataSplits", "DatasetSource", "load_data", "normalisation_of", "stratified_split"]

DATASETS: Registry = Registry("dataset", "dataset.name")

_FINGERPRINT_VERSION = 1
_SALT_TEST, _SALT_VAL, _SALT_TRAIN = 1, 2, 3
_U64 = (1 << 64) - 1


@dataclass
class DatasetSource:
    """What a dataset loader returns, before carving.

    Attributes:
        train: the official training rows.
        test: the official test rows, or None when the dataset has none (then carved).
        class_names: one per class, in label order.
        in_channels: image channels.
        image_size: the square size ``load`` returns.
        identity: extra fingerprint material (e.g. a digest of the file list and sizes).
    """

    train: ImageSet
    test: ImageSet | None
    class_names: list[str]
    in_channels: int
    image_size: int
    identity: str = ""


@dataclass
class DataSplits:
    """Train / validation / test image sets of one dataset, never overlapping.

    ``fingerprint`` (sha256 hex) identifies the data: dataset name, image size, the
    loader's identity (file list and sizes for file datasets), and for each split its
    rows and labels. Logit-store and teacher cache keys use it. ``normalisation`` is the
    per-channel mean and std the images are normalised with (``mean=..;std=..``), which
    the logit-store key records: the same pixels normalised otherwise give other logits.
    """

    train: ImageSet
    val: ImageSet
    test: ImageSet
    num_classes: int
    class_names: list[str]
    in_channels: int
    image_size: int
    fingerprint: str
    normalisation: str


def normalisation_of(images: ImageSet) -> str:
    """``mean=a,b,c;std=d,e,f`` of the set's per-channel statistics (6 significant digits).

    A set that makes its pixels already normalised (synthetic) has no statistics: its class
    name stands for them.
    """
    base = images.base if isinstance(images, SubsetImageSet) else images
    mean, std = getattr(base, "mean", None), getattr(base, "std", None)
    if mean is None or std is None:
        return f"built-in:{type(base).__name__}"

    def text(t: torch.Tensor) -> str:
        return ",".join(f"{v:.6g}" for v in t.reshape(-1).tolist())

    return f"mean={text(mean)};std={text(std)}"


def stratified_split(
    labels: torch.Tensor, fraction: float, *, seed: int, salt: int, min_held: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split row positions per class into (held, kept), held ~ ``fraction`` of each class.

    A class of n >= 2 rows holds out ``round(fraction * n)`` clipped to
    ``[min_held, n - 1]``, so every class keeps a row and (for small fractions) still
    appears in the held-out part; a class of one row is kept. Both outputs are sorted.
    """
    rng = np.random.default_rng([seed & _U64, salt])
    y = labels.numpy()
    held: list[np.ndarray] = []
    kept: list[np.ndarray] = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        rows = rows[rng.permutation(len(rows))]
        n = len(rows)
        k = 0 if n < 2 else int(min(n - 1, max(min_held, round(fraction * n))))
        held.append(rows[:k])
        kept.append(rows[k:])
    return _sorted_rows(held), _sorted_rows(kept)


def _sorted_rows(parts: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)).long()


def _keep_fraction(labels: torch.Tensor, fraction: float, *, seed: int) -> torch.Tensor:
    """Positions of a stratified ``fraction`` of each class (at least one per class)."""
    if fraction >= 1.0:
        return torch.arange(len(labels))
    rng = np.random.default_rng([seed & _U64, _SALT_TRAIN])
    y = labels.numpy()
    keep = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        rows = rows[rng.permutation(len(rows))]
        keep.append(rows[: max(1, round(fraction * len(rows)))])
    return _sorted_rows(keep)


def _fingerprint(spec: DatasetSpec, source: DatasetSource, parts: list[tuple[str, str, torch.Tensor, ImageSet]]) -> str:
    """sha256 over the header, then per split: (name, source set, rows in it, labels)."""
    h = hashlib.sha256()
    header = {
        "version": _FINGERPRINT_VERSION,
        "dataset": spec.name,
        "image_size": source.image_size,
        "in_channels": source.in_channels,
        "classes": source.class_names,
        "sizes": {name: len(images) for name, _, _, images in parts},
        "identity": source.identity,
    }
    h.update(json.dumps(header, sort_keys=True).encode())
    for name, origin, rows, images in parts:
        h.update(f"|{name}<-{origin}|".encode())
        h.update(rows.numpy().astype("<i8").tobytes())
        h.update(images.labels.numpy().astype("<i8").tobytes())
    return h.hexdigest()


def _cached(spec: DatasetSpec, source: DatasetSource, root: Path, *, verify: bool) -> DatasetSource:
    """The source with its file sets read from decoded-image caches (same rows, labels, pixels)."""
    from edray.data.image_cache import cache_image_set

    @overload
    def cached(images: ImageSet) -> ImageSet: ...
    @overload
    def cached(images: None) -> None: ...

    def cached(images: ImageSet | None) -> ImageSet | None:
        if not isinstance(images, FileImageSet):
            return images
        return cache_image_set(images, root, dataset_name=spec.name, dataset_identity=source.identity, verify=verify)

    return dataclasses.replace(source, train=cached(source.train), test=cached(source.test))


def load_data(spec: DatasetSpec, *, image_cache: str | Path | None = None, verify_cache: bool = False) -> DataSplits:
    """Load the dataset ``spec.name`` from disk and carve train / validation / test.

    Args:
        spec: the dataset section of the spec.
        image_cache: directory of decoded-image caches (``WORKDIR/images``). With
            ``spec.cache: auto``, file datasets are decoded once into it and read from it
            (see :mod:`edray.data.image_cache`); None or ``off`` decodes files every epoch.
        verify_cache: hash a found cache's bytes (once per sweep, on the driver).

    Raises:
        EdrayError: an unknown dataset name, data missing at ``spec.root``, or no room
            for the image cache.
    """
    source: DatasetSource = DATASETS.get(spec.name)(spec)
    if image_cache is not None and spec.cache == "auto":
        source = _cached(spec, source, Path(image_cache), verify=verify_cache)
    seed = spec.split_seed
    if source.test is None:
        test_rows, pool = stratified_split(source.train.labels, spec.test_fraction, seed=seed, salt=_SALT_TEST)
        test, test_origin = subset(source.train, test_rows), "train"
    else:
        pool = torch.arange(len(source.train))
        test, test_origin, test_rows = source.test, "test", torch.arange(len(source.test))
    held, kept = stratified_split(source.train.labels[pool], spec.val_fraction, seed=seed, salt=_SALT_VAL)
    val_rows, train_rows = pool[held], pool[kept]
    train_rows = train_rows[_keep_fraction(source.train.labels[train_rows], spec.train_fraction, seed=seed)]
    train, val = subset(source.train, train_rows), subset(source.train, val_rows)
    parts = [
        ("train", "train", train_rows, train),
        ("val", "train", val_rows, val),
        ("test", test_origin, test_rows, test),
    ]
    return DataSplits(
        train=train,
        val=val,
        test=test,
        num_classes=len(source.class_names),
        class_names=list(source.class_names),
        in_channels=source.in_channels,
        image_size=source.image_size,
        fingerprint=_fingerprint(spec, source, parts),
        normalisation=normalisation_of(source.train),
    )

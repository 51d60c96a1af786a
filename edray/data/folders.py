"""Datasets read as image files: Caltech-256, Food-101, Tiny ImageNet, any ImageFolder.

Each loader only lists files and labels (no image is decoded until a batch is loaded)
and checks the layout first, so a missing or misplaced dataset fails at once with the
exact path searched and where to get the data. Images are decoded by
:class:`~edray.data.imagesets.FileImageSet` (RGB, shorter side to the image size, centre
crop, ImageNet normalisation).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from PIL import Image

from edray.data.imagesets import FileImageSet
from edray.data.splits import DATASETS, DatasetSource
from edray.errors import EdrayError
from edray.spec import DatasetSpec

__all__ = ["IMAGE_EXTENSIONS", "load_caltech256", "load_food101", "load_imagefolder", "load_tiny_imagenet"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})

_CALTECH_FIX = (
    "download 256_ObjectCategories.tar (Caltech-256) from https://data.caltech.edu/records/nyy15-4j048 "
    "and extract it into {root} (giving {root}/256_ObjectCategories/001.ak47/...)"
)
_FOOD_FIX = (
    "download food-101.tar.gz from https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/ "
    "and extract it into {root} (giving {root}/food-101/images and {root}/food-101/meta)"
)
_TINY_FIX = (
    "download tiny-imagenet-200.zip from http://cs231n.stanford.edu/tiny-imagenet-200.zip "
    "and unzip it into {root} (giving {root}/tiny-imagenet-200/wnids.txt, train/, val/)"
)
_FOLDER_FIX = "put images in {root}/train/<class>/ (and optionally {root}/test/<class>/ or {root}/val/<class>/)"


# ---------------------------------------------------------------- helpers


def _root(spec: DatasetSpec, title: str, fix: str) -> Path:
    if spec.root is None:
        raise EdrayError("dataset.root", f"no {title} found: dataset.root is not set", fix.format(root="<root>"))
    return Path(spec.root).expanduser()


def _missing(title: str, searched: Path, fix: str, root: Path) -> EdrayError:
    return EdrayError("dataset.root", f"no {title} found at {searched}", fix.format(root=root))


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _images_in(folder: Path, *, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (sorted), optionally in its subfolders too."""
    if recursive:
        return sorted(p for p in folder.rglob("*") if p.is_file() and _is_image(p.name))
    return sorted(p for p in folder.iterdir() if p.is_file() and _is_image(p.name))


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _identity(base: Path, relpaths: Iterable[str]) -> str:
    """sha256 over the sorted relative file list and the file sizes."""
    h = hashlib.sha256()
    for rel in sorted(relpaths):
        h.update(f"{rel}:{(base / rel).stat().st_size}\n".encode())
    return h.hexdigest()


def _read_lines(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise EdrayError(str(path), f"cannot read ({err})", "re-extract the dataset") from None


def _source(
    base: Path,
    train: list[tuple[str, int]],
    test: list[tuple[str, int]] | None,
    class_names: list[str],
    size: int,
) -> DatasetSource:
    def image_set(rows: list[tuple[str, int]]) -> FileImageSet:
        paths = [p for p, _ in rows]
        return FileImageSet(base, paths, torch.tensor([y for _, y in rows], dtype=torch.long), image_size=size)

    files = [p for p, _ in train] + [p for p, _ in test or []]
    return DatasetSource(
        train=image_set(train),
        test=None if test is None else image_set(test),
        class_names=class_names,
        in_channels=3,
        image_size=size,
        identity=_identity(base, files),
    )


def _class_folders(
    base: Path, title: str, fix: str, root: Path, *, recursive: bool = False
) -> tuple[list[str], list[tuple[str, int]]]:
    """(class folder names, [(path relative to base's parent, label)]) for ``base/<class>/<images>``."""
    if not base.is_dir():
        raise _missing(title, base, fix, root)
    folders = _subdirs(base)
    if not folders:
        raise _missing(title, base / "<class>", fix, root)
    rows: list[tuple[str, int]] = []
    for label, folder in enumerate(folders):
        images = _images_in(folder, recursive=recursive)
        if not images:
            raise EdrayError("dataset.root", f"no {title} images in {folder}", fix.format(root=root))
        rows.extend((p.relative_to(base.parent).as_posix(), label) for p in images)
    return [f.name for f in folders], rows


# ---------------------------------------------------------------- Caltech-256


@DATASETS.register("caltech256")
def load_caltech256(spec: DatasetSpec) -> DatasetSource:
    """257 classes (clutter included), no official split (test is carved); default 224 px."""
    root = _root(spec, "Caltech-256", _CALTECH_FIX)
    base = root / "256_ObjectCategories"
    folders, rows = _class_folders(base, "Caltech-256", _CALTECH_FIX, root)
    names = [f.split(".", 1)[1] if "." in f and f.split(".", 1)[0].isdigit() else f for f in folders]
    return _source(root, rows, None, names, spec.image_size or 224)


# ---------------------------------------------------------------- Food-101


@DATASETS.register("food101")
def load_food101(spec: DatasetSpec) -> DatasetSource:
    """101 classes, the official 75,750 / 25,250 split from ``meta/``; default 224 px."""
    title = "Food-101"
    root = _root(spec, title, _FOOD_FIX)
    base = root / "food-101"
    for needed in (base, base / "images", base / "meta" / "classes.txt", base / "meta" / "train.txt",
                   base / "meta" / "test.txt"):
        if not needed.exists():
            raise _missing(title, needed, _FOOD_FIX, root)
    names = _read_lines(base / "meta" / "classes.txt")
    label_of = {name: i for i, name in enumerate(names)}

    def split(listing: str) -> list[tuple[str, int]]:
        rows = []
        for line in _read_lines(base / "meta" / listing):
            cls = line.split("/", 1)[0]
            if cls not in label_of:
                raise EdrayError(str(base / "meta" / listing), f"names class {cls!r}, absent from classes.txt",
                                 "re-extract the dataset")
            rel = f"images/{line}.jpg"
            if not (base / rel).is_file():
                raise _missing(title, base / rel, _FOOD_FIX, root)
            rows.append((rel, label_of[cls]))
        if not rows:
            raise _missing(title, base / "meta" / listing, _FOOD_FIX, root)
        return rows

    return _source(base, split("train.txt"), split("test.txt"), names, spec.image_size or 224)


# ---------------------------------------------------------------- Tiny ImageNet


@DATASETS.register("tiny_imagenet")
def load_tiny_imagenet(spec: DatasetSpec) -> DatasetSource:
    """200 classes; the official val set (with ``val_annotations.txt``) serves as test; 64 px."""
    title = "Tiny ImageNet"
    root = _root(spec, title, _TINY_FIX)
    base = root / "tiny-imagenet-200"
    for needed in (base, base / "wnids.txt", base / "train", base / "val" / "val_annotations.txt"):
        if not needed.exists():
            raise _missing(title, needed, _TINY_FIX, root)
    wnids = sorted(set(_read_lines(base / "wnids.txt")))
    if not wnids:
        raise _missing(title, base / "wnids.txt", _TINY_FIX, root)
    label_of = {w: i for i, w in enumerate(wnids)}
    train: list[tuple[str, int]] = []
    for wnid in wnids:
        folder = base / "train" / wnid / "images"
        images = _images_in(folder) if folder.is_dir() else []
        if not images:
            raise EdrayError("dataset.root", f"no {title} images in {folder}", _TINY_FIX.format(root=root))
        train.extend((p.relative_to(base).as_posix(), label_of[wnid]) for p in images)
    test: list[tuple[str, int]] = []
    annotations = base / "val" / "val_annotations.txt"
    for line in _read_lines(annotations):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in label_of:
            problem = f"bad line {line!r} (expected: file<TAB>wnid...)"
            raise EdrayError(str(annotations), problem, "re-extract the dataset")
        rel = f"val/images/{fields[0]}"
        if not (base / rel).is_file():
            raise _missing(title, base / rel, _TINY_FIX, root)
        test.append((rel, label_of[fields[1]]))
    if not test:
        raise _missing(title, annotations, _TINY_FIX, root)
    return _source(base, train, sorted(test), _tiny_names(base, wnids), spec.image_size or 64)


def _tiny_names(base: Path, wnids: list[str]) -> list[str]:
    """First synonym from ``words.txt`` where present, else the wnid."""
    words = base / "words.txt"
    names: dict[str, str] = {}
    if words.is_file():
        for line in _read_lines(words):
            wnid, _, text = line.partition("\t")
            names[wnid] = text.split(",")[0].strip() or wnid
    return [names.get(w, w) for w in wnids]


# ---------------------------------------------------------------- ImageFolder


@DATASETS.register("imagefolder")
def load_imagefolder(spec: DatasetSpec) -> DatasetSource:
    """``root/train/<class>/...`` and optionally ``root/test/<class>/...`` (or ``root/val``).

    Class names are the sorted train folder names; images are found recursively. With
    no test folder, test is carved. With no ``image_size``, the shorter side of the first
    training image is used (the native size of a set of equal-sized images).
    """
    title = "image folder"
    root = _root(spec, title, _FOLDER_FIX)
    names, train = _class_folders(root / "train", title, _FOLDER_FIX, root, recursive=True)
    label_of = {n: i for i, n in enumerate(names)}
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    test: list[tuple[str, int]] | None = None
    if test_dir is not None:
        test = []
        for folder in _subdirs(test_dir):
            if folder.name not in label_of:
                raise EdrayError(
                    "dataset.root", f"{folder} is a class absent from {root / 'train'}",
                    f"remove it or add {root / 'train' / folder.name}",
                )
            test.extend((p.relative_to(root).as_posix(), label_of[folder.name])
                        for p in _images_in(folder, recursive=True))
        if not test:
            raise EdrayError("dataset.root", f"no images in {test_dir}/<class>/", f"add images or remove {test_dir}")
    size = spec.image_size or _native_size(root / train[0][0])
    return _source(root, train, test, names, size)


def _native_size(path: Path) -> int:
    try:
        with Image.open(path) as img:
            return min(img.size)
    except OSError as err:
        raise EdrayError(str(path), f"cannot read image ({err})", "remove or replace the file") from None

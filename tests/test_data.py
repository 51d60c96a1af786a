"""Datasets, carving and image sets, on real files written to tmp_path."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edray.data import DATASETS, FileImageSet, TensorImageSet, iterate_batches, load_data, subset
from edray.data.digits import read_digits
from edray.data.imagesets import IMAGENET_MEAN, IMAGENET_STD, SubsetImageSet
from edray.data.synthetic import SyntheticImageSet
from edray.errors import EdrayError
from edray.spec import DatasetSpec

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


# ---------------------------------------------------------------- helpers


def _spec(name: str, root: Path | None = None, **kw) -> DatasetSpec:
    return DatasetSpec(name=name, root=None if root is None else str(root), **kw)


def _write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (20, 14)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    Image.new("RGB", size, colour).save(path, format=fmt, quality=95)


def _rgb(x: torch.Tensor) -> torch.Tensor:
    """Undo ImageNet normalisation: [B, 3, H, W] back to 0..255."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x * std + mean) * 255


def _assert_colours(images, rows: list[int], *, tol: float = 6.0) -> None:
    """Each loaded image is a flat field of the colour of its label (JPEG tolerance)."""
    x = _rgb(images.load(torch.tensor(rows)))
    for i, row in enumerate(rows):
        colour = torch.tensor(COLOURS[images.labels[row].item()], dtype=torch.float32)
        assert (x[i] - colour.view(3, 1, 1)).abs().max() < tol


def _rows_of(images) -> tuple[int, torch.Tensor]:
    assert isinstance(images, SubsetImageSet)
    return id(images.base), images.rows


def _assert_disjoint(data) -> None:
    """Train, val and test share no source row (and no file, for file datasets)."""
    keys = {}
    for name in ("train", "val", "test"):
        images = getattr(data, name)
        if isinstance(images, SubsetImageSet) and isinstance(images.base, FileImageSet):
            keys[name] = {images.base.paths[r] for r in images.rows.tolist()}
        elif isinstance(images, FileImageSet):
            keys[name] = set(images.paths)
        elif isinstance(images, SubsetImageSet):
            keys[name] = {(id(images.base), r) for r in images.rows.tolist()}
        else:  # an official test set of its own
            keys[name] = {(id(images), r) for r in range(len(images))}
        assert len(keys[name]) == len(images), f"{name} repeats a row"
    assert not keys["train"] & keys["val"]
    assert not keys["train"] & keys["test"]
    assert not keys["val"] & keys["test"]


# ---------------------------------------------------------------- digits and carving


@pytest.fixture(scope="module")
def digits():
    return load_data(_spec("digits"))


def test_digits_shapes_and_normalisation(digits):
    assert (digits.num_classes, digits.in_channels, digits.image_size) == (10, 1, 8)
    assert digits.class_names == [str(i) for i in range(10)]
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    x = digits.train.load(torch.arange(len(digits.train)))
    assert x.shape == (len(digits.train), 1, 8, 8) and x.dtype == torch.float32
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05
    assert digits.train.labels.dtype == torch.int64


def test_digits_read_without_sklearn_equal_load_digits():
    from sklearn.datasets import load_digits

    values, targets = read_digits()
    bunch = load_digits()
    assert np.array_equal(values, bunch.images) and np.array_equal(targets, bunch.target)


def test_digits_splits_are_disjoint_stratified_and_sized(digits):
    _assert_disjoint(digits)
    assert abs(len(digits.test) / 1797 - 0.2) < 0.01
    assert abs(len(digits.val) / (1797 - len(digits.test)) - 0.15) < 0.01
    for split in (digits.train, digits.val, digits.test):
        counts = torch.bincount(split.labels, minlength=10).float()
        share = counts / counts.sum()
        assert (share - 0.1).abs().max() < 0.02, "every split keeps the class balance"


def test_digits_resize():
    data = load_data(_spec("digits", image_size=16))
    x = data.val.load(torch.arange(4))
    assert data.image_size == 16 and x.shape == (4, 1, 16, 16)


def test_carving_is_seeded_and_steps_are_independent(digits):
    same = load_data(_spec("digits"))
    assert same.fingerprint == digits.fingerprint
    assert torch.equal(same.train.rows, digits.train.rows)
    other = load_data(_spec("digits", split_seed=1))
    assert other.fingerprint != digits.fingerprint
    assert not torch.equal(other.test.rows, digits.test.rows)
    # A different val_fraction never moves a test row.
    more_val = load_data(_spec("digits", val_fraction=0.3))
    assert torch.equal(more_val.test.rows, digits.test.rows)
    assert len(more_val.val) > len(digits.val) and more_val.fingerprint != digits.fingerprint


def test_train_fraction_keeps_a_stratified_part_of_train(digits):
    low = load_data(_spec("digits", train_fraction=0.1))
    assert torch.equal(low.val.rows, digits.val.rows) and torch.equal(low.test.rows, digits.test.rows)
    assert set(low.train.rows.tolist()) < set(digits.train.rows.tolist())
    assert abs(len(low.train) - 0.1 * len(digits.train)) <= 10
    assert torch.bincount(low.train.labels, minlength=10).min() >= 1
    tiny = load_data(_spec("digits", train_fraction=0.001))
    assert torch.equal(torch.bincount(tiny.train.labels, minlength=10), torch.ones(10, dtype=torch.long))
    _assert_disjoint(tiny)


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(EdrayError) as err:
        load_data(_spec("imagenet21k"))
    assert err.value.path == "dataset.name" and "cifar100" in err.value.fix and "digits" in err.value.fix
    assert set(DATASETS.names()) >= {"digits", "synthetic", "cifar100", "caltech256", "food101",
                                     "tiny_imagenet", "imagefolder"}


# ---------------------------------------------------------------- synthetic


def test_synthetic_shapes_labels_and_determinism():
    spec = _spec("synthetic", num_classes=5, samples_per_class=12, channels=2, image_size=16)
    data = load_data(spec)
    assert (data.num_classes, data.in_channels, data.image_size) == (5, 2, 16)
    assert len(data.train) + len(data.val) == 60 and len(data.test) == 5 * 3
    _assert_disjoint(data)
    x = data.train.load(torch.arange(len(data.train)))
    assert x.shape == (len(data.train), 2, 16, 16) and torch.isfinite(x).all()
    assert abs(x.mean().item()) < 0.2 and 0.7 < x.std().item() < 1.3
    again = load_data(spec)
    assert again.fingerprint == data.fingerprint
    assert torch.equal(again.train.load(torch.arange(10)), x[:10])
    assert load_data(_spec("synthetic", num_classes=5, samples_per_class=12, split_seed=1)).fingerprint != (
        load_data(_spec("synthetic", num_classes=5, samples_per_class=12)).fingerprint
    )


def test_synthetic_rows_do_not_depend_on_the_batch():
    s = SyntheticImageSet(num_classes=7, per_class=4, channels=3, image_size=12, seed=3, split="train")
    a = s.load(torch.tensor([5, 20, 1]))
    b = s.load(torch.tensor([1, 5]))
    assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0])
    test = SyntheticImageSet(num_classes=7, per_class=1, channels=3, image_size=12, seed=3, split="test")
    assert not torch.equal(test.load(torch.tensor([1])), s.load(torch.tensor([1]))), "test rows are new samples"


def test_synthetic_is_learnable_but_not_trivial():
    kw = dict(num_classes=6, channels=3, image_size=12, seed=0)
    train = SyntheticImageSet(per_class=40, split="train", **kw)
    test = SyntheticImageSet(per_class=20, split="test", **kw)
    x, xt = train.load(torch.arange(len(train))), test.load(torch.arange(len(test)))
    # Same class, different samples: noise and shift make them differ.
    same = (train.labels == 0).nonzero().flatten()[:2]
    assert (x[same[0]] - x[same[1]]).abs().mean() > 0.5
    # Translation-invariant features (the per-channel power spectrum) separate the classes.
    feats = lambda t: torch.fft.rfft2(t).abs().flatten(1)  # noqa: E731
    f, ft = feats(x), feats(xt)
    centroids = torch.stack([f[train.labels == c].mean(0) for c in range(6)])
    acc = (torch.cdist(ft, centroids).argmin(1) == test.labels).float().mean().item()
    assert acc > 0.5, f"nearest centroid on spectra only {acc:.0%} (chance 17%)"


def test_synthetic_at_scale_costs_no_memory():
    data = load_data(_spec("synthetic", num_classes=257, image_size=224))
    assert data.num_classes == 257 and len(data.train) + len(data.val) == 25700
    x = data.train.load(torch.tensor([0, 25000 % len(data.train)]))
    assert x.shape == (2, 3, 224, 224)


# ---------------------------------------------------------------- CIFAR-100


def _write_cifar(root: Path, *, n_train: int = 20, n_test: int = 8, classes: int = 4) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        labels = [i % classes for i in range(n)]
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        data[:, 0] = np.asarray(labels) * 10  # a marker: channel 0, pixel (0, 0) = 10 * label
        blob = {b"data": data, b"fine_labels": labels, b"coarse_labels": [0] * n, b"filenames": [b"x"] * n}
        (folder / name).write_bytes(pickle.dumps(blob))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"c{i}".encode() for i in range(classes)]}))


def test_cifar100_loads_a_real_pickle(tmp_path):
    _write_cifar(tmp_path)
    data = load_data(_spec("cifar100", tmp_path, val_fraction=0.25))
    assert data.num_classes == 4 and data.class_names == ["c0", "c1", "c2", "c3"]
    assert (data.in_channels, data.image_size) == (3, 32)
    assert len(data.test) == 8 and len(data.train) + len(data.val) == 20
    _assert_disjoint_official_test(data)
    x = data.train.load(torch.arange(len(data.train)))
    assert x.shape == (len(data.train), 3, 32, 32)
    marker = (x[:, 0, 0, 0] * 0.2673 + 0.5071) * 255  # undo CIFAR-100 normalisation
    assert torch.allclose(marker, data.train.labels.float() * 10, atol=1e-3)
    big = load_data(_spec("cifar100", tmp_path, image_size=48))
    assert big.test.load(torch.arange(2)).shape == (2, 3, 48, 48)


def _assert_disjoint_official_test(data) -> None:
    base, train_rows = _rows_of(data.train)
    base_v, val_rows = _rows_of(data.val)
    assert base == base_v and not set(train_rows.tolist()) & set(val_rows.tolist())
    assert data.test is not data.train and not isinstance(data.test, SubsetImageSet)


def test_cifar100_missing_data(tmp_path):
    with pytest.raises(EdrayError) as err:
        load_data(_spec("cifar100"))
    assert err.value.path == "dataset.root" and "not set" in err.value.problem
    with pytest.raises(EdrayError) as err:
        load_data(_spec("cifar100", tmp_path))
    assert str(tmp_path / "cifar-100-python") in err.value.problem
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in err.value.fix and str(tmp_path) in err.value.fix
    _write_cifar(tmp_path)
    (tmp_path / "cifar-100-python" / "test").unlink()
    with pytest.raises(EdrayError) as err:
        load_data(_spec("cifar100", tmp_path))
    assert str(tmp_path / "cifar-100-python" / "test") in err.value.problem
    (tmp_path / "cifar-100-python" / "test").write_bytes(b"not a pickle")
    with pytest.raises(EdrayError) as err:
        load_data(_spec("cifar100", tmp_path))
    assert err.value.path == str(tmp_path / "cifar-100-python" / "test")


# ---------------------------------------------------------------- Caltech-256


def _write_caltech(root: Path, per_class: int = 5) -> None:
    base = root / "256_ObjectCategories"
    for label, folder in enumerate(["001.ak47", "002.bat", "257.clutter"]):
        for i in range(per_class):
            _write_image(base / folder / f"{label + 1:03d}_{i:04d}.jpg", COLOURS[label], size=(16 + i, 12 + 2 * i))
    (base / "002.bat" / "RENAME2").write_text("not an image")


def test_caltech256_loads_and_carves_test(tmp_path):
    _write_caltech(tmp_path)
    data = load_data(_spec("caltech256", tmp_path, image_size=10, val_fraction=0.25, test_fraction=0.2))
    assert data.class_names == ["ak47", "bat", "clutter"] and data.num_classes == 3
    assert (data.in_channels, data.image_size) == (3, 10)
    assert len(data.train) + len(data.val) + len(data.test) == 15
    _assert_disjoint(data)
    assert len(data.test) == 3 and len(data.val) == 3  # one per class each
    x = data.test.load(torch.arange(len(data.test)))
    assert x.shape == (3, 3, 10, 10)
    for split in (data.train, data.val, data.test):
        _assert_colours(split, list(range(len(split))))
    default = load_data(_spec("caltech256", tmp_path))
    assert default.image_size == 224 and default.train.load(torch.tensor([0])).shape == (1, 3, 224, 224)


def test_caltech256_missing_data(tmp_path):
    with pytest.raises(EdrayError, match="dataset.root is not set"):
        load_data(_spec("caltech256"))
    with pytest.raises(EdrayError) as err:
        load_data(_spec("caltech256", tmp_path))
    assert err.value.path == "dataset.root" and str(tmp_path / "256_ObjectCategories") in err.value.problem
    assert "data.caltech.edu" in err.value.fix
    _write_caltech(tmp_path)
    (tmp_path / "256_ObjectCategories" / "003.empty").mkdir()
    with pytest.raises(EdrayError) as err:
        load_data(_spec("caltech256", tmp_path))
    assert str(tmp_path / "256_ObjectCategories" / "003.empty") in err.value.problem


def test_fingerprint_follows_the_files(tmp_path):
    _write_caltech(tmp_path)
    spec = _spec("caltech256", tmp_path, image_size=8)
    first = load_data(spec).fingerprint
    assert load_data(spec).fingerprint == first
    assert load_data(_spec("caltech256", tmp_path, image_size=16)).fingerprint != first
    _write_image(tmp_path / "256_ObjectCategories" / "001.ak47" / "001_0000.jpg", (1, 2, 3), size=(40, 40))
    assert load_data(spec).fingerprint != first, "a changed file changes the fingerprint"


# ---------------------------------------------------------------- Food-101


def _write_food(root: Path) -> None:
    base = root / "food-101"
    classes = ["apple_pie", "baby_back_ribs", "beignets"]
    train, test = [], []
    for label, cls in enumerate(classes):
        for i in range(6):
            _write_image(base / "images" / cls / f"{100 + i}.jpg", COLOURS[label])
            (train if i < 4 else test).append(f"{cls}/{100 + i}")
    (base / "meta").mkdir(parents=True)
    (base / "meta" / "classes.txt").write_text("\n".join(classes) + "\n")
    (base / "meta" / "train.txt").write_text("\n".join(train) + "\n")
    (base / "meta" / "test.txt").write_text("\n".join(test) + "\n")


def test_food101_uses_the_official_split(tmp_path):
    _write_food(tmp_path)
    data = load_data(_spec("food101", tmp_path, image_size=12, val_fraction=0.25))
    assert data.class_names == ["apple_pie", "baby_back_ribs", "beignets"] and data.image_size == 12
    assert len(data.test) == 6 and len(data.train) + len(data.val) == 12 and len(data.val) == 3
    _assert_disjoint(data)
    assert sorted(data.test.paths) == sorted(f"images/{c}/{i}.jpg" for c in data.class_names for i in (104, 105))
    assert torch.equal(torch.bincount(data.test.labels), torch.tensor([2, 2, 2]))
    _assert_colours(data.test, list(range(6)))
    _assert_colours(data.train, list(range(len(data.train))))


def test_food101_missing_data(tmp_path):
    with pytest.raises(EdrayError) as err:
        load_data(_spec("food101", tmp_path))
    assert str(tmp_path / "food-101") in err.value.problem and "food-101.tar.gz" in err.value.fix
    _write_food(tmp_path)
    (tmp_path / "food-101" / "meta" / "test.txt").unlink()
    with pytest.raises(EdrayError) as err:
        load_data(_spec("food101", tmp_path))
    assert str(tmp_path / "food-101" / "meta" / "test.txt") in err.value.problem
    (tmp_path / "food-101" / "meta" / "test.txt").write_text("beignets/999\n")
    with pytest.raises(EdrayError) as err:
        load_data(_spec("food101", tmp_path))
    assert str(tmp_path / "food-101" / "images" / "beignets" / "999.jpg") in err.value.problem


# ---------------------------------------------------------------- Tiny ImageNet


def _write_tiny(root: Path) -> None:
    base = root / "tiny-imagenet-200"
    wnids = ["n02", "n01", "n03"]  # listed unsorted: labels follow the sorted wnids
    (base / "val" / "images").mkdir(parents=True)
    base.joinpath("wnids.txt").write_text("\n".join(wnids) + "\n")
    base.joinpath("words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\ttabby, tabby cat\nn03\tbus\n")
    lines = []
    for wnid in wnids:
        label = sorted(wnids).index(wnid)
        for i in range(4):
            _write_image(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", COLOURS[label], size=(64, 64))
        for i in range(2):
            name = f"val_{wnid}_{i}.JPEG"
            _write_image(base / "val" / "images" / name, COLOURS[label], size=(64, 64))
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    base.joinpath("val", "val_annotations.txt").write_text("\n".join(lines) + "\n")


def test_tiny_imagenet_uses_val_as_test(tmp_path):
    _write_tiny(tmp_path)
    data = load_data(_spec("tiny_imagenet", tmp_path, val_fraction=0.25))
    assert data.class_names == ["goldfish", "tabby", "bus"] and data.image_size == 64
    assert len(data.test) == 6 and len(data.train) + len(data.val) == 12
    _assert_disjoint(data)
    assert all(p.startswith("val/images/") for p in data.test.paths)
    _assert_colours(data.test, list(range(6)))
    _assert_colours(data.val, list(range(len(data.val))))


def test_tiny_imagenet_missing_data(tmp_path):
    with pytest.raises(EdrayError) as err:
        load_data(_spec("tiny_imagenet", tmp_path))
    assert str(tmp_path / "tiny-imagenet-200") in err.value.problem and "tiny-imagenet-200.zip" in err.value.fix
    _write_tiny(tmp_path)
    (tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt").unlink()
    with pytest.raises(EdrayError) as err:
        load_data(_spec("tiny_imagenet", tmp_path))
    assert "val_annotations.txt" in err.value.problem
    _write_tiny(tmp_path / "again")
    for f in (tmp_path / "again" / "tiny-imagenet-200" / "train" / "n03" / "images").iterdir():
        f.unlink()
    with pytest.raises(EdrayError) as err:
        load_data(_spec("tiny_imagenet", tmp_path / "again"))
    assert str(tmp_path / "again" / "tiny-imagenet-200" / "train" / "n03" / "images") in err.value.problem


# ---------------------------------------------------------------- ImageFolder


def _write_folder(root: Path, *, test_dir: str | None = "test") -> None:
    for label, cls in enumerate(["cat", "dog"]):
        for i in range(5):
            _write_image(root / "train" / cls / f"{i}.png", COLOURS[label], size=(18, 18))
        if test_dir:
            _write_image(root / test_dir / cls / "nested" / "t.png", COLOURS[label], size=(18, 18))


@pytest.mark.parametrize("test_dir", ["test", "val"])
def test_imagefolder_with_a_test_folder(tmp_path, test_dir):
    _write_folder(tmp_path, test_dir=test_dir)
    data = load_data(_spec("imagefolder", tmp_path, val_fraction=0.2))
    assert data.class_names == ["cat", "dog"] and data.image_size == 18  # native size
    assert len(data.test) == 2 and data.test.paths[0].startswith(f"{test_dir}/")
    assert len(data.train) == 8 and len(data.val) == 2
    _assert_disjoint(data)
    _assert_colours(data.test, [0, 1], tol=1.0)  # PNG: lossless


def test_imagefolder_without_test_carves_it(tmp_path):
    _write_folder(tmp_path, test_dir=None)
    data = load_data(_spec("imagefolder", tmp_path, image_size=9))
    assert len(data.train) + len(data.val) + len(data.test) == 10 and len(data.test) == 2
    _assert_disjoint(data)
    assert data.train.load(torch.arange(2)).shape == (2, 3, 9, 9)


def test_imagefolder_missing_data(tmp_path):
    with pytest.raises(EdrayError) as err:
        load_data(_spec("imagefolder", tmp_path))
    assert str(tmp_path / "train") in err.value.problem and err.value.path == "dataset.root"
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(EdrayError) as err:
        load_data(_spec("imagefolder", tmp_path))
    assert str(tmp_path / "train" / "cat") in err.value.problem
    _write_folder(tmp_path)
    _write_image(tmp_path / "test" / "cow" / "0.png", COLOURS[2])
    with pytest.raises(EdrayError) as err:
        load_data(_spec("imagefolder", tmp_path))
    assert "cow" in err.value.problem


# ---------------------------------------------------------------- image sets and batches


def test_file_image_set_resizes_shorter_side_then_centre_crops(tmp_path):
    # 20 x 10 image: left half red, right half blue. Shorter side 10 -> 20 x 10 stays;
    # the centre 10 x 10 crop spans columns 5..14: left half red, right half blue.
    img = Image.new("RGB", (20, 10), (255, 0, 0))
    img.paste((0, 0, 255), (10, 0, 20, 10))
    img.save(tmp_path / "a.png")
    tall = Image.new("RGB", (4, 8), (0, 255, 0))  # upscaled to 10 x 20, centre crop 10 x 10
    tall.save(tmp_path / "b.png")
    images = FileImageSet(tmp_path, ["a.png", "b.png"], torch.tensor([0, 1]), image_size=10)
    x = _rgb(images.load(torch.tensor([0, 1])))
    assert x.shape == (2, 3, 10, 10)
    assert torch.allclose(x[0, :, :, :5], torch.tensor([255.0, 0, 0]).view(3, 1, 1).expand(3, 10, 5), atol=1e-3)
    assert torch.allclose(x[0, :, :, 5:], torch.tensor([0.0, 0, 255]).view(3, 1, 1).expand(3, 10, 5), atol=1e-3)
    assert torch.allclose(x[1], torch.tensor([0.0, 255, 0]).view(3, 1, 1).expand(3, 10, 10), atol=1e-3)


def test_file_image_set_pickles_and_reports_a_bad_file(tmp_path):
    _write_image(tmp_path / "ok.jpg", COLOURS[1])
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    images = FileImageSet(tmp_path, ["ok.jpg", "bad.jpg"], torch.tensor([1, 0]), image_size=8)
    copy = pickle.loads(pickle.dumps(images))
    assert torch.equal(copy.load(torch.tensor([0])), images.load(torch.tensor([0])))
    with pytest.raises(EdrayError) as err:
        images.load(torch.tensor([1]))
    assert err.value.path == str(tmp_path / "bad.jpg")


def test_tensor_image_set_scales_uint8_and_normalises():
    images = torch.tensor([[[[0, 255], [51, 102]]]], dtype=torch.uint8)  # [1, 1, 2, 2]
    s = TensorImageSet(images, torch.tensor([3]), mean=[0.2], std=[0.5])
    assert torch.allclose(s.load(torch.tensor([0])), torch.tensor([[[[-0.4, 1.6], [0.0, 0.4]]]]), atol=1e-6)
    assert s.load(torch.tensor([0, 0])).shape == (2, 1, 2, 2)


def test_subset_of_a_subset_maps_to_the_base_rows(digits):
    base = digits.train.base
    inner = subset(digits.train, torch.tensor([5, 0, 9]))
    assert isinstance(inner, SubsetImageSet) and inner.base is base
    assert torch.equal(inner.rows, digits.train.rows[torch.tensor([5, 0, 9])])
    assert torch.equal(inner.labels, base.labels[inner.rows])
    assert torch.equal(inner.load(torch.tensor([2])), base.load(inner.rows[2:3]))
    with pytest.raises(IndexError):
        subset(inner, torch.tensor([3]))


def test_iterate_batches_follows_the_order(digits):
    order = torch.tensor([9, 3, 7, 0, 1, 2, 8])
    got = list(iterate_batches(digits.val, order, 3))
    assert [len(idx) for _, _, idx in got] == [3, 3, 1]
    assert torch.equal(torch.cat([idx for _, _, idx in got]), order)
    for x, y, idx in got:
        assert torch.equal(x, digits.val.load(idx)) and torch.equal(y, digits.val.labels[idx])


def test_iterate_batches_with_workers_matches_in_process(tmp_path):
    _write_caltech(tmp_path, per_class=4)
    data = load_data(_spec("caltech256", tmp_path, image_size=8))
    assert not data.train.in_memory  # so num_workers > 0 takes the DataLoader path
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
    plain = list(iterate_batches(data.train, order, 2))
    workers = list(iterate_batches(data.train, order, 2, num_workers=2))
    assert len(plain) == len(workers)
    for (x0, y0, i0), (x1, y1, i1) in zip(plain, workers):
        assert torch.equal(x0, x1) and torch.equal(y0, y1) and torch.equal(i0, i1)

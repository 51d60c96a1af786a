"""The decoded-image cache (edray.data.image_cache) on real JPEG files written to tmp_path."""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from edray.data import FileImageSet, load_data
from edray.data.image_cache import CachedImageSet, ImageCacheKey, cache_image_set, open_image_cache
from edray.data.imagesets import SubsetImageSet
from edray.data.views import batch_views, view_params
from edray.errors import EdrayError
from edray.spec import AugmentSpec, DatasetSpec

from .helpers import write_image_folder

SIZE = 16


def _spec(root: Path, **kw) -> DatasetSpec:
    return DatasetSpec(name="imagefolder", root=str(root), image_size=SIZE, **kw)


def _file_set(root: Path) -> tuple[FileImageSet, str]:
    from edray.data.folders import load_imagefolder

    source = load_imagefolder(_spec(root))
    return source.train, source.identity


def _cache(images: FileImageSet, identity: str, root: Path, **kw) -> CachedImageSet:
    return cache_image_set(images, root, dataset_name="imagefolder", dataset_identity=identity, num_workers=0,
                           say=lambda _: None, **kw)


def test_cache_equals_direct_decode_pixel_exact(tmp_path):
    images, identity = _file_set(write_image_folder(tmp_path / "data"))
    cached = _cache(images, identity, tmp_path / "images")
    rows = torch.tensor([14, 0, 7, 3, 3])
    assert np.array_equal(cached.load_uint8(rows), images.load_uint8(rows))
    assert torch.equal(cached.load(rows), images.load(rows))  # same floats, not just close ones
    # Views cut straight from the mapped rows equal the views of the decoded batch.
    aug = AugmentSpec(crop_padding=3, hflip=True)
    params = view_params(3, rows, torch.tensor([1, 0, 5, 2, 9]), aug)
    expected = batch_views(images.load_pixels(rows), params, aug, images.stats)
    assert torch.equal(cached.load_views(rows, params, aug), expected)
    assert torch.equal(images.load_views(rows, params, aug), expected)
    assert torch.equal(cached.labels, images.labels) and cached.in_memory
    clone = pickle.loads(pickle.dumps(cached))  # what a DataLoader or Ray worker gets: path + manifest
    assert clone._batches is None and torch.equal(clone.load(rows), images.load(rows))


def test_load_data_reads_every_split_from_the_cache(tmp_path, capsys):
    root = write_image_folder(tmp_path / "data", per_class=6)
    plain = load_data(_spec(root))
    capsys.readouterr()
    cached = load_data(_spec(root), image_cache=tmp_path / "images")
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and "decoding 18 images once at 16 px" in said[0]
    assert f"({18 * SIZE * SIZE * 3 * 1.02 / 1e6:.1f} MB)" in said[0]  # the size, before writing
    assert cached.fingerprint == plain.fingerprint  # same data: logit stores and teachers are shared
    for split in ("train", "val", "test"):
        a, b = getattr(plain, split), getattr(cached, split)
        assert isinstance(b, SubsetImageSet) and isinstance(b.base, CachedImageSet)
        assert torch.equal(a.load(torch.arange(len(a))), b.load(torch.arange(len(b))))
    off = load_data(_spec(root, cache="off"), image_cache=tmp_path / "other")
    assert isinstance(off.train.base, FileImageSet) and not (tmp_path / "other").exists()


def test_a_found_cache_is_reused_without_decoding(tmp_path):
    images, identity = _file_set(write_image_folder(tmp_path / "data"))
    first = _cache(images, identity, tmp_path / "images")
    before = Path(first.path).stat().st_mtime_ns
    said: list[str] = []
    again = cache_image_set(images, tmp_path / "images", dataset_name="imagefolder", dataset_identity=identity,
                            say=said.append, verify=True)
    assert said == [] and again.path == first.path and Path(again.path).stat().st_mtime_ns == before


def test_truncated_or_foreign_cache_is_refused_then_rebuilt(tmp_path):
    images, identity = _file_set(write_image_folder(tmp_path / "data"))
    root = tmp_path / "images"
    cached = _cache(images, identity, root)
    key = ImageCacheKey.of(images, dataset_name="imagefolder", dataset_identity=identity)
    data = Path(cached.path)
    good = data.read_bytes()

    data.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(EdrayError, match="truncated"):
        open_image_cache(root, key)
    rebuilt = _cache(images, identity, root)
    assert data.read_bytes() == good and torch.equal(rebuilt.load(torch.arange(3)), images.load(torch.arange(3)))

    # Foreign: the cache of another file list, same shape and byte size, copied over this one.
    other_images, other_identity = _file_set(write_image_folder(tmp_path / "other", seed=1))
    other = _cache(other_images, other_identity, tmp_path / "other-images")
    assert Path(other.path).stat().st_size == len(good)
    data.write_bytes(Path(other.path).read_bytes())
    with pytest.raises(EdrayError, match="does not belong to this key"):
        open_image_cache(root, key)
    assert data.read_bytes() != good
    _cache(images, identity, root)
    assert data.read_bytes() == good

    # A bit flip keeps size and schema: only the checksum finds it.
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    data.write_bytes(bytes(flipped))
    open_image_cache(root, key)  # the cheap check passes
    with pytest.raises(EdrayError, match="checksum mismatch"):
        open_image_cache(root, key, verify=True)
    _cache(images, identity, root, verify=True)
    assert data.read_bytes() == good

    manifest = data.with_suffix(".json")
    record = json.loads(manifest.read_text())
    record["key"]["image_size"] = 99  # a manifest for another key under this name
    manifest.write_text(json.dumps(record))
    with pytest.raises(EdrayError, match="another image cache"):
        open_image_cache(root, key)


def test_no_room_is_refused_before_writing(tmp_path, tmpfs):
    """On a real 8 kB tmpfs (the cache needs ~12 kB): refused before a byte is written;
    the same call builds once the filesystem has room."""
    from .conftest import remount

    images, identity = _file_set(write_image_folder(tmp_path / "data"))
    disk = tmpfs("images", 8)
    with pytest.raises(EdrayError, match=r"needs [0-9.]+ MB \(15 images at 16 px\), only [0-9.]+ MB are free") as err:
        _cache(images, identity, disk / "images")
    assert "dataset.cache: off" in err.value.fix
    assert [p.name for p in disk.rglob("*") if p.is_file() and not p.name.endswith(".lock")] == []
    remount(disk, "size=4m")
    cached = _cache(images, identity, disk / "images")
    assert Path(cached.path).is_file() and Path(cached.path).is_relative_to(disk)


def _build_in_child(data_root: str, cache_root: str, log: str, barrier) -> str:
    images, identity = _file_set(Path(data_root))
    barrier.wait()

    def say(message: str) -> None:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")

    return cache_image_set(images, cache_root, dataset_name="imagefolder", dataset_identity=identity,
                           num_workers=0, say=say).path


def test_two_processes_building_one_cache_end_with_one(tmp_path):
    data_root = write_image_folder(tmp_path / "data", per_class=20)
    ctx = multiprocessing.get_context("spawn")
    log = tmp_path / "builds.log"
    barrier = ctx.Manager().Barrier(2)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
        futures = [pool.submit(_build_in_child, str(data_root), str(tmp_path / "images"), str(log), barrier)
                   for _ in range(2)]
        paths = [f.result(timeout=120) for f in futures]
    assert paths[0] == paths[1]
    assert len(log.read_text().split()) == 1  # one process decoded; the other waited and reused its cache
    names = sorted(p.name for p in (tmp_path / "images").iterdir())
    stem = Path(paths[0]).stem
    assert names == [f".{stem}.lock", f"{stem}.arrow", f"{stem}.json"]
    images, identity = _file_set(data_root)
    key = ImageCacheKey.of(images, dataset_name="imagefolder", dataset_identity=identity)
    open_image_cache(tmp_path / "images", key, verify=True)

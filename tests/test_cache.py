"""The layout (where everything lives) and the node-local cache (fetched once, checked, mapped).

``file://`` URIs take the object-storage code path offline; the S3 API itself is
exercised by the cluster tests (tests/test_multinode.py).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from edray.cache import cached_file, cached_store, cached_tree
from edray.errors import EdrayError
from edray.layout import Layout
from edray.logits import StoreKey, write_store
from edray.logits.manifest import shard_name

from .helpers import store_key

R, V, K = 40, 2, 3


def _key() -> StoreKey:
    return store_key(teacher_arch="cnn", dataset_samples=R, dataset_fingerprint="f" * 16, image_size=8,
                     normalisation="n", views=V)


def _logits() -> np.ndarray:
    return np.arange(R * V * K, dtype=np.float32).reshape(R, V, K) / 7


def _shared_store(tmp_path: Path) -> str:
    root = (tmp_path / "shared" / "logits").as_uri()
    return str(write_store(root, _key(), rows=R, views=V, outputs=K, sample_ids=np.arange(R), rows_per_shard=16,
                           compute_shard=lambda a, b: _logits()[a:b]))


def test_layout_puts_shared_things_under_edray_shared_and_the_rest_in_the_workdir(tmp_path, monkeypatch):
    monkeypatch.delenv("EDRAY_SHARED", raising=False)
    monkeypatch.setenv("EDRAY_CACHE", str(tmp_path / "node-cache"))  # a cluster's setting: one machine has none
    local = Layout.from_env(tmp_path / "w")  # one machine: the work directory is the shared root and the cache
    work = tmp_path / "w"
    assert local == Layout.at(work) and not local.on_cluster and local.shared == str(work)
    assert local.teachers == str(work / "teachers") == str(local.node_teachers())
    assert local.stores == str(work / "logits") and local.images() == work / "images" and local.cache() == work
    assert not local.needs_fetch(local.stores) and not local.needs_fetch(local.teachers)
    assert not local.teachers_apart()
    monkeypatch.delenv("EDRAY_CACHE")
    assert local.models("digits", "run1") == str(work / "sweeps" / "digits" / "models" / "run1")
    assert local.sweep_dir("digits") == work / "sweeps" / "digits"
    assert local.mlflow_artifacts == work / "mlflow-artifacts"
    monkeypatch.setenv("EDRAY_SHARED", "s3://bucket/edray/")
    shared = Layout.from_env(tmp_path / "w", store_uri="s3://other/stores/")
    assert shared.on_cluster and shared.teacher("t.pt") == "s3://bucket/edray/teachers/t.pt"
    assert shared.stores == "s3://other/stores" and Layout.from_env(work).stores == "s3://bucket/edray/logits"
    assert shared.mlflow_artifacts == work / "mlflow-artifacts" and shared.needs_fetch(shared.teachers)
    assert shared.models("digits", "run1") == "s3://bucket/edray/models/digits/run1"
    assert shared.ray_results == "s3://bucket/edray/ray_results" and shared.sweep_dir("d") == work / "sweeps" / "d"
    monkeypatch.setenv("EDRAY_CACHE", str(tmp_path / "node-cache"))  # read on the node that asks, not pickled
    assert pickle.loads(pickle.dumps(shared)).cache() == tmp_path / "node-cache"
    assert pickle.loads(pickle.dumps(shared)) == shared
    assert shared.node_teachers() == tmp_path / "node-cache" / "teachers" and shared.teachers_apart()
    inside = Layout.from_env(work, shared=str(work / "shared"))  # a shared folder inside the work directory
    assert inside.on_cluster and inside.teachers_apart() and not inside.needs_fetch(inside.stores)
    mounted = Layout.from_env(tmp_path / "w", shared=str(tmp_path / "nfs"))
    assert mounted.needs_fetch(mounted.stores) and not mounted.needs_fetch(str(tmp_path / "w" / "x"))


def test_a_store_is_fetched_once_checked_and_memory_mapped(tmp_path):
    location = _shared_store(tmp_path)
    cache = tmp_path / "cache"
    store = cached_store(location, cache, _key())
    assert Path(store.path) == cache / "logits" / _key().name
    want = _logits()[:, 1].astype(np.float16).astype(np.float32)
    assert np.array_equal(store.logits(torch.arange(R), 1).numpy(), want)
    before = os.stat(Path(store.path) / shard_name(0)).st_mtime_ns
    assert cached_store(location, cache, _key()).path == store.path  # reused, not fetched again
    assert os.stat(Path(store.path) / shard_name(0)).st_mtime_ns == before


def test_a_shard_that_does_not_match_the_manifest_is_never_cached(tmp_path):
    location = _shared_store(tmp_path)
    shard = Path(location.removeprefix("file://")) / shard_name(1)
    data = bytearray(shard.read_bytes())
    data[-200] ^= 0xFF  # a bit flip keeps the size: only the checksum finds it
    shard.write_bytes(bytes(data))
    with pytest.raises(EdrayError) as err:
        cached_store(location, tmp_path / "cache", _key())
    assert err.value.path.endswith(shard_name(1)) and "sha256" in err.value.problem
    assert not (tmp_path / "cache" / "logits" / _key().name).exists()


def test_a_missing_store_names_what_makes_it(tmp_path):
    with pytest.raises(EdrayError) as err:
        cached_store((tmp_path / "nothing").as_uri(), tmp_path / "cache", _key())
    assert "edray precompute" in err.value.fix


def _fetch(args: tuple[str, str]) -> str:
    location, cache = args
    return cached_store(location, Path(cache), _key()).path


def test_concurrent_trials_on_one_node_fetch_once(tmp_path):
    location = _shared_store(tmp_path)
    cache = tmp_path / "cache"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        paths = pool.map(_fetch, [(location, str(cache))] * 3)
    assert len(set(paths)) == 1
    assert sorted(p.name for p in (cache / "logits").iterdir() if not p.name.endswith(".lock")) == [_key().name]


def test_a_checkpoint_is_checked_against_its_sha256_and_a_dataset_copied_whole(tmp_path):
    shared = tmp_path / "shared"
    (shared / "teachers").mkdir(parents=True)
    blob = b"teacher bytes" * 100
    (shared / "teachers" / "t0.pt").write_bytes(blob)
    (shared / "teachers" / "t0.pt.sha256").write_text(hashlib.sha256(blob).hexdigest() + "\n")
    got = cached_file((shared / "teachers" / "t0.pt").as_uri(), tmp_path / "cache", "teachers")
    assert got.read_bytes() == blob
    (shared / "teachers" / "t0.pt").write_bytes(blob + b"!")  # replaced, but the checksum was not
    (tmp_path / "cache" / "teachers" / "t0.pt").unlink()
    with pytest.raises(EdrayError, match="sha256"):
        cached_file((shared / "teachers" / "t0.pt").as_uri(), tmp_path / "cache", "teachers")
    for rel in ("a/1.png", "a/2.png", "b/3.png"):
        (shared / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        (shared / "data" / rel).write_bytes(rel.encode())
    root = cached_tree((shared / "data").as_uri(), tmp_path / "cache")
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*.png")) == ["a/1.png", "a/2.png", "b/3.png"]
    with pytest.raises(EdrayError) as err:
        cached_tree((shared / "nodata").as_uri(), tmp_path / "cache")
    assert err.value.path == "dataset.root" and "no files" in err.value.problem

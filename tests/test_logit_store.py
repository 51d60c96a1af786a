"""The Arrow logit store: real files, real processes, real corruption."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import pickle
import resource
import shutil
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
import torch

from edray.errors import EdrayError
from edray.logits import (
    FORMAT_VERSION,
    StoreKey,
    file_sha256,
    fingerprint,
    is_uri,
    open_store,
    resolve,
    verify_store,
    write_store,
)
from edray.logits.manifest import shard_name
from edray.logits.writer import building, finish_store, write_shard

from .helpers import store_key

R, V, K, PER = 70, 3, 5, 16  # 5 shards, the last one short


def _key(**changes) -> StoreKey:
    return store_key(**{"teacher_arch": "resnet8", "dataset_samples": R, "views": V, **changes})


def _exact(rows: int = R) -> np.ndarray:
    """Multiples of 1/8 in [-16, 16): exactly representable in float16."""
    return np.random.default_rng(0).integers(-128, 128, size=(rows, V, K)).astype(np.float32) / 8


def _ids(rows: int = R) -> np.ndarray:
    return np.arange(rows, dtype=np.int64) * 3 + 7


class _Compute:
    """compute_shard over a reference array, counting calls and failing once on demand."""

    def __init__(self, ref: np.ndarray, *, fail_at: int | None = None):
        self.ref, self.fail_at, self.calls = ref, fail_at, []

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        if start == self.fail_at:
            self.fail_at = None
            raise RuntimeError("teacher crashed")
        self.calls.append((start, stop))
        return torch.from_numpy(self.ref[start:stop])


def _write(root: Path, key: StoreKey | None = None, ref: np.ndarray | None = None, **kw) -> tuple[Path, _Compute]:
    ref = _exact() if ref is None else ref
    compute = kw.pop("compute", None) or _Compute(ref)
    path = write_store(root, key or _key(), rows=len(ref), views=V, outputs=K, sample_ids=_ids(len(ref)),
                       compute_shard=compute, rows_per_shard=kw.pop("rows_per_shard", PER), **kw)
    return path, compute


def _error(fn, *args, **kw) -> EdrayError:
    """The EdrayError ``fn`` raises; tests match its ``problem``, not the path (tmp paths hold test names)."""
    with pytest.raises(EdrayError) as err:
        fn(*args, **kw)
    return err.value


def _manifests(root: Path) -> list[Path]:
    return list(root.rglob("manifest.json"))


# -- round trip --------------------------------------------------------------------------
def test_round_trip_exact_values_ids_and_layout(tmp_path):
    ref = _exact()
    seen = []
    path, compute = _write(tmp_path, ref=ref, progress=lambda done, total: seen.append((done, total)))
    assert path == tmp_path / _key().name and len(compute.calls) == 5
    assert seen == [(0, R), (16, R), (32, R), (48, R), (64, R), (70, R)]
    names = sorted(p.name for p in path.iterdir())
    assert names == ["manifest.json"] + [f"shard-{i:05d}.arrow" for i in range(5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{_key().name}.lock", _key().name]  # no staging left

    store = open_store(path, _key())
    assert (store.rows, store.views, store.outputs, len(store)) == (R, V, K, R)
    assert store.key_fields == _key().fields() and store.path == str(path)
    assert store.nbytes == sum((path / f"shard-{i:05d}.arrow").stat().st_size for i in range(5))
    assert torch.equal(store.sample_ids, torch.from_numpy(_ids()))
    rows = torch.arange(R).repeat_interleave(V)
    views = torch.arange(V).repeat(R)
    got = store.logits(rows, views)
    assert got.dtype == torch.float32 and got.shape == (R * V, K)
    assert torch.equal(got, torch.from_numpy(ref.reshape(R * V, K)))
    # random order, duplicates, a scalar view, across shard boundaries
    pick = torch.tensor([69, 0, 15, 16, 16, 47, 64])
    assert torch.equal(store.logits(pick, 2), torch.from_numpy(ref[pick.numpy(), 2]))
    assert store.logits(torch.zeros(0, dtype=torch.int64), 0).shape == (0, K)
    rng = np.random.default_rng(3)
    rows, views = rng.integers(0, R, 300), rng.integers(0, V, 300)
    got = store.logits(torch.from_numpy(rows), torch.from_numpy(views))
    assert torch.equal(got, torch.from_numpy(ref[rows, views]))
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION and manifest["rows"] == R
    for shard in manifest["shards"]:
        assert shard["sha256"] == hashlib.sha256((path / shard["name"]).read_bytes()).hexdigest()


def test_float_logits_are_stored_as_float16(tmp_path):
    ref = np.random.default_rng(1).normal(scale=8.0, size=(R, V, K))  # float64, not representable
    path, _ = _write(tmp_path, ref=ref)
    got = open_store(path).logits(torch.arange(R), 1).numpy()
    assert np.array_equal(got, ref[:, 1].astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(got, ref[:, 1], rtol=2**-11, atol=2**-24)
    assert not np.array_equal(got, ref[:, 1])  # it really went through float16


def test_reads_are_zero_copy_and_keep_no_file_descriptors(tmp_path):
    path, _ = _write(tmp_path)
    fds = len(os.listdir("/proc/self/fd"))
    allocated = pa.total_allocated_bytes()
    store = open_store(path)
    store.logits(torch.arange(R), 0)
    assert pa.total_allocated_bytes() == allocated  # Arrow allocated nothing: the shards are mapped
    assert len(os.listdir("/proc/self/fd")) == fds
    mapped = store._shard(0)[0]
    assert not mapped.flags.owndata and not mapped.flags.writeable


def test_bad_indices_raise(tmp_path):
    store = open_store(_write(tmp_path)[0])
    with pytest.raises(IndexError, match="rows must lie"):
        store.logits(torch.tensor([R]), 0)
    with pytest.raises(IndexError, match="views must lie"):
        store.logits(torch.tensor([0]), V)
    with pytest.raises(IndexError, match="entries"):
        store.logits(torch.tensor([0, 1]), torch.tensor([0]))


# -- resume and reuse --------------------------------------------------------------------
def test_existing_store_is_returned_without_computing(tmp_path):
    first, _ = _write(tmp_path)
    again, compute = _write(tmp_path)
    assert again == first and compute.calls == []


def test_resume_computes_only_missing_shards(tmp_path):
    ref = _exact()
    failing = _Compute(ref, fail_at=2 * PER)
    with pytest.raises(RuntimeError, match="teacher crashed"):
        _write(tmp_path, ref=ref, compute=failing)
    assert failing.calls == [(0, 16), (16, 32)] and _manifests(tmp_path) == []
    assert not (tmp_path / _key().name).exists()
    seen = []
    path, compute = _write(tmp_path, ref=ref, compute=failing, progress=lambda d, t: seen.append(d))
    assert failing.calls[2:] == [(32, 48), (48, 64), (64, 70)] and compute is failing
    assert seen[0] == 2 * PER
    assert torch.equal(open_store(path).logits(torch.arange(R), 2), torch.from_numpy(ref[:, 2]))
    verify_store(path)


def test_staging_of_another_layout_is_discarded(tmp_path):
    ref = _exact()
    with pytest.raises(RuntimeError):
        _write(tmp_path, ref=ref, compute=_Compute(ref, fail_at=2 * PER))
    path, compute = _write(tmp_path, ref=ref, rows_per_shard=32)  # same key, other shard size: start over
    assert compute.calls == [(0, 32), (32, 64), (64, 70)]
    assert torch.equal(open_store(path).logits(torch.arange(R), 0), torch.from_numpy(ref[:, 0]))


def test_broken_store_is_rebuilt_by_the_writer(tmp_path):
    path, _ = _write(tmp_path)
    (path / "shard-00003.arrow").unlink()
    again, compute = _write(tmp_path)
    assert again == path and len(compute.calls) == 5
    verify_store(path)


# -- refusing what does not fit ----------------------------------------------------------
def test_mismatched_key_is_refused_naming_the_field(tmp_path):
    path, _ = _write(tmp_path)
    with pytest.raises(EdrayError) as err:
        open_store(path, _key(seed=1))
    assert err.value.path == str(path)
    assert "built for a different seed: store has 0, this run needs 1" in err.value.problem
    assert "edray precompute" in err.value.fix
    problem = _error(open_store, path, _key(teacher_sha256="cd" * 32, hflip=True)).problem
    assert problem.startswith("built for a different teacher_sha256: store has abab")
    assert problem.endswith("(also differs: hflip)")
    assert "no logit store here" in _error(open_store, tmp_path, _key(seed=1)).problem  # no store for this key
    assert open_store(tmp_path, _key()).path == str(path)  # but does hold this one


def test_views_must_match_the_key(tmp_path):
    error = _error(write_store, tmp_path, _key(), rows=R, views=2, outputs=K, sample_ids=_ids(),
                   compute_shard=_Compute(_exact()))
    assert error.path == "views" and "views=3" in error.problem


def test_non_finite_logits_are_refused_and_leave_no_store(tmp_path):
    ref = _exact()
    ref[40, 1, 2] = np.inf
    error = _error(_write, tmp_path, ref=ref)
    assert error.path == "teacher logits, row 40" and "not finite" in error.problem
    assert _manifests(tmp_path) == []


def test_truncated_or_missing_shard_is_detected_at_open(tmp_path):
    path, _ = _write(tmp_path)
    shard = path / "shard-00001.arrow"
    data = shard.read_bytes()
    shard.write_bytes(data[:-10])
    error = _error(open_store, path)
    assert error.path == str(shard) and "truncated" in error.problem
    shard.write_bytes(data[:-300] + data[-10:])  # a hole in the middle, footer intact
    assert "truncated" in _error(open_store, path).problem
    shard.unlink()
    error = _error(open_store, path)
    assert error.path == str(shard) and "missing" in error.problem


def test_shard_from_another_store_is_detected_at_open(tmp_path):
    a, _ = _write(tmp_path / "a")
    b, _ = _write(tmp_path / "b", key=_key(seed=5), ref=_exact() + 1)
    shutil.copy(b / "shard-00002.arrow", a / "shard-00002.arrow")  # same shape, same size
    error = _error(open_store, a)
    assert error.path == str(a / "shard-00002.arrow") and "does not belong" in error.problem


def test_unreadable_or_foreign_manifest_is_refused(tmp_path):
    path, _ = _write(tmp_path)
    manifest = path / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "format_version": FORMAT_VERSION + 1}))
    assert "store format" in _error(open_store, path).problem
    manifest.write_text(json.dumps({**data, "key": {**data["key"], "seed": 9}}))
    assert "digest" in _error(open_store, path).problem
    manifest.write_text(json.dumps({**data, "shards": data["shards"][:-1]}))
    assert "expected" in _error(open_store, path).problem
    manifest.write_text("{not json")
    assert "unreadable manifest" in _error(open_store, path).problem


def test_bit_flip_is_found_by_verify(tmp_path):
    path, _ = _write(tmp_path)
    report = verify_store(path)
    assert (report.ok, report.rows, report.shards, report.nbytes) == (True, R, 5, open_store(path).nbytes)
    shard = path / "shard-00000.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x04
    shard.write_bytes(bytes(data))
    open_store(path)  # same size, same schema: only hashing can tell
    error = _error(verify_store, path)
    assert error.path == str(shard) and "checksum mismatch" in error.problem
    assert "checksum mismatch" in _error(open_store, path, verify=True).problem


# -- processes ---------------------------------------------------------------------------
def _concurrent_writer(root: str, log: str, barrier) -> str:
    def compute(start: int, stop: int) -> np.ndarray:
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {start}\n")
        time.sleep(0.05)
        return _exact()[start:stop]

    barrier.wait()
    return str(write_store(root, _key(), rows=R, views=V, outputs=K, sample_ids=_ids(), compute_shard=compute,
                           rows_per_shard=PER))


def test_two_processes_writing_one_store_end_with_one_store(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    log = tmp_path / "calls.log"
    barrier = ctx.Manager().Barrier(2)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
        futures = [pool.submit(_concurrent_writer, str(tmp_path / "root"), str(log), barrier) for _ in range(2)]
        paths = [f.result(timeout=120) for f in futures]
    assert paths[0] == paths[1] == str(tmp_path / "root" / _key().name)
    calls = [line.split() for line in log.read_text().splitlines()]
    assert sorted(int(start) for _, start in calls) == [0, 16, 32, 48, 64]  # every shard computed once
    assert len({pid for pid, _ in calls}) == 1  # by one process; the other waited and reused it
    assert len(_manifests(tmp_path / "root")) == 1
    verify_store(paths[0])


class _StoreDataset(torch.utils.data.Dataset):
    def __init__(self, store):
        self.store = store

    def __len__(self) -> int:
        return self.store.rows

    def __getitem__(self, i: int):
        row = torch.tensor([i])
        return self.store.logits(row, torch.tensor([i % V]))[0], os.getpid()


def test_store_is_read_from_dataloader_worker_processes(tmp_path):
    store = open_store(_write(tmp_path)[0])
    store.logits(torch.arange(R), 0)  # mapped in this process before pickling
    assert len(pickle.dumps(store)) < store.nbytes  # location + manifest, never the buffers
    loader = torch.utils.data.DataLoader(
        _StoreDataset(store), batch_size=10, num_workers=2, multiprocessing_context="spawn"
    )
    got, pids = zip(*loader)
    expected = store.logits(torch.arange(R), torch.arange(R) % V)
    assert torch.equal(torch.cat(got), expected)
    pids = {int(p) for batch in pids for p in batch}
    assert len(pids) == 2 and os.getpid() not in pids


def _write_as_unprivileged(root: str, limit_bytes: int | None) -> str:
    """Run a write that must fail; return the error text (or raise if it did not fail)."""
    if limit_bytes is not None:  # a full disk: writes past the limit fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    elif os.geteuid() == 0:  # root ignores permission bits
        # Import what the write needs first: the unprivileged user may not read the venv.
        import numpy.random  # noqa: F401
        import pyarrow.ipc  # noqa: F401

        os.setgid(65534)
        os.setuid(65534)
    try:
        write_store(root, _key(), rows=R, views=V, outputs=K, sample_ids=_ids(), compute_shard=_Compute(_exact()),
                    rows_per_shard=PER)
    except EdrayError as e:
        return e.problem
    raise AssertionError("write_store succeeded where it cannot write")


def _in_child(fn, *args):
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result(timeout=120)


def test_read_only_directory_gives_error_and_no_store():
    base = Path(tempfile.mkdtemp(prefix="edray-ro-"))  # under /tmp, so an unprivileged child can reach it
    try:
        base.chmod(0o755)
        readonly = base / "ro"
        readonly.mkdir(mode=0o555)
        readonly.chmod(0o555)
        message = _in_child(_write_as_unprivileged, str(readonly / "stores"), None)
        assert message == "cannot write (Permission denied)"
        assert list(readonly.iterdir()) == []
    finally:
        (base / "ro").chmod(0o755)
        shutil.rmtree(base)


def test_full_disk_gives_error_and_no_store(tmp_path):
    message = _in_child(_write_as_unprivileged, str(tmp_path), 1024)  # shards are ~2.7 kB
    assert message == "cannot write (File too large)"
    assert _manifests(tmp_path) == [] and not (tmp_path / _key().name).exists()
    assert not [p for p in tmp_path.rglob("*.tmp")]  # the partial temp file was removed


# -- locations and keys ------------------------------------------------------------------
def test_remote_code_path_reads_through_pyarrow_fs(tmp_path):
    path, _ = _write(tmp_path)
    uri = path.as_uri()
    assert is_uri(uri) and not is_uri(str(path)) and not is_uri("C:\\stores") and is_uri("s3://bucket/x")
    store = open_store(uri, _key())
    assert store.path == uri
    assert torch.equal(store.logits(torch.arange(R), 1), open_store(path).logits(torch.arange(R), 1))
    assert verify_store(uri).ok
    restored = pickle.loads(pickle.dumps(store))
    assert torch.equal(restored.sample_ids, torch.from_numpy(_ids()))


def test_resolve_local_paths_and_bad_uris(tmp_path, monkeypatch):
    fs, inner = resolve(tmp_path)
    assert isinstance(fs, pafs.LocalFileSystem) and inner == str(tmp_path.resolve())
    monkeypatch.chdir(tmp_path)
    assert resolve("rel")[1] == str(tmp_path.resolve() / "rel")
    assert "cannot open this location" in _error(resolve, "nosuchscheme://bucket/x").problem
    error = _error(write_store, "nosuchscheme://bucket/stores", _key(), rows=R, views=V, outputs=K,
                   sample_ids=_ids(), compute_shard=_Compute(_exact()))
    assert error.path == "nosuchscheme://bucket/stores" and "cannot open this location" in error.problem


def test_shards_from_several_writers_on_object_storage_become_one_store(tmp_path):
    """The cluster path of the writer, offline: ``file://`` takes the object-storage code
    (no lock, no rename, manifest last). Shards come from two "nodes"; a reader sees no
    store until the manifest is written, and a second plan finds the finished store."""
    root = (tmp_path / "bucket").as_uri()
    exact = _exact()
    with building(root, _key(), rows=R, views=V, outputs=K, sample_ids=_ids(), rows_per_shard=PER) as plan:
        assert plan.final is None and plan.todo == (0, 1, 2, 3, 4) and plan.staging == plan.location
        shipped = pickle.loads(pickle.dumps(plan))  # what a shard task on another node gets
        infos = {i: write_shard(shipped, i, exact[slice(*plan.shard_span(i))], node=f"node{i % 2}")
                 for i in plan.todo}
        assert "no logit store here" in _error(open_store, plan.location).problem
        final = finish_store(plan, infos)
    store = open_store(final, _key(), verify=True)
    assert [s.node for s in store.manifest.shards] == ["node0", "node1", "node0", "node1", "node0"]
    assert np.array_equal(store.logits(torch.arange(R), 2).numpy(), exact[:, 2].astype(np.float16).astype(np.float32))
    files = sorted(os.listdir(tmp_path / "bucket" / _key().name))
    assert files == ["manifest.json", *(shard_name(i) for i in range(5))]  # no .done or layout.json left
    with building(root, _key(), rows=R, views=V, outputs=K, sample_ids=_ids(), rows_per_shard=PER) as again:
        assert again.final == final and again.todo == ()


def test_key_digest_names_and_differences():
    key = _key()
    assert key.digest() == _key().digest() and len(key.digest()) == 64 and key.name == key.digest()[:16]
    for change in [dict(seed=1), dict(views=4), dict(image_size=32), dict(hflip=True), dict(normalisation="")]:
        assert _key(**change).digest() != key.digest()
    assert StoreKey.from_fields(key.fields()) == key
    assert key.differences(_key(crop_padding=4).fields()) == [("crop_padding", 4, 1)]
    assert _key(dataset_samples=np.int64(R)).fields()["dataset_samples"].__class__ is int
    assert _error(_key, views=0).path == "StoreKey.views"
    assert _error(_key, teacher_arch="").path == "StoreKey.teacher_arch"


def test_fingerprint_and_file_hash(tmp_path):
    labels = np.array([0, 1, 2])
    assert fingerprint(labels, ["a.png", "b.png"]) == fingerprint(torch.tensor([0, 1, 2]), ["a.png", "b.png"])
    assert fingerprint(labels, ["a.png", "b.png"]) != fingerprint(labels, ["b.png", "a.png"])
    ckpt = tmp_path / "teacher.pt"
    torch.save({"w": torch.arange(4)}, ckpt)
    assert file_sha256(ckpt) == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert "cannot read" in _error(file_sha256, tmp_path / "missing.pt").problem

"""Write a logit store atomically, shard by shard, so a stopped run resumes.

Layout on disk while writing (``<name>`` = ``StoreKey.name``)::

    <root>/.<name>.lock        flock'd for the whole write: one writer per store
    <root>/.<name>.partial/    staging: layout.json, shard-00000.arrow, shard-00000.done, ...
    <root>/<name>/             appears only when complete (one rename of the staging dir)

A shard is written to a temp file, fsync'd and renamed (:mod:`edray.atomic`); then its
``.done`` record (name, rows, bytes, sha256) is written the same way. A shard counts as finished only when both
exist and the sizes agree, so a kill at any point loses at most the shard in flight.
``layout.json`` records the shape and the sample ids the staging dir was started with; a
staging dir from another layout is wiped rather than mixed in.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from edray.atomic import DEFAULT_FIX, fsync_dir, write_bytes
from edray.errors import EdrayError
from edray.logits.fs import is_uri
from edray.logits.key import StoreKey
from edray.logits.manifest import MANIFEST_NAME, Manifest, ShardInfo, num_shards, shard_name, shard_rows, shard_schema
from edray.logits.reader import open_store

__all__ = ["write_store"]

_LAYOUT = "layout.json"
_DONE = ".done"
_TMP = ".tmp"
# Default shard size. A batch's gather costs a numpy call per shard it touches, so shards
# should be few; a kill loses at most one shard of compute, so they should not be huge.
_SHARD_BYTES = 32 << 20

log = logging.getLogger(__name__)

ComputeShard = Callable[[int, int], "np.ndarray | torch.Tensor"]


def write_store(
    root: str | os.PathLike[str],
    key: StoreKey,
    *,
    rows: int,
    views: int,
    outputs: int,
    sample_ids: torch.Tensor | np.ndarray,
    compute_shard: ComputeShard,
    rows_per_shard: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Build the store for ``key`` under ``root`` (or find it built) and return its directory.

    Args:
        root: local directory holding stores (a shared NFS/EFS mount is fine; not a URI).
        key: what the logits are computed from; its :attr:`StoreKey.name` names the directory.
        rows: R, the number of rows; the caller maps dataset samples to rows ``0..R-1``.
        views: V, must equal ``key.views``.
        outputs: K, logits per view.
        sample_ids: ``[R]`` integer ids of the rows' samples, stored so readers can check alignment.
        compute_shard: ``compute_shard(start, stop)`` returns raw float logits
            ``[stop - start, V, K]`` for rows ``start..stop-1``; they are stored as float16.
        rows_per_shard: rows per shard file (the last may be short); default: as many as
            fill 32 MiB, so a small store is one shard and reads take the one-gather path.
        progress: called as ``progress(rows_done, rows)`` once at the start and after each shard.

    Returns:
        ``<root>/<key.name>``, a finished store. If it already exists and opens cleanly it is
        returned without computing anything; a broken one is removed and rebuilt. If another
        process is writing the same store, this waits for it and returns its result.

    Raises:
        EdrayError: ``root`` cannot be written (permissions, full disk), the logits are not
            finite in float16, or ``views`` disagrees with the key. A failed write leaves no
            finished-looking store: at most the hidden staging dir, from which a rerun resumes.
        ValueError: ``compute_shard`` returned the wrong shape (a bug in the caller).
    """
    base = _check_root(root)
    if rows_per_shard is None and all(isinstance(n, (int, np.integer)) for n in (views, outputs)):
        rows_per_shard = max(1, _SHARD_BYTES // (2 * max(1, int(views)) * max(1, int(outputs))))
    _check_layout(key, rows=rows, views=views, outputs=outputs, rows_per_shard=rows_per_shard)
    ids = _as_sample_ids(sample_ids, rows)
    final = base / key.name
    if _is_finished(final, key):
        return final
    with _io(base):
        base.mkdir(parents=True, exist_ok=True)
    with _locked(base / f".{key.name}.lock"):
        if _is_finished(final, key):  # another process finished it while we waited
            return final
        if final.exists():  # broken (truncated, corrupt): it is a cache, so rebuild it
            log.warning("logit store %s does not open cleanly; rebuilding it", final)
            with _io(final):
                shutil.rmtree(final)
        staging = base / f".{key.name}.partial"
        layout = {
            "digest": key.digest(), "rows": rows, "views": views, "outputs": outputs,
            "rows_per_shard": rows_per_shard, "sample_ids_sha256": hashlib.sha256(ids.tobytes()).hexdigest(),
        }
        done = _prepare_staging(staging, layout)
        schema_digest = key.digest()
        total = num_shards(rows, rows_per_shard)
        rows_done = sum(info.rows for info in done.values())
        if progress is not None:
            progress(rows_done, rows)
        for index in range(total):
            if index in done:
                continue
            start, stop = shard_rows(index, rows, rows_per_shard)
            block = _as_float16(compute_shard(start, stop), (stop - start, views, outputs), start)
            schema = shard_schema(views, outputs, digest=schema_digest, index=index)
            done[index] = _write_shard(staging, shard_name(index), ids[start:stop], block, schema)
            rows_done += stop - start
            if progress is not None:
                progress(rows_done, rows)
        manifest = Manifest.build(
            key.fields(), key.digest(), rows=rows, views=views, outputs=outputs, rows_per_shard=rows_per_shard,
            shards=[done[i] for i in range(total)],
        )
        write_bytes(staging / MANIFEST_NAME, manifest.to_json().encode())
        with _io(final):
            os.rename(staging, final)
            fsync_dir(base)
        _remove_bookkeeping(final)
    return final


def _check_root(root: str | os.PathLike[str]) -> Path:
    if is_uri(root):
        raise EdrayError(
            str(root), "stores are written to a local or mounted directory, not a URI",
            "precompute into a local/NFS directory, then copy it (e.g. `aws s3 sync`) and read it by URI",
        )
    return Path(root).expanduser().resolve()


def _check_layout(key: StoreKey, *, rows: int, views: int, outputs: int, rows_per_shard: int) -> None:
    for name, value in (("rows", rows), ("outputs", outputs), ("rows_per_shard", rows_per_shard)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"write_store: {name} must be an integer >= 1, got {value!r}")
    if views != key.views:
        raise EdrayError("views", f"the store key has views={key.views} but {views} were asked for", "pass key.views")


def _as_sample_ids(sample_ids: torch.Tensor | np.ndarray, rows: int) -> np.ndarray:
    ids = sample_ids.detach().cpu().numpy() if isinstance(sample_ids, torch.Tensor) else np.asarray(sample_ids)
    if ids.shape != (rows,) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"write_store: sample_ids must be integers of shape ({rows},), got {ids.dtype} {ids.shape}")
    return np.ascontiguousarray(ids, dtype=np.int64)


def _as_float16(block: np.ndarray | torch.Tensor, shape: tuple[int, int, int], start: int) -> np.ndarray:
    if isinstance(block, torch.Tensor):
        arr = block.detach().to(device="cpu", dtype=torch.float16).numpy()
    else:
        arr = np.asarray(block).astype(np.float16, copy=False)
    if arr.shape != shape:
        raise ValueError(f"compute_shard({start}, {start + shape[0]}) returned shape {arr.shape}, expected {shape}")
    if not np.isfinite(arr).all():
        bad = int(np.argwhere(~np.isfinite(arr))[0][0]) + start
        raise EdrayError(
            f"teacher logits, row {bad}", "not finite in float16 (NaN, inf, or beyond +-65504)",
            "check the teacher checkpoint; the store keeps raw logits, which must be finite",
        )
    return np.ascontiguousarray(arr)


def _is_finished(final: Path, key: StoreKey) -> bool:
    """A store that opens for ``key`` and whose every shard hashes right.

    Hashing reads the whole store once per build call (the driver's, not each trial's):
    a bit flip keeps sizes and schema intact, and only the checksum tells it from the
    real logits. A corrupt store is then rebuilt, never handed to a trial.
    """
    if not (final / MANIFEST_NAME).is_file():
        return False
    try:
        open_store(final, key, verify=True)
    except EdrayError:
        return False
    return True


def _prepare_staging(staging: Path, layout: dict[str, Any]) -> dict[int, ShardInfo]:
    """Create or reuse the staging dir; return the shards already finished in it."""
    with _io(staging):
        if staging.exists() and _read_json(staging / _LAYOUT) != layout:
            shutil.rmtree(staging)  # another layout, or started but never described: start over
        if not staging.exists():
            staging.mkdir()
            write_bytes(staging / _LAYOUT, json.dumps(layout).encode())
        done: dict[int, ShardInfo] = {}
        for path in staging.iterdir():
            if path.name.endswith(_TMP):  # a write that was killed mid-way (edray.atomic's temp file)
                path.unlink()
            elif path.name.endswith(_DONE):
                record = _read_json(path)
                try:
                    info = ShardInfo(**record)
                    index = int(info.name.removeprefix("shard-").removesuffix(".arrow"))
                    finished = (staging / info.name).stat().st_size == info.nbytes
                except (TypeError, ValueError, OSError):
                    finished = False
                if finished and info.name == shard_name(index):
                    done[index] = info
    return done


def _write_shard(staging: Path, name: str, ids: np.ndarray, block: np.ndarray, schema: pa.Schema) -> ShardInfo:
    n = block.shape[0]
    values = pa.array(block.reshape(-1), type=pa.float16())
    logits = pa.FixedSizeListArray.from_arrays(values, block.shape[1] * block.shape[2])
    batch = pa.record_batch([pa.array(ids, type=pa.int64()), logits], schema=schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, schema) as writer:  # uncompressed: the reader memory-maps it
        writer.write_batch(batch)
    data = sink.getvalue()
    info = ShardInfo(name, n, data.size, hashlib.sha256(data).hexdigest())
    write_bytes(staging / name, data)
    write_bytes(staging / f"{name}{_DONE}", json.dumps(dataclasses.asdict(info)).encode())
    return info


def _remove_bookkeeping(final: Path) -> None:
    """Drop layout.json and .done records from a finished store (best effort: readers ignore them)."""
    for path in final.iterdir():
        if path.name == _LAYOUT or path.name.endswith(_DONE):
            try:
                path.unlink()
            except OSError:
                pass


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``; the file stays (removing it would race)."""
    with _io(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is writing %s; waiting for it", path.name.removesuffix(".lock").lstrip("."))
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock, also when the process dies


@contextmanager
def _io(path: Path) -> Iterator[None]:
    """Turn an OS error while writing ``path`` into the one-line error the CLI prints."""
    try:
        yield
    except OSError as e:
        raise EdrayError(str(path), f"cannot write ({e.strerror or e})", DEFAULT_FIX) from e

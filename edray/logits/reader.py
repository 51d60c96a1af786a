"""Open, check and read a logit store: memory-mapped, zero-copy, safe across processes.

Opening checks what is cheap: the manifest, the key, every shard's size, schema and row
count. A truncated, missing or swapped shard fails here, before training starts.
``verify=True`` (or :func:`verify_store`) also hashes every byte, which finds bit flips.

A :class:`LogitStore` pickles as its location plus manifest; the child process maps the
shards again on first use. DataLoader workers and Ray workers therefore share the page
cache instead of copying the logits.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import torch

from edray.errors import EdrayError
from edray.logits.key import StoreKey, digest_of
from edray.logits.manifest import MANIFEST_NAME, Manifest, shard_schema
from edray.storage import join, local_path, resolve

__all__ = ["LogitStore", "VerifyReport", "open_store", "verify_store"]

_REBUILD = "rebuild it with `edray precompute` (or delete the directory)"


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify_store` checked: a store is ``ok`` when every shard hashed right."""

    path: str
    rows: int
    shards: int
    nbytes: int
    ok: bool


class LogitStore:
    """Raw float16 teacher logits ``[rows, views, outputs]``, read by row and view.

    Build one with :func:`open_store`, which checks the files first.
    """

    def __init__(self, location: str, manifest: Manifest):
        self._location = location
        self.manifest = manifest
        self._arrays: dict[int, np.ndarray] = {}
        self._ids: dict[int, np.ndarray] = {}
        self._sample_ids: torch.Tensor | None = None

    # -- what it is ----------------------------------------------------------------------
    @property
    def path(self) -> str:
        """The store directory: an absolute local path or a URI."""
        return self._location

    @property
    def rows(self) -> int:
        return self.manifest.rows

    @property
    def views(self) -> int:
        return self.manifest.views

    @property
    def outputs(self) -> int:
        return self.manifest.outputs

    @property
    def nbytes(self) -> int:
        """Bytes of all shard files (what a full read or a copy costs)."""
        return self.manifest.nbytes

    @property
    def key_fields(self) -> dict[str, Any]:
        """The :class:`~edray.logits.key.StoreKey` fields the store was built for."""
        return dict(self.manifest.key)

    @property
    def sample_ids(self) -> torch.Tensor:
        """``[rows]`` int64 dataset sample id of every row, to check alignment with the data."""
        if self._sample_ids is None:
            parts = [self._shard(i)[1] for i in range(len(self.manifest.shards))]
            self._sample_ids = torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, np.int64))
        return self._sample_ids

    def __len__(self) -> int:
        return self.rows

    def __repr__(self) -> str:
        return f"LogitStore({self._location!r}, rows={self.rows}, views={self.views}, outputs={self.outputs})"

    # -- reading -------------------------------------------------------------------------
    def logits(self, rows: torch.Tensor | np.ndarray, views: torch.Tensor | np.ndarray | int) -> torch.Tensor:
        """Float32 logits ``[B, K]`` of view ``views[i]`` of row ``rows[i]``.

        The gather reads straight from the mapped shard buffers; only the ``B x K`` result
        is allocated.

        Raises:
            IndexError: a row or view out of range, or ``views`` not matching ``rows`` in length.
        """
        row = _as_index(rows)
        view: np.ndarray
        if isinstance(views, (int, np.integer)):
            view = np.full(row.shape, int(views), dtype=np.int64)
        else:
            view = _as_index(views)
        if view.shape != row.shape:
            raise IndexError(f"views has {view.shape[0]} entries, rows has {row.shape[0]}")
        lo, hi = (int(row.min()), int(row.max())) if row.size else (0, 0)
        if row.size and (lo < 0 or hi >= self.rows):
            raise IndexError(f"rows must lie in [0, {self.rows}), got [{lo}, {hi}]")
        if view.size and (view.min() < 0 or view.max() >= self.views):
            raise IndexError(f"views must lie in [0, {self.views}), got [{view.min()}, {view.max()}]")
        per = self.manifest.rows_per_shard
        if row.size and lo // per == hi // per:  # one shard (always, for most stores): one gather, no scatter
            s = lo // per
            return torch.from_numpy(self._shard(s)[0][row - s * per, view]).float()
        out = np.empty((row.size, self.outputs), dtype=np.float16)
        if row.size:
            shard, local = np.divmod(row, per)
            order = np.argsort(shard, kind="stable")  # group the batch by shard: one gather per shard touched
            first, last = lo // per, hi // per
            bounds = np.searchsorted(shard[order], np.arange(first, last + 2)).tolist()
            for s, a, b in zip(range(first, last + 1), bounds[:-1], bounds[1:]):
                if a < b:
                    sel = order[a:b]
                    out[sel] = self._shard(s)[0][local[sel], view[sel]]
        return torch.from_numpy(out).float()

    def _shard(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(logits [n, V, K] float16, sample ids [n])``: read-only views of shard ``index``."""
        if index not in self._arrays:
            batch = _read_batch(self._location, self.manifest, index)
            logits, ids = batch.column(1), batch.column(0)
            width = self.views * self.outputs
            values = logits.values.slice(logits.offset * width, len(logits) * width)
            arr = np.frombuffer(values.buffers()[1], dtype=np.float16, count=len(values), offset=values.offset * 2)
            self._arrays[index] = arr.reshape(len(logits), self.views, self.outputs)
            self._ids[index] = np.frombuffer(ids.buffers()[1], dtype=np.int64, count=len(ids), offset=ids.offset * 8)
        return self._arrays[index], self._ids[index]

    # -- crossing processes --------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"location": self._location, "manifest": self.manifest}  # no buffers: the child maps its own

    def __setstate__(self, state: dict[str, Any]) -> None:
        type(self).__init__(self, state["location"], state["manifest"])


def open_store(
    path_or_root: str | os.PathLike[str], expected_key: StoreKey | None = None, *, verify: bool = False
) -> LogitStore:
    """Open a store directory (or, with ``expected_key``, the key's store under a root).

    Args:
        path_or_root: a store directory, or the root holding ``<key.name>/``; local or URI.
        expected_key: the key this run needs; a store built for anything else is refused.
        verify: also hash every shard (reads every byte) to find bit flips.

    Raises:
        EdrayError: no store there, a key that differs (the field is named), another store
            format, or a missing, truncated, swapped or (with ``verify``) corrupt shard.
    """
    location = _location(path_or_root)
    fs, base = resolve(location)
    candidates = [("", location)] + ([(expected_key.name, join(location, expected_key.name))] if expected_key else [])
    for sub, candidate in candidates:  # the store itself, else the key's store under a root
        text = _read_text(fs, join(base, sub, MANIFEST_NAME) if sub else join(base, MANIFEST_NAME))
        if text is not None:
            break
    else:
        where = f" (looked for {candidates[-1][1]})" if len(candidates) > 1 else ""
        raise EdrayError(location, f"no logit store here{where}", "build it with `edray precompute`")
    manifest = Manifest.from_json(text, path=join(candidate, MANIFEST_NAME))
    if digest_of(manifest.key) != manifest.digest:
        raise EdrayError(join(candidate, MANIFEST_NAME), "the key fields do not match the recorded digest", _REBUILD)
    if expected_key is not None:
        _check_key(candidate, manifest, expected_key)
    if manifest.key.get("views") != manifest.views:
        raise EdrayError(candidate, f"manifest has {manifest.views} views but its key says {manifest.key.get('views')}",
                         _REBUILD)
    store = LogitStore(candidate, manifest)
    _check_shards(store)
    if verify:
        _hash_shards(store)
    return store


def verify_store(path: str | os.PathLike[str], expected_key: StoreKey | None = None) -> VerifyReport:
    """Hash every shard against the manifest (``edray precompute --verify``).

    Raises:
        EdrayError: naming the first shard that is missing, truncated or corrupt.
    """
    store = open_store(path, expected_key)
    _hash_shards(store)
    return VerifyReport(store.path, store.rows, len(store.manifest.shards), store.nbytes, ok=True)


def _location(path_or_root: str | os.PathLike[str]) -> str:
    local = local_path(path_or_root)
    return str(path_or_root).rstrip("/") if local is None else str(local)


def _read_text(fs: Any, path: str) -> bytes | None:
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    except (OSError, pa.ArrowException) as e:
        raise EdrayError(path, f"cannot read ({e})", "check the path and its permissions") from e


def _check_key(location: str, manifest: Manifest, expected: StoreKey) -> None:
    diffs = expected.differences(manifest.key)
    if diffs:
        field, have, need = diffs[0]
        also = f" (also differs: {', '.join(d[0] for d in diffs[1:])})" if len(diffs) > 1 else ""
        raise EdrayError(location, f"built for a different {field}: store has {have}, this run needs {need}{also}",
                         _REBUILD)


def _check_shards(store: LogitStore) -> None:
    """Sizes, schemas and row counts of every shard, without reading the logits."""
    manifest = store.manifest
    fs, base = resolve(store.path)
    infos = fs.get_file_info([join(base, s.name) for s in manifest.shards]) if manifest.shards else []
    for index, (shard, info) in enumerate(zip(manifest.shards, infos)):
        where = join(store.path, shard.name)
        if info.type == pafs.FileType.NotFound:
            raise EdrayError(where, "shard is missing", _REBUILD)
        if info.size != shard.nbytes:
            raise EdrayError(where, f"shard is truncated or altered: {info.size} bytes, manifest says {shard.nbytes}",
                             _REBUILD)
        if local_path(store.path) is not None:  # mapped: checking the rows costs nothing
            arr, ids = store._shard(index)
            if arr.shape[0] != shard.rows or ids.shape[0] != shard.rows:
                raise EdrayError(where, f"shard has {arr.shape[0]} rows, manifest says {shard.rows}", _REBUILD)
        else:  # remote: the schema is in the footer; rows are checked when the shard is first read
            _open_reader(store.path, manifest, index).close()


def _hash_shards(store: LogitStore) -> None:
    fs, base = resolve(store.path)
    for shard in store.manifest.shards:
        digest = hashlib.sha256()
        try:
            with fs.open_input_stream(join(base, shard.name)) as f:
                while block := f.read(1 << 22):
                    digest.update(block)
        except (OSError, pa.ArrowException) as e:
            raise EdrayError(join(store.path, shard.name), f"cannot read ({e})", _REBUILD) from e
        if digest.hexdigest() != shard.sha256:
            raise EdrayError(
                join(store.path, shard.name),
                f"checksum mismatch (sha256 {digest.hexdigest()[:12]}..., manifest says {shard.sha256[:12]}...): "
                "the file is corrupt", _REBUILD,
            )


class _Reader:
    """An Arrow IPC file reader plus the source it reads from, closed together."""

    def __init__(self, source: Any, reader: pa.ipc.RecordBatchFileReader):
        self.source, self.reader = source, reader

    def close(self) -> None:
        self.source.close()


def _open_reader(location: str, manifest: Manifest, index: int) -> _Reader:
    shard = manifest.shards[index]
    where = join(location, shard.name)
    local = local_path(location)
    try:
        if local is not None:
            source = pa.memory_map(str(local / shard.name), "r")
        else:
            fs, base = resolve(location)
            source = fs.open_input_file(join(base, shard.name))
        reader = pa.ipc.open_file(source)
    except FileNotFoundError as e:
        raise EdrayError(where, "shard is missing", _REBUILD) from e
    except (OSError, pa.ArrowException) as e:
        raise EdrayError(where, f"not a readable Arrow file ({e})", _REBUILD) from e
    expected = shard_schema(manifest.views, manifest.outputs, digest=manifest.digest, index=index)
    if reader.num_record_batches != 1 or not reader.schema.equals(expected, check_metadata=True):
        source.close()
        raise EdrayError(where, "shard does not belong to this store (schema, batch count or digest differ)", _REBUILD)
    return _Reader(source, reader)


def _read_batch(location: str, manifest: Manifest, index: int) -> pa.RecordBatch:
    """Shard ``index`` as one record batch: zero-copy over the map locally, read into memory remotely."""
    opened = _open_reader(location, manifest, index)
    try:
        batch = opened.reader.get_batch(0)
    except (OSError, pa.ArrowException) as e:
        raise EdrayError(join(location, manifest.shards[index].name), f"unreadable shard ({e})", _REBUILD) from e
    finally:
        opened.close()  # frees the file descriptor; the mapping lives on in the batch's buffers
    if batch.num_rows != manifest.shards[index].rows:
        raise EdrayError(join(location, manifest.shards[index].name),
                         f"shard has {batch.num_rows} rows, manifest says {manifest.shards[index].rows}", _REBUILD)
    return batch


def _as_index(x: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise IndexError(f"indices must be a 1-D integer tensor, got {arr.dtype} of shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


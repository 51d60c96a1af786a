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

Shards need not come from one process: :func:`building` plans the store (and holds the
lock), any process that sees the root writes shards with :func:`write_shard` (on a
cluster, Ray tasks on several nodes, each recording its node in the shard's record), and
:func:`finish_store` writes the manifest last and publishes the store.

On object storage (``s3://``, ``gs://``) there is no rename and no lock: shards and
records go straight into ``<root>/<name>/``, each file one atomic PUT, and the manifest,
written last, is what makes the folder a store (a reader finds none until then). One
writer per store: the sweep driver.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from edray.atomic import DEFAULT_FIX, exclusive_lock, fsync_dir
from edray.errors import EdrayError
from edray.logits.key import StoreKey
from edray.logits.manifest import MANIFEST_NAME, Manifest, ShardInfo, num_shards, shard_name, shard_rows, shard_schema
from edray.logits.reader import open_store
from edray.storage import discard, is_uri, join, list_files, local_path, read_bytes, resolve, write_bytes

__all__ = ["StorePlan", "building", "default_rows_per_shard", "finish_store", "write_shard", "write_store"]

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
) -> Path | str:
    """Build the store for ``key`` under ``root`` (or find it built) and return its directory.

    Args:
        root: directory holding stores: a local or shared mount (NFS/EFS), or an ``s3://`` /
            ``gs://`` prefix (then there is no lock: one writer per store, the sweep driver).
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
        ``<root>/<key.name>`` (a :class:`~pathlib.Path` locally, the URI otherwise), a
        finished store. If it already exists and opens cleanly it is returned without
        computing anything; a broken one is removed and rebuilt. If another process is
        writing the same (local) store, this waits for it and returns its result.

    Raises:
        EdrayError: ``root`` cannot be written (permissions, full disk), the logits are not
            finite in float16, or ``views`` disagrees with the key. A failed write leaves no
            finished-looking store: at most the staging shards, from which a rerun resumes.
        ValueError: ``compute_shard`` returned the wrong shape (a bug in the caller).
    """
    with building(root, key, rows=rows, views=views, outputs=outputs, sample_ids=sample_ids,
                  rows_per_shard=rows_per_shard) as plan:
        if plan.final is not None:
            return plan.final
        rows_done = sum(info.rows for info in plan.done.values())
        if progress is not None:
            progress(rows_done, rows)
        for index in plan.todo:
            start, stop = shard_rows(index, rows, plan.rows_per_shard)
            write_shard(plan, index, compute_shard(start, stop))
            rows_done += stop - start
            if progress is not None:
                progress(rows_done, rows)
        return finish_store(plan)


def default_rows_per_shard(views: int, outputs: int) -> int:
    """Rows that fill one 32 MiB shard of float16 ``[views, outputs]`` logits."""
    return max(1, _SHARD_BYTES // (2 * max(1, int(views)) * max(1, int(outputs))))


@dataclass
class StorePlan:
    """A store being built: where its shards go and which are still to write.

    It pickles small (the sample ids are the biggest part), so shard writers on other
    nodes get it as an argument and write into :attr:`staging` on the shared location.

    Attributes:
        final: the finished store's location when it already exists (nothing to do).
        staging: where shards go: a hidden ``.<name>.partial`` folder renamed when complete
            (a path), or the store's own folder, made a store by its manifest (a URI).
        todo: shard indices still to write; ``done`` holds those already written.
    """

    root: str
    name: str
    key_fields: dict[str, Any]
    digest: str
    rows: int
    views: int
    outputs: int
    rows_per_shard: int
    sample_ids: np.ndarray
    staging: str = ""
    final: Path | str | None = None
    done: dict[int, ShardInfo] = dataclasses.field(default_factory=dict)
    todo: tuple[int, ...] = ()

    @property
    def location(self) -> str:
        return join(self.root, self.name)

    def shard_span(self, index: int) -> tuple[int, int]:
        return shard_rows(index, self.rows, self.rows_per_shard)


@contextmanager
def building(
    root: str | os.PathLike[str], key: StoreKey, *, rows: int, views: int, outputs: int,
    sample_ids: torch.Tensor | np.ndarray, rows_per_shard: int | None = None,
) -> Iterator[StorePlan]:
    """Plan the store for ``key`` and hold its write lock (local roots) while the caller
    writes the missing shards (:func:`write_shard`, from any process that sees the root)
    and then calls :func:`finish_store`. ``plan.final`` is set when it is already built.
    """
    location, local = _check_root(root)
    if rows_per_shard is None and all(isinstance(n, (int, np.integer)) for n in (views, outputs)):
        rows_per_shard = default_rows_per_shard(views, outputs)
    _check_layout(key, rows=rows, views=views, outputs=outputs, rows_per_shard=rows_per_shard)
    assert rows_per_shard is not None  # _check_layout rejects None
    ids = _as_sample_ids(sample_ids, rows)
    plan = StorePlan(location, key.name, key.fields(), key.digest(), rows, views, outputs, rows_per_shard, ids)
    if _is_finished(plan.location, key, local):
        plan.final = Path(plan.location) if local else plan.location
        yield plan
        return
    if local is None:  # object storage: no lock, the one writer is the sweep driver
        _plan_staging(plan, key, None)
        yield plan
        return
    with _io(local):
        local.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(local / f".{key.name}.lock", fix=DEFAULT_FIX):
        _plan_staging(plan, key, local)
        yield plan


def _plan_staging(plan: StorePlan, key: StoreKey, local: Path | None) -> None:
    if _is_finished(plan.location, key, local):  # another process finished it while we waited
        plan.final = Path(plan.location) if local else plan.location
        return
    if local is not None:
        final = local / key.name
        if final.exists():  # broken (truncated, corrupt): it is a cache, so rebuild it
            log.warning("logit store %s does not open cleanly; rebuilding it", final)
            with _io(final):
                shutil.rmtree(final)
        plan.staging = str(local / f".{key.name}.partial")
    else:
        plan.staging = plan.location
    layout = {
        "digest": plan.digest, "rows": plan.rows, "views": plan.views, "outputs": plan.outputs,
        "rows_per_shard": plan.rows_per_shard,
        "sample_ids_sha256": hashlib.sha256(plan.sample_ids.tobytes()).hexdigest(),
    }
    plan.done = _prepare_staging(plan.staging, layout)
    plan.todo = tuple(i for i in range(num_shards(plan.rows, plan.rows_per_shard)) if i not in plan.done)


def write_shard(plan: StorePlan, index: int, block: np.ndarray | torch.Tensor, *, node: str = "") -> ShardInfo:
    """Write shard ``index`` of ``plan`` (logits ``[n, V, K]``) and its ``.done`` record.

    Safe from several processes and nodes at once (each writes its own shard files);
    ``node`` is recorded in the manifest, to show who computed what.
    """
    start, stop = plan.shard_span(index)
    arr = _as_float16(block, (stop - start, plan.views, plan.outputs), start)
    schema = shard_schema(plan.views, plan.outputs, digest=plan.digest, index=index)
    info = _write_shard(plan.staging, shard_name(index), plan.sample_ids[start:stop], arr, schema, node)
    plan.done[index] = info
    return info


def finish_store(plan: StorePlan, done: dict[int, ShardInfo] | None = None) -> Path | str:
    """Write the manifest (last) and publish the store; ``done`` adds shards written elsewhere.

    Raises:
        EdrayError: a shard is missing (a writer failed: run the build again to resume).
    """
    if plan.final is not None:
        return plan.final
    plan.done.update(done or {})
    total = num_shards(plan.rows, plan.rows_per_shard)
    missing = [i for i in range(total) if i not in plan.done]
    if missing:
        raise EdrayError(plan.location, f"shards {missing[:5]} were not written", "run the same command again: "
                         "finished shards are kept")
    manifest = Manifest.build(
        plan.key_fields, plan.digest, rows=plan.rows, views=plan.views, outputs=plan.outputs,
        rows_per_shard=plan.rows_per_shard, shards=[plan.done[i] for i in range(total)],
    )
    write_bytes(join(plan.staging, MANIFEST_NAME), manifest.to_json().encode())
    local = local_path(plan.root)
    final: Path | str
    if local is not None:
        final = local / plan.name
        with _io(final):
            os.rename(plan.staging, final)
            fsync_dir(local)
    else:
        final = plan.location
    _remove_bookkeeping(str(final))
    plan.final = final
    return final


def _check_root(root: str | os.PathLike[str]) -> tuple[str, Path | None]:
    """``(location, local path or None)`` of the stores' root."""
    if is_uri(root):
        resolve(str(root))  # an unknown scheme or no S3/GCS support: fail before computing
        return str(root).rstrip("/"), None
    path = Path(root).expanduser().resolve()
    return str(path), path


def _check_layout(key: StoreKey, *, rows: int, views: int, outputs: int, rows_per_shard: int | None) -> None:
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


def _is_finished(location: str, key: StoreKey, local: Path | None) -> bool:
    """A store that opens for ``key`` and (local) whose every shard hashes right.

    Hashing reads the whole store once per build call (the driver's, not each trial's):
    a bit flip keeps sizes and schema intact, and only the checksum tells it from the
    real logits. A corrupt store is then rebuilt, never handed to a trial. On object
    storage the sizes and schemas are checked here; every node hashes its own copy as it
    fetches it (:mod:`edray.cache`), so the bytes are checked where they are read.
    """
    try:
        if local is not None and not (Path(location) / MANIFEST_NAME).is_file():
            return False
        open_store(location, key, verify=local is not None)
    except EdrayError:
        return False
    return True


def _prepare_staging(staging: str, layout: dict[str, Any]) -> dict[int, ShardInfo]:
    """Create or reuse the staging folder; return the shards already finished in it."""
    files = _listing(staging)
    if files and _read_json(join(staging, _LAYOUT)) != layout:
        _clear(staging)  # another layout, or started but never described: start over
        files = {}
    if not files:
        _make_dir(staging)
        write_bytes(join(staging, _LAYOUT), json.dumps(layout).encode())
        return {}
    done: dict[int, ShardInfo] = {}
    for name in files:
        if name.endswith(_TMP):  # a write that was killed mid-way (edray.atomic's temp file)
            discard(join(staging, name))
        elif name.endswith(_DONE):
            record = _read_json(join(staging, name))
            try:
                info = ShardInfo(**record)
                index = int(info.name.removeprefix("shard-").removesuffix(".arrow"))
                finished = files.get(info.name) == info.nbytes
            except (TypeError, ValueError):
                finished = False
            if finished and info.name == shard_name(index):
                done[index] = info
    return done


def _write_shard(staging: str, name: str, ids: np.ndarray, block: np.ndarray, schema: pa.Schema,
                 node: str = "") -> ShardInfo:
    n = block.shape[0]
    values = pa.array(block.reshape(-1), type=pa.float16())
    logits = pa.FixedSizeListArray.from_arrays(values, block.shape[1] * block.shape[2])
    batch = pa.record_batch([pa.array(ids, type=pa.int64()), logits], schema=schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, schema) as writer:  # uncompressed: the reader memory-maps it
        writer.write_batch(batch)
    data = sink.getvalue()
    info = ShardInfo(name, n, data.size, hashlib.sha256(data).hexdigest(), node)
    write_bytes(join(staging, name), data)
    write_bytes(join(staging, f"{name}{_DONE}"), json.dumps(dataclasses.asdict(info)).encode())
    return info


def _listing(folder: str) -> dict[str, int]:
    try:
        return {name: size for name, size in list_files(folder).items() if "/" not in name}
    except (OSError, pa.ArrowException) as e:
        raise EdrayError(folder, f"cannot list ({e})", "check the store location and its credentials") from e


def _make_dir(folder: str) -> None:
    local = local_path(folder)
    if local is not None:
        with _io(local):
            local.mkdir(parents=True, exist_ok=True)


def _clear(folder: str) -> None:
    local = local_path(folder)
    if local is not None:
        with _io(local):
            shutil.rmtree(local)
        return
    fs, inner = resolve(folder)
    fs.delete_dir_contents(inner, missing_dir_ok=True)


def _remove_bookkeeping(final: str) -> None:
    """Drop layout.json and .done records from a finished store (best effort: readers ignore them)."""
    try:
        names = _listing(final)
    except EdrayError:
        return
    for name in names:
        if name == _LAYOUT or name.endswith(_DONE):
            discard(join(final, name))


def _read_json(location: str) -> Any:
    try:
        return json.loads(read_bytes(location))
    except (OSError, ValueError, pa.ArrowException):
        return None


@contextmanager
def _io(path: Path) -> Iterator[None]:
    """Turn an OS error while writing ``path`` into the one-line error the CLI prints."""
    try:
        yield
    except OSError as e:
        raise EdrayError(str(path), f"cannot write ({e.strerror or e})", DEFAULT_FIX) from e

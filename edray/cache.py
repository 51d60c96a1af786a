"""The node-local cache: what trials read, copied once per node from the shared location.

Epochs must never read the network. On a cluster each node copies a logit store, a
teacher checkpoint or a dataset from ``EDRAY_SHARED`` into its own cache the first time a
task there needs it, then memory-maps the copy. A file lock per item makes concurrent
trials on one node fetch once: the first fetches, the others wait and reuse.

Checks: a store's shards are hashed while they stream in and compared with the manifest's
sha256 (a copy that does not match is discarded, never mapped); a cached store is reused
only while its manifest equals the shared one (a rebuilt store is fetched again). A
teacher checkpoint is checked against the ``.sha256`` written beside it; a dataset
folder against the sizes of its files.

A failure names the node, the shared path and what to do, in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
from pathlib import Path

import pyarrow as pa

from edray.atomic import atomic_path, exclusive_lock, fsync_dir, write_text
from edray.errors import EdrayError
from edray.logits.key import StoreKey
from edray.logits.manifest import MANIFEST_NAME, Manifest
from edray.logits.reader import LogitStore, open_store
from edray.names import SHA256_SUFFIX
from edray.storage import exists, join, list_files, read_bytes, resolve

__all__ = ["cached_file", "cached_store", "cached_tree", "node_name", "unreachable"]

_COMPLETE = ".edray-complete"
_BLOCK = 4 << 20


def node_name() -> str:
    """This node, as messages name it: ``$EDRAY_NODE_NAME``, else the host name (plus the
    Ray node id inside a Ray worker, since several nodes may share a host name; and, on a
    node an autoscaler started, its node type and cloud instance, as Ray's raylet gives them)."""
    name = os.environ.get("EDRAY_NODE_NAME") or socket.gethostname()
    ray = sys.modules.get("ray")  # loaded only in a Ray process; this module stays free of Ray
    try:
        if ray is not None and ray.is_initialized():
            node = f"ray node {ray.get_runtime_context().get_node_id()[:8]}"
            started = " ".join(filter(None, (os.environ.get("RAY_NODE_TYPE_NAME"),
                                             os.environ.get("RAY_CLOUD_INSTANCE_ID"))))
            return f"{name} ({node}, {started})" if started else f"{name} ({node})"
    except Exception:
        pass
    return name


def unreachable(location: str, err: BaseException | str) -> EdrayError:
    """The one-line error of a node that cannot read the shared location."""
    reason = " ".join(str(err).split())[:200]
    return EdrayError(
        location, f"node {node_name()} cannot read it ({reason})",
        "check EDRAY_SHARED and that this node can reach it (network, credentials: AWS_*/GOOGLE_*, mounts)",
    )


def _remote(location: str):
    """``read_bytes`` with the node's name in the error."""
    try:
        return read_bytes(location)
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as e:
        raise unreachable(location, e) from e


def cached_store(location: str, cache: Path, expected_key: StoreKey | None = None) -> LogitStore:
    """The store at ``location`` (a shared path or URI), opened from this node's copy.

    Raises:
        EdrayError: no store there, a key that differs, the shared location unreachable
            from this node, or a shard whose bytes do not match the manifest.
    """
    name = location.rstrip("/").rsplit("/", 1)[-1]
    folder = cache / "logits"
    target = folder / name
    manifest_at = join(location, MANIFEST_NAME)
    try:
        text = _remote(manifest_at)
    except FileNotFoundError:
        open_store(location, expected_key)  # raises the reader's own "no logit store here"
        raise
    remote = Manifest.from_json(text, path=manifest_at)
    with exclusive_lock(folder / f".{name}.lock", what=f"the cached copy of {name}", fix=_fix_cache(cache)):
        if not _same_store(target, remote):
            _fetch_store(location, remote, text, target, folder)
    return open_store(target, expected_key)


def _same_store(target: Path, remote: Manifest) -> bool:
    try:
        local = Manifest.from_json((target / MANIFEST_NAME).read_bytes(), path=str(target))
    except (OSError, EdrayError):
        return False
    return local.digest == remote.digest and local.shards == remote.shards


def _fetch_store(location: str, manifest: Manifest, text: bytes, target: Path, folder: Path) -> None:
    staging = folder / f".{target.name}.fetch-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        for shard in manifest.shards:
            digest = _copy(join(location, shard.name), staging / shard.name)
            if digest != shard.sha256:
                raise EdrayError(
                    join(location, shard.name),
                    f"node {node_name()} fetched bytes whose sha256 ({digest[:12]}...) differs from the manifest's "
                    f"({shard.sha256[:12]}...)", "rebuild the store with `edray precompute` (or delete it)",
                )
        (staging / MANIFEST_NAME).write_bytes(text)  # last: a folder without it is not a store
        if target.exists():
            shutil.rmtree(target)
        os.rename(staging, target)  # a folder: published whole by one rename, as the store writer does
        fsync_dir(folder)
    except OSError as e:
        raise EdrayError(str(target), f"node {node_name()} cannot write its cache ({e.strerror or e})",
                         _fix_cache(folder.parent)) from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _copy(location: str, dest: Path) -> str:
    """Stream ``location`` to ``dest`` and return the sha256 of what was written."""
    fs, inner = resolve(location)
    digest = hashlib.sha256()
    try:
        with fs.open_input_stream(inner) as src, open(dest, "wb") as out:
            while block := src.read(_BLOCK):
                digest.update(block)
                out.write(block)
    except FileNotFoundError as e:
        raise EdrayError(location, f"missing on the shared location (seen from node {node_name()})",
                         "rebuild it, or check EDRAY_SHARED") from e
    except pa.ArrowException as e:
        raise unreachable(location, e) from e
    except OSError as e:
        if dest.parent.exists() and not isinstance(e, (ConnectionError, TimeoutError)) and e.errno:
            raise  # a local write error: the caller names the cache
        raise unreachable(location, e) from e
    return digest.hexdigest()


def cached_file(location: str, cache: Path, folder: str) -> Path:
    """A single file (a teacher checkpoint) from the shared location, in ``cache/folder``.

    The ``<file>.sha256`` beside it, when there, must match the copied bytes; the copy
    is reused while that checksum is unchanged.

    Raises:
        FileNotFoundError: nothing at ``location`` (the caller says what makes it).
        EdrayError: the location unreachable from this node, or a checksum mismatch.
    """
    name = location.rstrip("/").rsplit("/", 1)[-1]
    target = cache / folder / name
    want = _expected_sha(location)
    fix = _fix_cache(cache)
    with exclusive_lock(cache / folder / f".{name}.lock", what=f"the cached copy of {name}", fix=fix):
        mark = target.with_name(target.name + SHA256_SUFFIX)
        if target.is_file() and mark.is_file() and (want is None or mark.read_text().strip() == want):
            return target
        if want is None and not _exists(location):
            raise FileNotFoundError(location)
        with atomic_path(target, fix=fix) as tmp:
            got = _copy(location, tmp)
            if want is not None and got != want:
                raise EdrayError(location, f"node {node_name()} fetched bytes whose sha256 differs from "
                                 f"{name}{SHA256_SUFFIX}", "retrain or re-upload the file")
        write_text(mark, got + "\n", fix=fix)
    return target


def _exists(location: str) -> bool:
    try:
        return exists(location)
    except (OSError, pa.ArrowException) as e:
        raise unreachable(location, e) from e


def _expected_sha(location: str) -> str | None:
    try:
        return _remote(location + SHA256_SUFFIX).decode().split()[0]
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, IndexError):
        return None


def cached_tree(location: str, cache: Path) -> Path:
    """A whole folder (a dataset given by URI) copied once into ``cache/datasets``.

    The copy counts as complete only when its marker lists every file with the size the
    shared location reports; a partial copy (a killed fetch) is finished, not trusted.

    Raises:
        EdrayError: nothing there, or the location unreachable from this node.
    """
    base = location.rstrip("/")
    name = f"{base.rsplit('/', 1)[-1]}-{hashlib.sha256(base.encode()).hexdigest()[:8]}"
    target = cache / "datasets" / name
    try:
        files = list_files(base)
    except (OSError, pa.ArrowException) as e:
        raise unreachable(base, e) from e
    if not files:
        raise EdrayError("dataset.root", f"no files under {base} (seen from node {node_name()})",
                         "upload the dataset there first (e.g. `aws s3 sync DIR URI`), or fix dataset.root")
    marker = target / _COMPLETE
    with exclusive_lock(cache / "datasets" / f".{name}.lock", what=f"the cached copy of {base}", fix=_fix_cache(cache)):
        try:
            if json.loads(marker.read_text()) == files:
                return target
        except (OSError, ValueError):
            pass
        for rel, size in files.items():
            dest = target / rel
            if dest.is_file() and dest.stat().st_size == size:
                continue  # left by a fetch that was stopped: sizes agree, keep it
            with atomic_path(dest, fix=_fix_cache(cache)) as tmp:
                _copy(join(base, rel), tmp)
        write_text(marker, json.dumps(files), fix=_fix_cache(cache))
    return target


def _fix_cache(cache: Path) -> str:
    return f"free space in {cache} or point EDRAY_CACHE at a writable local disk"

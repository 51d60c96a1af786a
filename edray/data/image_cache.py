"""Decoded-image cache: every image file decoded once, then read as uint8 rows from a memory map.

A sweep trains the same JPEGs trials x epochs times; decoding them is most of an epoch's
input cost. The first use of a file dataset decodes each image once, exactly as
:class:`~edray.data.imagesets.FileImageSet` does (same resize rule), into one Arrow IPC
file of uint8 rows; every later epoch, trial and process maps that file and gathers rows,
then normalises and applies the crop/flip views as before. The pixels are the decoded
ones, bit for bit, so a run with the cache equals a run without it.

On disk, beside the logit stores (``WORKDIR/images``)::

    <root>/.<name>.lock     flock'd while building: one builder per cache
    <root>/<name>.arrow     record batches of ``pixels: fixed_size_list<uint8>[H*W*3]``
    <root>/<name>.json      the manifest (key, shape, bytes, sha256), written last

``<name>`` is the first 16 hex digits of the key's digest; the key is the file list, the
dataset's identity (names and sizes of its files), the size and the resize rule. The
arrow file is written through :func:`edray.atomic.atomic_path`, then the manifest: a
cache with a manifest is finished. Opening checks the key, the file size and the digest
in the Arrow schema (cheap: a truncated or foreign file is found at once); ``verify``
hashes every byte as well. A cache that fails any check is rebuilt by the next builder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from edray.atomic import atomic_path, exclusive_lock, write_text
from edray.data.imagesets import DecodedImageSet, FileImageSet
from edray.data.loading import BatchLoader, LoaderSettings
from edray.errors import EdrayError
from edray.logits.key import digest_of, file_sha256, fingerprint

__all__ = ["CACHE_FORMAT", "CachedImageSet", "ImageCacheKey", "cache_image_set", "open_image_cache"]

CACHE_FORMAT = 1
_ROWS_PER_BATCH = 64  # rows per Arrow record batch: row r is in batch r // 64
_HEADROOM = 1.02  # Arrow framing and the manifest, on top of the pixel bytes
_REBUILD = "delete it; the next run rebuilds it (or set dataset.cache: off)"

log = logging.getLogger(__name__)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB"


@dataclass(frozen=True)
class ImageCacheKey:
    """What the cached pixels are a function of."""

    dataset_name: str
    dataset_identity: str  # the loader's digest of the file list and file sizes
    files: str  # fingerprint of this set's relative paths, in row order
    rows: int
    image_size: int
    resize_rule: str
    format_version: int = CACHE_FORMAT

    @classmethod
    def of(cls, images: FileImageSet, *, dataset_name: str, dataset_identity: str) -> ImageCacheKey:
        return cls(dataset_name, dataset_identity, fingerprint(images.paths), len(images), images.image_size,
                   FileImageSet.RESIZE_RULE)

    def digest(self) -> str:
        return digest_of(asdict(self))

    @property
    def name(self) -> str:
        return self.digest()[:16]

    @property
    def nbytes(self) -> int:
        """Bytes of the pixels alone: rows x H x W x 3."""
        return self.rows * self.image_size * self.image_size * 3


def _schema(size: int, digest: str) -> pa.Schema:
    # The digest in the schema tells a file copied in from another cache of the same shape.
    return pa.schema([pa.field("pixels", pa.list_(pa.uint8(), size * size * 3), nullable=False)],
                     metadata={"edray.digest": digest})


class CachedImageSet(DecodedImageSet):
    """The rows of a :class:`FileImageSet`, read from its decoded-image cache.

    ``load`` is a gather from the memory map plus normalisation, cheap enough to run in
    the training process (``in_memory``: no DataLoader workers). Pickles as its path and
    manifest; a child process maps the file again on first use, sharing the page cache.
    """

    in_memory = True

    def __init__(self, path: str | Path, manifest: dict[str, Any], labels: torch.Tensor,
                 mean: torch.Tensor, std: torch.Tensor):
        self.path = str(path)
        self.manifest = manifest
        self.labels = labels
        self.mean, self.std = mean, std
        self.image_size = int(manifest["key"]["image_size"])
        self._batches: list[np.ndarray] | None = None

    @property
    def nbytes(self) -> int:
        return int(self.manifest["nbytes"])

    def _arrays(self) -> list[np.ndarray]:
        if self._batches is None:
            self._batches = _map_batches(self.path, self.manifest)
        return self._batches

    def pixel_rows(self, indices: torch.Tensor) -> list[np.ndarray]:
        """Rows ``indices`` as read-only views into the memory map (no copy): exactly what
        ``FileImageSet.pixel_rows`` decodes."""
        rows = torch.as_tensor(indices, dtype=torch.long).reshape(-1).numpy()
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows must lie in [0, {len(self)})")
        batches = self._arrays()
        which, local = np.divmod(rows, _ROWS_PER_BATCH)
        return [batches[b][r] for b, r in zip(which.tolist(), local.tolist())]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_batches": None}  # no mapped buffers: the child maps its own


def _map_batches(path: str, manifest: dict[str, Any]) -> list[np.ndarray]:
    """Zero-copy numpy views [n, H, W, 3] of every record batch of the mapped file."""
    size = int(manifest["key"]["image_size"])
    try:
        source = pa.memory_map(path, "r")
        reader = pa.ipc.open_file(source)
        out = []
        for i in range(reader.num_record_batches):
            column = reader.get_batch(i).column(0)
            values = column.values.slice(column.offset * size * size * 3, len(column) * size * size * 3)
            flat = np.frombuffer(values.buffers()[1], dtype=np.uint8, count=len(values), offset=values.offset)
            out.append(flat.reshape(len(column), size, size, 3))
        source.close()  # the batches' buffers keep the mapping alive
    except (OSError, pa.ArrowException) as err:
        raise EdrayError(path, f"unreadable image cache ({err})", _REBUILD) from None
    return out


def _paths(root: Path, key: ImageCacheKey) -> tuple[Path, Path, Path]:
    return root / f"{key.name}.arrow", root / f"{key.name}.json", root / f".{key.name}.lock"


def open_image_cache(root: str | Path, key: ImageCacheKey, *, verify: bool = False) -> dict[str, Any]:
    """The manifest of the finished cache for ``key`` under ``root``, after checking it.

    Raises:
        EdrayError: no manifest, a manifest for another key or format, a data file whose size,
            schema, digest or row count differ (truncated or foreign), or (``verify``) bytes
            whose sha256 differs.
    """
    data, manifest_path, _ = _paths(Path(root), key)
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise EdrayError(str(manifest_path), "no decoded-image cache here", "it is built on first use") from None
    except (OSError, ValueError) as err:
        raise EdrayError(str(manifest_path), f"unreadable manifest ({err})", _REBUILD) from None
    if not isinstance(manifest, dict) or manifest.get("digest") != key.digest() or manifest.get("key") != asdict(key):
        raise EdrayError(str(manifest_path), "manifest is for another image cache", _REBUILD)
    try:
        size = data.stat().st_size
    except OSError:
        raise EdrayError(str(data), "image cache data file is missing", _REBUILD) from None
    if size != manifest.get("nbytes"):
        raise EdrayError(str(data), f"image cache is truncated or altered: {size} bytes, manifest says "
                         f"{manifest.get('nbytes')}", _REBUILD)
    try:
        with pa.memory_map(str(data), "r") as source:
            reader = pa.ipc.open_file(source)
            schema_ok = reader.schema.equals(_schema(key.image_size, key.digest()), check_metadata=True)
            rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    except (OSError, pa.ArrowException) as err:
        raise EdrayError(str(data), f"not a readable Arrow file ({err})", _REBUILD) from None
    if not schema_ok or rows != key.rows:
        raise EdrayError(str(data), "image cache does not belong to this key (schema, digest or rows differ)", _REBUILD)
    if verify and file_sha256(data) != manifest.get("sha256"):
        raise EdrayError(str(data), "image cache checksum mismatch: the file is corrupt", _REBUILD)
    return manifest


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def _build(images: FileImageSet, root: Path, key: ImageCacheKey, *, num_workers: int,
           say: Callable[[str], None]) -> None:
    data, manifest_path, _ = _paths(root, key)
    need = int(key.nbytes * _HEADROOM)
    free = _free_bytes(root)
    if need > free:
        raise EdrayError(
            str(root), f"the decoded-image cache needs {_size(need)} ({key.rows} images at {key.image_size} px), "
            f"only {_size(free)} are free",
            "free space, point --workdir (or EDRAY_WORKDIR) at a larger disk, or set dataset.cache: off",
        )
    say(f"image cache: decoding {key.rows} images once at {key.image_size} px into {data} "
        f"({_size(need)})")
    loader = BatchLoader(images, LoaderSettings(num_workers=num_workers), pixels=True)
    schema = _schema(key.image_size, key.digest())
    width = key.image_size * key.image_size * 3
    with atomic_path(data, fix="free space or set dataset.cache: off") as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for pixels, _, _ in loader.batches(torch.arange(key.rows), _ROWS_PER_BATCH):  # uint8, in row order
                flat = pa.array(np.ascontiguousarray(pixels.numpy()).reshape(-1), type=pa.uint8())
                writer.write_batch(pa.record_batch([pa.FixedSizeListArray.from_arrays(flat, width)], schema=schema))
        manifest = {
            "format_version": CACHE_FORMAT, "key": asdict(key), "digest": key.digest(), "rows": key.rows,
            "rows_per_batch": _ROWS_PER_BATCH, "nbytes": tmp.stat().st_size, "sha256": file_sha256(tmp),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")


def cache_image_set(
    images: FileImageSet,
    root: str | Path,
    *,
    dataset_name: str,
    dataset_identity: str,
    verify: bool = False,
    num_workers: int | None = None,
    say: Callable[[str], None] = _stderr,
) -> CachedImageSet:
    """``images`` read from their decoded-image cache under ``root``, built first if needed.

    Args:
        images: the file set to cache (its rows, labels and statistics are kept).
        root: directory of the caches (``WORKDIR/images``).
        dataset_name, dataset_identity: the dataset's name and the loader's file digest.
        verify: hash a found cache's bytes too (finds bit flips; reads the whole file).
        num_workers: decoding processes while building; default: the CPUs this process may use.
        say: where the "decoding N images ... (X GB)" line goes before a build.

    Raises:
        EdrayError: ``root`` cannot be written, or its disk has less free space than the
            cache needs (nothing is written then).
    """
    root = Path(root).expanduser().resolve()
    key = ImageCacheKey.of(images, dataset_name=dataset_name, dataset_identity=dataset_identity)
    data, _, lock = _paths(root, key)
    try:
        manifest = open_image_cache(root, key, verify=verify)
    except EdrayError:
        with exclusive_lock(lock, fix="free space, choose another --workdir, or set dataset.cache: off"):
            try:  # another process may have finished it while we waited
                manifest = open_image_cache(root, key, verify=verify)
            except EdrayError as err:
                if data.exists() or (root / f"{key.name}.json").exists():
                    log.warning("rebuilding the image cache %s (%s)", data, err.problem)
                for stale in [data, root / f"{key.name}.json", *root.glob(f".{key.name}.*.tmp")]:
                    stale.unlink(missing_ok=True)
                workers = max(0, _usable_cpus() if num_workers is None else num_workers)
                _build(images, root, key, num_workers=workers if key.rows > _ROWS_PER_BATCH else 0, say=say)
                manifest = open_image_cache(root, key)
    return CachedImageSet(data, manifest, images.labels, images.mean, images.std)

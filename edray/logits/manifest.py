"""The manifest of a logit store: key, layout, schema and a checksum per shard.

A store directory is ``manifest.json`` plus ``shard-00000.arrow, ...``: Arrow IPC files,
uncompressed (so they can be memory-mapped), one record batch each, with columns
``sample_id: int64`` and ``logits: fixed_size_list<float16>[V*K]`` (row-major ``[V, K]``).
Every shard holds ``rows_per_shard`` rows except the last. The manifest is written last,
so a directory with a valid manifest is a finished store.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from edray.errors import EdrayError
from edray.logits.key import FORMAT_VERSION

__all__ = [
    "MANIFEST_NAME",
    "Manifest",
    "ShardInfo",
    "num_shards",
    "shard_name",
    "shard_rows",
    "shard_schema",
]

MANIFEST_NAME = "manifest.json"
_REBUILD = "rebuild it with `edray precompute` (or delete the directory)"


def shard_name(index: int) -> str:
    """File name of shard ``index``: ``shard-00000.arrow``."""
    return f"shard-{index:05d}.arrow"


def num_shards(rows: int, rows_per_shard: int) -> int:
    """Shards needed for ``rows`` rows (the last one may be short)."""
    return -(-rows // rows_per_shard)


def shard_rows(index: int, rows: int, rows_per_shard: int) -> tuple[int, int]:
    """``(start, stop)`` rows of shard ``index``."""
    start = index * rows_per_shard
    return start, min(start + rows_per_shard, rows)


def shard_schema(views: int, outputs: int, *, digest: str = "", index: int | None = None) -> pa.Schema:
    """The Arrow schema of every shard.

    The store digest and shard index ride in the schema metadata: a shard copied in from
    another store of the same shape has the same size, and only this tells it apart
    without hashing the whole file.
    """
    metadata = {"edray.digest": digest} if digest else {}
    if index is not None:
        metadata["edray.shard"] = str(index)
    fields = [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("logits", pa.list_(pa.float16(), views * outputs)),
    ]
    return pa.schema(fields, metadata=metadata or None)


@dataclass(frozen=True)
class ShardInfo:
    """One shard file: its name, row count, byte size, sha256, and the node that wrote it
    (empty when one process wrote the whole store; not part of what is checked)."""

    name: str
    rows: int
    nbytes: int
    sha256: str
    node: str = ""


@dataclass(frozen=True)
class Manifest:
    """Everything needed to check and read a store without trusting its files.

    Attributes:
        key: the :class:`~edray.logits.key.StoreKey` fields the store was built for.
        digest: ``StoreKey.digest()`` of ``key``.
        rows, views, outputs: the logits are ``[rows, views, outputs]``.
        rows_per_shard: rows in every shard but the last.
        shards: one :class:`ShardInfo` per shard, in row order.
        schema: column name -> Arrow type string, for humans and for checking.
        format_version: store format the files follow.
        created: ISO-8601 UTC time the store was finished.
    """

    key: dict[str, Any]
    digest: str
    rows: int
    views: int
    outputs: int
    rows_per_shard: int
    shards: tuple[ShardInfo, ...]
    schema: dict[str, str]
    format_version: int = FORMAT_VERSION
    created: str = ""

    @classmethod
    def build(
        cls, key: dict[str, Any], digest: str, *, rows: int, views: int, outputs: int, rows_per_shard: int,
        shards: list[ShardInfo],
    ) -> Manifest:
        """A manifest for a store finished now."""
        schema = {f.name: str(f.type) for f in shard_schema(views, outputs)}
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return cls(
            dict(key), digest, rows, views, outputs, rows_per_shard, tuple(shards), schema, FORMAT_VERSION, created
        )

    @property
    def nbytes(self) -> int:
        """Bytes of all shards together."""
        return sum(s.nbytes for s in self.shards)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, *, path: str) -> Manifest:
        """Parse and check a manifest; ``path`` names it in errors.

        Raises:
            EdrayError: not JSON, a missing or mistyped field, another store format, or a
                shard list that does not add up to ``rows``.
        """
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            version = data.get("format_version")
            if version != FORMAT_VERSION:
                raise EdrayError(
                    path, f"written in store format {version!r}, this edray reads format {FORMAT_VERSION}", _REBUILD
                )
            shards = tuple(ShardInfo(str(s["name"]), int(s["rows"]), int(s["nbytes"]), str(s["sha256"]),
                                     str(s.get("node", ""))) for s in data["shards"])
            manifest = cls(
                key=dict(data["key"]), digest=str(data["digest"]), rows=int(data["rows"]), views=int(data["views"]),
                outputs=int(data["outputs"]), rows_per_shard=int(data["rows_per_shard"]), shards=shards,
                schema=dict(data["schema"]), format_version=int(version), created=str(data.get("created", "")),
            )
        except EdrayError:
            raise
        except (ValueError, TypeError, KeyError) as e:
            raise EdrayError(path, f"unreadable manifest ({type(e).__name__}: {e})", _REBUILD) from e
        manifest._check(path)
        return manifest

    def _check(self, path: str) -> None:
        if min(self.views, self.outputs, self.rows_per_shard) < 1 or self.rows < 0:
            problem = "manifest has a non-positive size (rows, views, outputs or rows_per_shard)"
            raise EdrayError(path, problem, _REBUILD)
        count = num_shards(self.rows, self.rows_per_shard)
        spans = [shard_rows(i, self.rows, self.rows_per_shard) for i in range(count)]
        got = [(s.name, s.rows) for s in self.shards]
        want = [(shard_name(i), stop - start) for i, (start, stop) in enumerate(spans)]
        if got != want:
            raise EdrayError(path, f"manifest lists shards {got[:3]}..., expected {want[:3]}... for {self.rows} rows",
                             _REBUILD)

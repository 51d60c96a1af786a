"""The identity of a logit store: everything that, if changed, makes stored logits wrong.

Two runs may share a store only when the teacher, the data, the transform and views,
the seed and the store format are all the same (docs/design.md#the-logit-store). :class:`StoreKey` holds those
fields; its digest names the store directory, and the manifest keeps the fields
themselves so a mismatch can say *which* one differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edray.errors import EdrayError

__all__ = ["FORMAT_VERSION", "StoreKey", "digest_of", "file_sha256", "fingerprint"]

FORMAT_VERSION = 1
"""Bumped whenever the on-disk layout changes; a store of another version is never read."""


@dataclass(frozen=True)
class StoreKey:
    """What a store of teacher logits was computed from.

    Attributes:
        teacher_arch: architecture name of the teacher, e.g. ``resnet110``.
        teacher_sha256: sha256 hex of the teacher checkpoint bytes (see :func:`file_sha256`).
        dataset_name: dataset registry name, e.g. ``cifar100``.
        dataset_split: which split the rows are, e.g. ``train``.
        dataset_samples: number of samples in that split.
        dataset_fingerprint: hash of labels and file list (see :func:`fingerprint`), so an
            edited dataset folder with the same sample count is still told apart.
        crop_padding: zero padding before the random crop of views 1..V-1.
        hflip: whether views 1..V-1 may be flipped horizontally.
        image_size: resize target, ``None`` for native size.
        normalisation: the input normalisation, as a string (e.g. ``mean=..,std=..``).
        views: V, views stored per sample (view 0 = evaluation transform).
        seed: seed from which the view parameters are derived.
        format_version: store format; defaults to this edray's :data:`FORMAT_VERSION`.
    """

    teacher_arch: str
    teacher_sha256: str
    dataset_name: str
    dataset_split: str
    dataset_samples: int
    dataset_fingerprint: str
    crop_padding: int
    hflip: bool
    image_size: int | None
    normalisation: str
    views: int
    seed: int
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        for name in ("teacher_arch", "teacher_sha256", "dataset_name", "dataset_split", "dataset_fingerprint"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise EdrayError(f"StoreKey.{name}", f"must be a non-empty string, got {value!r}", "")
        if not isinstance(self.normalisation, str):
            raise EdrayError("StoreKey.normalisation", f"must be a string, got {self.normalisation!r}", "")
        minimums = {"dataset_samples": 0, "crop_padding": 0, "views": 1, "seed": None, "format_version": 1}
        if self.image_size is not None:
            minimums["image_size"] = 1
        for name, minimum in minimums.items():  # numpy ints become ints, so the key stays JSON-able
            object.__setattr__(self, name, _check_int(name, getattr(self, name), minimum=minimum))
        if not isinstance(self.hflip, bool):
            raise EdrayError("StoreKey.hflip", f"must be true or false, got {self.hflip!r}", "")

    def fields(self) -> dict[str, Any]:
        """The key as a plain JSON-able dict, in declaration order."""
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """sha256 hex of the canonical JSON of :meth:`fields` (stable across runs and machines)."""
        return digest_of(self.fields())

    @property
    def name(self) -> str:
        """Directory name of the store under a root: the first 16 hex digits of :meth:`digest`."""
        return self.digest()[:16]

    def differences(self, other: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
        """``(field, other's value, this key's value)`` for every field where ``other`` differs.

        ``format_version`` comes first: when the format differs the other fields may not
        mean the same thing. A field missing from ``other`` counts as different.
        """
        mine = self.fields()
        order = ["format_version"] + [f for f in mine if f != "format_version"]
        missing = object()
        out = []
        for name in order:
            theirs = other.get(name, missing)
            if theirs is missing or theirs != mine[name]:
                out.append((name, None if theirs is missing else theirs, mine[name]))
        return out

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], *, path: str = "StoreKey") -> StoreKey:
        """Rebuild a key from :meth:`fields` (e.g. read back from a manifest)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - names)
        missing = sorted(n for n in names - set(fields) if n != "format_version")
        if unknown or missing:
            problem = f"key fields do not match this edray (unknown: {unknown}, missing: {missing})"
            raise EdrayError(path, problem, "rebuild it with `edray precompute` (or delete the directory)")
        return cls(**dict(fields))


def digest_of(fields: Mapping[str, Any]) -> str:
    """sha256 hex of key fields as canonical JSON; also checks a manifest against its digest."""
    text = json.dumps(dict(fields), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    """sha256 hex of a file's bytes: the teacher identity is its checkpoint bytes, not its name."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
    except OSError as e:
        raise EdrayError(str(path), f"cannot read ({e.strerror or e})", "check the checkpoint path") from e
    return digest.hexdigest()


def fingerprint(*parts: Any) -> str:
    """A short, stable hash of labels, file lists and other dataset facts.

    Accepts strings, ints, floats, bools, ``None``, sequences of those, numpy arrays and
    torch tensors (hashed by dtype, shape and bytes). Order matters: the same files in a
    different order are a different dataset, because rows are addressed by position.
    """
    digest = hashlib.sha256()
    for part in parts:
        _feed(digest, part)
    return digest.hexdigest()[:32]


def _feed(digest: Any, part: Any) -> None:
    if hasattr(part, "detach") and hasattr(part, "cpu"):  # torch.Tensor, without importing torch here
        part = part.detach().cpu().numpy()
    if isinstance(part, np.ndarray):
        arr = np.ascontiguousarray(part)
        digest.update(f"nd:{arr.dtype.str}:{arr.shape}:".encode())
        digest.update(arr.tobytes())
    elif isinstance(part, (list, tuple)):
        digest.update(f"seq:{len(part)}:".encode())
        for item in part:
            _feed(digest, item)
    elif part is None or isinstance(part, (str, int, float, bool)):
        digest.update(f"{type(part).__name__}:{part!r};".encode())
    else:
        raise TypeError(f"fingerprint() cannot hash {type(part).__name__}; pass str, numbers, arrays or sequences")


def _check_int(name: str, value: Any, *, minimum: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise EdrayError(f"StoreKey.{name}", f"must be an integer, got {value!r}", "")
    if minimum is not None and value < minimum:
        raise EdrayError(f"StoreKey.{name}", f"must be >= {minimum}, got {value}", "")
    return int(value)

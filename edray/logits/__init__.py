"""Precomputed teacher logits in Arrow: key, atomic resumable writer, memory-mapped reader.

See docs/design.md#the-logit-store.
"""

from edray.logits.key import FORMAT_VERSION, StoreKey, file_sha256, fingerprint
from edray.logits.manifest import Manifest, ShardInfo
from edray.logits.reader import LogitStore, VerifyReport, open_store, verify_store
from edray.logits.writer import write_store
from edray.storage import is_uri, resolve

__all__ = [
    "FORMAT_VERSION",
    "LogitStore",
    "Manifest",
    "ShardInfo",
    "StoreKey",
    "VerifyReport",
    "file_sha256",
    "fingerprint",
    "is_uri",
    "open_store",
    "resolve",
    "verify_store",
    "write_store",
]

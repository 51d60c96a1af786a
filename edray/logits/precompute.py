"""Moved: :mod:`edray.distill.precompute` and :mod:`edray.distill.stored_teachers`.

A re-export for callers not yet moved (``edray.pipeline``, ``edray.distributed.sweep``);
delete it once they import from ``edray.distill``. Nothing in :mod:`edray.logits`
imports it, so the store code stays below the ED loop.
"""

from edray.distill.precompute import StoreInfo, precompute_stores, store_key
from edray.distill.stored_teachers import StoreTeachers, open_teacher_stores

__all__ = ["StoreInfo", "StoreTeachers", "open_teacher_stores", "precompute_stores", "store_key"]

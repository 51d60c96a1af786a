"""Paired differences over seeds, with a 95 % t-interval: how two methods are compared here.

Each seed trains both methods on the same split with the same initial draw of the
shared parts, so seed-to-seed noise cancels in the difference; the interval is then
much narrower than two independent mean ± std would suggest.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PairedDifference", "paired_difference"]


@dataclass(frozen=True)
class PairedDifference:
    mean: float  # mean of (a - b) over seeds
    low: float | None  # 95 % interval (None with fewer than two seeds)
    high: float | None
    n: int

    def text(self, digits: int = 4) -> str:
        if self.low is None:
            return f"{self.mean:+.{digits}f}"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def paired_difference(a: Sequence[float], b: Sequence[float], *, level: float = 0.95) -> PairedDifference:
    """Mean of ``a[i] - b[i]`` with its Student-t interval.

    Raises:
        ValueError: ``a`` and ``b`` differ in length or are empty.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired samples need the same non-zero length, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return PairedDifference(mean, None, None, len(diffs))
    from scipy.stats import t  # scikit-learn's dependency

    half = t.ppf(0.5 + level / 2, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return PairedDifference(mean, mean - half, mean + half, len(diffs))

"""A mergeable, log-bucketed latency histogram (HdrHistogram-like).

Buckets grow geometrically by ``RATIO`` from ``LOWEST`` seconds; a value is
reported as its bucket's geometric midpoint, so the relative error of any
percentile is at most ``sqrt(RATIO) - 1`` (under 1 %).  Counts are kept sparse
(bucket index → count), exact count, sum, min and max are kept beside them, so
means are exact.  Two histograms merge by adding counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["Histogram", "RATIO", "LOWEST", "MAX_RELATIVE_ERROR"]

RATIO = 1.02
LOWEST = 1e-6  # seconds: values below go to the first bucket
MAX_RELATIVE_ERROR = math.sqrt(RATIO) - 1
_LOG_RATIO = math.log(RATIO)


class Histogram:
    """Latency histogram with ≤ 1 % relative error on percentiles."""

    __slots__ = ("counts", "count", "total", "min", "max")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    @staticmethod
    def index(value: float) -> int:
        if value <= LOWEST:
            return 0
        return int(math.log(value / LOWEST) / _LOG_RATIO) + 1

    @staticmethod
    def midpoint(index: int) -> float:
        if index == 0:
            return LOWEST
        return LOWEST * RATIO ** (index - 0.5)

    def record(self, value: float) -> None:
        i = 0 if value <= LOWEST else int(math.log(value / LOWEST) / _LOG_RATIO) + 1
        self.counts[i] = self.counts.get(i, 0) + 1
        self.count += 1
        self.total += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def record_many(self, values: np.ndarray | Iterable[float]) -> None:
        v = np.asarray(values, dtype=float)
        if v.size == 0:
            return
        idx = np.where(v <= LOWEST, 0, (np.log(np.maximum(v, LOWEST) / LOWEST) / _LOG_RATIO).astype(np.int64) + 1)
        uniq, n = np.unique(idx, return_counts=True)
        for i, c in zip(uniq.tolist(), n.tolist(), strict=True):
            self.counts[i] = self.counts.get(i, 0) + c
        self.count += int(v.size)
        self.total += float(v.sum())
        self.min = min(self.min, float(v.min()))
        self.max = max(self.max, float(v.max()))

    def merge(self, other: Histogram) -> Histogram:
        """Add ``other`` into this histogram (in place) and return self."""
        for i, c in other.counts.items():
            self.counts[i] = self.counts.get(i, 0) + c
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        return self

    @classmethod
    def merged(cls, hists: Iterable[Histogram]) -> Histogram:
        out = cls()
        for h in hists:
            out.merge(h)
        return out

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    def percentile(self, p: float) -> float:
        """The p-th percentile (0 < p ≤ 100): the smallest bucket holding at least p % of values."""
        if not self.count:
            return math.nan
        rank = max(1, math.ceil(self.count * p / 100.0))
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                return min(max(self.midpoint(i), self.min), self.max)
        return self.max

    def share_above(self, threshold: float) -> float:
        """Share of values above ``threshold`` (to bucket resolution)."""
        if not self.count:
            return math.nan
        cut = self.index(threshold)
        return sum(c for i, c in self.counts.items() if i > cut) / self.count

    def to_dict(self) -> dict[str, Any]:
        keys = sorted(self.counts)
        return {
            "ratio": RATIO,
            "lowest": LOWEST,
            "count": self.count,
            "sum": self.total,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
            "buckets": keys,
            "counts": [self.counts[k] for k in keys],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Histogram:
        if d.get("ratio") != RATIO or d.get("lowest") != LOWEST:
            raise ValueError(f"histogram with ratio {d.get('ratio')} / lowest {d.get('lowest')} cannot be read by this version")
        h = cls()
        h.counts = dict(zip(d["buckets"], d["counts"], strict=True))
        h.count = int(d["count"])
        h.total = float(d["sum"])
        h.min = d["min"] if d["min"] is not None else math.inf
        h.max = d["max"] if d["max"] is not None else -math.inf
        return h

    def __repr__(self) -> str:
        return f"Histogram(count={self.count}, mean={self.mean:.4g}, p95={self.percentile(95):.4g})"

"""Thresholds: pass/fail criteria a run must meet, written k6-style in the scenario.

::

    thresholds:
      register: [p95 < 500ms, p99 < 1s, error_rate < 1%, throughput > 95%]
      all: [error_rate < 5%]          # every request type together
      run: [arrivals_late < 1%]       # the load generator itself

A threshold is ``METRIC OP VALUE``: ``p50`` .. ``p99.9`` (latency, a duration),
``error_rate`` (failed / started), ``throughput`` (succeeded / started, "of
offered"), and for ``run`` ``arrivals_late`` (arrivals started more than 100 ms
after their time, of those started) and ``arrivals_dropped`` (of those
planned); OP is ``<``, ``<=``, ``>`` or ``>=``.  :func:`judge` reads them
against one or more runs in the result shape (replications pooled).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from models.histogram import Histogram
from models.results import RunResult
from models.units import parse_duration, parse_fraction

__all__ = ["Threshold", "ThresholdVerdict", "parse_threshold", "judge", "RUN", "ALL", "RUN_METRICS", "REQUEST_METRICS"]

RUN, ALL = "run", "all"
RUN_METRICS = ("arrivals_late", "arrivals_dropped")
REQUEST_METRICS = ("error_rate", "throughput")
_FORM = re.compile(r"^\s*(p\d{1,2}(?:\.\d+)?|[a-z_]+)\s*(<=|>=|<|>)\s*(\S.*?)\s*$")
_OPS = {"<": lambda v, x: v < x, "<=": lambda v, x: v <= x, ">": lambda v, x: v > x, ">=": lambda v, x: v >= x}


@dataclass(frozen=True)
class Threshold:
    """One criterion: ``subject`` (a request type, ``all`` or ``run``), metric, operator, limit (seconds or a fraction)."""

    subject: str
    metric: str
    op: str
    limit: float
    text: str

    @property
    def label(self) -> str:
        return f"{self.subject}: {self.text}"

    @property
    def is_latency(self) -> bool:
        return self.metric.startswith("p")

    def holds(self, value: float) -> bool:
        return not math.isnan(value) and bool(_OPS[self.op](value, self.limit))


@dataclass(frozen=True)
class ThresholdVerdict:
    threshold: Threshold
    value: float  # nan: nothing to judge (no such requests, or a model run for a load-generator metric)
    passed: bool

    @property
    def shown(self) -> str:
        if math.isnan(self.value):
            return "-"
        return f"{self.value * 1000:.1f}ms" if self.threshold.is_latency else f"{self.value:.2%}"


def parse_threshold(subject: str, text: object) -> Threshold:
    """``"p95 < 500ms"`` for ``subject``; ValueError saying what was expected."""
    if not isinstance(text, str):
        raise ValueError(f"expected a threshold like 'p95 < 500ms' or 'error_rate < 1%', got {text!r}")
    m = _FORM.match(text)
    if m is None:
        raise ValueError(f"expected METRIC OP VALUE, e.g. 'p95 < 500ms' or 'error_rate < 1%'; got {text!r}")
    metric, op, raw = m.groups()
    if subject == RUN:
        if metric not in RUN_METRICS:
            raise ValueError(f"unknown run metric {metric!r}; expected one of {', '.join(RUN_METRICS)}")
    elif not (metric in REQUEST_METRICS or re.fullmatch(r"p\d{1,2}(?:\.\d+)?", metric)):
        raise ValueError(f"unknown metric {metric!r}; expected p50..p99.9, {', '.join(REQUEST_METRICS)}")
    if metric.startswith("p") and not 0 < float(metric[1:]) < 100:
        raise ValueError(f"percentile {metric!r} must lie between p0 and p100")
    limit = parse_duration(raw) if metric.startswith("p") else parse_fraction(raw)
    if not math.isfinite(limit) or limit < 0:
        raise ValueError(f"the limit must be a non-negative finite value, got {raw!r}")
    return Threshold(subject, metric, op, float(limit), f"{metric} {op} {raw}")


def _value(t: Threshold, results: Sequence[RunResult], request_types: Sequence[str]) -> float:
    if t.subject == RUN:
        metas = [r.meta for r in results if "arrivals_started" in r.meta]
        if not metas:
            return math.nan  # a model run has no load generator
        if t.metric == "arrivals_late":
            started = sum(m.get("arrivals_started", 0) for m in metas)
            return sum(m.get("late_over_100ms", 0) for m in metas) / started if started else 0.0
        planned = sum(m.get("arrivals_planned", 0) for m in metas)
        return sum(m.get("arrivals_dropped", 0) for m in metas) / planned if planned else 0.0
    types = list(request_types) if t.subject == ALL else [t.subject]
    series = [r.requests[q] for r in results for q in types if q in r.requests]
    if t.is_latency:
        return Histogram.merged(s.total_latency for s in series).percentile(float(t.metric[1:]))
    started = sum(sum(s.started) for s in series)
    if not started:
        return math.nan
    if t.metric == "error_rate":
        return sum(sum(c) for s in series for c in s.failed.values()) / started
    return sum(sum(s.ok) for s in series) / started


def judge(thresholds: Sequence[Threshold], results: Sequence[RunResult], request_types: Sequence[str]) -> list[ThresholdVerdict]:
    """Each threshold against the runs (pooled); one with nothing to judge passes, shown as '-'."""
    out = []
    for t in thresholds:
        value = _value(t, results, request_types)
        out.append(ThresholdVerdict(t, value, math.isnan(value) or t.holds(value)))
    return out

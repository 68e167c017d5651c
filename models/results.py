"""The one result shape, for a simulated run and a measured run alike.

A :class:`RunResult` holds per-interval aggregates, never one row per request:
arrivals; per request type the requests started, succeeded and failed by reason,
and latency histograms (per interval and for the whole run); per station the
arrivals, shed and abandoned requests, busy and available server-seconds (so
utilization) and queue length; per journey step the funnel counts.  Everything
that compares, plans or reports reads this shape and never cares where it came
from (``source`` is ``"model"`` or ``"measured"``).

:func:`save` writes a run directory (``result.json`` plus CSV tables for
spreadsheets and pandas); :func:`load` reads ``result.json`` back.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.histogram import Histogram

__all__ = ["RequestSeries", "StationSeries", "StepSeries", "RunResult", "save", "load", "merge", "FORMAT_VERSION"]

FORMAT_VERSION = 1


def _zeros(n: int) -> list[int]:
    return [0] * n


@dataclass
class RequestSeries:
    """One request type, per interval.  Latency is of successful requests."""

    started: list[int]
    ok: list[int]
    failed: dict[str, list[int]]
    latency: list[Histogram]

    @classmethod
    def empty(cls, n: int) -> RequestSeries:
        return cls(_zeros(n), _zeros(n), {}, [Histogram() for _ in range(n)])

    def fail_counts(self, reason: str) -> list[int]:
        return self.failed.setdefault(reason, _zeros(len(self.started)))

    @property
    def total_latency(self) -> Histogram:
        return Histogram.merged(self.latency)

    def totals(self) -> dict[str, int]:
        out = {"started": sum(self.started), "ok": sum(self.ok)}
        for reason, counts in self.failed.items():
            out[f"failed_{reason}"] = sum(counts)
        out["failed"] = sum(sum(c) for c in self.failed.values())
        return out


@dataclass
class StationSeries:
    """One station, per interval: arrivals, what became of them, busy time and queue."""

    arrivals: list[int]
    shed: list[int]
    abandoned: list[int]
    waited: list[int]
    busy: list[float]  # server-seconds busy
    capacity: list[float]  # server-seconds available
    queue_mean: list[float]
    queue_max: list[int]
    wait: Histogram = field(default_factory=Histogram)  # time in queue of those who got served

    @classmethod
    def empty(cls, n: int) -> StationSeries:
        return cls(_zeros(n), _zeros(n), _zeros(n), _zeros(n), [0.0] * n, [0.0] * n, [0.0] * n, _zeros(n))

    def utilization(self) -> list[float]:
        return [b / c if c > 0 else math.nan for b, c in zip(self.busy, self.capacity, strict=True)]

    @property
    def peak_utilization(self) -> float:
        u = [x for x in self.utilization() if not math.isnan(x)]
        return max(u) if u else math.nan


@dataclass
class StepSeries:
    """One journey step, per interval: the funnel."""

    reached: list[int]  # went on to the step (after drop-off and think time)
    completed: list[int]
    dropped: list[int]  # chose not to go on to this step
    failed: list[int]  # gave up after failures
    duration: Histogram = field(default_factory=Histogram)  # first attempt to success, retries included

    @classmethod
    def empty(cls, n: int) -> StepSeries:
        return cls(_zeros(n), _zeros(n), _zeros(n), _zeros(n))


@dataclass
class RunResult:
    """Per-interval aggregates of one run (simulated or measured)."""

    source: str
    scenario: str
    start: float  # seconds from the scenario's start: the first interval's start
    interval: float
    arrivals: list[int]
    requests: dict[str, RequestSeries]
    stations: dict[str, StationSeries]
    steps: dict[str, StepSeries]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_intervals(self) -> int:
        return len(self.arrivals)

    @property
    def end(self) -> float:
        return self.start + self.interval * self.n_intervals

    def interval_starts(self) -> list[float]:
        return [self.start + k * self.interval for k in range(self.n_intervals)]

    def funnel(self) -> dict[str, int]:
        """Completed count per step over the whole run."""
        return {name: sum(s.completed) for name, s in self.steps.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "source": self.source,
            "scenario": self.scenario,
            "start": self.start,
            "interval": self.interval,
            "meta": self.meta,
            "arrivals": self.arrivals,
            "requests": {
                k: {"started": r.started, "ok": r.ok, "failed": r.failed, "latency": [h.to_dict() for h in r.latency]}
                for k, r in self.requests.items()
            },
            "stations": {
                k: {
                    "arrivals": s.arrivals,
                    "shed": s.shed,
                    "abandoned": s.abandoned,
                    "waited": s.waited,
                    "busy": s.busy,
                    "capacity": s.capacity,
                    "queue_mean": s.queue_mean,
                    "queue_max": s.queue_max,
                    "wait": s.wait.to_dict(),
                }
                for k, s in self.stations.items()
            },
            "steps": {
                k: {
                    "reached": s.reached,
                    "completed": s.completed,
                    "dropped": s.dropped,
                    "failed": s.failed,
                    "duration": s.duration.to_dict(),
                }
                for k, s in self.steps.items()
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        if d.get("format") != FORMAT_VERSION:
            raise ValueError(f"result format {d.get('format')!r} is not {FORMAT_VERSION}")
        return cls(
            source=d["source"],
            scenario=d["scenario"],
            start=d["start"],
            interval=d["interval"],
            meta=d.get("meta", {}),
            arrivals=d["arrivals"],
            requests={
                k: RequestSeries(r["started"], r["ok"], r["failed"], [Histogram.from_dict(h) for h in r["latency"]])
                for k, r in d["requests"].items()
            },
            stations={
                k: StationSeries(
                    s["arrivals"],
                    s["shed"],
                    s["abandoned"],
                    s["waited"],
                    s["busy"],
                    s["capacity"],
                    s["queue_mean"],
                    s["queue_max"],
                    Histogram.from_dict(s["wait"]),
                )
                for k, s in d["stations"].items()
            },
            steps={
                k: StepSeries(s["reached"], s["completed"], s["dropped"], s["failed"], Histogram.from_dict(s["duration"]))
                for k, s in d["steps"].items()
            },
        )


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _num(x: float) -> float | str:
    return "" if isinstance(x, float) and math.isnan(x) else round(x, 6)


def save(result: RunResult, directory: str | Path) -> Path:
    """Write ``result.json`` and ``requests.csv``, ``stations.csv``, ``funnel.csv`` into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / "result.json.tmp"
    tmp.write_text(json.dumps(result.to_dict(), separators=(",", ":")))
    tmp.replace(d / "result.json")
    starts = result.interval_starts()
    reasons = sorted({r for s in result.requests.values() for r in s.failed})
    rows: list[list[Any]] = []
    for name, r in result.requests.items():
        for k, t in enumerate(starts):
            h = r.latency[k]
            rows.append(
                [
                    t,
                    name,
                    r.started[k],
                    r.ok[k],
                    *[r.failed.get(x, [0] * len(starts))[k] for x in reasons],
                    _num(h.mean),
                    _num(h.percentile(50)),
                    _num(h.percentile(95)),
                    _num(h.percentile(99)),
                ]
            )
    _write_csv(
        d / "requests.csv", ["t", "request", "started", "ok", *[f"failed_{x}" for x in reasons], "mean_s", "p50_s", "p95_s", "p99_s"], rows
    )
    rows = []
    for name, s in result.stations.items():
        util = s.utilization()
        for k, t in enumerate(starts):
            rows.append(
                [t, name, s.arrivals[k], s.shed[k], s.abandoned[k], s.waited[k], _num(util[k]), _num(s.queue_mean[k]), s.queue_max[k]]
            )
    _write_csv(
        d / "stations.csv", ["t", "station", "arrivals", "shed", "abandoned", "waited", "utilization", "queue_mean", "queue_max"], rows
    )
    rows = []
    for name, st in result.steps.items():
        for k, t in enumerate(starts):
            rows.append([t, name, st.reached[k], st.completed[k], st.dropped[k], st.failed[k]])
    _write_csv(d / "funnel.csv", ["t", "step", "reached", "completed", "dropped", "failed"], rows)
    _write_csv(d / "arrivals.csv", ["t", "arrivals"], [[t, a] for t, a in zip(starts, result.arrivals, strict=True)])
    return d


def load(directory_or_file: str | Path) -> RunResult:
    """Read a result written by :func:`save` (a run directory or its ``result.json``)."""
    p = Path(directory_or_file)
    if p.is_dir():
        p = p / "result.json"
    return RunResult.from_dict(json.loads(p.read_text()))


#: meta entries that add up when runs of parts of one load (distributed workers) are merged
ADDITIVE_META = ("arrivals_planned", "arrivals_started", "arrivals_dropped", "arrivals_not_reached", "late_over_100ms")


def merge(results: list[RunResult]) -> RunResult:
    """One result from the results of parts of one run (e.g. Locust workers that split the arrivals).

    Counts add up interval by interval, histograms merge; the parts must share
    source, scenario, start, interval and length.
    """
    if not results:
        raise ValueError("nothing to merge")
    first = results[0]
    for r in results[1:]:
        if (r.source, r.scenario, r.start, r.interval, r.n_intervals) != (
            first.source,
            first.scenario,
            first.start,
            first.interval,
            first.n_intervals,
        ):
            raise ValueError("results of different runs cannot be merged")
    n = first.n_intervals

    def add(a: list[Any], b: list[Any]) -> list[Any]:
        return [x + y for x, y in zip(a, b, strict=True)]

    out = RunResult(first.source, first.scenario, first.start, first.interval, [0] * n, {}, {}, {}, dict(first.meta))
    for r in results:
        out.arrivals = add(out.arrivals, r.arrivals)
        for name, rq in r.requests.items():
            tgt = out.requests.setdefault(name, RequestSeries.empty(n))
            tgt.started, tgt.ok = add(tgt.started, rq.started), add(tgt.ok, rq.ok)
            for reason, counts in rq.failed.items():
                tgt.failed[reason] = add(tgt.fail_counts(reason), counts)
            for h, other in zip(tgt.latency, rq.latency, strict=True):
                h.merge(other)
        for name, st in r.steps.items():
            tgt_s = out.steps.setdefault(name, StepSeries.empty(n))
            tgt_s.reached, tgt_s.completed = add(tgt_s.reached, st.reached), add(tgt_s.completed, st.completed)
            tgt_s.dropped, tgt_s.failed = add(tgt_s.dropped, st.dropped), add(tgt_s.failed, st.failed)
            tgt_s.duration.merge(st.duration)
        for name, ss in r.stations.items():
            tgt_t = out.stations.setdefault(name, StationSeries.empty(n))
            for attr in ("arrivals", "shed", "abandoned", "waited", "busy", "capacity", "queue_mean"):
                setattr(tgt_t, attr, add(getattr(tgt_t, attr), getattr(ss, attr)))
            tgt_t.queue_max = [max(a, b) for a, b in zip(tgt_t.queue_max, ss.queue_max, strict=True)]
            tgt_t.wait.merge(ss.wait)
    for key in ADDITIVE_META:
        if all(key in r.meta for r in results):
            out.meta[key] = sum(r.meta[key] for r in results)
    if all("max_lateness" in r.meta for r in results):
        out.meta["max_lateness"] = max(r.meta["max_lateness"] for r in results)
    if "arrivals_started" in out.meta and "late_over_100ms" in out.meta:
        started = out.meta["arrivals_started"]
        out.meta["share_on_time_100ms"] = 1 - out.meta["late_over_100ms"] / started if started else 1.0
    decisions = [r.meta.get("proceed_decisions") for r in results]
    if all(isinstance(d, dict) for d in decisions):
        merged: dict[str, list[int]] = {}
        for d in decisions:
            for step, (went, left) in d.items():  # type: ignore[union-attr]
                m = merged.setdefault(step, [0, 0])
                m[0] += went
                m[1] += left
        out.meta["proceed_decisions"] = merged
    firsts = [r.meta.get("first_request_from_arrival") for r in results]
    if all(isinstance(f, dict) for f in firsts):
        out.meta["first_request_from_arrival"] = Histogram.merged(Histogram.from_dict(f) for f in firsts).to_dict()  # type: ignore[arg-type]
    out.meta["parts"] = len(results)
    return out

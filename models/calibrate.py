"""Calibration: service demands measured on a running server, as a scenario overlay.

The reference server (and any server that exposes the same metrics) publishes,
per station and request type, the requests served and the seconds spent in a
slot, with their squares (``surgecap_station_served_total``,
``surgecap_station_busy_seconds_total``, ``surgecap_station_busy_seconds_squared_total``).
Between two scrapes, the Service Demand Law gives the demand of request type r
at station k:

    D_k,r = U_k,r / X_r = busy_k,r / completions_r        (per visit: the mean service time)

and the sum of squares gives its coefficient of variation.  What the client saw
beyond the stations at low load (HTTP, parsing, work outside any station) is the
request type's *overhead*: mean latency at low load minus the sum of its
station demands, kept in the model as a pure delay (``system.overhead``).

The server's own processor is measured too (``surgecap_cpu_*``, see
``refserver/cpu.py``): per request type its event-loop steps, their time and
the worker threads' CPU time, with ``process_cpu_seconds_total`` for the whole.
:func:`cpu_estimates` turns them into the model's ``system.cpu``: per request
type, its own CPU plus an equal share per request of the CPU no request owns
(HTTP parsing, the email sender, test-only endpoints), taken in its measured
number of steps (+1 for the shared and thread work), with the spread of the
measured steps.  The processor's low-load queueing (Pollaczek-Khinchine,
below) is taken out of the overhead, which the model adds back itself.

:func:`station_series` turns a run's scrapes into the per-interval
:class:`~models.results.StationSeries` of the one result shape, so measured
utilization, queue lengths and shedding can be compared with the model's.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.results import RunResult, StationSeries
from models.scenario import CPU, REGISTRY, Scenario

__all__ = [
    "parse_prometheus",
    "Snapshot",
    "snapshot",
    "ServiceEstimate",
    "service_estimates",
    "overheads",
    "fitted_overheads",
    "work_speed",
    "calibration_overlay",
    "CpuEstimate",
    "cpu_estimates",
    "held_services",
    "cpu_law",
    "busy_between",
    "speed_index",
    "scaled_processor",
    "station_series",
    "disk_waits",
    "disk_stalls",
    "without_stalls",
    "Stall",
    "cpu_fields",
    "MIN_SAMPLES",
    "DATABASE",
]

MIN_SAMPLES = 30  # fewer visits than this: too few to estimate a demand from
DATABASE = "db"  # the reference server's station inside which a request's database write runs (refserver.service)
STORAGE = "storage"  # a write whose db station comes before this one waits for the stored file, outside the db station
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples of a Prometheus text exposition: (metric name, labels, value); comments skipped."""
    out: list[tuple[str, dict[str, str], float]] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        out.append((m.group(1), labels, value))
    return out


@dataclass
class Snapshot:
    """One scrape of a server's station metrics at monotonic time ``at``."""

    at: float
    servers: dict[str, float] = field(default_factory=dict)
    queue: dict[str, float] = field(default_factory=dict)
    shed: dict[str, float] = field(default_factory=dict)
    typed: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (station, request) -> [served, Σt, Σt², Σln t, Σ(ln t)²]
    threaded: dict[str, float] = field(default_factory=dict)  # station -> 1 when its work runs in a worker thread
    cpu_seconds: float | None = None
    cpu_typed: dict[str, list[float]] = field(
        default_factory=dict
    )  # request -> [requests, steps, loop Σt, loop Σt², thread seconds, thread calls, own work seconds, requests that did it, resume steps]
    idle_cpu: float | None = None  # the server's CPU use with no load (CPU seconds per second), when it was watched idle
    writer: dict[str, float] = field(default_factory=dict)  # the database writer: batches, batch_seconds, commit_seconds
    writes: dict[str, list[float]] = field(default_factory=dict)  # request -> [writes, Σ queued-to-committed seconds, Σ their squares]
    loop: dict[str, float] = field(default_factory=dict)  # the event loop: lag_seconds, lag_samples (its lag probe), refused connections
    clock: float | None = None  # the server's own clock at the scrape (its speed log's buckets are on it)

    @property
    def has_stations(self) -> bool:
        return bool(self.servers)

    def to_dict(self, start: float = 0.0) -> dict[str, Any]:
        """JSON-ready, with ``at`` relative to ``start`` (a run's raw scrapes, kept beside its result)."""
        return {
            "at": self.at - start,
            "servers": self.servers,
            "queue": self.queue,
            "shed": self.shed,
            "typed": [[st, rt, *v] for (st, rt), v in self.typed.items()],
            "cpu_seconds": self.cpu_seconds,
            "cpu_typed": self.cpu_typed,
            "threaded": self.threaded,
            "writer": self.writer,
            "writes": self.writes,
            "loop": self.loop,
            "idle_cpu": self.idle_cpu,
            "clock": self.clock,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Snapshot:
        return cls(
            at=d["at"],
            servers=d["servers"],
            queue=d["queue"],
            shed=d["shed"],
            typed={(row[0], row[1]): list(row[2:]) for row in d["typed"]},
            cpu_seconds=d["cpu_seconds"],
            cpu_typed=d["cpu_typed"],
            threaded=d.get("threaded", {}),
            writer=d.get("writer", {}),
            writes=d.get("writes", {}),
            loop=d.get("loop", {}),
            idle_cpu=d.get("idle_cpu"),
            clock=d.get("clock"),
        )

    def served(self, station: str) -> float:
        return sum(v[0] for (st, _), v in self.typed.items() if st == station)

    def busy_seconds(self, station: str) -> float:
        return sum(v[1] for (st, _), v in self.typed.items() if st == station)


def snapshot(text: str, at: float) -> Snapshot:
    """Read the station metrics of one scrape."""
    snap = Snapshot(at=at)
    simple = {
        "surgecap_station_servers": snap.servers,
        "surgecap_station_queue_length": snap.queue,
        "surgecap_station_shed_total": snap.shed,
        "surgecap_station_threaded": snap.threaded,
    }
    typed = {
        "surgecap_station_served_total": 0,
        "surgecap_station_busy_seconds_total": 1,
        "surgecap_station_busy_seconds_squared_total": 2,
        "surgecap_station_busy_log_seconds_total": 3,
        "surgecap_station_busy_log_seconds_squared_total": 4,
    }
    cpu = {
        "surgecap_cpu_requests_total": 0,
        "surgecap_cpu_steps_total": 1,
        "surgecap_cpu_loop_seconds_total": 2,
        "surgecap_cpu_loop_seconds_squared_total": 3,
        "surgecap_cpu_thread_seconds_total": 4,
        "surgecap_cpu_thread_calls_total": 5,
        "surgecap_cpu_work_seconds_total": 6,
        "surgecap_cpu_work_requests_total": 7,
        "surgecap_cpu_resumes_total": 8,
        "surgecap_cpu_shed_requests_total": 9,
        "surgecap_cpu_shed_steps_total": 10,
        "surgecap_cpu_shed_loop_seconds_total": 11,
        "surgecap_cpu_shed_loop_seconds_squared_total": 12,
        "surgecap_cpu_shed_resumes_total": 13,
        "surgecap_cpu_resume_seconds_total": 14,
    }
    writer = {
        "surgecap_db_batches_total": "batches",
        "surgecap_db_batch_seconds_total": "batch_seconds",
        "surgecap_db_commit_seconds_total": "commit_seconds",
    }
    writes = {"surgecap_db_writes_total": 0, "surgecap_db_write_seconds_total": 1, "surgecap_db_write_seconds_squared_total": 2}
    loop = {
        "surgecap_loop_lag_seconds_total": "lag_seconds",
        "surgecap_loop_lag_samples_total": "lag_samples",
        "surgecap_connections_refused_total": "refused",
    }
    for name, labels, value in parse_prometheus(text):
        if name in writer:
            snap.writer[writer[name]] = value
            continue
        if name in loop:
            snap.loop[loop[name]] = value
            continue
        if name in writes and "request" in labels:
            snap.writes.setdefault(labels["request"], [0.0] * 3)[writes[name]] = value
            continue
        if name in cpu and "request" in labels:
            snap.cpu_typed.setdefault(labels["request"], [0.0] * CPU_FIELDS)[cpu[name]] = value
            continue
        station = labels.get("station")
        if name in simple and station is not None:
            simple[name][station] = value
        elif name in typed and station is not None and "request" in labels:
            snap.typed.setdefault((station, labels["request"]), [0.0, 0.0, 0.0, math.nan, math.nan])[typed[name]] = value
        elif name == "process_cpu_seconds_total":
            snap.cpu_seconds = value
        elif name == "surgecap_clock_seconds":
            snap.clock = value
    return snap


@dataclass(frozen=True)
class ServiceEstimate:
    """A station's measured service time for one request type between two scrapes."""

    station: str
    request: str
    n: int  # visits served
    mean: float  # seconds: the demand per visit, D = busy / n
    cv: float  # from the second moment
    utilization: float  # of the whole station by this request type: busy / (servers x elapsed)
    log_mean: float = math.nan  # mean of ln t, when the server publishes it
    log_var: float = math.nan  # variance of ln t

    def as_distribution(self, configured: dict[str, Any] | None) -> dict[str, Any]:
        """The overlay's distribution: the configured family, fitted to the measurements.

        Lognormal and gamma are fitted by maximum likelihood from the sums of
        ln t where the server publishes them (moments of heavy-tailed samples
        are too noisy: the sample variance of a lognormal with cv 1 needs tens of
        thousands of visits); otherwise by the mean and cv.  Exponential becomes
        gamma (its cv is fixed at 1); a spread under 5 % becomes a constant.
        """
        family = (configured or {}).get("dist", "gamma")
        if self.cv < 0.05:
            return {"dist": "constant", "value": _round(self.mean)}
        if family not in ("gamma", "lognormal"):
            family = "gamma"
        mean, cv = self.mean, self.cv
        if not math.isnan(self.log_mean) and self.log_var > 0:
            if family == "lognormal":
                mean = math.exp(self.log_mean + self.log_var / 2)
                cv = math.sqrt(math.expm1(self.log_var))
            else:  # gamma: the shape's maximum-likelihood estimate (Minka's closed form), the mean as measured
                s = math.log(self.mean) - self.log_mean
                if s > 0:
                    shape = (3 - s + math.sqrt((s - 3) ** 2 + 24 * s)) / (12 * s)
                    cv = 1 / math.sqrt(shape)
        return {"dist": family, "mean": _round(mean), "cv": round(cv, 3)}


def _round(seconds: float) -> str:
    return f"{seconds * 1000:.4g}ms"


def service_estimates(before: Snapshot, after: Snapshot) -> dict[tuple[str, str], ServiceEstimate]:
    """D = U / X for each (station, request type) served at least :data:`MIN_SAMPLES` times between the scrapes."""
    elapsed = after.at - before.at
    out: dict[tuple[str, str], ServiceEstimate] = {}
    for key, (n1, b1, q1, l1, ll1) in after.typed.items():
        n0, b0, q0, l0, ll0 = before.typed.get(key, [0.0, 0.0, 0.0, 0.0, 0.0])
        n, busy, sq = n1 - n0, b1 - b0, q1 - q0
        if n < MIN_SAMPLES or busy <= 0:
            continue
        mean = busy / n
        var = max(0.0, sq / n - mean * mean)
        log_mean = (l1 - l0) / n
        log_var = max(0.0, (ll1 - ll0) / n - log_mean * log_mean)
        servers = after.servers.get(key[0], 1.0) or 1.0
        util = busy / (servers * elapsed) if elapsed > 0 else math.nan
        out[key] = ServiceEstimate(key[0], key[1], int(n), mean, math.sqrt(var) / mean, util, log_mean, log_var)
    return out


@dataclass(frozen=True)
class CpuEstimate:
    """A request type's work on the server's processor between two scrapes."""

    request: str
    n: int  # requests
    own: float  # seconds per request: its loop steps and thread work
    thread: float  # seconds per request of that in worker threads
    shared: float  # seconds per request: its share of the CPU no request owns
    steps: int  # steps in the model: the measured loop steps per request, rounded, +1
    cv: float  # of the step time, from the loop steps' second moment
    utilization: float  # of one core by this request type (own + shared)
    wait: float = 0.0  # seconds per step: the processor's queueing at the calibration load
    locks: float = 0.0  # per request: worker-thread calls that give up the interpreter lock and take it back
    rho: float = 0.0  # the processor's utilization by all request types at the calibration load
    work: float = 0.0  # seconds per request of its own computation (part of ``own``; the server counts it apart)
    resumes: float = 0.0  # per request: steps that resumed it after it waited for a station (not in ``steps``: the model adds its own)
    resume: float = math.nan  # seconds of loop time per resume step, when the server times them apart

    @property
    def demand(self) -> float:
        return self.own + self.shared

    @property
    def step_mean(self) -> float:
        """Mean time of a step, the own computation left out.  Where the server times its resume steps apart, their
        measured time comes off and the rest is spread over the model's steps; else the time is spread over the
        model's steps and the measured resume steps alike.  (The model takes a resume step only for a visit that
        waits, as the server does, so its CPU time per request comes to the measured one when its waits do.)"""
        if not math.isnan(self.resume):
            return max(self.demand - self.work - self.resumes * self.resume, 0.0) / self.steps
        return (self.demand - self.work) / (self.steps + self.resumes)

    @property
    def resume_mean(self) -> float:
        """Mean time of a resume step: as timed, else a step's."""
        return self.step_mean if math.isnan(self.resume) else self.resume

    def as_work(self) -> dict[str, Any]:
        work: dict[str, Any] = {
            "steps": self.steps,
            "step": {"dist": "gamma", "mean": _round(self.step_mean), "cv": round(self.cv, 3)},
        }
        if self.locks > 0:
            work["locks"] = round(self.locks, 2)
        if self.work > 0:
            work["work"] = {"dist": "constant", "value": _round(self.work)}
        if not math.isnan(self.resume):
            work["resume"] = {"dist": "constant", "value": _round(self.resume)}
        return work


CPU_FIELDS = 15  # a request type's processor accounting (refserver.cpu): requests, steps, ..., and of them the shed ones'


def cpu_fields(acc: list[float]) -> list[float]:
    """A request type's accounting padded to :data:`CPU_FIELDS` (a server without the later counters reads them as 0)."""
    return [*acc, *[0.0] * CPU_FIELDS][:CPU_FIELDS]


def cpu_estimates(before: Snapshot, after: Snapshot, request_types: list[str], background: float = 0.0) -> dict[str, CpuEstimate]:
    """Per modelled request type (served at least :data:`MIN_SAMPLES` times): its CPU work, see the module text.

    ``background`` (CPU seconds per second the server uses with no load) is
    not shared out over the requests: the model keeps it apart.  Empty when
    the server publishes no CPU accounting.
    """
    elapsed = after.at - before.at
    if after.cpu_seconds is None or before.cpu_seconds is None or not after.cpu_typed or elapsed <= 0:
        return {}
    total = after.cpu_seconds - before.cpu_seconds
    delta = {
        rt: [a - b for a, b in zip(cpu_fields(acc), cpu_fields(before.cpu_typed.get(rt, [])), strict=True)]
        for rt, acc in after.cpu_typed.items()
    }
    kept = {rt: d for rt, d in delta.items() if rt in request_types and d[0] - d[9] >= MIN_SAMPLES}
    if not kept:
        return {}
    owned = sum(d[2] + d[4] for d in kept.values())
    shared = max(0.0, total - owned - background * elapsed) / sum(d[0] for d in kept.values())
    out: dict[str, CpuEstimate] = {}
    for rt, (
        n,
        steps,
        loop,
        squares,
        thread,
        calls,
        worked_s,
        worked_n,
        resumes,
        shed,
        shed_steps,
        shed_loop,
        shed_sq,
        shed_resumes,
        resume_sum,
    ) in kept.items():
        # the requests served: those a station's admission control turned away (a few steps each, or a whole station's
        # visit when the second station shed them) are left out; the model walks their route as far as they got
        served = n - shed
        spent = shed_loop + shed * shared  # CPU seconds of the requests turned away
        loop, steps, squares = max(0.0, loop - shed_loop), max(0.0, steps - shed_steps), max(0.0, squares - shed_sq)
        # a resume step's own CPU time, when the server times them (the shed requests' resume steps among them)
        resume = resume_sum / resumes if resumes >= MIN_SAMPLES and resume_sum > 0 else math.nan
        resumes = max(0.0, resumes - shed_resumes)
        own = (loop + thread) / served
        w = worked_s / worked_n if worked_n > 0 else 0.0  # per request that did it (the shed ones at a later station too)
        done = min(worked_n, served)
        if done > 0 and steps > 0:
            # the steps without the own computation: each of done steps held m + w, so take off w^2 + 2 m w from the squares
            loop = max(0.0, loop - done * w)
            m = loop / steps
            squares = max(loop * m, squares - done * (w * w + 2 * m * w))
        per_step = loop / steps if steps > 0 else 0.0
        cv = math.sqrt(max(0.0, squares / steps / per_step**2 - 1)) if per_step > 0 else 1.0
        out[rt] = CpuEstimate(
            rt,
            int(served),
            own,
            thread / served,
            shared,
            max(1, round((steps - resumes) / served)) + 1,
            min(max(cv, 0.05), 4.0),
            (served * (own + shared) + spent) / elapsed,
            locks=calls / served,
            work=w * done / served,
            resumes=resumes / served,
            resume=resume,
        )
    # the processor's queueing at this load, M/G/1 (Pollaczek-Khinchine): W = lambda E[S^2] / (2 (1 - rho)), per step
    lam = sum(e.n * (e.steps + e.resumes) for e in out.values()) / elapsed
    rho = min(background + sum(e.utilization for e in out.values()), 0.95)
    second = sum(e.n * (e.steps * (1 + e.cv**2) * e.step_mean**2 + e.work**2 + 2 * e.work * e.step_mean) for e in out.values()) / max(
        1.0, sum(e.n * (e.steps + e.resumes) for e in out.values())
    )
    wait = lam * second / (2 * (1 - rho))
    return {rt: dataclasses.replace(e, wait=wait, rho=rho) for rt, e in out.items()}


LAW_APART = 0.03  # utilization: phases closer than this to one already in the law add no point of their own


def busy_between(a: Snapshot, b: Snapshot) -> float:
    """The processor's utilization between two scrapes: the process's CPU seconds over the elapsed time."""
    return ((b.cpu_seconds or 0.0) - (a.cpu_seconds or 0.0)) / max(b.at - a.at, 1e-9)


STALL = 5.0  # a scrape interval whose flushes took this many times the phase's median interval's, per flush, held a disk stall
STALL_FLOOR = 0.002  # seconds a flush: an interval whose flushes took less than this on average is never counted as a stall
STALL_INTERVALS = 6  # scrape intervals with flushes: a phase with fewer has no median to judge a stall against


@dataclass(frozen=True)
class Stall:
    """A scrape interval in which the disk's flushes stalled: from ``start`` to ``end`` (seconds of the load's own clock),
    ``flush`` seconds per flush against the phase's median interval's ``typical``."""

    start: float
    end: float
    flush: float
    typical: float


def disk_stalls(scrapes: list[Snapshot]) -> list[Stall]:
    """The scrape intervals in which the database's flushes stalled.

    An interval stalls when its mean flush (the writer's commit time per
    batch) is at least :data:`STALL` times the median interval's and above
    :data:`STALL_FLOOR`.  On the development machine's disk a flush now and
    then takes hundreds of milliseconds, hundreds of times the usual, and the
    writes queued behind it wait as long; at a low load one such flush moves
    a second's mean flush many times over (docs/calibration.md).  None for
    fewer than :data:`STALL_INTERVALS` intervals with flushes.
    """
    intervals: list[tuple[Snapshot, Snapshot, float]] = []
    for a, b in zip(scrapes, scrapes[1:], strict=False):
        batches = b.writer.get("batches", 0.0) - a.writer.get("batches", 0.0)
        if batches > 0:
            intervals.append((a, b, max(b.writer.get("commit_seconds", 0.0) - a.writer.get("commit_seconds", 0.0), 0.0) / batches))
    if len(intervals) < STALL_INTERVALS:
        return []
    typical = statistics.median(f for _, _, f in intervals)
    return [Stall(a.at, b.at, f, typical) for a, b, f in intervals if f >= max(STALL * typical, STALL_FLOOR)]


def without_stalls(before: Snapshot, after: Snapshot, scrapes: list[Snapshot]) -> tuple[Snapshot, list[Stall]]:
    """``after`` with what the stalled intervals (:func:`disk_stalls`) counted taken out, and the stalls.

    For the station and database figures only (``typed``, ``writer``,
    ``writes`` and the elapsed time): what :func:`service_estimates` and
    :func:`disk_waits` read between ``before`` and the returned snapshot.  Its
    processor figures are left out (None), so that nothing reads the
    processor's time over a stretch it was not measured over.  ``after``
    itself when nothing stalled.
    """
    stalls = disk_stalls(scrapes)
    if not stalls:
        return after, []
    by_start = {s.start for s in stalls}
    typed = {k: list(v) for k, v in after.typed.items()}
    writer = dict(after.writer)
    writes = {k: list(v) for k, v in after.writes.items()}
    elapsed = 0.0
    for a, b in zip(scrapes, scrapes[1:], strict=False):
        if a.at not in by_start:
            continue
        elapsed += b.at - a.at
        for key, v in b.typed.items():
            typed[key] = _less(typed.get(key, []), v, a.typed.get(key, []))
        for name, x in b.writer.items():
            writer[name] = writer.get(name, 0.0) - (x - a.writer.get(name, 0.0))
        for rt, v in b.writes.items():
            writes[rt] = _less(writes.get(rt, []), v, a.writes.get(rt, []))
    clean = Snapshot(
        at=after.at - elapsed,
        servers=after.servers,
        queue=after.queue,
        shed=after.shed,
        typed=typed,
        threaded=after.threaded,
        writer=writer,
        writes=writes,
        loop=after.loop,
    )
    return clean, stalls


def _less(total: list[float], upto: list[float], since: list[float]) -> list[float]:
    """Counters ``total`` less what they counted between two scrapes (``since`` then ``upto``; missing ones are zeros)."""
    n = max(len(total), len(upto), len(since))
    pad = [0.0] * n
    return [t - (u - s) for t, u, s in zip([*total, *pad][:n], [*upto, *pad][:n], [*since, *pad][:n], strict=True)]


def disk_waits(scenario: Scenario, before: Snapshot, after: Snapshot) -> dict[str, float]:
    """Seconds per visit of the db station that each request type spent on the disk's flush, between the scrapes.

    The reference server runs a request's database write inside its db
    station: queued to the writer thread, written in a batch with others, and
    committed with the disk's flush.  The flush is the disk's part of the
    visit, the part that moves when the disk's speed does: the writer's mean
    commit time per batch, once for each write the visit made.  (The rest of
    the write's time, its wait for the writer and the writer's CPU time, is
    the load's and the processor's, which the model has of its own.)  Request
    types whose write runs outside the station (after a later storage
    station), and those with fewer than :data:`MIN_SAMPLES` visits, are left out.
    """
    batches = after.writer.get("batches", 0.0) - before.writer.get("batches", 0.0)
    if batches <= 0:
        return {}
    commit = max(after.writer.get("commit_seconds", 0.0) - before.writer.get("commit_seconds", 0.0), 0.0) / batches
    out: dict[str, float] = {}
    for step in scenario.journey:
        rt, route = step.request_type, step.stations
        if DATABASE not in route or STORAGE in route[route.index(DATABASE) + 1 :] or rt in out:
            continue
        visits = after.typed.get((DATABASE, rt), [0.0])[0] - before.typed.get((DATABASE, rt), [0.0])[0]
        w1, w0 = after.writes.get(rt), before.writes.get(rt, [0.0, 0.0, 0.0])
        if w1 is None or visits < MIN_SAMPLES:
            continue
        out[rt] = commit * max(w1[0] - w0[0], 0.0) / visits
    return out


def cpu_law(reference: tuple[dict[str, CpuEstimate], float], others: list[tuple[dict[str, CpuEstimate], float]]) -> list[dict[str, float]]:
    """How a request's CPU time changes with the processor's utilization, as ``system.cpu.law`` points.

    ``reference`` is the phase the step times were taken from (its estimates and
    utilization), ``others`` the calibration's other phases.  Each phase gives a
    point at its utilization: its loop steps' CPU time (per step: the CPU time
    per request without the request's own computation, over its steps and
    resume steps) over the reference's, and its own computation's (per request)
    likewise, both for the reference phase's mix of requests.
    The two are kept apart because they move differently: on the reference
    server a busier processor made the loop's short steps much cheaper (batched
    wake-ups, warm caches) and a long fixed computation only a little
    (docs/validation.md).  A phase within :data:`LAW_APART` of a point already
    in the law adds none.  Returns the points in increasing utilization (one,
    the reference, when nothing else was measured).
    """
    ref, u_ref = reference

    def costs(est: dict[str, CpuEstimate]) -> tuple[float, float]:
        both = [rt for rt in ref if rt in est]
        # per step, for the reference phase's steps and resume steps (a busier phase has more resume steps per
        # request, which the model adds itself)
        steps = sum(ref[rt].n * (ref[rt].steps * est[rt].step_mean + ref[rt].resumes * est[rt].resume_mean) for rt in both)
        own = sum(ref[rt].n * est[rt].work for rt in both)
        return steps, own

    s_ref, w_ref = costs(ref)
    points = [{"at": round(u_ref, 3), "steps": 1.0, **({"work": 1.0} if w_ref > 0 else {})}]
    for est, u in others:
        s, w = costs(est)
        if s <= 0 or s_ref <= 0 or any(abs(u - p["at"]) < LAW_APART for p in points):
            continue
        point = {"at": round(u, 3), "steps": round(s / s_ref, 4)}
        if w_ref > 0:
            if w <= 0:
                continue  # the phase did none of the computation the reference did: no point for it
            point["work"] = round(w / w_ref, 4)
        points.append(point)
    return sorted(points, key=lambda p: p["at"])


def speed_index(work: dict[str, Any], now: dict[str, CpuEstimate]) -> float | None:
    """The machine's speed now against calibration: the CPU time of the same requests, now over then.

    ``work`` is a calibrated overlay's ``system.cpu.work`` (per request type
    its steps and mean step time: the CPU time per request at the reference
    load), ``now`` the same load measured again.  Each request type is weighed
    by how often it was served now, so that the mix's chance variation in a
    short run cancels: sum n c_now / sum n c_calibrated over the types in both.
    None when they share no request type.
    """
    from models.units import parse_duration

    num = den = 0.0
    for rt, est in now.items():
        w = work.get(rt)
        if not isinstance(w, dict) or not isinstance(w.get("step"), dict):
            continue
        own = w.get("work")
        then = float(w.get("steps", 1)) * parse_duration(w["step"]["mean"])
        if isinstance(own, dict):
            then += parse_duration(own.get("value", own.get("mean", 0.0)))
        if then > 0:
            num += est.n * est.demand
            den += est.n * then
    return num / den if den > 0 else None


def work_speed(work: dict[str, Any], before: Snapshot, after: Snapshot) -> float | None:
    """The machine's speed between two scrapes from the server's fixed computation (``reference_server.work``): its CPU
    time per request then over the calibrated one (``work``: a calibrated overlay's ``system.cpu.work``), weighed by
    how often each request type did it.  None when no request did any, or the calibration has none."""
    from models.units import parse_duration

    num = den = 0.0
    for rt, w in work.items():
        own = w.get("work") if isinstance(w, dict) else None
        if not isinstance(own, dict):
            continue
        then = parse_duration(own.get("value", own.get("mean", 0.0)))
        now_acc, was_acc = after.cpu_typed.get(rt, []), before.cpu_typed.get(rt, [])
        if then <= 0 or len(now_acc) < 8:
            continue
        was = [*was_acc, *[0.0] * 8][:8]
        seconds, done = now_acc[6] - was[6], now_acc[7] - was[7]
        if done > 0:
            num += seconds
            den += done * then
    return num / den if den > 0 else None


def speed_trace(
    work: dict[str, Any], scrapes: list[Snapshot], law: Callable[[float], float] | None = None, every: float = 0.0
) -> dict[str, Any] | None:
    """The machine's speed over a run, interval by interval between its scrapes, as a ``system.cpu.trace`` overlay.

    Each interval's speed is :func:`work_speed` over it, divided by what the
    speedup ``law`` gives at that interval's CPU use (the model applies the law
    itself), relative to the run's average, weighed by the fixed work done in
    each interval, so that the model's total CPU time stays the run's.  An
    interval without fixed work keeps the average.  None with fewer than two
    intervals or no fixed work at all.  The intervals are laid on an even grid from
    time 0 (the run's start, where the scrapes' ``at`` counts from); with
    ``every``, scrapes closer together than that are merged into one interval.
    """
    if every > 0 and scrapes:
        kept = [scrapes[0]]
        for snap in scrapes[1:]:
            if snap.at - kept[-1].at >= 0.9 * every:
                kept.append(snap)
        scrapes = kept
    if len(scrapes) < 3:
        return None
    speeds: list[float | None] = []
    weights: list[float] = []
    for a, b in zip(scrapes, scrapes[1:], strict=False):
        found = work_speed(work, a, b) if b.at > a.at else None
        if found is not None and law is not None and a.cpu_seconds is not None and b.cpu_seconds is not None:
            found /= law((b.cpu_seconds - a.cpu_seconds) / (b.at - a.at))
        speeds.append(found)
        weights.append(_fixed_done(work, a, b))
    known = [(x, w) for x, w in zip(speeds, weights, strict=True) if x is not None and w > 0]
    if not known:
        return None
    mean = sum(x * w for x, w in known) / sum(w for _, w in known)
    # on an even grid from the run's start (a missed scrape makes one interval twice as long)
    gaps = sorted(b.at - a.at for a, b in zip(scrapes, scrapes[1:], strict=False))
    width = gaps[len(gaps) // 2]
    if width <= 0:
        return None
    factors = []
    j, cell = 0, 0
    while (cell + 0.5) * width < scrapes[-1].at:
        mid = (cell + 0.5) * width
        while j < len(speeds) - 1 and scrapes[j + 1].at <= mid:
            j += 1
        x = speeds[j]
        factors.append(round(x / mean, 4) if x is not None else 1.0)
        cell += 1
    return {"every": round(width, 4), "factors": factors} if factors else None


def finer_trace(trace: dict[str, Any], work: dict[str, Any], scrapes: list[Snapshot], speed: dict[str, Any], parts: int) -> dict[str, Any]:
    """``trace`` (:func:`speed_trace`'s) with each interval cut into ``parts`` that follow the server's speed log.

    ``speed`` is the server's log of its own computation in short buckets of
    its clock (``/metrics/speed``: ``bucket`` seconds, ``work`` rows of [bucket
    start, request type, CPU seconds, requests]); the scrapes' ``clock`` (the
    server's clock at each) places the buckets on the load's clock (the median
    of clock - at), each bucket's work shared among the parts it overlaps.  A
    part's factor is its interval's times the part's speed over the
    interval's, both read from the log (CPU seconds over the requests times
    their calibrated computation, ``work``), so the interval's own factor, its
    law divided out and its normalization, stays.  A part without work keeps
    its interval's factor.  ``trace`` unchanged when the scrapes carry no
    clock, the log's buckets are longer than a part, or ``parts`` < 2.
    """
    import statistics

    from models.units import parse_duration

    offsets = [snap.clock - snap.at for snap in scrapes if snap.clock is not None]
    bucket = speed.get("bucket")
    rows = speed.get("work")
    if parts < 2 or not offsets or not isinstance(bucket, (int, float)) or not isinstance(rows, list):
        return trace
    every = float(trace["every"])
    width = every / parts
    if not 0 < bucket <= width + 1e-9:
        return trace
    offset = statistics.median(offsets)
    then: dict[str, float] = {}
    for rt, w in work.items():
        own = w.get("work") if isinstance(w, dict) else None
        if isinstance(own, dict):
            then[rt] = parse_duration(own.get("value", own.get("mean", 0.0)))
    cells: dict[int, list[float]] = {}
    for row in rows:
        if not isinstance(row, list) or len(row) != 4:
            continue
        start, rt, seconds, n = row
        ref = then.get(rt) if isinstance(rt, str) else None
        if not ref or not isinstance(start, (int, float)) or not isinstance(seconds, (int, float)) or not isinstance(n, (int, float)):
            continue
        if n <= 0 or seconds < 0:
            continue
        a = float(start) - offset
        k = math.floor(a / width)
        while k * width < a + bucket:  # the parts this bucket overlaps, each its share
            share = (min((k + 1) * width, a + bucket) - max(k * width, a)) / bucket
            if share > 0:
                cell = cells.setdefault(k, [0.0, 0.0])
                cell[0] += share * seconds
                cell[1] += share * n * ref
            k += 1
    factors: list[float] = []
    for i, f in enumerate(trace["factors"]):
        mine = [cells.get(i * parts + j) for j in range(parts)]
        done = sum(c[1] for c in mine if c)
        whole = sum(c[0] for c in mine if c) / done if done > 0 else 0.0
        for c in mine:
            part = f * (c[0] / c[1]) / whole if whole > 0 and c and c[1] > 0 else f
            factors.append(round(min(max(part, 0.1), 10.0), 4))
    return {"every": round(width, 6), "factors": factors}


def _fixed_done(work: dict[str, Any], a: Snapshot, b: Snapshot) -> float:
    """Requests that did fixed work between two scrapes."""
    done = 0.0
    for rt, w in work.items():
        if isinstance(w, dict) and isinstance(w.get("work"), dict):
            now, was = b.cpu_typed.get(rt, []), a.cpu_typed.get(rt, [])
            if len(now) >= 8:
                done += now[7] - ([*was, *[0.0] * 8][7])
    return done


def scaled_processor(cpu: dict[str, Any], speed: float) -> dict[str, Any]:
    """A calibrated ``system.cpu`` overlay section for a machine ``speed`` times as slow (every CPU time times ``speed``).

    Step times and the background scale by ``speed``; so do the utilizations
    they were measured at, as the same load keeps a slower processor busier;
    and the utilization law keeps its shape along them (the step-time factor
    1 - k (U - U_work) at U = speed x u becomes 1 - (k / speed) (U - speed x U_work);
    a ``law``'s points move to speed x their utilization).
    """
    import copy

    from models.units import parse_duration

    out = copy.deepcopy(cpu)
    for w in out.get("work", {}).values():
        if isinstance(w, dict) and isinstance(w.get("step"), dict):
            w["step"]["mean"] = _round(parse_duration(w["step"]["mean"]) * speed)
        for part in ("work", "resume"):
            for key in ("value", "mean"):  # a constant, or a distribution's mean (its cv stays)
                if isinstance(w, dict) and isinstance(w.get(part), dict) and key in w[part]:
                    w[part][key] = _round(parse_duration(w[part][key]) * speed)
    for key, top in (("measured_at", 0.99), ("low_at", 0.99), ("background", 0.5)):
        if key in out:
            out[key] = round(min(float(out[key]) * speed, top), 4)
    if "low_at" in out and "measured_at" in out:
        out["low_at"] = min(out["low_at"], out["measured_at"])
    if "speedup" in out:
        out["speedup"] = round(min(float(out["speedup"]) / speed, 1.5), 4)
    if isinstance(out.get("law"), list):
        law: list[dict[str, Any]] = []
        for point in out["law"]:
            at = round(min(float(point["at"]) * speed, 0.99), 4)
            if not law or at > law[-1]["at"]:  # a point pushed past the top by a slower machine joins the one there
                law.append({**point, "at": at})
        out["law"] = law if len(law) >= 2 else None
        if out["law"] is None:
            del out["law"]
    return out


def held_services(
    scenario: Scenario, estimates: dict[tuple[str, str], ServiceEstimate], cpu: dict[str, CpuEstimate], threads: set[str]
) -> dict[tuple[str, str], ServiceEstimate]:
    """Station demands for a model with ``system.cpu``: what the processor adds inside a visit taken out.

    A server's measured busy time of a visit includes the wait for the event
    loop to resume the request (and, in a threaded station, the worker thread's
    CPU time).  The model holds the station for those itself (see
    ``models.routes.cpu_legs``), so each is taken off the measured demand at
    the calibration load: the step's queueing ``wait`` once, and for the first
    threaded station of a route the thread's CPU time.  The thread's waits for
    the interpreter lock are left in: a counted take's Pollaczek-Khinchine
    residual each can add up to more than the whole measured visit
    (docs/validation.md), so the model's lock takes are its own addition.  The request's
    own computation comes off its first station, where the model adds it.
    Times are scaled, keeping the measured spread; never below a tenth of the
    measurement.
    """
    out = dict(estimates)
    for step in scenario.journey:
        rt = step.request_type
        e = cpu.get(rt)
        if e is None:
            continue
        first_thread = next((st for st in step.stations if st in threads), None)
        first_held = next((st for st in step.stations if st != REGISTRY), None)
        for st in step.stations:
            est = estimates.get((st, rt))
            if est is None or st == REGISTRY:
                continue
            cut = e.wait + (e.thread if st == first_thread else 0.0)
            if st == first_held:
                cut += e.work  # the own computation runs inside the first station: the model adds it there
            mean = max(est.mean - cut, est.mean / 10)
            out[(st, rt)] = dataclasses.replace(est, mean=mean, log_mean=est.log_mean + math.log(mean / est.mean))
    return out


def overheads(
    scenario: Scenario, measured: RunResult, estimates: dict[tuple[str, str], ServiceEstimate], cpu: dict[str, CpuEstimate] | None = None
) -> dict[str, float]:
    """Per request type: mean measured latency minus the sum of its stations' demands (never below 0).

    With ``cpu`` the request's processor time and its low-load queueing for the
    processor come off too: the model's ``system.cpu`` adds them back.  Only
    request types whose every station has an estimate are included: the rest
    cannot be split into stations and overhead.
    """
    out: dict[str, float] = {}
    for step in scenario.journey:
        rt = step.request_type
        if rt in out or rt not in measured.requests:
            continue
        hist = measured.requests[rt].total_latency
        if hist.count < MIN_SAMPLES:
            continue
        demands = [estimates.get((st, rt)) for st in step.stations]
        if any(d is None for d in demands):
            continue
        processor = cpu.get(rt) if cpu else None
        on_cpu = processor.demand + processor.steps * processor.wait if processor is not None else 0.0
        out[rt] = max(0.0, hist.mean - sum(d.mean for d in demands if d is not None) - on_cpu)
    return out


def fitted_overheads(low_file: str | Path, overlay: dict[str, Any], measured: RunResult, replications: int = 3) -> dict[str, float]:
    """Per request type: the constant delay outside the stations and the processor that brings the model's median
    latency at the calibration load (``low_file``, with ``overlay`` and no overhead) to the measured median.

    The difference of means (:func:`overheads`) takes the processor's low-load
    queueing off by Pollaczek-Khinchine; where one long step dominates the
    processor (a key stretch) that wait is a few requests' long wait, and the
    model's own wait, batches and all, is not that formula's: the means can
    agree while the model's median sits below the measured one.  So the model
    runs the calibration load itself and the medians are matched.  Never below
    0; request types with too few requests on either side keep none.
    """
    from models.histogram import Histogram
    from models.loader import load_scenario
    from models.simulate import simulate

    bare = copy.deepcopy(overlay)
    bare.get("system", {}).pop("overhead", None)
    runs = simulate(load_scenario(low_file, overlay=bare), replications=replications)
    out: dict[str, float] = {}
    for rt, series in measured.requests.items():
        hist = series.total_latency
        pooled = Histogram.merged(r.requests[rt].total_latency for r in runs if rt in r.requests)
        if hist.count < MIN_SAMPLES or pooled.count < MIN_SAMPLES * replications:
            continue
        out[rt] = max(0.0, hist.percentile(50) - pooled.percentile(50))
    return out


def calibration_overlay(
    scenario: Scenario,
    estimates: dict[tuple[str, str], ServiceEstimate],
    overhead: dict[str, float],
    cpu: dict[str, CpuEstimate] | None = None,
    threads: set[str] | None = None,
    disk: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A scenario overlay (YAML-ready) with the measured service times, registry latency, overheads and processor, and
    of the db station's service times the database writes' part (``disk``, from :func:`disk_waits`)."""
    system: dict[str, Any] = {}
    if cpu:
        system["cpu"] = {"cores": 1, "threads": sorted(threads or []), "work": {rt: est.as_work() for rt, est in sorted(cpu.items())}}
    for (station, rt), est in sorted(estimates.items()):
        if station == REGISTRY:
            reg = scenario.system.registry
            if reg is not None:
                system.setdefault("registry", {})["latency"] = est.as_distribution(reg.latency.model_dump(by_alias=True))
            continue
        st = scenario.system.stations.get(station)
        if st is None or rt not in scenario.request_types:
            continue
        configured = st.service_for(rt)
        dist = est.as_distribution(configured.model_dump(by_alias=True) if configured is not None else None)
        system.setdefault("stations", {}).setdefault(station, {}).setdefault("service", {})[rt] = dist
        if station == DATABASE and disk and rt in disk:
            system["stations"][station].setdefault("disk", {})[rt] = _round(disk[rt])
    if overhead:
        system["overhead"] = {rt: {"dist": "constant", "value": _round(v)} for rt, v in overhead.items()}
    return {"system": system} if system else {}


def station_series(snaps: list[Snapshot], start: float, interval: float, n: int) -> dict[str, StationSeries]:
    """Per-interval station series from scrapes taken about every ``interval`` from monotonic ``start``.

    Busy and capacity server-seconds come from counter differences between
    consecutive scrapes, attributed to the interval holding the midpoint of the
    two; the queue is the length seen at each scrape.  Arrivals are the
    requests served plus those shed.
    """
    out: dict[str, StationSeries] = {}
    seen: dict[tuple[str, int], int] = {}  # scrapes per (station, interval), for the queue's mean
    for prev, cur in zip(snaps, snaps[1:], strict=False):
        k = int(((prev.at + cur.at) / 2 - start) // interval)
        if not 0 <= k < n:
            continue
        dt = cur.at - prev.at
        for name, servers in cur.servers.items():
            s = out.setdefault(name, StationSeries.empty(n))
            s.busy[k] += cur.busy_seconds(name) - prev.busy_seconds(name)
            s.capacity[k] += servers * dt
            served = cur.served(name) - prev.served(name)
            shed = cur.shed.get(name, 0.0) - prev.shed.get(name, 0.0)
            s.arrivals[k] += int(served + shed)
            s.shed[k] += int(shed)
            q = cur.queue.get(name, 0.0)
            m = seen[(name, k)] = seen.get((name, k), 0) + 1
            s.queue_mean[k] += (q - s.queue_mean[k]) / m
            s.queue_max[k] = max(s.queue_max[k], int(q))
        if prev.cpu_seconds is not None and cur.cpu_seconds is not None and cur.cpu_typed:
            # the server's processor (one core: the event loop), for the model's system.cpu; arrivals: requests timed
            s = out.setdefault(CPU, StationSeries.empty(n))
            s.busy[k] += cur.cpu_seconds - prev.cpu_seconds
            s.capacity[k] += dt
            s.arrivals[k] += int(sum(v[0] for v in cur.cpu_typed.values()) - sum(v[0] for v in prev.cpu_typed.values()))
    return out


def steady_scenario(
    raw: dict[str, Any], name: str, rate: float, duration: float, compress: float | None = None, everyone: bool = False
) -> dict[str, Any]:
    """A scenario (as YAML data) for one steady load level: ``rate`` arrivals/s for ``duration`` seconds.

    The journey and system are the scenario's; capacity changes and reported
    figures are dropped (they belong to the full day).  Think times and
    backoffs are compressed so that the journey's mean think time is a
    twentieth of the run, unless ``compress`` is given; results are kept in
    twelve intervals.  ``everyone`` makes every registrant go on to every step
    (for calibration: each request type then gets as many samples as the first).
    """
    from models.loader import parse_scenario

    base = parse_scenario(_dump(raw), str(raw.get("name", "scenario")))
    if compress is None:
        think = sum(step.think.mean for step in base.journey)
        compress = max(1.0, think / (duration / 20))
    out = {k: v for k, v in raw.items() if k not in ("reported", "arrivals", "horizon", "run", "name", "description")}
    out["name"] = name
    out["description"] = f"{raw.get('name', 'scenario')} at a steady {rate:.4g} arrivals/s for {duration:g}s"
    out["horizon"] = float(duration)
    out["arrivals"] = {"shape": "constant", "rate": float(rate)}
    out["system"] = {k: v for k, v in raw.get("system", {}).items() if k != "changes"}
    out["run"] = {"compress": float(compress), "interval": float(duration) / 12}
    if everyone:
        out["journey"] = [{**step, "proceed": 1.0} for step in raw.get("journey", [])]
    return out


def _dump(data: dict[str, Any]) -> str:
    import yaml

    return str(yaml.safe_dump(data, sort_keys=False))

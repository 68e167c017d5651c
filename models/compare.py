"""Comparing the model with a measured run: one check per metric, with a verdict.

Both sides are :class:`~models.results.RunResult` of the same scenario slice.
The model side is a list of replications: replication 0 runs the load test's
own arrival trace and registrants (same seed), so counts, rates and
utilization are compared with it; latency percentiles pool every replication
(in a validation each replays that same run's arrivals and registrants and
differs only in the model's own draws: service times, steps), and the spread
of the replications gives the model's band.

Tolerances (:class:`~models.scenario.Tolerances`): relative for throughput,
funnel counts, latency percentiles and queue growth; absolute for utilization
and for error, shed and abandonment rates.

A measured level is one run of a given length, and its figures carry that
run's sampling noise: near the knee one 60 s level's p95 moves by more than
±10 % between runs of the same system.  Each judged check therefore carries a
``margin``, the 95 % interval of the difference between the model's figure
and one run's, from the spread of the model's replications (Student's t on
their standard deviation; a single replication against one run: √2 of it, a
figure pooled over R replications: √(1 + 1/R); a percentile also its
histogram's resolution).  Three verdicts: ``pass`` (within the tolerance),
``noise`` (outside it by less than the margin: this run cannot tell the
model's miss from its own noise) and ``fail`` (outside the tolerance by more
than the margin).  A level fails on a ``fail``; the ``noise`` checks are
counted and shown, so the strict reading stays in view.  A figure with fewer than
``min_samples`` requests on either side is shown but not judged (its sampling
error alone can exceed the tolerance).  At an overload level (above 1.0) the
latency checks give way to the shed and refusal rates, the queue growth (while
the measured queue grows: a queue held at its cap has stopped) and the
requests sent per registrant (retry amplification).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from models.histogram import MAX_RELATIVE_ERROR, Histogram
from models.results import RequestSeries, RunResult, StationSeries, StepSeries
from models.scenario import CPU, Tolerances

__all__ = ["Check", "compare", "chance", "queue_growth", "REFUSED", "station_subject", "CPU_SUBJECT"]

REFUSED = ("full", "rate_limited", "quota")  # refused at once by admission control or the registry


def station_subject(name: str) -> str:
    """The subject of a station's checks."""
    return f"station {name}"


CPU_SUBJECT = station_subject(CPU)  # the server's processor


@dataclass(frozen=True)
class Check:
    """One metric of one subject: the model's figure, the measured one, and the verdict."""

    subject: str  # a request type, "step <name>" or "station <name>"
    metric: str
    model: float
    measured: float
    tolerance: float | None  # None: shown, not judged
    relative: bool
    band: tuple[float, float] | None = None  # the model's 95 % band over replications
    note: str = ""
    margin: float = 0.0  # the sampling noise of the difference (95 %), in the error's units; 0: not estimated

    @property
    def error(self) -> float:
        """Relative (model / measured - 1) or absolute (model - measured) difference."""
        if self.relative:
            if self.measured == 0:
                return 0.0 if self.model == 0 else math.inf
            return self.model / self.measured - 1.0
        return self.model - self.measured

    @property
    def verdict(self) -> str:
        if self.tolerance is None:
            return "info"
        if math.isnan(self.model) or math.isnan(self.measured):
            return "info"
        miss = abs(self.error)
        if miss <= self.tolerance + 1e-12:
            return "pass"
        return "noise" if miss <= self.tolerance + self.margin + 1e-12 else "fail"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "error": self.error, "verdict": self.verdict}


def _rate(num: int, den: int) -> float:
    return num / den if den > 0 else math.nan


def _failed(r: RunResult, rt: str, reasons: tuple[str, ...] | None = None) -> int:
    series = r.requests[rt]
    return sum(sum(c) for reason, c in series.failed.items() if reasons is None or reason in reasons)


def _spread(values: list[float]) -> tuple[int, float, float, float] | None:
    """The replications' finite values: how many, their mean, standard deviation and Student's t (95 %, two-sided)
    for that many; None with fewer than two."""
    xs = [v for v in values if not math.isnan(v) and not math.isinf(v)]
    if len(xs) < 2:
        return None
    from models.simulate import t_quantile

    m = sum(xs) / len(xs)
    return len(xs), m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)), t_quantile(len(xs) - 1)


def _band(values: list[float]) -> tuple[float, float] | None:
    spread = _spread(values)
    if spread is None:
        return None
    _n, m, sd, t = spread
    return (m - t * sd, m + t * sd)  # where a single run of the model falls, 95 %


def _margin(values: list[float], relative_to: float | None = None, pooled: bool = False, quantized: bool = False) -> float:
    """The 95 % interval of (model's figure − one measured run's) from the replications' values, in the error's units:
    absolute, or relative to the measured figure ``relative_to``.

    The measured run is taken to scatter as one replication does (same
    length, same arrivals: the replications replay them).  The model's figure
    is one replication (counts, rates, utilization: √2 × the replications'
    standard deviation) or pooled over all of them (percentiles: √(1 + 1/R));
    a percentile adds both sides' histogram resolution.  0 with fewer than
    three replications (no spread worth the name).
    """
    spread = _spread(values)
    if spread is None or spread[0] < 3:
        return 0.0
    n, _m, sd, t = spread
    half = t * sd * math.sqrt(1 + 1 / n if pooled else 2.0)
    if relative_to is not None:
        if relative_to == 0 or math.isnan(relative_to):
            return 0.0
        half /= abs(relative_to)
    if quantized:
        half = math.hypot(half, 2 * MAX_RELATIVE_ERROR)
    return half


FILLED = 0.9  # a queue at this share of its level's highest interval mean has stopped growing (its cap, or the level's end)


PLATEAU = 3  # intervals at least: a queue held this long near its highest has filled


def filling(r: RunResult, station: str) -> int:
    """How many intervals a station's queue was growing: up to and including the first whose mean queue reaches
    :data:`FILLED` of the highest, when it stays there to the level's end for :data:`PLATEAU` intervals or more
    (at least two); else every interval.  A queue held at its cap (past the knee the server sheds beyond it)
    stops growing when full; the slope over the whole level would say when it got there, not how fast."""
    s = r.stations.get(station)
    if s is None or not s.queue_mean:
        return 0
    qs = s.queue_mean
    top = max(qs)
    first = next(k for k, q in enumerate(qs) if q >= FILLED * top)
    if len(qs) - first < PLATEAU or any(q < FILLED * top for q in qs[first:]):
        return len(qs)
    return max(first + 1, 2)


def queue_growth(r: RunResult, station: str, upto: int | None = None) -> float:
    """Requests per second by which a station's queue grew: the slope of its per-interval mean queue (over the first
    ``upto`` intervals; all by default)."""
    s = r.stations.get(station)
    if s is None or len(s.queue_mean[:upto]) < 2:
        return math.nan
    ys = s.queue_mean[:upto]
    xs = [(k + 0.5) * r.interval for k in range(len(ys))]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx > 0 else math.nan


def compare(
    models: list[RunResult], measured: RunResult, tol: Tolerances, overload: bool = False, inputs: frozenset[str] = frozenset()
) -> list[Check]:
    """Every check of one load level: per request type, per funnel step, per station.

    ``inputs`` names subjects (e.g. :data:`CPU_SUBJECT`) whose figures the model
    was given from this very measurement: they are shown, not judged.
    """
    if not models:
        raise ValueError("no model replications to compare")
    m0 = models[0]
    checks: list[Check] = []
    for rt, series in measured.requests.items():
        if rt in m0.requests:
            checks += _request_checks(models, measured, rt, series, tol, overload)
    for name, step in measured.steps.items():
        if name in m0.steps:
            checks += _step_checks(models, name, step, tol, overload)
    if (amplified := _amplification(models, measured, tol, overload)) is not None:
        checks.append(amplified)
    for name, st in measured.stations.items():
        if name in m0.stations:
            checks += _station_checks(models, measured, name, st, tol, overload, inputs)
    if (lag := _loop_lag(models, measured)) is not None:
        checks.append(lag)
    checks += _cpu_accounts(models, measured)
    return checks


def _mean_lag(r: RunResult) -> float:
    lag = r.meta.get("loop_lag") or {}
    return lag["seconds"] / lag["samples"] if lag.get("samples") else math.nan


def _loop_lag(models: list[RunResult], measured: RunResult) -> Check | None:
    """The processor's queue itself: the mean wait of a step that is ready now, by the server's loop-lag probe and the
    model's own (see :meth:`models.funnel.FunnelModel.lag_probe`); shown, not judged (no tolerance of its own yet)."""
    mine, theirs = _mean_lag(models[0]), _mean_lag(measured)
    if math.isnan(mine) or math.isnan(theirs):
        return None
    return Check(CPU_SUBJECT, "loop lag", mine, theirs, None, True, _band([_mean_lag(m) for m in models]), "a ready step's wait")


def _per_request(r: RunResult, rt: str, what: str) -> float:
    acc = (r.meta.get("cpu_typed") or {}).get(rt)
    if not acc or acc["requests"] <= 0:
        return math.nan
    value = acc["seconds"] + acc["thread_seconds"] + acc.get("shared_seconds", 0.0) if what == "cpu" else acc["steps"]
    return value / acc["requests"]


def _cpu_accounts(models: list[RunResult], measured: RunResult) -> list[Check]:
    """Where the processor's time goes, per request type: its CPU time (loop steps, own computation and worker
    threads; the server's with its share of the CPU no request owns, which calibration put into the model's steps)
    and its loop steps per request, the model's accounting (``meta["cpu_typed"]``) against the server's; shown, not
    judged: the processor's utilization is the judged figure."""
    theirs = measured.meta.get("cpu_typed") or {}
    out: list[Check] = []
    for rt in sorted(theirs):
        for what, metric in (("cpu", "cpu /request"), ("steps", "steps /request")):
            mine = _per_request(models[0], rt, what)
            if math.isnan(mine):
                continue
            band = _band([_per_request(m, rt, what) for m in models])
            out.append(Check(rt, metric, mine, _per_request(measured, rt, what), None, True, band, "the server's processor"))
    return out


def _request_checks(
    models: list[RunResult], measured: RunResult, rt: str, series: RequestSeries, tol: Tolerances, overload: bool
) -> list[Check]:
    """Throughput, error, shed and abandon rates (and the refused rate at overload) and p50 / p95 / p99 of one request type."""
    m0 = models[0]
    duration = measured.n_intervals * measured.interval
    enough = tol.min_samples
    out: list[Check] = []
    ms, ss = m0.requests[rt], series
    n_model, n_meas = sum(ms.started), sum(ss.started)
    judged = min(n_model, n_meas) >= enough
    note = "" if judged else f"fewer than {enough} requests"
    per_rep = [sum(m.requests[rt].ok) / duration for m in models]
    out.append(
        Check(
            rt,
            "throughput /s",
            sum(ms.ok) / duration,
            sum(ss.ok) / duration,
            tol.throughput if judged else None,
            True,
            _band(per_rep),
            note,
            _margin(per_rep, sum(ss.ok) / duration),
        )
    )
    rates: list[tuple[str, tuple[str, ...] | None]] = [
        ("error rate", None),
        ("shed rate", ("full",)),
        ("abandon rate", ("abandoned", "timeout")),
    ]
    if overload:
        rates.append(("refused rate", REFUSED))
    for metric, reasons in rates:
        per_rep = [_rate(_failed(m, rt, reasons), sum(m.requests[rt].started)) for m in models]
        out.append(
            Check(
                rt,
                metric,
                _rate(_failed(m0, rt, reasons), n_model),
                _rate(_failed(measured, rt, reasons), n_meas),
                tol.error_rate if judged else None,
                False,
                _band(per_rep),
                note,
                _margin(per_rep),
            )
        )
    pooled = Histogram.merged(m.requests[rt].total_latency for m in models)
    mh = ss.total_latency
    lat_judged = min(pooled.count / len(models), mh.count) >= enough
    lat_note = "" if lat_judged else f"fewer than {enough} successful requests"
    if overload:
        lat_judged, lat_note = False, "overload level: latency is not judged"
    pcts: tuple[tuple[int, float | None], ...] = ((50, tol.p50), (95, tol.p95), (99, tol.p99))
    for p, limit in pcts:
        per_rep = [m.requests[rt].total_latency.percentile(p) for m in models]
        out.append(
            Check(
                rt,
                f"p{p}",
                pooled.percentile(p),
                mh.percentile(p),
                limit if lat_judged else None,
                True,
                _band(per_rep),
                lat_note,
                _margin(per_rep, mh.percentile(p), pooled=True, quantized=True),
            )
        )
    return out


AMPLIFICATION = "all requests"  # the subject of the requests-per-registrant check


def _amplification(models: list[RunResult], measured: RunResult, tol: Tolerances, overload: bool) -> Check | None:
    """Requests sent per registrant (every attempt of every request type over those who reached the first step):
    the retry amplification.  Judged at an overload level (relative, the throughput tolerance), shown below it."""
    first = next(iter(measured.steps), None)
    if first is None or first not in models[0].steps:
        return None

    def per_registrant(r: RunResult) -> float:
        arrived = sum(r.steps[first].reached)
        return sum(sum(q.started) for q in r.requests.values()) / arrived if arrived else math.nan

    arrived = min(sum(models[0].steps[first].reached), sum(measured.steps[first].reached))
    judged = overload and arrived >= tol.min_samples
    per_rep = [per_registrant(m) for m in models]
    return Check(
        AMPLIFICATION,
        "per registrant",
        per_registrant(models[0]),
        per_registrant(measured),
        tol.throughput if judged else None,
        True,
        _band(per_rep),
        "" if judged else ("judged at overload" if arrived >= tol.min_samples else f"fewer than {tol.min_samples}"),
        _margin(per_rep, per_registrant(measured)),
    )


def _step_checks(models: list[RunResult], name: str, step: StepSeries, tol: Tolerances, overload: bool = False) -> list[Check]:
    """Registrants who reached and completed one funnel step, and its completion time (judged at overload, where
    registrants retry: the time from a step's first attempt to its success)."""
    m0 = models[0]
    enough = tol.min_samples
    out: list[Check] = []
    pooled = Histogram.merged(m.steps[name].duration for m in models)
    judged = overload and min(pooled.count / len(models), step.duration.count) >= enough
    for p in (50, 95):
        per_rep = [m.steps[name].duration.percentile(p) for m in models]
        out.append(
            Check(
                f"step {name}",
                f"completion p{p}",
                pooled.percentile(p),
                step.duration.percentile(p),
                tol.completion if judged else None,
                True,
                _band(per_rep),
                "" if judged else ("judged at overload" if not overload else f"fewer than {enough}"),
                _margin(per_rep, step.duration.percentile(p), pooled=True, quantized=True),
            )
        )
    for what in ("reached", "completed"):
        a, b = sum(getattr(m0.steps[name], what)), sum(getattr(step, what))
        judged = min(a, b) >= enough
        per_rep = [float(sum(getattr(m.steps[name], what))) for m in models]
        out.append(
            Check(
                f"step {name}",
                what,
                float(a),
                float(b),
                tol.throughput if judged else None,
                True,
                _band(per_rep),
                "" if judged else f"fewer than {enough}",
                _margin(per_rep, float(b)),
            )
        )
    return out


def _station_checks(
    models: list[RunResult], measured: RunResult, name: str, st: StationSeries, tol: Tolerances, overload: bool, inputs: frozenset[str]
) -> list[Check]:
    """One station's utilization (and its queue's growth at overload)."""
    m0 = models[0]
    out: list[Check] = []
    seen = [c > 0 for c in st.capacity]  # intervals the scrapes covered
    mu = _mean_utilization(m0, name, seen)
    su = _mean_utilization(measured, name, seen)
    given = station_subject(name) in inputs
    per_rep = [_mean_utilization(m, name, seen) for m in models]
    out.append(
        Check(
            station_subject(name),
            "utilization",
            mu,
            su,
            None if given else tol.utilization,
            False,
            _band(per_rep),
            "an input: measured in this level" if given else "",
            _margin(per_rep),
        )
    )
    if overload:
        upto = filling(measured, name)  # while the measured queue grew; the model over the same intervals
        a, b = queue_growth(m0, name, upto), queue_growth(measured, name, upto)
        growths = [queue_growth(m, name, upto) for m in models]
        judged = max(abs(a), abs(b)) >= 0.5  # below half a request per second, the queue is not growing
        unseen = name == CPU and measured.source == "measured"  # a server publishes no run queue of its event loop
        if unseen:
            judged, b = False, math.nan
        out.append(
            Check(
                station_subject(name),
                "queue growth /s",
                a,
                b,
                tol.queue_growth if judged else None,
                True,
                _band(growths),
                "not published by the server (its loop lag is compared instead)"
                if unseen
                else (
                    f"over the first {upto} of {len(st.queue_mean)} intervals: until the measured queue filled"
                    if upto < len(st.queue_mean)
                    else ""
                )
                if judged
                else "no growth on either side",
                _margin(growths, b),
            )
        )
    return out


def _mean_utilization(r: RunResult, station: str, within: list[bool]) -> float:
    """Busy over available server-seconds, over the intervals marked in ``within``."""
    s = r.stations.get(station)
    if s is None:
        return math.nan
    busy = sum(b for b, w in zip(s.busy, within, strict=True) if w)
    cap = sum(c for c, w in zip(s.capacity, within, strict=True) if w)
    return busy / cap if cap > 0 else math.nan


def chance(models: list[RunResult], tol: Tolerances, overload: bool = False, inputs: frozenset[str] = frozenset()) -> list[list[str]]:
    """The model against itself: each replication judged as if it were the measured run, against the others.

    In a validation the replications replay the same arrivals and registrants
    and differ only in the model's own draws (service times, steps), so a
    check one of them fails against the others fails by sampling noise alone;
    a measured level carries that noise and more.  Returns, per replication,
    the checks it failed (``subject metric``); empty with fewer than three
    replications.
    """
    if len(models) < 3:
        return []
    failed: list[list[str]] = []
    for k, own in enumerate(models):
        others = [m for j, m in enumerate(models) if j != k]
        checks = compare(others, own, tol, overload=overload, inputs=inputs)
        failed.append([f"{c.subject} {c.metric}" for c in checks if c.verdict == "fail"])
    return failed

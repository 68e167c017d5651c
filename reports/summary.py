"""Plain-text summaries of simulated runs (the terminal table and summary.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from models.results import RunResult
from models.scenario import Scenario, Slo
from models.simulate import Estimate, summarize
from models.units import format_duration

__all__ = ["table", "summary_text", "slo_verdicts", "reported_comparison", "drain_time", "loadtest_text"]


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A left/right-aligned text table (numbers right-aligned)."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(header)]

    def fmt(cells: Sequence[str], is_header: bool = False) -> str:
        out = []
        for i, c in enumerate(cells):
            c = str(c)
            out.append(c.ljust(widths[i]) if i == 0 or is_header else c.rjust(widths[i]))
        return "  ".join(out).rstrip()

    lines = [fmt(header, True), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows]
    return "\n".join(lines)


def _count(e: Estimate) -> str:
    if math.isnan(e.mean):
        return "-"
    if e.n > 1 and not math.isnan(e.half_width):
        return f"{e.mean:,.0f} ±{e.half_width:,.0f}"
    return f"{e.mean:,.0f}"


def _dur(e: Estimate) -> str:
    if math.isnan(e.mean):
        return "-"
    if e.n > 1 and not math.isnan(e.half_width):
        return f"{format_duration(e.mean)} ±{format_duration(e.half_width)}"
    return format_duration(e.mean)


def _pct(e: Estimate) -> str:
    if math.isnan(e.mean):
        return "-"
    if e.n > 1 and not math.isnan(e.half_width):
        return f"{e.mean:.1%} ±{e.half_width:.1%}"
    return f"{e.mean:.1%}"


def reported_comparison(scenario: Scenario, est: dict[str, Estimate]) -> list[tuple[str, int, Estimate, float]]:
    """(step, reported count, model estimate, relative difference) for the scenario's reported figures."""
    rep = scenario.reported
    if rep is None:
        return []
    out = []
    for step, count in rep.counts.items():
        e = est[f"step.{step}.completed"]
        expected = count * scenario.run.scale
        out.append((step, count, e, e.mean / expected - 1 if expected else math.nan))
    return out


def slo_verdicts(scenario: Scenario, results: Sequence[RunResult]) -> list[tuple[Slo, float, bool]]:
    """Each SLO with the value the runs give (pooled over replications) and whether it is met."""
    out = []
    for slo in scenario.slos:
        requests = [slo.request] if slo.request else scenario.request_types
        if slo.below is not None and slo.percentile is not None:
            from models.histogram import Histogram

            h = Histogram.merged(r.requests[q].total_latency for r in results for q in requests)
            value = h.percentile(slo.percentile)
            out.append((slo, value, value < slo.below))
        elif slo.error_rate is not None or slo.abandon_rate is not None:
            started = sum(sum(r.requests[q].started) for r in results for q in requests)
            reasons = None if slo.error_rate is not None else {"abandoned"}
            failed = sum(
                sum(c)
                for r in results
                for q in requests
                for reason, c in r.requests[q].failed.items()
                if reasons is None or reason in reasons
            )
            value = failed / started if started else 0.0
            limit = slo.error_rate if slo.error_rate is not None else slo.abandon_rate
            assert limit is not None
            out.append((slo, value, value < limit))
        elif slo.backlog_drained is not None:
            value = max(drain_time(r) for r in results)
            out.append((slo, value, value <= slo.backlog_drained))
        elif slo.wait_below is not None and slo.station is not None and slo.percentile is not None:
            value = wait_percentile(results, slo.station, slo.percentile)
            out.append((slo, value, value < slo.wait_below))
    return out


def wait_percentile(results: Sequence[RunResult], station: str, p: float) -> float:
    """The ``p``-th percentile of the queueing wait of the requests a station served, those served at once (wait 0) included."""
    from models.histogram import Histogram

    series = [r.stations[station] for r in results if station in r.stations]
    served = sum(sum(s.arrivals) - sum(s.shed) - sum(s.abandoned) for s in series)
    waited = Histogram.merged(s.wait for s in series)
    if served <= 0:
        return math.nan
    at_once = 1.0 - waited.count / served
    if p / 100 <= at_once or waited.count == 0:
        return 0.0
    return waited.percentile(100 * (p / 100 - at_once) / (1 - at_once))


def drain_time(result: RunResult, threshold: float = 1.0, stations: Sequence[str] | None = None) -> float:
    """When the backlog was gone: the end of the last interval in which some station's
    time-averaged queue held ``threshold`` or more requests (a standing backlog, not a
    momentary wait), measured from the run's start.  Infinite when the last interval
    still has one; zero when no interval had one.  ``stations``: only these (default all).
    """
    last = -1
    for name, st in result.stations.items():
        if stations is not None and name not in stations:
            continue
        for k, q in enumerate(st.queue_mean):
            if q >= threshold:
                last = max(last, k)
    if last == result.n_intervals - 1:
        return math.inf
    return (last + 1) * result.interval


def _stations_table(scenario: Scenario, results: Sequence[RunResult], est: dict[str, Estimate]) -> str:
    """Per station: mean and peak utilization, longest queue, mean wait, shed and abandoned shares, cost of its server-hours."""
    first = results[0]
    rows = []
    prices = scenario.costs.per_unit_hour
    for name in first.stations:
        cost = "-"
        if name in prices:
            server_hours = sum(sum(r.stations[name].capacity) for r in results) / len(results) / 3600
            cost = f"{server_hours * prices[name]:,.2f}"
        rows.append(
            [
                name,
                _pct(est[f"station.{name}.utilization"]),
                _pct(est[f"station.{name}.peak_utilization"]),
                _count(est[f"station.{name}.max_queue"]),
                _dur(est[f"station.{name}.mean_wait"]),
                _pct(est[f"station.{name}.p_shed"]),
                _pct(est[f"station.{name}.p_abandon"]),
                cost,
            ]
        )
    return table(
        ["station", "mean util", "peak util", "max queue", "mean wait", "shed", "abandoned", f"cost {scenario.costs.currency}"], rows
    )


def summary_text(scenario: Scenario, results: Sequence[RunResult]) -> str:
    """The summary of a simulation: steps, stations, reported figures, SLOs."""
    est = summarize(list(results))
    first = results[0]
    start, end = first.meta.get("window", [first.start, first.end])
    parts = [
        f"scenario {scenario.name}: window {format_duration(start)}–{format_duration(end)}, scale {scenario.run.scale:g}, "
        f"think-time compression {scenario.run.compress:g}, {len(results)} replication(s), seed {first.meta.get('seed')}",
        f"registrants arrived: {_count(est['arrivals'])}"
        + ("   (± is the 95 % confidence half-width over replications)" if len(results) > 1 else ""),
        "",
        "Journey steps",
    ]
    rows = []
    for step in scenario.journey:
        rt = step.request_type
        fails = est[f"request.{rt}.failed"]
        rows.append(
            [
                step.name,
                _count(est[f"step.{step.name}.reached"]),
                _count(est[f"step.{step.name}.completed"]),
                _dur(est[f"request.{rt}.p50"]),
                _dur(est[f"request.{rt}.p95"]),
                _dur(est[f"request.{rt}.p99"]),
                _count(fails),
                _count(est[f"request.{rt}.failed_abandoned"]),
                _count(est[f"step.{step.name}.failed"]),
            ]
        )
    parts.append(table(["step", "arrived", "completed", "p50", "p95", "p99", "failed req", "abandoned", "gave up"], rows))
    reasons = ["full", "rate_limited", "timeout", "quota", "mismatch"]
    fail_rows = []
    for step in scenario.journey:
        rt = step.request_type
        vals = [est[f"request.{rt}.failed_{r}"] for r in reasons]
        if any(v.mean > 0 for v in vals):
            fail_rows.append([step.name, *[_count(v) for v in vals]])
    if fail_rows:
        parts += [
            "",
            "Failed requests by reason",
            table(["step", "shed (full)", "rate-limited", "timeout", "quota", "mismatch"], fail_rows),
        ]
    parts += ["", "Stations", _stations_table(scenario, results, est)]
    cmp_rows = reported_comparison(scenario, est)
    if cmp_rows and scenario.reported is not None:
        parts += ["", f"Model against reported figures at {format_duration(scenario.reported.at)} ({scenario.reported.source})"]
        parts.append(
            table(
                ["step", "reported", "model", "difference"],
                [[s, f"{c * scenario.run.scale:,.0f}", _count(e), f"{d:+.1%}"] for s, c, e, d in cmp_rows],
            )
        )
    text, _ = verdicts_text(scenario, results, "model")
    return "\n".join(parts) + text


def verdicts_text(scenario: Scenario, results: Sequence[RunResult], source: str) -> tuple[str, list[str]]:
    """The SLO and threshold verdicts as tables (empty when the scenario has neither), and the labels of those missed."""
    from models.thresholds import judge

    parts: list[str] = []
    missed: list[str] = []
    slos = slo_verdicts(scenario, results)
    if slos:
        rows = []
        for slo, value, ok in slos:
            timed = slo.below is not None or slo.backlog_drained is not None or slo.wait_below is not None
            rows.append([slo.label, format_duration(value) if timed else f"{value:.2%}", "met" if ok else "MISSED"])
            missed += [] if ok else [slo.label]
        parts += ["", "SLOs", table(["objective", source, "verdict"], rows)]
    thresholds = judge(scenario.threshold_list, results, scenario.request_types)
    if thresholds:
        rows = [[v.threshold.label, v.shown, "pass" if v.passed else "FAIL"] for v in thresholds]
        missed += [v.threshold.label for v in thresholds if not v.passed]
        parts += ["", "Thresholds", table(["threshold", source, "verdict"], rows)]
    return "\n".join(parts), missed


def loadtest_text(scenario: Scenario, result: RunResult) -> str:
    """The summary of a measured run: arrivals and their lateness, then the journey steps."""
    m = result.meta
    parts = [
        f"load test of {scenario.name} against {m.get('host')}: {format_duration(m.get('duration', 0.0))}, seed {m.get('seed')}",
        f"arrivals: {m.get('arrivals_started', 0):,} started of {m.get('arrivals_planned', 0):,} planned; "
        f"{m.get('arrivals_dropped', 0):,} dropped (no free user within the drop limit); "
        f"{m.get('share_on_time_100ms', 1.0):.1%} started within 100 ms of their time (latest "
        f"{format_duration(m.get('max_lateness', 0.0))})",
        "",
    ]
    rows = []
    for step in scenario.journey:
        rt = step.request_type
        st = result.steps[step.name]
        rq = result.requests[rt]
        h = rq.total_latency
        totals = rq.totals()
        rows.append(
            [
                step.name,
                f"{sum(st.reached):,}",
                f"{sum(st.completed):,}",
                format_duration(h.percentile(50)),
                format_duration(h.percentile(95)),
                format_duration(h.percentile(99)),
                f"{totals['failed']:,}",
                ", ".join(f"{k[7:]} {v:,}" for k, v in totals.items() if k.startswith("failed_") and v) or "-",
            ]
        )
    parts.append(table(["step", "reached", "completed", "p50", "p95", "p99", "failed req", "by reason"], rows))
    first = m.get("first_request_from_arrival")
    if first:
        from models.histogram import Histogram

        h = Histogram.from_dict(first)
        if h.count:
            parts.append(
                f"\nfirst request, from the intended arrival time (corrected for coordinated omission): "
                f"p50 {format_duration(h.percentile(50))}, p95 {format_duration(h.percentile(95))}, p99 {format_duration(h.percentile(99))}"
            )
    return "\n".join(parts) + verdicts_text(scenario, [result], "measured")[0]

"""Capacity plans as scenarios, judged by simulation: candidates, SLOs at the upper end of their confidence interval, adjustments.

A :class:`Candidate` is a capacity: servers per station per schedule step
(one step: a static size), and the email send rate and the registry's rate
limit when the plan chooses them.  :func:`planned` turns it into the scenario
the model runs (the stations' servers change at every step boundary);
:func:`judge` reads replications of that run against every SLO at the upper
end of its 95 % confidence interval; :func:`raised` and :func:`cheaper` are the
search's two moves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from models.results import RunResult
from models.scenario import REGISTRY, CapacityChange, Scenario, Slo
from models.screen import Screen
from models.simulate import t_quantile

__all__ = [
    "Candidate",
    "Verdict",
    "Judged",
    "Round",
    "WhatIf",
    "PlanOutcome",
    "planned",
    "judge",
    "raised",
    "cheaper",
    "cost",
    "server_hours",
    "binding_stations",
]


@dataclass(frozen=True)
class Candidate:
    """Servers per station per schedule step of ``step`` seconds (0: one static size), and the planned rates (None: as configured)."""

    servers: dict[str, tuple[int, ...]]
    step: float
    email_rate: float | None = None
    rate_limit: float | None = None

    def at(self, station: str, k: int) -> int:
        counts = self.servers[station]
        return counts[min(k, len(counts) - 1)]

    def peak(self) -> dict[str, int]:
        return {name: max(counts) for name, counts in self.servers.items()}


@dataclass(frozen=True)
class Verdict:
    """One SLO judged over replications: the mean, the upper end of its 95 % confidence interval, and whether that meets it."""

    slo: Slo
    values: tuple[float, ...]
    mean: float
    upper: float
    met: bool


@dataclass
class Judged:
    """A candidate and what its simulation said."""

    candidate: Candidate
    verdicts: list[Verdict] = field(default_factory=list)
    results: list[RunResult] = field(default_factory=list)

    @property
    def met(self) -> bool:
        return all(v.met for v in self.verdicts)


def planned(base: Scenario, candidate: Candidate) -> Scenario:
    """The scenario with the candidate's capacity: stations' servers over time, and the planned rates.

    The scenario's own capacity changes of what the plan decides (stations'
    servers, and the rates it plans) are replaced; the others stay.
    """
    start, end = base.window
    sysd = base.system
    stations = {name: st.model_copy(update={"servers": candidate.at(name, 0)}) for name, st in sysd.stations.items()}
    kept = [
        ch
        for ch in sysd.changes
        if not (ch.station in sysd.stations and ch.servers is not None)
        and not (candidate.email_rate is not None and ch.send_rate is not None)
        and not (candidate.rate_limit is not None and ch.station == REGISTRY and ch.rate_limit is not None)
    ]
    changes = list(kept)
    if candidate.step > 0:
        k = 1
        while start + k * candidate.step < end:
            for name in stations:
                if candidate.at(name, k) != candidate.at(name, k - 1):
                    changes.append(CapacityChange(at=start + k * candidate.step, station=name, servers=candidate.at(name, k)))
            k += 1
    update: dict[str, object] = {"stations": stations, "changes": sorted(changes, key=lambda c: c.at)}
    if candidate.email_rate is not None and sysd.email is not None:
        update["email"] = sysd.email.model_copy(update={"rate": candidate.email_rate})
    if candidate.rate_limit is not None and sysd.registry is not None:
        update["registry"] = sysd.registry.model_copy(update={"rate_limit": candidate.rate_limit})
    return base.model_copy(update={"system": sysd.model_copy(update=update)})


def judge(scenario: Scenario, results: Sequence[RunResult]) -> list[Verdict]:
    """Every SLO over the replications, met only if the upper end of its 95 % confidence interval meets it."""
    from reports.summary import slo_verdicts

    per_rep = [slo_verdicts(scenario, [r]) for r in results]
    out: list[Verdict] = []
    for i, slo in enumerate(scenario.slos):
        values = tuple(float(rep[i][1]) for rep in per_rep)
        finite = [v for v in values if not math.isnan(v)]
        n = len(finite)
        mean = sum(finite) / n if n else math.nan
        if n >= 2 and all(math.isfinite(v) for v in finite):
            sd = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1))
            upper = mean + t_quantile(n - 1) * sd / math.sqrt(n)
        else:
            upper = max(finite) if finite else math.nan
        limit = _limit(slo)
        met = not math.isnan(upper) and (upper <= limit if slo.backlog_drained is not None else upper < limit)
        out.append(Verdict(slo, values, mean, upper, met))
    return out


def _limit(slo: Slo) -> float:
    for value in (slo.below, slo.error_rate, slo.abandon_rate, slo.backlog_drained, slo.wait_below):
        if value is not None:
            return float(value)
    raise ValueError(f"SLO {slo.label!r} sets no limit")


def binding_stations(scenario: Scenario, slo: Slo, results: Sequence[RunResult]) -> list[str]:
    """The stations whose capacity an SLO's miss points at, busiest first."""
    if slo.station is not None:
        return [slo.station]
    if slo.backlog_drained is not None:
        from reports.summary import drain_time

        return [name for name in scenario.system.stations if any(drain_time(r, stations=[name]) > slo.backlog_drained for r in results)]
    types = [slo.request] if slo.request else scenario.request_types
    if slo.error_rate is not None or slo.abandon_rate is not None:
        reasons = failures(results, types)
        started = sum(sum(r.requests[t].started) for r in results for t in types if t in r.requests)
        from_stations = sum(n for why, n in reasons.items() if why in STATION_REASONS)
        limit = _limit(slo)
        if started and from_stations / started < limit / 2:  # what servers can change is not what misses
            return []
    names = {n for step in scenario.journey if step.request_type in types for n in step.stations if n in scenario.system.stations}
    return sorted(names, key=lambda n: -_peak_utilization(results, n))


STATION_REASONS = ("full", "abandoned")  # failures more servers prevent; the rest are the registry's, the quotas' and the NIKs'


def failures(results: Sequence[RunResult], types: Sequence[str]) -> dict[str, int]:
    """Failed requests of these types by reason, over the replications (most first)."""
    out: dict[str, int] = {}
    for r in results:
        for t in types:
            if t in r.requests:
                for why, counts in r.requests[t].failed.items():
                    out[why] = out.get(why, 0) + sum(counts)
    return dict(sorted(((k, v) for k, v in out.items() if v), key=lambda kv: -kv[1]))


def _peak_utilization(results: Sequence[RunResult], station: str) -> float:
    values = [u for r in results if station in r.stations for u in r.stations[station].utilization() if not math.isnan(u)]
    return max(values, default=0.0)


def _step_utilization(results: Sequence[RunResult], station: str, step: float, start: float, k: int) -> float:
    """The station's highest interval utilization within schedule step k (over replications)."""
    best = 0.0
    for r in results:
        s = r.stations.get(station)
        if s is None:
            continue
        for j, u in enumerate(s.utilization()):
            t = r.start + j * r.interval
            if (step <= 0 or start + k * step <= t < start + (k + 1) * step) and not math.isnan(u):
                best = max(best, u)
    return best


def raised(
    candidate: Candidate, stations: Sequence[str], results: Sequence[RunResult], start: float, bounds: dict[str, tuple[int, int]]
) -> Candidate:
    """More servers where a miss points: each named station, by a tenth (at least one), in the steps where it ran 70 % busy or more
    (in its busiest step when none did), within its bounds."""
    servers = dict(candidate.servers)
    for name in stations:
        counts = list(servers[name])
        busy = [_step_utilization(results, name, candidate.step, start, k) for k in range(len(counts))]
        steps = [k for k, u in enumerate(busy) if u >= 0.7] or [max(range(len(counts)), key=lambda k: busy[k])]
        high = bounds[name][1]
        for k in steps:
            counts[k] = min(high, counts[k] + max(1, math.ceil(counts[k] / 10)))
        servers[name] = tuple(counts)
    return replace(candidate, servers=servers)


def cheaper(candidate: Candidate, station: str, bounds: dict[str, tuple[int, int]]) -> Candidate | None:
    """One server fewer at ``station`` in every step where it has its most servers; None at its lower bound."""
    counts = list(candidate.servers[station])
    top = max(counts)
    if top - 1 < bounds[station][0]:
        return None
    servers = dict(candidate.servers)
    servers[station] = tuple(c - 1 if c == top else c for c in counts)
    return replace(candidate, servers=servers)


def server_hours(candidate: Candidate, start: float, end: float) -> dict[str, float]:
    """Server-hours of every station over [start, end)."""
    out: dict[str, float] = {}
    for name, counts in candidate.servers.items():
        if candidate.step <= 0:
            out[name] = counts[0] * (end - start) / 3600
            continue
        total = 0.0
        for k, c in enumerate(counts):
            a = start + k * candidate.step
            total += c * max(0.0, min(end, a + candidate.step) - a) / 3600
        out[name] = total
    return out


def cost(candidate: Candidate, scenario: Scenario) -> float:
    """The candidate's price over the scenario's window (stations without a price count nothing)."""
    start, end = scenario.window
    prices = scenario.costs.per_unit_hour
    return sum(hours * prices.get(name, 0.0) for name, hours in server_hours(candidate, start, end).items())


@dataclass
class Round:
    """One simulation round: what was tried, why, and what it gave."""

    what: str
    judged: Judged
    seconds: float


@dataclass
class WhatIf:
    """The screen's sizing for a changed scenario (arrivals or the registry's rate limit times a factor)."""

    label: str
    load: float
    rate_limit: float | None
    static: dict[str, int]
    static_cost: float
    schedule_cost: float
    slos: list[tuple[str, bool, str]]  # label, met by the screen, why not


@dataclass
class PlanOutcome:
    """Everything the plan found; :mod:`reports.plan` writes it."""

    scenario: Scenario  # as planned (the recommended schedule and rates)
    base: Scenario  # as given (with the calibration)
    screen: Screen
    recommended: Candidate | None
    confirmed: Judged | None
    rounds: list[Round]
    infeasible: list[str]
    whatifs: list[WhatIf] = field(default_factory=list)
    headroom: list[tuple[str, float, str]] = field(default_factory=list)  # resource, load multiple at saturation, what limits it
    disagreements: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        return self.recommended is not None and self.confirmed is not None and self.confirmed.met

    def static(self) -> Candidate | None:
        if self.recommended is None:
            return None
        return replace(self.recommended, servers={k: (v,) for k, v in self.recommended.peak().items()}, step=0.0)

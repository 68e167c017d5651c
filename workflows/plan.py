"""``capacity plan``: the cheapest capacity that meets every SLO of a scenario, with its schedule, costs and what-ifs.

1. The analytic screen (:mod:`models.screen`) sizes every station interval by
   interval and gives the outbox's and the registry's backlogs; the planned
   rates (email send rate, registry rate limit) are the smallest within the
   plan's bounds that drain their backlogs within the ``backlog_drained`` SLO.
2. The screen's hourly schedule is confirmed with the SimPy model:
   ``plan.replications`` replications in parallel over the machine's cores,
   every SLO judged at the upper end of its 95 % confidence interval
   (:func:`models.sizing.judge`).  A miss raises the stations it points at and
   runs again; a pass tries one server fewer at the costliest station
   (``plan.descend``), within ``plan.rounds`` rounds in all.
3. The static size is the confirmed schedule's peak all day; it has at least
   as many servers as the schedule at every moment, so it meets what the
   schedule meets.
4. Headroom, what-ifs (screen only) and the screen-against-simulation
   comparison complete the report (:mod:`reports.plan`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from models.funnel import simulate_once
from models.overlay import Calibration
from models.results import RunResult
from models.scenario import CPU, EMAIL, REGISTRY, Scenario
from models.screen import Screen, rate_to_drain, screen, slo_for_backlog
from models.sizing import (
    Candidate,
    Judged,
    PlanOutcome,
    Round,
    Verdict,
    WhatIf,
    binding_stations,
    cheaper,
    cost,
    failures,
    judge,
    planned,
    raised,
    server_hours,
)
from models.units import format_duration
from workflows.output import say

__all__ = ["PlanOptions", "run_plan", "read_validation", "WHAT_IF_LOADS", "WHAT_IF_RATE_LIMITS"]

T = TypeVar("T")
RATE_MARGIN = 0.9  # planned rates drain the screen's backlog within this share of the backlog_drained SLO
WHAT_IF_LOADS = (0.5, 1.0, 2.0, 4.0)  # arrivals x these
WHAT_IF_RATE_LIMITS = (0.5, 2.0)  # the registry's rate limit x these


@dataclass(frozen=True)
class PlanOptions:
    """How ``capacity plan`` runs (its command-line options)."""

    calibration: Calibration | None = None
    validation: dict[str, Any] | None = None  # a validation.json that backs the calibration
    workers: int | None = None  # processes for the replications (default: the machine's cores)
    quiet: bool = False


def _replicate(job: tuple[Scenario, int]) -> RunResult:
    scenario, rep = job
    return simulate_once(scenario, replication=rep)


class Simulator:
    """Replications of candidate scenarios in parallel over the machine's cores."""

    def __init__(self, workers: int, quiet: bool):
        self.workers = max(1, workers)
        self.quiet = quiet
        self.pool = ProcessPoolExecutor(max_workers=self.workers) if self.workers > 1 else None

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn(*args)`` in the pool (in this process when there is none); its result comes from the future."""
        if self.pool is not None:
            return self.pool.submit(fn, *args)
        done: Future[T] = Future()
        done.set_result(fn(*args))
        return done

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def run(self, scenario: Scenario, replications: int, label: str) -> list[RunResult]:
        started = time.monotonic()
        jobs = [(scenario, r) for r in range(replications)]
        if self.pool is None:
            out = []
            for job in jobs:
                out.append(_replicate(job))
                say("plan", f"{label}: replication {len(out)}/{replications} done, {time.monotonic() - started:.0f}s", self.quiet)
            return out
        futures = {self.pool.submit(_replicate, job): job[1] for job in jobs}
        results: dict[int, RunResult] = {}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            say("plan", f"{label}: replication {len(results)}/{replications} done, {time.monotonic() - started:.0f}s", self.quiet)
        return [results[r] for r in range(replications)]


def _rate_choice(configured: float, bounds: Any, needed: float, what: str, slo_label: str) -> tuple[float | None, str | None]:
    """The planned rate (None: not planned) and, when no rate within the bounds is enough, why."""
    if bounds is None:
        return None, None
    floor = bounds.min if bounds.min is not None else configured
    chosen = max(floor, needed if math.isfinite(needed) else bounds.max)
    if chosen > bounds.max:
        return bounds.max, f"{slo_label}: {what} would need {needed:.4g}/s, above plan's bound of {bounds.max:.4g}/s"
    return chosen, None


def _rates(base: Scenario, first: Screen) -> tuple[float | None, float | None, list[str]]:
    """The email send rate and the registry's rate limit the plan chooses, and the backlogs no allowed rate drains in time."""
    slo = slo_for_backlog(base)
    problems: list[str] = []
    choices: dict[str, float | None] = {EMAIL: None, REGISTRY: None}
    for name, configured, bounds in (
        (EMAIL, base.system.email.rate if base.system.email else None, base.plan.email_rate),
        (REGISTRY, base.system.registry.rate_limit if base.system.registry else None, base.plan.registry_rate_limit),
    ):
        backlog = first.backlogs.get(name)
        if backlog is None or configured is None:
            continue
        # the fluid backlog drains by a tenth of the SLO's time early: the simulated one, with its randomness, needs the room
        within = RATE_MARGIN * slo.backlog_drained if slo is not None and slo.backlog_drained else 0.0
        needed = rate_to_drain(backlog.inflow, backlog.dt, within) if within else 0.0
        what = "the email send rate" if name == EMAIL else "the registry's rate limit"
        if name == REGISTRY and base.system.registry is not None and math.isfinite(needed):
            reg = base.system.registry
            # no rate limit helps past what the registry itself answers without a queue of its own: its concurrency over
            # its latency, at the utilization the plan allows any station (plan.target)
            ceiling = base.plan.target * reg.concurrency / reg.latency.mean if reg.latency.mean > 0 else math.inf
            if needed > ceiling:
                problems.append(
                    f"{slo.label if slo else 'backlog'}: the NIK checks need {needed:.4g} registry calls/s to drain in time, but the "
                    f"registry answers {ceiling:.4g}/s at {base.plan.target:.0%} busy ({reg.concurrency} at once, {reg.latency.mean:g}s "
                    "each); its concurrency is the registry's to raise"
                )
                choices[name] = min(ceiling, bounds.max) if bounds is not None else None
                continue
        choices[name], problem = _rate_choice(configured, bounds, needed, what, slo.label if slo else "")
        if problem:
            problems.append(problem)
        elif bounds is None and slo is not None and slo.backlog_drained and backlog.drained_at > slo.backlog_drained:
            problems.append(
                f"{slo.label}: the {'outbox' if name == EMAIL else 'registry backlog'} drains at {format_duration(backlog.drained_at)} "
                f"with {what} as configured; {needed:.4g}/s would drain it in time (give "
                f"plan.{'email_rate' if name == EMAIL else 'registry_rate_limit'} "
                "to let the plan choose it)"
            )
    return choices[EMAIL], choices[REGISTRY], problems


def _candidate(sc: Screen, step: float, email: float | None, limit: float | None) -> Candidate:
    if step > 0:
        return Candidate({k: tuple(v) for k, v in sc.schedule(step).items()}, step, email, limit)
    return Candidate({k: (v,) for k, v in sc.static().items()}, 0.0, email, limit)


def _order_by_cost(candidate: Candidate, scenario: Scenario) -> list[str]:
    """Stations by what they cost over the window, dearest first (by server-hours where no price is set)."""
    prices = scenario.costs.per_unit_hour
    hours = server_hours(candidate, *scenario.window)
    return sorted(hours, key=lambda k: (hours[k] * prices.get(k, 0.0), hours[k]), reverse=True)


def _search(
    base: Scenario, first: Candidate, sim: Simulator, bounds: dict[str, tuple[int, int]]
) -> tuple[Candidate | None, Judged | None, list[Round], list[str]]:
    """Confirm, raise, try cheaper: the cheapest candidate found whose SLOs hold, its run, the rounds, and why none did."""
    plan = base.plan
    rounds: list[Round] = []
    best: Judged | None = None
    current: Candidate | None = first
    descending = _order_by_cost(first, base) if plan.descend else []
    what = "the screen's plan"
    while current is not None and len(rounds) < plan.rounds:
        started = time.monotonic()
        scenario = planned(base, current)
        results = sim.run(scenario, plan.replications, f"round {len(rounds) + 1} ({what})")
        judged = Judged(current, judge(scenario, results), results)
        rounds.append(Round(what, judged, time.monotonic() - started))
        missed = [v for v in judged.verdicts if not v.met]
        say(
            "plan",
            f"round {len(rounds)} ({what}): " + ("every SLO met" if not missed else "missed " + ", ".join(v.slo.label for v in missed)),
            sim.quiet,
        )
        if not missed:
            best = judged
            current, what = _next_cheaper(current, descending, bounds)
            continue
        if best is not None:  # a cheaper try missed: the last that held stands; the next station is tried
            descending = descending[1:]
            current, what = _next_cheaper(best.candidate, descending, bounds)
            continue
        faster = _raised_rates(base, current, missed, results)
        if faster is not None:
            current, what = faster
            continue
        stations = sorted({n for v in missed for n in binding_stations(scenario, v.slo, results)})
        movable = [n for n in stations if max(current.servers[n]) < bounds[n][1]]
        if not movable:
            return None, judged, rounds, [_why_missed(base, v, stations, bounds, results) for v in missed]
        current, what = raised(current, movable, results, base.window[0], bounds), f"raised {', '.join(movable)}"
    if best is None:
        last = rounds[-1].judged if rounds else None
        labels = [v.slo.label for v in last.verdicts if not v.met] if last else []
        return None, last, rounds, [f"{label}: still missed after {len(rounds)} simulation rounds (plan.rounds)" for label in labels]
    return best.candidate, best, rounds, []


def _raised_rates(base: Scenario, candidate: Candidate, missed: list[Verdict], results: list[RunResult]) -> tuple[Candidate, str] | None:
    """A backlog SLO missed where the outbox or the registry drained late: their planned rates a tenth higher, within bounds."""
    from reports.summary import drain_time

    slo = next((v.slo for v in missed if v.slo.backlog_drained is not None), None)
    if slo is None or slo.backlog_drained is None:
        return None
    late = {name for name in (EMAIL, REGISTRY) if any(drain_time(r, stations=[name]) > slo.backlog_drained for r in results)}
    changes: dict[str, float] = {}
    if EMAIL in late and candidate.email_rate is not None and base.plan.email_rate is not None:
        changes["email_rate"] = min(base.plan.email_rate.max, candidate.email_rate * 1.1)
    if REGISTRY in late and candidate.rate_limit is not None and base.plan.registry_rate_limit is not None:
        changes["rate_limit"] = min(base.plan.registry_rate_limit.max, candidate.rate_limit * 1.1)
    changes = {k: v for k, v in changes.items() if v > getattr(candidate, k) * (1 + 1e-9)}
    if not changes:
        return None
    said = ", ".join(
        f"{'the email send rate' if k == 'email_rate' else 'the registry rate limit'} to {v:.4g}/s" for k, v in changes.items()
    )
    raised_to = replace(
        candidate, email_rate=changes.get("email_rate", candidate.email_rate), rate_limit=changes.get("rate_limit", candidate.rate_limit)
    )
    return raised_to, f"raised {said}"


def _why_missed(base: Scenario, verdict: Verdict, stations: list[str], bounds: dict[str, tuple[int, int]], results: list[RunResult]) -> str:
    """Why an SLO is missed and more servers cannot help: the stations at their bounds, or failures no server prevents."""
    head = f"{verdict.slo.label}: missed (upper end of its 95 % CI {verdict.upper:.4g})"
    if stations:
        return head + " with " + ", ".join(f"{n} at its bound of {bounds[n][1]} servers" for n in stations)
    types = [verdict.slo.request] if verdict.slo.request else base.request_types
    found = failures(results, types)
    if verdict.slo.backlog_drained is not None or not found:
        return head + "; no station's servers bind it (the outbox or the registry's rate limit does: see the backlogs)"
    total = sum(found.values())
    shares = ", ".join(f"{why} {n / total:.0%}" for why, n in found.items())
    return head + f"; its failures are not ones more servers prevent ({shares}): the registry, the quotas and NIK mismatches set them"


def _next_cheaper(candidate: Candidate, order: list[str], bounds: dict[str, tuple[int, int]]) -> tuple[Candidate | None, str]:
    for name in order:
        found = cheaper(candidate, name, bounds)
        if found is not None:
            return found, f"one {name} server fewer"
    return None, ""


def _headroom(scenario: Scenario, sc: Screen, static: dict[str, int]) -> list[tuple[str, float, str]]:
    """With the static size: the multiple of the scenario's arrivals at which each resource saturates at the peak, lowest first."""
    out: list[tuple[str, float, str]] = []
    for name, a in sc.offered.items():
        peak = float(a.max())
        if peak > 0:
            out.append((name, static[name] / peak, f"{static[name]} servers"))
    for name, backlog in sc.backlogs.items():
        peak = float(backlog.inflow.max())
        if peak > 0:
            what = "send rate" if name == EMAIL else "rate limit"
            out.append((f"{name} {what}", float(backlog.rate.min()) / peak, f"{float(backlog.rate.min()):.4g}/s (a queue forms past it)"))
    cpu = scenario.system.cpu
    if cpu is not None:
        demand = sum(sc.step_rates[s.name] * (w.demand if (w := cpu.work_for(s.request_type)) else 0.0) for s in scenario.journey)
        if float(np.max(demand)) > 0:
            out.append((CPU, cpu.cores / float(np.max(demand)), f"{cpu.cores} core(s)"))
    return sorted(out, key=lambda x: x[1])


def _screen_slos(scenario: Scenario, sc: Screen) -> list[tuple[str, bool, str]]:
    """Each SLO as the screen sees it: met unless infeasible within the bounds or a backlog drains too late."""
    out = []
    for slo in scenario.slos:
        why = next((p for p in sc.infeasible if p.startswith(slo.label)), "")
        if not why and slo.backlog_drained is not None:
            late = [
                f"{b.name} drains at {format_duration(b.drained_at)}" for b in sc.backlogs.values() if b.drained_at > slo.backlog_drained
            ]
            why = "; ".join(late)
        out.append((slo.label, not why, why))
    return out


def _whatifs(base: Scenario, email: float | None, limit: float | None) -> list[WhatIf]:
    out = []
    registry = base.system.registry
    cases: list[tuple[str, float, float | None]] = [(f"arrivals x{m:g}", m, None) for m in WHAT_IF_LOADS]
    if registry is not None and registry.rate_limit is not None:
        cases += [(f"registry rate limit x{m:g}", 1.0, m) for m in WHAT_IF_RATE_LIMITS]
    for label, load, factor in cases:
        rate = limit
        if factor is not None and registry is not None and registry.rate_limit is not None:
            rate = (limit if limit is not None else registry.rate_limit) * factor
        scenario = planned(base, Candidate({k: (st.servers,) for k, st in base.system.stations.items()}, 0.0, email, rate))
        sc = screen(scenario, load=load)
        static = _candidate(sc, 0.0, None, None)
        sched = _candidate(sc, base.plan.schedule, None, None)
        out.append(WhatIf(label, load, rate, static.peak(), cost(static, base), cost(sched, base), _screen_slos(scenario, sc)))
    return out


def _timed_whatifs(base: Scenario, email: float | None, limit: float | None) -> tuple[list[WhatIf], float]:
    started = time.monotonic()
    return _whatifs(base, email, limit), time.monotonic() - started


def _disagreements(sc: Screen, confirmed: Judged, candidate: Candidate) -> list[str]:
    """Where the screen and the simulation differ by more than 10 %: stations' mean utilization and the funnel's steps."""
    out = []
    results = confirmed.results
    for name, offered in sc.offered.items():
        capacity = np.array(
            [candidate.at(name, int(j * sc.dt // candidate.step) if candidate.step > 0 else 0) for j in range(sc.n)], dtype=float
        )
        screened = float(offered.sum() / capacity.sum()) if capacity.sum() > 0 else math.nan
        busy = sum(sum(r.stations[name].busy) for r in results if name in r.stations)
        cap = sum(sum(r.stations[name].capacity) for r in results if name in r.stations)
        simulated = busy / cap if cap > 0 else math.nan
        if simulated > 0 and abs(screened / simulated - 1) > 0.10:
            out.append(
                f"station {name}: mean utilization {screened:.1%} by the screen, {simulated:.1%} simulated "
                f"({screened / simulated - 1:+.0%})"
            )
    for step, rate in sc.step_rates.items():
        screened = float(rate.sum() * sc.dt)
        simulated = sum(sum(r.steps[step].reached) for r in results) / len(results) if results else math.nan
        if simulated > 0 and abs(screened / simulated - 1) > 0.10:
            out.append(f"step {step}: {screened:,.0f} requests by the screen, {simulated:,.0f} simulated ({screened / simulated - 1:+.0%})")
    return out


def _provenance(base: Scenario, opts: PlanOptions, sc: Screen) -> dict[str, Any]:
    cal = opts.calibration
    out: dict[str, Any] = {
        "scenario_file": base.path,
        "calibration": cal.source if cal is not None and not cal.empty else "none: the scenario's configured service times",
        "calibration_header": cal.header.strip() if cal is not None else "",
        "peak_arrival_rate": round(float(sc.arrivals.max()), 4),
    }
    validation = opts.validation
    if validation is None:
        out["validation"] = "none: no validation backs this model"
        out["extrapolated"] = "every recommendation: no validated load range"
        return out
    meta = validation.get("meta", {})
    levels = validation.get("levels", [])
    passed = [lv.get("fraction") for lv in levels if lv.get("passed")]
    top = max((float(lv.get("rate", 0.0)) for lv in levels), default=0.0)
    out["validation"] = (
        f"{len(passed)} of {len(levels)} levels passed ({', '.join(f'{x:g}' for x in passed) or 'none'}); highest level {top:.4g} "
        f"arrivals/s"
    )
    out["validation_scenario"] = meta.get("scenario_file")
    out["validated_up_to"] = top
    ratio = out["peak_arrival_rate"] / top if top > 0 else math.inf
    out["extrapolated"] = f"the peak is {ratio:.3g} x the highest validated load" if ratio > 1 else "no: within the validated range"
    return out


def run_plan(base: Scenario, opts: PlanOptions) -> PlanOutcome:
    """Screen, confirm by simulation, and gather the report's figures (see the module's doc)."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    first = screen(base)
    email, limit, problems = _rates(base, first)
    scenario0 = planned(base, _candidate(first, 0.0, email, limit))
    sc = screen(scenario0)
    timings["screen"] = time.monotonic() - started
    say(
        "plan",
        f"screen: {format_duration(timings['screen'])}; peak {', '.join(f'{k} {v}' for k, v in sc.static().items())} servers",
        opts.quiet,
    )
    infeasible = problems + sc.infeasible
    candidate = _candidate(sc, base.plan.schedule, email, limit)
    sim = Simulator(opts.workers or os.cpu_count() or 1, opts.quiet)
    try:
        sim_started = time.monotonic()
        # the what-ifs (screens) go first into the pool: they run beside the first replications, whose count seldom
        # fills every core to the end, so they cost no wall time
        whatifs = sim.submit(_timed_whatifs, base, email, limit)
        best, judged, rounds, why = _search(base, candidate, sim, sc.bounds)
        timings["simulation"] = time.monotonic() - sim_started
        found, timings["what-ifs"] = whatifs.result()
    finally:
        sim.close()
    outcome = PlanOutcome(
        planned(base, best) if best is not None else scenario0, base, sc, best, judged, rounds, list(dict.fromkeys(infeasible + why))
    )
    if best is not None and judged is not None:
        outcome.headroom = _headroom(outcome.scenario, sc, best.peak())  # the screen of the planned rates: servers do not change it
        outcome.disagreements = _disagreements(sc, judged, best)
    outcome.whatifs = found
    outcome.provenance = _provenance(base, opts, sc)
    timings["total"] = time.monotonic() - started
    outcome.seconds = timings
    return outcome


def read_validation(path: str | Path) -> dict[str, Any]:
    """A validation.json written by ``capacity validate``; ValueError when it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: expected a validation.json written by capacity validate: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("levels"), list):
        raise ValueError(f"{path}: expected a validation.json written by capacity validate (with its levels)")
    return data

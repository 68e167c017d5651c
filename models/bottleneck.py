"""Bottleneck analysis: where a scenario's system saturates, by the operational laws.

With visit ratio V_i (requests of step i per arriving registrant, from the
drop-off probabilities; failures and retries ignored) and mean service time
S_k,r of request type r at station k, the demand of one registrant at station k
is D_k = sum_i V_i S_k,r(i) server-seconds.  Station k saturates at an arrival
rate of c_k / D_k (c_k servers); the registry also at its rate limit over its
visit ratio; the email sender at its send rate over the emails sent per
registrant; the server's processor (``system.cpu``) at its cores over the
CPU seconds per registrant.  The smallest is the system's saturation arrival
rate, the knee of the latency curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from models.scenario import CPU, EMAIL, REGISTRY, Scenario

__all__ = ["visit_ratios", "Limit", "limits", "saturation", "busiest_step", "level_duration"]


def visit_ratios(scenario: Scenario) -> list[float]:
    """Expected requests of each journey step per arriving registrant (no failures, no retries, repeats counted)."""
    out: list[float] = []
    reach = 1.0
    for i, step in enumerate(scenario.journey):
        if i > 0:
            reach *= step.proceed
        out.append(reach / (1.0 - step.repeat) if step.repeat < 1 else math.inf)
    return out


def level_duration(scenario: Scenario, rate: float, duration: float, samples: int, longest: float) -> float:
    """How long a validation level at ``rate`` arrivals/s runs: at least ``duration``, and
    long enough that the rarest request type (by visit ratios) can reach ``samples``
    requests, but never longer than ``longest``."""
    per_type: dict[str, float] = {}
    for v, step in zip(visit_ratios(scenario), scenario.journey, strict=True):
        per_type[step.request_type] = per_type.get(step.request_type, 0.0) + v
    rarest = min((v for v in per_type.values() if v > 0), default=0.0)
    if samples <= 0 or rarest <= 0 or rate <= 0 or math.isinf(rarest):
        return duration
    return min(max(duration, math.ceil(samples / (rate * rarest))), max(longest, duration))


@dataclass(frozen=True)
class Limit:
    """One resource's saturation arrival rate (registrants/s) and what sets it."""

    resource: str
    demand: float  # per arriving registrant: server-seconds (stations) or calls/emails
    capacity: float  # servers, or calls/emails per second
    rate: float  # arrival rate at which it saturates
    kind: str  # "servers", "rate limit" or "send rate"


def limits(scenario: Scenario) -> list[Limit]:
    """Every resource's saturation arrival rate at the scenario's initial capacities, smallest first."""
    visits = visit_ratios(scenario)
    sysd = scenario.system
    demand: dict[str, float] = {}
    for v, step in zip(visits, scenario.journey, strict=True):
        for name in step.stations:
            if name == REGISTRY:
                assert sysd.registry is not None
                demand[REGISTRY] = demand.get(REGISTRY, 0.0) + v * sysd.registry.latency.mean
            else:
                dist = sysd.stations[name].service_for(step.request_type)
                demand[name] = demand.get(name, 0.0) + v * (dist.mean if dist is not None else 0.0)
    if sysd.cpu is not None:
        for v, step in zip(visits, scenario.journey, strict=True):
            work = sysd.cpu.work_for(step.request_type)
            if work is not None:
                own = work.work.mean if work.work is not None else 0.0
                at_full = (work.demand - own) * sysd.cpu.factor(1.0) + own * sysd.cpu.work_factor(1.0)  # at saturation
                demand[CPU] = demand.get(CPU, 0.0) + v * at_full
    out: list[Limit] = []
    for name, d in demand.items():
        if name == CPU:
            assert sysd.cpu is not None
            out.append(Limit(CPU, d, sysd.cpu.cores, sysd.cpu.cores / d if d > 0 else math.inf, "servers"))
            continue
        servers = (
            sysd.registry.concurrency
            if name == REGISTRY and sysd.registry is not None
            else sysd.stations[name].servers
            if name != REGISTRY
            else 0
        )
        out.append(Limit(name, d, servers, servers / d if d > 0 else math.inf, "servers"))
    registry_calls = sum(v for v, step in zip(visits, scenario.journey, strict=True) if REGISTRY in step.stations)
    if sysd.registry is not None and sysd.registry.rate_limit is not None and registry_calls > 0:
        out.append(
            Limit(
                f"{REGISTRY} rate limit", registry_calls, sysd.registry.rate_limit, sysd.registry.rate_limit / registry_calls, "rate limit"
            )
        )
    emails = sum(visits[i - 1] for i, step in enumerate(scenario.journey) if i > 0 and step.waits_for == EMAIL)
    if sysd.email is not None and emails > 0:
        out.append(Limit(EMAIL, emails, sysd.email.rate, sysd.email.rate / emails, "send rate"))
    return sorted(out, key=lambda lim: lim.rate)


def saturation(scenario: Scenario) -> Limit:
    """The bottleneck: the resource that saturates at the lowest arrival rate."""
    found = limits(scenario)
    if not found:
        raise ValueError("the scenario's journey visits no station with a service time")
    return found[0]


def busiest_step(scenario: Scenario, limit: Limit) -> tuple[int, float]:
    """The journey step that puts the most load on ``limit``'s resource: (step index, its visit ratio).

    Its request type's throughput at the saturation rate is what the knee
    check compares: ``limit.rate`` x the visit ratio.
    """
    resource = REGISTRY if limit.resource.startswith(REGISTRY) else limit.resource
    visits = visit_ratios(scenario)
    best, best_load = 0, -1.0
    for i, (v, step) in enumerate(zip(visits, scenario.journey, strict=True)):
        if resource == EMAIL:
            load = v if step.waits_for == EMAIL else 0.0
        elif resource == CPU:
            work = scenario.system.cpu.work_for(step.request_type) if scenario.system.cpu is not None else None
            load = v * work.demand if work is not None else 0.0
        elif resource not in step.stations:
            load = 0.0
        elif resource == REGISTRY:
            load = v
        else:
            dist = scenario.system.stations[resource].service_for(step.request_type)
            load = v * (dist.mean if dist is not None else 0.0)
        if load > best_load:
            best, best_load = i, load
    return best, visits[best]

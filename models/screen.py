"""The analytic screen of a capacity plan: per interval, how many servers each station needs.

The screen turns the scenario's arrival curve into per-interval request rates
at every station, then sizes each station interval by interval with the exact
M/M/c formulas of :mod:`models.queueing`, at each interval's own rate (the
pointwise-stationary approximation):

- **rates**: step i's requests per second are the previous step's completions,
  times its ``proceed`` share, delayed by its think time (a convolution with the
  think-time distribution, drawn once); a step that waits for the email starts
  after the outbox delivers it, and the outbox and the registry's rate limit are
  fluid queues (arrivals beyond the send rate or the rate limit wait, first
  come first served, and go on in order);
- **stations**: offered load a = sum over steps of rate x mean service time
  (Erlangs); the fewest servers c with a / c at most ``plan.target`` and every
  SLO that concerns the station met by its share:
  a latency percentile p below T: the route's service times take their p-th
  percentile s_p (drawn), the waits share the rest, so each of the route's n
  stations needs P(W > (T - s_p) / n) <= (1 - p) / n, with
  P(W > t) = C(c, a) exp(-(c mu - lambda) t) (Erlang C);
  an error rate e: shed (M/M/c/K blocking) plus abandoned (Erlang A, with the
  step's patience) at most e / n per station;
  a wait percentile at a station: Erlang C exactly;
- **backlogs**: the outbox and the registry's rate limit as fluid queues: the
  peak backlog, when it drains, and the smallest constant rate that drains it
  within the ``backlog_drained`` SLO.

Retries and give-ups are left out, and the waits of a route are bounded one by
one (a union bound), so the screen errs towards more servers; the simulation
then confirms or corrects it (``workflows.plan``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from models.arrivals import expected_arrivals, stream
from models.distributions import Distribution
from models.queueing import erlang_a, erlang_c, mmck
from models.scenario import EMAIL, REGISTRY, Scenario, Slo

__all__ = ["Screen", "screen", "servers_needed", "fluid_queue", "rate_to_drain", "registry_capacity", "DEFAULT_MAX_SERVERS"]

DEFAULT_MAX_SERVERS = 256  # a station not bounded in plan.stations may have up to max(this, 8 x its configured servers)
DRAWS = 20_000  # samples of each think time and route service time
QUEUE_SETTLED = 0.5  # requests: the mean queue a station may keep once the backlog_drained SLO's time has passed
STEP = 60.0  # seconds: the screen's interval at most (a launch's peak lasts minutes; an interval's mean rate must not hide it)


@dataclass
class Need:
    """Why a station needs its servers in one interval: the constraint that set the count."""

    servers: int
    reason: str  # "utilization", an SLO's label, or "bound" when the maximum could not meet ``blocked``
    blocked: str | None = None  # the SLO that cannot be met within the station's bounds


@dataclass
class Backlog:
    """A fluid queue over the day (the outbox, the registry's rate limit): backlog at each interval's end."""

    name: str
    rate: np.ndarray  # its service rate per interval (per second)
    inflow: np.ndarray  # per second per interval
    backlog: np.ndarray  # at each interval's end
    dt: float

    @property
    def peak(self) -> float:
        return float(self.backlog.max()) if len(self.backlog) else 0.0

    @property
    def drained_at(self) -> float:
        """Seconds from the start to the end of the interval in which the backlog last empties (inf: not within the horizon).

        As :func:`reports.summary.drain_time` reads a simulated queue: the
        interval in which the backlog drains still held one on average.
        """
        standing = np.nonzero(self.backlog >= 1.0)[0]
        if len(standing) == 0:
            return 0.0
        if standing[-1] == len(self.backlog) - 1:
            return math.inf
        return float((standing[-1] + 2) * self.dt)


@dataclass
class Screen:
    """The screen's answer for one scenario: rates, loads, servers needed per interval, backlogs."""

    dt: float
    start: float
    arrivals: np.ndarray  # registrants per second, per interval
    step_rates: dict[str, np.ndarray]  # requests per second of each journey step
    offered: dict[str, np.ndarray]  # Erlangs per station
    needs: dict[str, list[Need]]  # per station, per interval
    bounds: dict[str, tuple[int, int]]
    backlogs: dict[str, Backlog] = field(default_factory=dict)
    infeasible: list[str] = field(default_factory=list)  # SLOs no configuration within the bounds meets, with why

    @property
    def n(self) -> int:
        return len(self.arrivals)

    def servers(self, station: str) -> np.ndarray:
        return np.array([need.servers for need in self.needs[station]], dtype=int)

    def static(self) -> dict[str, int]:
        """Enough servers for the peak: each station's largest need over the day."""
        return {k: int(self.servers(k).max()) for k in self.needs}

    def schedule(self, step: float) -> dict[str, list[int]]:
        """Servers per schedule step: the largest need within the step and the interval just after it (scale up before)."""
        out: dict[str, list[int]] = {}
        per = max(1, round(step / self.dt))
        for k in self.needs:
            c = self.servers(k)
            out[k] = [int(c[j : min(len(c), j + per + 1)].max()) for j in range(0, len(c), per)]
        return out


def _kernel(dist: Distribution, dt: float, n: int, seed: int, key: int) -> np.ndarray:
    """P(delay falls in interval m), m = 0..n-1: the distribution drawn :data:`DRAWS` times, binned by ``dt``."""
    if dist.mean <= 0:
        k = np.zeros(n)
        k[0] = 1.0
        return k
    draw = dist.sampler(stream(seed, "screen", key))
    samples = np.array([draw() for _ in range(DRAWS)])
    hist = np.bincount(np.minimum((samples / dt).astype(int), n), minlength=n + 1)[:n]
    return hist / DRAWS


def _delayed(rate: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return np.convolve(rate, kernel)[: len(rate)]


def fluid_queue(inflow: np.ndarray, rate: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """A first-come-first-served fluid queue: (backlog at each interval's end, outflow per second per interval)."""
    backlog = np.zeros(len(inflow))
    out = np.zeros(len(inflow))
    b = 0.0
    for j, (x, r) in enumerate(zip(inflow, rate, strict=True)):
        nb = max(0.0, b + (x - r) * dt)
        out[j] = x + (b - nb) / dt
        backlog[j] = b = nb
    return backlog, out


def rate_to_drain(inflow: np.ndarray, dt: float, within: float, low: float = 1e-3) -> float:
    """The smallest constant service rate whose fluid backlog is last standing before ``within`` seconds from the start."""
    high = max(float(inflow.max()), low) * 2
    if Backlog("", np.full(len(inflow), high), inflow, fluid_queue(inflow, np.full(len(inflow), high), dt)[0], dt).drained_at > within:
        return math.inf
    for _ in range(50):
        mid = (low + high) / 2
        rate = np.full(len(inflow), mid)
        if Backlog("", rate, inflow, fluid_queue(inflow, rate, dt)[0], dt).drained_at <= within:
            high = mid
        else:
            low = mid
    return high


def _rate_over_time(base: float, changes: list[tuple[float, float]], starts: np.ndarray) -> np.ndarray:
    """A rate that changes at given times (the scenario's capacity changes), per interval start."""
    out = np.full(len(starts), base)
    for at, value in sorted(changes):
        out[starts >= at] = value
    return out


def _p_wait_exceeds(lam: float, mu: float, c: int, t: float) -> float:
    a = lam / mu
    if a >= c:
        return 1.0
    return erlang_c(c, a) * math.exp(-(c * mu - lam) * t)


def servers_needed(lam: float, mean: float, checks: list[tuple[str, str, float, float]], target: float, low: int, high: int) -> Need:
    """The fewest servers in [low, high] that keep utilization at most ``target`` and meet every check.

    A check is (label, kind, x, limit): kind "wait" needs P(W > x) <= limit
    (Erlang C), "queue" needs the mean queue length Lq = C(c, a) a / (c - a) at most
    limit, "loss" needs the shed share of an M/M/c/K with x waiting places
    (x < 0: unbounded) at most limit, "abandon" needs Erlang A's abandonment with
    patience mean x at most limit.  Every check gets easier with more servers,
    so the count is found by bisection.
    """
    if lam <= 0 or mean <= 0:
        return Need(low, "no load")
    mu = 1.0 / mean
    a = lam / mu

    def failing(c: int) -> str | None:
        if a / c > target:
            return "utilization"
        for label, kind, x, limit in checks:
            if kind == "wait" and _p_wait_exceeds(lam, mu, c, x) > limit:
                return label
            if kind == "loss" and x >= 0 and mmck(lam, mu, c, c + int(x)).p_block > limit:
                return label
            if kind == "queue" and (a >= c or erlang_c(c, a) * a / (c - a) > limit):
                return label
            if kind == "abandon" and erlang_a(lam, mu, c, 1.0 / x).p_abandon > limit:
                return label
        return None

    if (why := failing(high)) is not None:
        return Need(high, "bound", None if why == "utilization" else why)
    lo, hi = low, high  # failing(hi) is None
    if failing(lo) is None:
        return Need(lo, "minimum")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if failing(mid) is None:
            hi = mid
        else:
            lo = mid
    return Need(hi, failing(lo) or "utilization")


def _route_quantile(scenario: Scenario, request_type: str, p: float, seed: int) -> float:
    """The p-th percentile of one request's service times along its route (registry latency and overhead included)."""
    rng = stream(seed, "screen", 2000 + scenario.request_types.index(request_type))
    total = np.zeros(DRAWS)
    for step in scenario.journey:
        if step.request_type != request_type:
            continue
        for name in step.stations:
            dist = scenario.system.registry.latency if name == REGISTRY and scenario.system.registry else None
            if name != REGISTRY:
                dist = scenario.system.stations[name].service_for(request_type)
            if dist is not None and dist.mean > 0:
                draw = dist.sampler(rng)
                total += np.array([draw() for _ in range(DRAWS)])
        overhead = scenario.overhead_for(request_type)
        if overhead is not None:
            total += overhead.mean
        break
    return float(np.percentile(total, p))


def _checks(scenario: Scenario, station: str, seed: int) -> tuple[list[tuple[str, str, float, float]], list[str]]:
    """The SLO checks a station must meet by its share, and the SLOs its service times alone already break."""
    checks: list[tuple[str, str, float, float]] = []
    broken: list[str] = []
    for slo in scenario.slos:
        if slo.wait_below is not None and slo.station == station and slo.percentile is not None:
            checks.append((slo.label, "wait", slo.wait_below, 1 - slo.percentile / 100))
            continue
        types = [slo.request] if slo.request else scenario.request_types
        for step in scenario.journey:
            if step.request_type not in types or station not in step.stations:
                continue
            route = [n for n in step.stations if n != REGISTRY]
            n = len(route)
            if slo.below is not None and slo.percentile is not None:
                budget = slo.below - _route_quantile(scenario, step.request_type, slo.percentile, seed)
                if budget <= 0:
                    broken.append(f"{slo.label}: the route's service times alone exceed it at p{slo.percentile:g}")
                    continue
                checks.append((slo.label, "wait", budget / n, (1 - slo.percentile / 100) / n))
            elif slo.error_rate is not None or slo.abandon_rate is not None:
                limit = (slo.error_rate if slo.error_rate is not None else slo.abandon_rate) or 0.0
                queue = scenario.system.stations[station].queue
                kinds: list[tuple[str, float]] = []
                if slo.error_rate is not None and queue is not None:
                    kinds.append(("loss", float(queue)))
                if step.patience is not None and step.patience.mean > 0:
                    kinds.append(("abandon", step.patience.mean))
                # the budget is shared by the route's stations and, at each, by shedding and abandonment
                checks += [(slo.label, kind, x, limit / (n * len(kinds))) for kind, x in kinds]
    return checks, broken


def registry_capacity(scenario: Scenario, starts: np.ndarray) -> np.ndarray:
    """Calls per second the registry can answer at each interval start: its concurrency over its mean latency."""
    registry = scenario.system.registry
    if registry is None or registry.latency.mean <= 0:
        return np.full(len(starts), math.inf)
    servers = _rate_over_time(
        float(registry.concurrency),
        [(c.at, float(c.servers)) for c in scenario.system.changes if c.station == REGISTRY and c.servers is not None],
        starts,
    )
    return servers / registry.latency.mean


def _step_rates(
    scenario: Scenario, arrivals: np.ndarray, dt: float, starts: np.ndarray, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, Backlog]]:
    """Requests per second of every journey step per interval, and the outbox's and the registry's fluid backlogs."""
    s = scenario
    n = len(arrivals)
    rates: dict[str, np.ndarray] = {}
    backlogs: dict[str, Backlog] = {}
    done = arrivals  # completions of the previous step
    for i, step in enumerate(s.journey):
        inflow = done
        if step.waits_for == EMAIL and s.system.email is not None:
            send = _rate_over_time(s.system.email.rate, [(c.at, c.send_rate) for c in s.system.changes if c.send_rate is not None], starts)
            backlog, inflow = fluid_queue(done, send, dt)
            backlogs[EMAIL] = Backlog(EMAIL, send, done, backlog, dt)
        think = step.think.scaled(1 / s.run.compress) if s.run.compress != 1 else step.think
        rate = _delayed(inflow, _kernel(think, dt, n, seed, 1000 + i)) * (step.proceed if i > 0 else 1.0)
        rate = rate / (1.0 - step.repeat) if step.repeat < 1 else rate
        rates[step.name] = rate
        done = rate
        registry = s.system.registry
        if REGISTRY in step.stations and registry is not None:
            # the registry serves at most its rate limit, and at most its concurrency over its mean latency
            cap = registry_capacity(s, starts)
            limit = _rate_over_time(
                registry.rate_limit if registry.rate_limit is not None else math.inf,
                [(c.at, c.rate_limit) for c in s.system.changes if c.station == REGISTRY and c.rate_limit is not None],
                starts,
            )
            limit = np.minimum(limit, cap)
            backlog, served = fluid_queue(rate, limit, dt)
            backlogs[REGISTRY] = Backlog(REGISTRY, limit, rate, backlog, dt)
            done = served * (1 - registry.mismatch)
    return rates, backlogs


def screen(scenario: Scenario, seed: int | None = None, load: float = 1.0) -> Screen:
    """Size every station interval by interval for the scenario's arrivals (times ``load``), SLOs and plan bounds (see the module's doc)."""
    s = scenario
    seed = s.seed if seed is None else seed
    start, end = s.window
    dt = min(s.run.interval, STEP)
    starts = np.arange(start, end, dt)
    arrivals = np.array([expected_arrivals(s.arrivals, t, min(t + dt, end), s.horizon) / dt for t in starts]) * s.run.scale * load
    rates, backlogs = _step_rates(s, arrivals, dt, starts, seed)
    offered: dict[str, np.ndarray] = {}
    lam: dict[str, np.ndarray] = {}
    for step in s.journey:
        for name in step.stations:
            if name == REGISTRY:
                continue
            dist = s.system.stations[name].service_for(step.request_type)
            mean = dist.mean if dist is not None else 0.0
            offered[name] = offered.get(name, np.zeros(len(starts))) + rates[step.name] * mean
            lam[name] = lam.get(name, np.zeros(len(starts))) + rates[step.name]
    needs: dict[str, list[Need]] = {}
    bounds: dict[str, tuple[int, int]] = {}
    drained = slo_for_backlog(s)
    infeasible: list[str] = []
    for name, st in s.system.stations.items():
        b = s.plan.stations.get(name)
        low, high = (b.min, b.max) if b is not None else (1, max(DEFAULT_MAX_SERVERS, 8 * st.servers))
        bounds[name] = (low, high)
        checks, broken = _checks(s, name, seed)
        infeasible += broken
        # once the backlog must be gone, no standing queue: the simulation counts a mean queue of one as a backlog
        settled = checks + [(drained.label, "queue", 0.0, QUEUE_SETTLED)] if drained is not None else checks
        a, x = offered.get(name, np.zeros(len(starts))), lam.get(name, np.zeros(len(starts)))
        cache: dict[tuple[float, float, bool], Need] = {}
        needs[name] = []
        for j in range(len(starts)):
            late = drained is not None and drained.backlog_drained is not None and starts[j] - start >= drained.backlog_drained - dt
            key = (round(float(x[j]), 6), round(float(a[j]), 9), late)
            if key not in cache:
                mean = float(a[j] / x[j]) if x[j] > 0 else 0.0
                cache[key] = servers_needed(float(x[j]), mean, settled if late else checks, s.plan.target, low, high)
            needs[name].append(cache[key])
        blocked = sorted({need.blocked or "utilization" for need in needs[name] if need.reason == "bound"})
        infeasible += [f"{why} at station {name}: needs more than its bound of {high} servers" for why in blocked]
    return Screen(dt, start, arrivals, rates, offered, needs, bounds, backlogs, list(dict.fromkeys(infeasible)))


def slo_for_backlog(scenario: Scenario) -> Slo | None:
    """The scenario's ``backlog_drained`` SLO, if it has one."""
    return next((slo for slo in scenario.slos if slo.backlog_drained is not None), None)

"""The SimPy model of the registration funnel.

Registrants arrive on the scenario's curve (the shared arrival sampler) and walk
the journey: for each step they may drop off, may wait for an email, think, then
send the step's request through its stations.  A request can be shed by a full
queue, abandoned when patience runs out, refused by the registry's rate limit or
quota, time out, or come back as a NIK mismatch; the retry policy decides whether
to try again after a backoff.  A monitor process closes an aggregation interval
every ``run.interval`` and applies capacity changes at their times.

:func:`simulate_once` runs one replication and returns a :class:`RunResult`.
"""

from __future__ import annotations

import gc
import heapq
import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy
from simpy.events import NORMAL, URGENT, Event

from contracts import decision_seed
from models.arrivals import MISMATCH_SLOT, arrival_times, decision_at, decision_base, decisions_at, give_up_slot, proceed_slot, stream
from models.distributions import Sampler
from models.results import RequestSeries, RunResult, StationSeries, StepSeries
from models.scenario import CPU, EMAIL, REGISTRY, Scenario, Step
from models.stations import INF, Processor, Registry, Sender, Station

__all__ = ["simulate_once", "Progress"]

#: progress(simulated_seconds_done, simulated_seconds_total)
Progress = Callable[[float, float], None]


def _uniform(rng: np.random.Generator) -> Sampler:
    buf: list[float] = []
    pop = buf.pop

    def u() -> float:
        if not buf:
            buf.extend(rng.random(4096).tolist())
        return pop()

    return u


class _Tally:
    """Per-interval counters of one request type (flushed by the monitor)."""

    __slots__ = ("started", "ok", "fails", "latencies")

    def __init__(self) -> None:
        self.started = 0
        self.ok = 0
        self.fails: dict[str, int] = {}
        self.latencies: list[float] = []


@dataclass(slots=True)
class _StepPlan:
    """A step with everything resolved for speed: samplers, station objects, counters."""

    index: int
    step: Step
    tally: _Tally
    visits: list[tuple[Station, Sampler | None]]
    think: Sampler | None
    patience: Sampler | None
    overhead: Sampler | None  # a pure delay per request outside the stations
    sends_email: bool  # the next step waits for an email: send it when this one completes
    waits_for_email: bool
    retry_on: frozenset[str]
    proceed: float
    goes_on: bytes  # per arrival index: 1 if the registrant goes on to this step (their own decision, drawn up front)
    give_up_bases: list[int]  # decision_base of giving up after attempt 1, 2, ...
    asks_registry: bool
    repeat: float
    takes_quota: bool
    durations: list[float]
    # per-interval counters (flushed by the monitor)
    reached: int = 0
    completed: int = 0
    dropped: int = 0
    failed: int = 0


class _Calendar:
    """Keeps far-future wake-ups (long think times, backoffs) out of the event heap.

    A wake-up at least two bucket widths ahead is parked in its bucket; one event
    per bucket, at the bucket's start, moves the bucket's wake-ups into the heap
    at their exact times.  The heap then holds only the next minute or so of
    events rather than every registrant who is reading an email.

    :meth:`sleep` parks an event for a process to wait on; :meth:`defer` parks a
    plain callback with a value, so that a registrant between steps can end its
    process and be started again at the next step: a sleeping registrant then
    costs a small tuple instead of a suspended generator with its events.
    """

    def __init__(self, env: simpy.Environment, width: float = 60.0):
        self.env = env
        self.width = width
        self.far = 2 * width
        self.buckets: dict[int, list[tuple[float, Any, Callable[[Event], None] | None]]] = {}

    def _bucket(self, when: float) -> list[tuple[float, Any, Callable[[Event], None] | None]]:
        k = int(when // self.width)
        bucket = self.buckets.get(k)
        if bucket is None:
            env = self.env
            bucket = self.buckets[k] = []
            opener = Event(env)
            opener._ok = True
            opener._value = k
            heapq.heappush(env._queue, (k * self.width, URGENT, next(env._eid), opener))  # type: ignore[attr-defined]
            opener.callbacks.append(self._open)  # type: ignore[union-attr]
        return bucket

    def sleep(self, delay: float) -> Event:
        """An event that triggers after ``delay`` (a plain timeout when it is near)."""
        env = self.env
        if delay < self.far:
            return env.timeout(delay)
        ev = Event(env)
        ev._ok = True
        ev._value = None
        when = env._now + delay
        self._bucket(when).append((when, ev, None))
        return ev

    def defer(self, delay: float, value: Any, callback: Callable[[Event], None]) -> None:
        """Call ``callback(event)`` with ``event.value == value`` after ``delay`` (≥ ``far``)."""
        when = self.env._now + delay
        self._bucket(when).append((when, value, callback))

    def _open(self, opener: Event) -> None:
        env = self.env
        queue = env._queue  # type: ignore[attr-defined]
        eid = env._eid  # type: ignore[attr-defined]
        for when, item, callback in self.buckets.pop(opener._value):
            if callback is None:
                ev = item
            else:
                ev = Event(env)
                ev._ok = True
                ev._value = item
                ev.callbacks.append(callback)  # type: ignore[union-attr]
            heapq.heappush(queue, (when, NORMAL, next(eid), ev))


class _Lean:
    """Drives a registrant generator on SimPy events, without a Process event.

    A :class:`simpy.Process` costs two scheduled events of its own (start and
    end) and a general resume loop; a registrant needs neither (nobody waits for
    it and it only yields pending events), so a million of them run this lighter
    driver.  The generator is started at once, at the current simulated time.
    """

    __slots__ = ("gen", "resume")

    def __init__(self, gen: Generator[Event, Any, None]):
        self.gen = gen
        self.resume = self._resume
        self._resume(None)

    def _resume(self, event: Event | None) -> None:
        try:
            nxt = self.gen.send(None if event is None else event._value)
        except StopIteration:
            del self.resume  # break the self-reference: the run keeps the cyclic collector off
            return
        nxt.callbacks.append(self.resume)  # type: ignore[union-attr]


class _Route:
    """One request's way through its stations, chained by callbacks.

    The registrant waits on one ``reply`` event for the whole route; each
    station's completion starts the next leg directly, and the last station
    triggers ``reply`` itself.  A failure on any leg ends the route with its reason.
    """

    __slots__ = ("model", "visits", "i", "deadline", "reply", "u")

    def __init__(
        self, model: FunnelModel, visits: list[tuple[Station, Sampler | None]], deadline: float, reply: Event, u: float | None = None
    ):
        self.model = model
        self.visits = visits
        self.i = 0
        self.deadline = deadline
        self.reply = reply
        self.u = u  # the registrant's own draw for the registry's verdict

    def next(self, previous: Event | None) -> None:
        reply = self.reply
        if previous is not None and previous._value is not None:
            reply._ok = True
            reply._value = previous._value
            self.model.env.schedule(reply)
            return
        station, service = self.visits[self.i]
        self.i += 1
        last = self.i == len(self.visits)
        target = reply if last else None
        if service is None:  # the registry
            m = self.model
            leg = m.registry.call(m.registry_latency(), m.registry_timeout, self.deadline, target, self.u)  # type: ignore[union-attr]
        else:
            leg = station.request(service(), self.deadline, ev=target)
        if not last:
            leg.callbacks.append(self.next)  # type: ignore[union-attr]


VISIT, HOLD, DELAY, RELEASE, LOCK = range(5)  # legs of a route through the processor


def _cpu_legs(
    visits: list[tuple[Station, Sampler | None]], cpu: Station, steps: int, step: Sampler | None, threads: frozenset[str], locks: int = 0
) -> list[tuple[int, Station | None, Sampler | None]]:
    """A request's route with its ``steps`` on the processor, as the reference server runs it.

    Each station is held for its whole visit: in a threaded station (its work
    runs in a worker thread) one step first, the thread's work; then the
    service; then the step in which the event loop resumes the request, which
    is waited for before the station is let go.  The thread's ``locks`` (its
    calls that give up the interpreter lock) each wait for the processor's
    current step to end, before the thread's step.  The other steps are spread
    over the gaps before, between and after the stations, first gaps first.
    The registry (an outside service) is visited, not held.
    """
    held = [j for j, (_, service) in enumerate(visits) if service is not None]
    thread_at = next((j for j in held if visits[j][0].name in threads), None)
    left = steps
    if thread_at is not None and left > 0:
        left -= 1
    else:
        thread_at = None
    resumes = min(left, len(held))
    left -= resumes
    gaps = len(visits) + 1
    legs: list[tuple[int, Station | None, Sampler | None]] = []
    for j in range(gaps):
        legs += [(VISIT, cpu, step)] * (left // gaps + (1 if j < left % gaps else 0))
        if j == len(visits):
            break
        station, service = visits[j]
        if service is None:
            legs.append((VISIT, station, None))
            continue
        legs.append((HOLD, station, None))
        if j == thread_at:
            legs += [(LOCK, cpu, None)] * locks
            legs.append((VISIT, cpu, step))
        legs.append((DELAY, None, service))
        if resumes > 0:
            legs.append((VISIT, cpu, step))
            resumes -= 1
        legs.append((RELEASE, station, None))
    return legs


class _CpuRoute:
    """A request's way through its stations and the processor (see :func:`_cpu_legs`), chained by callbacks."""

    __slots__ = ("model", "legs", "i", "deadline", "reply", "u", "held", "since", "step")

    def __init__(self, model: FunnelModel, legs: list[tuple[int, Any, Any]], deadline: float, reply: Event, u: float | None = None):
        self.model = model
        self.legs = legs
        self.i = 0
        self.deadline = deadline
        self.reply = reply
        self.u = u
        self.held: Station | None = None
        self.since = 0.0
        self.step = 0.0  # CPU time of the latest step: the server lets a station go as its resumption step starts

    def _end(self, value: str | None) -> None:
        if self.held is not None:
            self.held.release(self.since)
            self.held = None
        reply = self.reply
        reply._ok = True
        reply._value = value
        self.model.env.schedule(reply)

    def next(self, previous: Event | None) -> None:
        if previous is not None and previous._value is not None:
            self._end(previous._value)
            return
        m = self.model
        legs = self.legs
        while True:
            if self.i == len(legs):
                self._end(None)
                return
            kind, station, sampler = legs[self.i]
            self.i += 1
            if kind == RELEASE:
                station.release(self.since, self.step)
                self.held = None
                continue
            self.step = 0.0
            if kind == HOLD:
                leg = station.hold(self.deadline)
                leg.callbacks.append(self._held)  # type: ignore[union-attr]
                return
            if kind == LOCK:
                leg = station.boundary()
                leg.callbacks.append(self.next)  # type: ignore[union-attr]
                return
            if kind == DELAY:
                leg = m.env.timeout(sampler())
            elif sampler is None:  # the registry
                leg = m.registry.call(m.registry_latency(), m.registry_timeout, self.deadline, None, self.u)  # type: ignore[union-attr]
            else:  # a step on the processor: server work, never abandoned
                self.step = sampler() * station.factor()
                leg = station.request(self.step)
            leg.callbacks.append(self.next)  # type: ignore[union-attr]
            return

    def _held(self, event: Event) -> None:
        if event._value is None:
            self.held = self.legs[self.i - 1][1]
            self.since = self.model.env._now
        self.next(event)


class FunnelModel:
    """One replication of a scenario, built on a SimPy environment."""

    def __init__(self, scenario: Scenario, seed: int, replication: int = 0):
        s = self.scenario = scenario
        self.start, self.end = scenario.window
        self.env = simpy.Environment(initial_time=self.start)
        self.compress = s.run.compress
        self.counting_from = self.start + s.run.warmup
        self.interval = s.run.interval
        self.n_intervals = max(1, math.ceil((self.end - self.counting_from) / self.interval - 1e-9))
        self.arrivals = arrival_times(scenario, seed, replication)
        self.seed = decision_seed(seed, replication)  # the registrants' decisions: one stream per replication
        mismatch = scenario.system.registry.mismatch if scenario.system.registry is not None else 0.0
        self.mismatched = self._choices(MISMATCH_SLOT, mismatch)  # 1: the registry will not match this registrant's NIK
        service_rng = stream(seed, "service", replication)
        self.journey_u = _uniform(stream(seed, "journey", replication))
        journey_rng = stream(seed, "journey", replication + 1_000_000)
        patience_rng = stream(seed, "patience", replication)
        registry_rng = stream(seed, "registry", replication)

        env = self.env
        sysd = s.system
        self.stations: dict[str, Station] = {name: Station(env, name, st.servers, st.queue) for name, st in sysd.stations.items()}
        self.registry: Registry | None = None
        if sysd.registry is not None:
            r = sysd.registry
            self.registry = Registry(env, r.concurrency, r.queue, r.rate_limit, r.burst, r.daily_quota, r.mismatch, _uniform(registry_rng))
            self.stations[REGISTRY] = self.registry
            self.registry_latency = r.latency.sampler(registry_rng)
            self.registry_timeout = r.timeout
        cpu_work: dict[str, tuple[int, Sampler, int]] = {}  # request type -> (steps, time per step, interpreter-lock takes)
        threads = frozenset(sysd.cpu.threads) if sysd.cpu is not None else frozenset()
        self.route = _CpuRoute if sysd.cpu is not None else _Route
        if sysd.cpu is not None:
            modes = sysd.cpu.modes
            spells = None
            if modes is not None:
                speed_rng = stream(seed, "cpu_speed", replication)
                spells = (*modes.factors(), modes.fast_for, modes.slow_for), lambda: float(speed_rng.exponential())
            self.stations[CPU] = Processor(
                env,
                CPU,
                sysd.cpu.cores,
                sysd.cpu.factor,
                sysd.cpu.measured_at,
                modes=spells[0] if spells else None,
                exponential=spells[1] if spells else None,
            )
            cpu_rng = stream(seed, "cpu", replication)
            for rt in s.request_types:
                work = sysd.cpu.work_for(rt)
                if work is not None and work.step.mean > 0:
                    cpu_work[rt] = (work.steps, work.step.sampler(cpu_rng), round(work.locks))
        self.sender: Sender | None = None
        if sysd.email is not None:
            rates = [(-INF, sysd.email.rate)] + sorted((c.at, c.send_rate) for c in sysd.changes if c.send_rate is not None)
            self.sender = Sender(env, EMAIL, rates)
        self.batch_quota = sysd.batch.quota if sysd.batch is not None else None
        self.batch_used = 0

        samplers: dict[tuple[str, str], Sampler] = {}
        self.request_types = s.request_types
        overhead_rng = stream(seed, "overhead", replication)
        overheads: dict[str, Sampler | None] = {}
        for rt in self.request_types:
            dist = s.overhead_for(rt)
            overheads[rt] = dist.sampler(overhead_rng) if dist is not None and dist.mean > 0 else None
        self.tallies = {rt: _Tally() for rt in self.request_types}
        self.plans: list[_StepPlan] = []
        for i, step in enumerate(s.journey):
            visits: list[tuple[Station, Sampler | None]] = []
            for name in step.stations:
                if name == REGISTRY:
                    visits.append((self.stations[name], None))
                    continue
                key = (name, step.request_type)
                if key not in samplers:
                    dist = sysd.stations[name].service_for(step.request_type)
                    assert dist is not None
                    samplers[key] = dist.sampler(service_rng)
                visits.append((self.stations[name], samplers[key]))
            if step.request_type in cpu_work:
                n_steps, sampler, locks = cpu_work[step.request_type]
                visits = _cpu_legs(visits, self.stations[CPU], n_steps, sampler, threads, locks)  # type: ignore[assignment]
            elif sysd.cpu is not None:  # a request type with no work on the processor still takes the processor's route
                visits = _cpu_legs(visits, self.stations[CPU], 0, None, threads)  # type: ignore[assignment]
            think = step.think.scaled(1.0 / self.compress) if self.compress != 1 else step.think
            nxt = s.journey[i + 1] if i + 1 < len(s.journey) else None
            self.plans.append(
                _StepPlan(
                    index=i,
                    step=step,
                    tally=self.tallies[step.request_type],
                    visits=visits,
                    think=think.sampler(journey_rng) if think.mean > 0 else None,
                    patience=step.patience.sampler(patience_rng) if step.patience is not None else None,
                    overhead=overheads[step.request_type],
                    sends_email=nxt is not None and nxt.waits_for == EMAIL,
                    waits_for_email=step.waits_for == EMAIL,
                    retry_on=frozenset(step.retry.retry_on),
                    proceed=step.proceed if i > 0 else 1.0,
                    goes_on=self._choices(proceed_slot(i), step.proceed) if i > 0 and step.proceed < 1.0 else b"",
                    give_up_bases=[decision_base(self.seed, give_up_slot(i, a)) for a in range(step.retry.max_attempts + 1)],
                    asks_registry=REGISTRY in step.stations,
                    repeat=step.repeat,
                    takes_quota=step.quota is not None,
                    durations=[],
                )
            )
        self.n_steps = len(self.plans)
        self.calendar = _Calendar(env)
        self.wake = self._wake  # one bound method for every deferred registrant
        self.station_names = list(self.stations) + ([EMAIL] if self.sender is not None else [])
        self.arrived_now = 0
        self._flushed_at = self.start
        n = self.n_intervals
        self.result = RunResult(
            source="model",
            scenario=s.name,
            start=self.counting_from,
            interval=self.interval,
            arrivals=[0] * n,
            requests={rt: RequestSeries.empty(n) for rt in self.request_types},
            stations={name: StationSeries.empty(n) for name in self.station_names},
            steps={p.step.name: StepSeries.empty(n) for p in self.plans},
        )
        self.step_hist = [self.result.steps[p.step.name].duration for p in self.plans]

    def _choices(self, slot: int, p: float) -> bytes:
        """One byte per arrival: 1 where the registrant's own draw for ``slot`` falls below ``p``."""
        return ((decisions_at(decision_base(self.seed, slot), len(self.arrivals)) < p).astype(np.uint8)).tobytes()

    # -- processes -----------------------------------------------------------
    def source(self) -> Generator[simpy.Event, Any, None]:
        env = self.env
        registrant = self.registrant
        timeout = env.timeout
        for index, t in enumerate(self.arrivals.tolist()):
            delay = t - env._now
            if delay > 0:
                yield timeout(delay)
            self.arrived_now += 1
            _Lean(registrant(index))

    def _wake(self, event: Event) -> None:
        """A registrant deferred between steps starts again: ``event.value`` is arrival index x steps + step."""
        index, step = divmod(event._value, self.n_steps)
        _Lean(self.registrant(index, step))

    def registrant(self, index: int, woken_at: int = -1) -> Generator[Event, Any, None]:
        """Arrival ``index``'s journey; ``woken_at`` resumes it at that step after a deferred wait.

        The registrant's own choices (go on, give up, a NIK that will not
        match) come from :func:`~models.arrivals.decision`, as in the load test.
        """
        env = self.env
        u = self.journey_u
        calendar = self.calendar
        sleep = calendar.sleep
        delivered = -INF  # when this registrant's verification email arrives
        for plan in self.plans if woken_at < 0 else self.plans[woken_at:]:
            if plan.index != woken_at:
                if plan.proceed < 1.0 and not plan.goes_on[index]:
                    plan.dropped += 1
                    return
                wait = delivered - env._now if plan.waits_for_email else 0.0
                if plan.think is not None:
                    wait += plan.think()
                if wait >= calendar.far:  # a long wait: end this process, start again at this step
                    calendar.defer(wait, index * self.n_steps + plan.index, self.wake)  # one int, not a tuple: a million sleep
                    return
                if wait > 0:
                    yield sleep(wait)
            plan.reached += 1
            began = env._now
            attempt = 1
            tally = plan.tally
            visits = plan.visits
            while True:
                # one request through the step's stations
                tally.started += 1
                sent = env._now
                deadline = sent + plan.patience() if plan.patience is not None else INF
                if len(visits) == 1 and visits[0][1] is not None and self.route is _Route:
                    station, service = visits[0]
                    reason: str | None = yield station.request(service(), deadline)  # type: ignore[misc]
                else:
                    reply = Event(env)
                    verdict = (0.0 if self.mismatched[index] else 1.0) if plan.asks_registry else None
                    self.route(self, visits, deadline, reply, verdict).next(None)  # type: ignore[arg-type]
                    reason = yield reply
                if plan.overhead is not None:
                    yield env.timeout(plan.overhead())
                if reason is None and plan.takes_quota and self.batch_quota is not None:
                    if self.batch_used >= self.batch_quota:
                        reason = "quota"
                    else:
                        self.batch_used += 1
                if reason is None:
                    tally.ok += 1
                    tally.latencies.append(env._now - sent)
                    if plan.repeat > 0 and u() < plan.repeat:
                        continue
                    break
                fails = tally.fails
                fails[reason] = fails.get(reason, 0) + 1
                retry = plan.step.retry
                if (
                    reason not in plan.retry_on
                    or attempt >= retry.max_attempts
                    or (retry.give_up > 0 and decision_at(plan.give_up_bases[attempt], index) < retry.give_up)
                ):
                    plan.failed += 1
                    return
                wait = min(retry.max_backoff, retry.backoff * retry.multiplier ** (attempt - 1))
                if retry.jitter > 0:
                    wait *= 1.0 + retry.jitter * (2.0 * u() - 1.0)
                wait /= self.compress  # as the load generator does
                attempt += 1
                if wait > 0:
                    yield sleep(wait)
            plan.completed += 1
            plan.durations.append(env._now - began)
            if plan.sends_email:
                delivered = self.sender.send()  # type: ignore[union-attr]

    def changes(self) -> Generator[simpy.Event, Any, None]:
        env = self.env
        for ch in sorted(self.scenario.system.changes, key=lambda c: c.at):
            if ch.at >= self.end:
                break
            if ch.at > env._now:
                yield env.timeout(ch.at - env._now)
            self.apply_change(ch)

    def apply_change(self, ch: Any) -> None:
        if ch.station is not None:
            st = self.stations[ch.station]
            if ch.queue is not None:
                st.set_limit(ch.queue)
            if ch.servers is not None:
                st.set_servers(ch.servers)
            if isinstance(st, Registry):
                if ch.rate_limit is not None:
                    st.set_rate_limit(ch.rate_limit)
                if ch.daily_quota is not None:
                    st.daily_quota = ch.daily_quota
        if ch.batch_quota is not None:
            self.batch_quota = ch.batch_quota

    def background(self, share: float, tick: float = 0.05) -> Generator[simpy.Event, Any, None]:
        """The server's own work with no load (timers, the email sender's polling): a step of ``share x tick`` every ``tick``."""
        cpu = self.stations[CPU]
        timeout = self.env.timeout
        while self.env._now + tick < self.end:
            cpu.request(share * tick)
            yield timeout(tick)

    def monitor(self) -> Generator[simpy.Event, Any, None]:
        env = self.env
        if self.counting_from > env._now:
            yield env.timeout(self.counting_from - env._now)
            self._flush(None)  # warm-up: thrown away
        for k in range(self.n_intervals):
            end = min(self.end, self.counting_from + (k + 1) * self.interval)
            if end > env._now:
                yield env.timeout(end - env._now)
            self._flush(k)

    def ticker(self, progress: Progress, every: float) -> Generator[simpy.Event, Any, None]:
        env = self.env
        total = self.end - self.start
        while env._now + every < self.end:
            yield env.timeout(every)
            progress(env._now - self.start, total)

    # -- aggregation -----------------------------------------------------------
    def _flush(self, k: int | None) -> None:
        res = self.result
        span = self.env._now - self._flushed_at
        self._flushed_at = self.env._now
        if k is not None:
            res.arrivals[k] = self.arrived_now
        self.arrived_now = 0
        for rt, tally in self.tallies.items():
            if k is not None:
                series = res.requests[rt]
                series.started[k] = tally.started
                series.ok[k] = tally.ok
                series.latency[k].record_many(tally.latencies)
                for reason, n in tally.fails.items():
                    series.fail_counts(reason)[k] = n
            tally.__init__()  # type: ignore[misc]
        flushers: list[Station | Sender] = [*self.stations.values(), *([self.sender] if self.sender else [])]
        for st in flushers:
            name = st.name
            arrivals, shed, abandoned, waited, busy, cap, qarea, qmax, waits = st.flush()
            if k is not None:
                ss = res.stations[name]
                ss.arrivals[k], ss.shed[k], ss.abandoned[k], ss.waited[k] = arrivals, shed, abandoned, waited
                ss.busy[k], ss.capacity[k], ss.queue_max[k] = busy, cap, qmax
                ss.queue_mean[k] = qarea / span if span > 0 else 0.0
                ss.wait.record_many(waits)
        for plan, hist in zip(self.plans, self.step_hist, strict=True):
            if k is not None:
                fs = res.steps[plan.step.name]
                fs.reached[k], fs.completed[k], fs.dropped[k], fs.failed[k] = plan.reached, plan.completed, plan.dropped, plan.failed
                hist.record_many(plan.durations)
            plan.reached = plan.completed = plan.dropped = plan.failed = 0
            plan.durations.clear()

    def run(self, progress: Progress | None = None) -> RunResult:
        env = self.env
        env.process(self.source())
        env.process(self.monitor())
        if self.scenario.system.cpu is not None and self.scenario.system.cpu.background > 0:
            env.process(self.background(self.scenario.system.cpu.background))
        if self.scenario.system.changes:
            for ch in self.scenario.system.changes:
                if ch.at <= self.start:
                    self.apply_change(ch)
            env.process(self.changes())
        if progress is not None:
            env.process(self.ticker(progress, max((self.end - self.start) / 200, 1e-9)))
        wall = time.perf_counter()
        # The run makes millions of short-lived acyclic objects; the cyclic
        # collector would rescan every live registrant again and again.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            run_until(env, self.end)
        finally:
            # drop the registrants still in flight before the collector is back,
            # so that it does not have to scan them all once more
            env._queue.clear()  # type: ignore[attr-defined]
            self.calendar.buckets.clear()
            for st in self.stations.values():
                st.queue.clear()
            if gc_was_enabled:
                gc.enable()
        self.result.meta.update(
            {
                "wall_seconds": round(time.perf_counter() - wall, 3),
                "registrants": int(len(self.arrivals)),
                "window": [self.start, self.end],
                "warmup": self.scenario.run.warmup,
                "scale": self.scenario.run.scale,
                "compress": self.compress,
            }
        )
        if progress is not None:
            progress(self.end - self.start, self.end - self.start)
        return self.result


def run_until(env: simpy.Environment, until: float) -> None:
    """Process events up to time ``until`` (inclusive), like ``env.run(until)``.

    The same loop as :meth:`simpy.Environment.step`, without a method call and
    an exception handler per event: the model's hot loop.
    """
    queue = env._queue  # type: ignore[attr-defined]
    pop = heapq.heappop
    while queue and queue[0][0] <= until:
        env._now, _, _, event = pop(queue)  # type: ignore[attr-defined]
        callbacks, event.callbacks = event.callbacks, None  # type: ignore[assignment]
        for callback in callbacks:
            callback(event)
        if not event._ok and not hasattr(event, "_defused"):
            raise event._value
    env._now = until  # type: ignore[attr-defined]


def simulate_once(scenario: Scenario, seed: int | None = None, replication: int = 0, progress: Progress | None = None) -> RunResult:
    """Run one replication; ``seed`` defaults to the scenario's."""
    seed = scenario.seed if seed is None else seed
    model = FunnelModel(scenario, seed, replication)
    result = model.run(progress)
    result.meta.update({"seed": seed, "replication": replication})
    return result

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
import math
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy
from simpy.events import Event

from contracts import decision_seed
from models.arrivals import MISMATCH_SLOT, arrival_times, decision_at, decision_base, decisions_at, give_up_slot, proceed_slot, stream
from models.distributions import Sampler
from models.fastpath import Engine, FastEngine, StockEngine
from models.results import RequestSeries, RunResult, StationSeries, StepSeries
from models.routes import ACCOUNT, CpuRoute, Route, cpu_legs
from models.scenario import CPU, EMAIL, REGISTRY, Scenario, Step
from models.stations import INF, Door, Processor, Registry, Sender, Station

__all__ = ["simulate_once", "Progress"]

LAG_EVERY = 0.25  # seconds between the model's loop-lag probes, as the reference server times its own (refserver.app)

#: progress(simulated_seconds_done, simulated_seconds_total)
Progress = Callable[[float, float], None]


def _no_service() -> float:
    """The service of a visit that takes no time (the door's admission check)."""
    return 0.0


def _uniform(rng: np.random.Generator) -> Sampler:
    buf: list[float] = []
    pop = buf.pop

    def u() -> float:
        if not buf:
            buf.extend(rng.random(4096).tolist())
        return pop()

    return u


#: a request type's processor work: (steps, time per step, interpreter-lock takes (a mean), its own computation or None,
#: a resume step's time or None (a step's))
CpuPlan = tuple[int, Sampler, float, Sampler | None, Sampler | None]


class ClientTimeouts:
    """The clients' timeout of one length: a request still unanswered ``after`` seconds after it was sent gives up
    with ``"timeout"`` (the server goes on with it, as it does when a load generator's socket times out).

    Every request watched waits the same length, so the oldest is due first: one deque in send order and one timer
    at a time, for the oldest still unanswered.  A request answered in time costs an append, not an event.  A request
    that times out leaves its reply to the route or station that will trigger it: the registrant's own wake-up is
    taken off the reply (the callback its driver appends when it yields the reply, at the index :meth:`watch` noted)
    and called with ``"timeout"`` instead.
    """

    __slots__ = ("env", "after", "pending", "armed")

    def __init__(self, env: simpy.Environment, after: float):
        self.env = env
        self.after = after
        self.pending: deque[tuple[float, Event, int]] = deque()
        self.armed = False

    def watch(self, reply: Event) -> None:
        """Call just before yielding ``reply``: unless it is processed within the timeout, the registrant wakes with
        ``"timeout"`` then."""
        pending = self.pending
        while pending and pending[0][1].callbacks is None:  # answered in time: drop them as they come to the front
            pending.popleft()
        pending.append((self.env._now + self.after, reply, len(reply.callbacks)))  # type: ignore[arg-type]
        if not self.armed:
            self._arm(self.after)

    def _arm(self, delay: float) -> None:
        self.armed = True
        self.env.timeout(delay).callbacks.append(self._due)  # type: ignore[union-attr]

    def _due(self, _event: Event) -> None:
        env = self.env
        now = env._now
        pending = self.pending
        while pending:
            due, reply, k = pending[0]
            callbacks = reply.callbacks
            if callbacks is not None:  # not answered yet
                if due > now + 1e-9:
                    break
                gave_up = Event(env)
                gave_up._ok = True
                gave_up._value = "timeout"
                gave_up.callbacks.append(callbacks.pop(k))  # type: ignore[union-attr]  # the registrant's wake-up
                env.schedule(gave_up)
            pending.popleft()
        self.armed = False
        if pending:
            self._arm(pending[0][0] - now)


class _Tally:
    """Counters of one request type's requests sent in one interval, each counted when it ends (as the load generator
    counts them: in the interval it was sent, however late it ends)."""

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
    tallies: list[_Tally]  # the request type's, one per counted interval
    visits: list[tuple[Station, Sampler | None]]
    # the route with one interpreter-lock take more, for the share ``locks_over`` of the requests (the measured takes
    # per request are a mean, e.g. 6.5): every request adds locks_over to ``locks_due`` and takes it when that reaches 1
    more_locks: list[tuple[Station, Sampler | None]] | None
    locks_over: float
    think: Sampler | None
    patience: Sampler | None
    timeouts: ClientTimeouts | None  # the client's timeout (None: it waits for ever)
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
    account: list[float]  # the request type's processor accounting (models.routes.ACCOUNT), shared by its steps
    locks_due: float = 0.0
    # per-interval counters (flushed by the monitor)
    reached: int = 0
    completed: int = 0
    dropped: int = 0
    failed: int = 0


class FunnelModel:
    """One replication of a scenario, built on a SimPy environment."""

    def __init__(self, scenario: Scenario, seed: int, replication: int = 0, fast: bool = True, registrants: int | None = None):
        """``registrants``: the replication whose arrivals and registrants' decisions this one replays (default its own);
        everything else (service times, steps, think times) is drawn from this replication's streams."""
        s = self.scenario = scenario
        self.start, self.end = scenario.window
        self.env = simpy.Environment(initial_time=self.start)
        self.compress = s.run.compress
        self.counting_from = self.start + s.run.warmup
        self.interval = s.run.interval
        self.n_intervals = max(1, math.ceil((self.end - self.counting_from) / self.interval - 1e-9))
        who = replication if registrants is None else registrants
        self.arrivals = arrival_times(scenario, seed, who)
        self.seed = decision_seed(seed, who)  # the registrants' decisions: one stream per replication (or the replayed one's)
        mismatch = scenario.system.registry.mismatch if scenario.system.registry is not None else 0.0
        self.mismatched = self._choices(MISMATCH_SLOT, mismatch)  # 1: the registry will not match this registrant's NIK
        self.journey_u = _uniform(stream(seed, "journey", replication))
        cpu_work, threads = self._system(seed, replication)
        self._plan_journey(seed, replication, cpu_work, threads)
        self.n_steps = len(self.plans)
        self.engine: Engine = FastEngine(self.env) if fast else StockEngine(self.env)
        self.launch = self.engine.start
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

    def _system(self, seed: int, replication: int) -> tuple[dict[str, CpuPlan], frozenset[str]]:
        """The stations, the registry, the processor, the email sender and the batch quota.

        Returns the processor's work per request type (steps, time per step,
        interpreter-lock takes) and the stations whose work runs in a thread.
        """
        s = self.scenario
        env = self.env
        sysd = s.system
        registry_rng = stream(seed, "registry", replication)
        self.stations: dict[str, Station] = {name: Station(env, name, st.servers, st.queue) for name, st in sysd.stations.items()}
        self.registry: Registry | None = None
        if sysd.registry is not None:
            r = sysd.registry
            self.registry = Registry(env, r.concurrency, r.queue, r.rate_limit, r.burst, r.daily_quota, r.mismatch, _uniform(registry_rng))
            self.stations[REGISTRY] = self.registry
            self.registry_latency = r.latency.sampler(registry_rng)
            self.registry_timeout = r.timeout
        cpu_work: dict[str, CpuPlan] = {}  # request type -> (steps, time per step, lock takes, own work, resume step)
        threads = frozenset(sysd.cpu.threads) if sysd.cpu is not None else frozenset()
        self.route = CpuRoute if sysd.cpu is not None else Route
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
                trace=(sysd.cpu.trace.every, tuple(sysd.cpu.trace.factors)) if sysd.cpu.trace is not None else None,
                work_factor=sysd.cpu.work_factor if sysd.cpu.law is not None else None,
            )
            cpu_rng = stream(seed, "cpu", replication)
            for rt in s.request_types:
                work = sysd.cpu.work_for(rt)
                if work is not None and work.step.mean > 0:
                    own = work.work.sampler(cpu_rng) if work.work is not None and work.work.mean > 0 else None
                    resume = work.resume.sampler(cpu_rng) if work.resume is not None else None
                    cpu_work[rt] = (work.steps, work.step.sampler(cpu_rng), work.locks, own, resume)
        self.sender: Sender | None = None
        if sysd.email is not None:
            rates = [(-INF, sysd.email.rate)] + sorted((c.at, c.send_rate) for c in sysd.changes if c.send_rate is not None)
            self.sender = Sender(env, EMAIL, rates)
        self.batch_quota = sysd.batch.quota if sysd.batch is not None else None
        self.batch_used = 0

        return cpu_work, threads

    def _plan_journey(self, seed: int, replication: int, cpu_work: dict[str, CpuPlan], threads: frozenset[str]) -> None:
        """Each journey step's plan: its route of stations (with the processor's legs), samplers and the registrants' choices."""
        s = self.scenario
        sysd = s.system
        service_rng = stream(seed, "service", replication)
        journey_rng = stream(seed, "journey", replication + 1_000_000)
        patience_rng = stream(seed, "patience", replication)
        samplers: dict[tuple[str, str], Sampler] = {}
        self.request_types = s.request_types
        overhead_rng = stream(seed, "overhead", replication)
        overheads: dict[str, Sampler | None] = {}
        for rt in self.request_types:
            dist = s.overhead_for(rt)
            overheads[rt] = dist.sampler(overhead_rng) if dist is not None and dist.mean > 0 else None
        self.tallies = {rt: [_Tally() for _ in range(self.n_intervals)] for rt in self.request_types}
        self.accounts = {rt: [0.0] * len(ACCOUNT) for rt in self.request_types}
        self._accounted: dict[str, list[float]] = {}  # the accounts as the counted window began
        self.plans: list[_StepPlan] = []
        self._client_timeouts: dict[float, ClientTimeouts] = {}
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
            held = [station for station, service in visits if service is not None]
            door = Door(self.env, tuple(held[1:])) if sysd.admission == "door" and len(held) > 1 else None
            more: list[tuple[Station, Sampler | None]] | None = None
            locks_over = 0.0
            if step.request_type in cpu_work:
                n_steps, sampler, locks, own, resume = cpu_work[step.request_type]
                fewer = math.floor(locks)
                locks_over = locks - fewer
                cpu = self.stations[CPU]
                if locks_over > 0:  # a share of the requests takes one lock more, so that the mean is the measured one
                    more = cpu_legs(visits, cpu, n_steps, sampler, threads, fewer + 1, own, door, resume)  # type: ignore[assignment]
                visits = cpu_legs(visits, cpu, n_steps, sampler, threads, fewer, own, door, resume)  # type: ignore[assignment]
                if more == visits:  # no threaded station on the route: its lock takes change nothing
                    more, locks_over = None, 0.0
            elif sysd.cpu is not None:  # a request type with no work on the processor still takes the processor's route
                visits = cpu_legs(visits, self.stations[CPU], 0, None, threads, door=door)  # type: ignore[assignment]
            elif door is not None:  # turned away before the first station when a later one is full
                first = next(i for i, (_, service) in enumerate(visits) if service is not None)
                visits.insert(first, (door, _no_service))  # type: ignore[arg-type]
            think = step.think.scaled(1.0 / self.compress) if self.compress != 1 else step.think
            nxt = s.journey[i + 1] if i + 1 < len(s.journey) else None
            self.plans.append(
                _StepPlan(
                    index=i,
                    step=step,
                    tallies=self.tallies[step.request_type],
                    account=self.accounts[step.request_type],
                    visits=visits,
                    more_locks=more,
                    locks_over=locks_over,
                    think=think.sampler(journey_rng) if think.mean > 0 else None,
                    patience=step.patience.sampler(patience_rng) if step.patience is not None else None,
                    timeouts=self._timeouts(step.timeout),
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

    def _timeouts(self, after: float | None) -> ClientTimeouts | None:
        """The clients' timeouts of this length, one :class:`ClientTimeouts` shared by every step with it."""
        if after is None or math.isinf(after):
            return None
        found = self._client_timeouts.get(after)
        if found is None:
            found = self._client_timeouts[after] = ClientTimeouts(self.env, after)
        return found

    def _choices(self, slot: int, p: float) -> bytes:
        """One byte per arrival: 1 where the registrant's own draw for ``slot`` falls below ``p``."""
        return ((decisions_at(decision_base(self.seed, slot), len(self.arrivals)) < p).astype(np.uint8)).tobytes()

    # -- processes -----------------------------------------------------------
    def source(self) -> Generator[simpy.Event, Any, None]:
        env = self.env
        registrant = self.registrant
        launch = self.launch
        timeout = env.timeout
        for index, t in enumerate(self.arrivals.tolist()):
            delay = t - env._now
            if delay > 0:
                yield timeout(delay)
            self.arrived_now += 1
            launch(registrant(index))

    def _wake(self, event: Event) -> None:
        """A registrant deferred between steps starts again: ``event.value`` is arrival index x steps + step."""
        index, step = divmod(event._value, self.n_steps)
        self.launch(self.registrant(index, step))

    def registrant(self, index: int, woken_at: int = -1) -> Generator[Event, Any, None]:
        """Arrival ``index``'s journey; ``woken_at`` resumes it at that step after a deferred wait.

        The registrant's own choices (go on, give up, a NIK that will not
        match) come from :func:`~models.arrivals.decision`, as in the load test.
        """
        env = self.env
        u = self.journey_u
        engine = self.engine
        sleep = engine.sleep
        end, origin, interval, last = self.end, self.counting_from, self.interval, self.n_intervals - 1
        delivered = -INF  # when this registrant's verification email arrives
        for plan in self.plans if woken_at < 0 else self.plans[woken_at:]:
            if plan.index != woken_at:
                if plan.proceed < 1.0 and not plan.goes_on[index]:
                    plan.dropped += 1
                    return
                wait = delivered - env._now if plan.waits_for_email else 0.0
                if plan.think is not None:
                    wait += plan.think()
                if wait >= engine.far:  # a long wait: end this process, start again at this step
                    engine.defer(wait, index * self.n_steps + plan.index, self.wake)  # one int, not a tuple: a million sleep
                    return
                if wait > 0:
                    yield sleep(wait)
            plan.reached += 1
            began = env._now
            attempt = 1
            tallies = plan.tallies
            visits = plan.visits
            if plan.more_locks is not None:
                plan.locks_due += plan.locks_over
                if plan.locks_due >= 1.0:
                    plan.locks_due -= 1.0
                    visits = plan.more_locks
            while True:
                # one request through the step's stations, counted when it ends in the interval it was sent
                sent = env._now
                if sent >= end:
                    return  # nothing is sent after the window: the load generator stops its journeys there
                k = int((sent - origin) // interval)
                tally = tallies[k if k < last else last] if k >= 0 else None  # None: sent in the warm-up
                deadline = sent + plan.patience() if plan.patience is not None else INF
                timeouts = plan.timeouts
                if len(visits) == 1 and visits[0][1] is not None and self.route is Route:
                    station, service = visits[0]
                    reply = station.request(service(), deadline)  # type: ignore[misc]
                else:
                    reply = Event(env)
                    verdict = (0.0 if self.mismatched[index] else 1.0) if plan.asks_registry else None
                    self.route(self, visits, deadline, reply, verdict, plan.account).next(None)  # type: ignore[arg-type]
                if timeouts is not None:
                    timeouts.watch(reply)
                reason: str | None = yield reply  # type: ignore[misc]
                if plan.overhead is not None:
                    yield env.timeout(plan.overhead())
                if reason is None and plan.takes_quota and self.batch_quota is not None:
                    if self.batch_used >= self.batch_quota:
                        reason = "quota"
                    else:
                        self.batch_used += 1
                if reason is None:
                    if tally is not None:
                        tally.started += 1
                        tally.ok += 1
                        tally.latencies.append(env._now - sent)
                    if plan.repeat > 0 and u() < plan.repeat:
                        continue
                    break
                if tally is not None:
                    tally.started += 1
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
        assert isinstance(cpu, Processor)
        timeout = self.env.timeout
        while self.env._now + tick < self.end:
            cpu.woken(share * tick, timer=True)  # timer-driven work
            yield timeout(tick)

    def lag_probe(self, every: float = LAG_EVERY) -> Generator[simpy.Event, Any, None]:
        """The processor's queue as the reference server's loop-lag probe sees it: every ``every`` seconds a step
        wakes, yields once and times how long until it runs again (the wait of a step that is ready now), summed
        over the counted window into ``meta["loop_lag"]`` (seconds, samples).  Its steps take no processor time and
        are left out of the processor's counts.  Its second step, made ready by its first, waits only for the rest of
        the batch its first ran in, as on the server (:class:`models.stations.Processor`)."""
        cpu = self.stations[CPU]
        assert isinstance(cpu, Processor)
        env = self.env
        total, n = 0.0, 0
        while env._now + every < self.end:
            yield env.timeout(every)
            yield cpu.probe(woken=True)  # the probe's own step, woken by its timer: the server's clock starts inside it
            started = env._now
            yield cpu.probe(woken=False)
            if started >= self.counting_from:
                total += env._now - started
                n += 1
                self.result.meta["loop_lag"] = {"seconds": total, "samples": n}

    def monitor(self) -> Generator[simpy.Event, Any, None]:
        env = self.env
        if self.counting_from > env._now:
            yield env.timeout(self.counting_from - env._now)
            self._flush(None)  # warm-up: thrown away
        self._accounted = {rt: list(acc) for rt, acc in self.accounts.items()}
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
        if self.scenario.system.cpu is not None:
            env.process(self.lag_probe())
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
            self.engine.run(self.end + self.scenario.run.drain)  # the window's requests followed to their end
        finally:
            # drop the registrants still in flight before the collector is back,
            # so that it does not have to scan them all once more
            self.engine.clear()
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
        for rt, tallies in self.tallies.items():  # requests by the interval they were sent
            series = self.result.requests[rt]
            for k, tally in enumerate(tallies):
                series.started[k] = tally.started
                series.ok[k] = tally.ok
                series.latency[k].record_many(tally.latencies)
                for reason, n in tally.fails.items():
                    series.fail_counts(reason)[k] = n
        if self.route is CpuRoute:  # the processor's accounting per request type over the counted window, as the server's
            start = self._accounted
            self.result.meta["cpu_typed"] = {
                rt: {k: acc[j] - (start[rt][j] if rt in start else 0.0) for j, k in enumerate(ACCOUNT)}
                for rt, acc in self.accounts.items()
                if acc[0] > 0
            }
        if progress is not None:
            progress(self.end - self.start, self.end - self.start)
        return self.result


def simulate_once(
    scenario: Scenario,
    seed: int | None = None,
    replication: int = 0,
    progress: Progress | None = None,
    fast: bool = True,
    registrants: int | None = None,
) -> RunResult:
    """Run one replication; ``seed`` defaults to the scenario's; ``fast=False`` runs on SimPy's public API only (slower);
    ``registrants``: replay that replication's arrivals and registrants (see :class:`FunnelModel`)."""
    seed = scenario.seed if seed is None else seed
    model = FunnelModel(scenario, seed, replication, fast, registrants)
    result = model.run(progress)
    result.meta.update({"seed": seed, "replication": replication})
    return result

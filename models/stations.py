"""Stations of the SimPy model: multi-server FCFS queues with admission control.

A :class:`Station` serves requests with ``servers`` at once and holds at most
``limit`` waiting ones; past that a request is shed at once (``"full"``, the 503 of
the reference server).  A waiting request leaves when its deadline passes
(``"abandoned"`` for the registrant's patience, ``"timeout"`` for a caller's
timeout).  :meth:`Station.request` returns a SimPy event whose value is ``None``
on success or the failure reason, so a registrant process writes::

    reason = yield station.request(service_time, deadline)

The station schedules the completion event itself (one heap entry per served
request instead of a request, a timeout and a release), which is what lets the
model run a 1.4-million-registrant day in about a minute.  Busy time and queue
length are integrated exactly between events for utilization and mean queue.

:class:`Registry` adds the external registry's token-bucket rate limit (429),
daily quota and mismatch answers.  :class:`Door` is admission at the door
(``system.admission: door``): a request turned away before its first station
when a later station on its route is full.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from collections.abc import Callable
from heapq import heappush

import simpy
from simpy.events import NORMAL, PENDING, Event

from models.histogram import Histogram

__all__ = ["Station", "Door", "DoorStep", "Processor", "Registry", "Sender"]

INF = math.inf
HOLD = -1.0  # a service time meaning "until released"


class _Job:
    __slots__ = ("event", "service", "arrived", "reason", "active", "timeout", "value")

    def __init__(self, event: Event, service: float, arrived: float, reason: str, timeout: float, value: str | None) -> None:
        self.event = event
        self.service = service
        self.arrived = arrived
        self.reason = reason
        self.active = True
        self.timeout = timeout
        self.value = value


class _Expiry:
    """Callback of a waiting request's deadline timer."""

    __slots__ = ("station", "job")

    def __init__(self, station: Station, job: _Job):
        self.station = station
        self.job = job

    def __call__(self, _event: Event) -> None:
        self.station._expire(self.job)


def _fire(env: simpy.Environment, value: str | None, delay: float = 0.0) -> Event:
    """A new event that will trigger with ``value`` after ``delay``."""
    ev = Event(env)
    ev._ok = True
    ev._value = value
    env.schedule(ev, NORMAL, delay)
    return ev


class Station:
    """Multi-server FCFS queue with a finite waiting room and deadlines."""

    def __init__(self, env: simpy.Environment, name: str, servers: int, limit: int | None):
        self.env = env
        self.name = name
        self.servers = servers
        self.limit = limit if limit is not None else 1 << 62
        self.busy = 0
        self.queue: deque[_Job] = deque()
        self.qlen = 0  # active jobs in the queue (abandoned ones stay in the deque until popped)
        self._last = env.now
        self.reset_counters()
        self.wait = Histogram()
        self._release_cb = self._release
        self._heap = env._queue  # type: ignore[attr-defined]
        self._eid = env._eid  # type: ignore[attr-defined]

    # -- accounting --------------------------------------------------------
    # Busy time is added when a service starts (its whole length) and waiting
    # time when a wait ends; both land in the interval where that happens, which
    # is exact over a run and off by at most one service or wait at an interval's
    # edge.  Mean queue length over an interval is then waiting time / interval
    # (Little's law), with no bookkeeping on every event.
    def reset_counters(self) -> None:
        self.n_arrivals = 0
        self.n_shed = 0
        self.n_abandoned = 0
        self.n_waited = 0
        self.busy_area = 0.0
        self.cap_area = 0.0
        self.queue_area = 0.0
        self.queue_max = self.qlen
        self.waits: list[float] = []

    def _advance_capacity(self) -> None:
        now = self.env._now
        self.cap_area += self.servers * (now - self._last)
        self._last = now

    def flush(self) -> tuple[int, int, int, int, float, float, float, int, list[float]]:
        """Counters since the last flush (for one interval), then reset them."""
        self._advance_capacity()
        out = (
            self.n_arrivals,
            self.n_shed,
            self.n_abandoned,
            self.n_waited,
            self.busy_area,
            self.cap_area,
            self.queue_area,
            self.queue_max,
            self.waits,
        )
        self.reset_counters()
        return out

    # -- serving -----------------------------------------------------------
    def request(
        self,
        service: float,
        deadline: float = INF,
        reason: str = "abandoned",
        timeout: float = INF,
        ev: Event | None = None,
        value: str | None = None,
    ) -> Event:
        """Ask for service; the event's value is ``value`` (None) when served, else why not.

        ``deadline`` is the absolute time after which a waiting request leaves with
        ``reason``.  ``timeout`` (relative, from arrival) is the caller's limit on
        the whole call: if waiting plus service would pass it, the caller gets
        ``"timeout"`` at that moment while the server still finishes the work.
        ``ev`` is an event of the caller's to trigger instead of a new one.
        """
        env = self.env
        now = env._now
        self.n_arrivals += 1
        if ev is None:
            ev = Event(env)
        if self.busy < self.servers:
            if service < 0:  # a hold: the server is the caller's until release()
                self.busy += 1
                ev._ok = True
                ev._value = value
                env.schedule(ev)
            elif service <= timeout:  # the common case, inlined: a free server, no timeout to fear
                self.busy += 1
                self.busy_area += service
                ev._ok = True
                ev._value = value
                heappush(self._heap, (now + service, NORMAL, next(self._eid), ev))  # env.schedule, inlined
                ev.callbacks.append(self._release_cb)  # type: ignore[union-attr]
            else:
                self._start(ev, service, now, now, timeout, value)
            return ev
        if self.qlen >= self.limit:
            self.n_shed += 1
            ev._ok = True
            ev._value = "full"
            env.schedule(ev)
            return ev
        if timeout < INF and now + timeout < deadline:
            deadline, reason = now + timeout, "timeout"
        job = _Job(ev, service, now, reason, timeout, value)
        self.queue.append(job)
        self.qlen += 1
        self.n_waited += 1
        if self.qlen > self.queue_max:
            self.queue_max = self.qlen
        if deadline < INF:
            timer = _fire(env, None, deadline - now)
            timer.callbacks.append(_Expiry(self, job))  # type: ignore[union-attr]
        return ev

    def full(self) -> bool:
        """Every server busy (or promised to a woken waiter) and the queue at its limit: an arrival now is shed."""
        return self.busy >= self.servers and self.qlen >= self.limit

    def _expire(self, job: _Job) -> None:
        if not job.active:
            return
        job.active = False
        self.qlen -= 1
        self.n_abandoned += 1
        self.queue_area += self.env._now - job.arrived
        ev = job.event
        ev._ok = True
        ev._value = job.reason
        self.env.schedule(ev)

    def hold(self, deadline: float = INF, ev: Event | None = None) -> Event:
        """Wait for a server and keep it until :meth:`release`: the event's value is None once held, else why not.

        For a visit whose length is not known up front (the server's work waits
        for the processor in between); busy time is counted at the release.
        """
        return self.request(HOLD, deadline, ev=ev)

    def release(self, held_since: float, unbusy: float = 0.0) -> None:
        """Give back a server held since ``held_since`` (the time the hold started).

        ``unbusy`` seconds at the end of the hold are not counted as busy time
        (the server's own accounting stopped there, e.g. as the step that let it go began).
        """
        self.busy_area += self.env._now - held_since - unbusy
        self.busy -= 1
        if self.qlen:
            self._dispatch()

    def _start(self, ev: Event, service: float, arrived: float, now: float, timeout: float, value: str | None) -> None:
        self.busy += 1
        if now > arrived and value is not PROBE:
            self.waits.append(now - arrived)
            self.queue_area += now - arrived
        env = self.env
        ev._ok = True
        if service < 0:  # a hold
            ev._value = value
            env.schedule(ev)
            return
        self.busy_area += service
        if (now - arrived) + service > timeout:
            # the caller gives up at its timeout; the server works on to the end
            ev._value = "timeout"
            env.schedule(ev, NORMAL, arrived + timeout - now)
            done = _fire(env, None, service)
            done.callbacks.append(self._release_cb)  # type: ignore[union-attr]
        else:
            ev._value = value
            heappush(self._heap, (now + service, NORMAL, next(self._eid), ev))  # env.schedule, inlined
            ev.callbacks.append(self._release_cb)  # type: ignore[union-attr]

    def _release(self, _event: Event) -> None:
        self.busy -= 1
        if self.qlen:
            self._dispatch()

    def _dispatch(self) -> None:
        queue = self.queue
        now = self.env._now
        while self.busy < self.servers and queue:
            job = queue.popleft()
            if not job.active:
                continue
            job.active = False
            self.qlen -= 1
            self._start(job.event, job.service, job.arrived, now, job.timeout, job.value)

    def set_servers(self, servers: int) -> None:
        """Change the concurrency now (a capacity schedule); waiting requests start if it grew."""
        self._advance_capacity()
        self.servers = servers
        self._dispatch()

    def set_limit(self, limit: int | None) -> None:
        self.limit = limit if limit is not None else 1 << 62


class Door:
    """Admission at the door (``system.admission: door``), as the reference server does it: a request is turned away
    (``"full"``) when any later station on its route is full, so that no work is spent on a request that station would
    shed; the shed counts at that station (the first full one in route order).  As a visit before the first station
    (routes without a processor), it answers at once (:meth:`request`); routes through the processor ask
    :meth:`refuses` at each of their checks (see :func:`models.routes.cpu_legs`)."""

    __slots__ = ("env", "stations")

    name = "door"

    def __init__(self, env: simpy.Environment, stations: tuple[Station, ...]):
        self.env = env
        self.stations = stations

    def refuses(self) -> bool:
        for st in self.stations:
            if st.full():
                st.n_arrivals += 1
                st.n_shed += 1
                return True
        return False

    def request(self, _service: float = 0.0, _deadline: float = INF, ev: Event | None = None) -> Event:
        if ev is None:
            ev = Event(self.env)
        ev._ok = True
        ev._value = "full" if self.refuses() else None
        self.env.schedule(ev)
        return ev


class DoorStep:
    """The value of a processor step that holds a request's own computation behind the door's last check (see
    :class:`Door`): as the step starts, the request is turned away if a later station is full, and the step then
    takes only ``step`` seconds (its loop part, without the computation) and ends ``"full"``; the computation it
    did not do comes off the request type's processor ``account`` (:data:`models.routes.ACCOUNT`)."""

    __slots__ = ("door", "step", "account")

    def __init__(self, door: Door, step: float, account: list[float]):
        self.door = door
        self.step = step
        self.account = account


PROBE = "probe"  # the value of a loop-lag probe's step (Processor.probe): its wait is not a request's

SWITCH_INTERVAL = 0.005  # seconds: CPython's default sys.getswitchinterval(), the longest a thread waits for the lock


class Processor(Station):
    """The server's processor: a station whose step times depend on how busy it has been lately.

    ``factor(u)`` scales a step's time by the utilization ``u`` over the last
    ``window`` seconds (the scenario's ``system.cpu.speedup``); until a first
    window is complete, ``u`` is ``start_u``.

    With one server the steps run in *batches*, as an event loop runs its ready
    callbacks: a batch is the steps waiting when the previous one ended (or the
    step that found the processor idle), and steps that come during a batch wait
    for the next.  In the next batch, the steps made ready by the running batch's
    own steps (a slot handed on, a worker thread's result: :meth:`request`) come
    first, then the steps woken meanwhile by I/O (a new request, a reply), then
    those woken by a timer (a sleep's end) (:meth:`woken`): the loop finds those
    only between two batches, when it polls its sockets and then runs its timers,
    and a timer's step queues behind every poll's step whenever it came due.  A worker thread's take of the interpreter lock
    waits for the batch to end, at most the switch interval (:meth:`boundary`);
    once it has the lock, the thread's own work runs next (:meth:`urgent`), ahead
    of the loop's waiting steps.
    """

    def __init__(
        self,
        env: simpy.Environment,
        name: str,
        servers: int,
        factor: Callable[[float], float],
        start_u: float,
        window: float = 1.0,
        modes: tuple[float, float, float, float] | None = None,
        exponential: Callable[[], float] | None = None,
        trace: tuple[float, tuple[float, ...]] | None = None,
        work_factor: Callable[[float], float] | None = None,
    ):
        """``work_factor``: the requests' own computation's time at a utilization (default ``factor``'s).
        ``modes``: (fast factor, slow factor, mean fast spell, mean slow spell) of a processor whose speed
        alternates (see :class:`models.scenario.CpuModes`), drawing spell lengths as ``exponential()`` x mean.
        ``trace``: (interval, factors) of a measured speed over time from now (see :class:`models.scenario.CpuTrace`)."""
        super().__init__(env, name, servers, None)
        self.trace = trace
        self._origin = env.now
        self.modes = modes
        self.exponential = exponential
        self.slow = False
        self._spell_end = env.now + (modes[2] * exponential() if modes is not None and exponential is not None else INF)
        self.scale = factor
        self.work_scale = work_factor or factor
        self.u = start_u
        self.window = window
        self.work = 0.0  # server-seconds started, cumulative
        self._boundary: list[Event] = []
        self._mark = (env.now, 0.0)
        self._batch = 0  # steps left in the batch now running (one server only)
        self._later: deque[_Job] = deque()  # steps woken by I/O during the batch now running (one server only)
        self._timed: deque[_Job] = deque()  # steps woken by a timer during it, queued after those

    def factor(self) -> float:
        """A loop step's time factor now: the utilization law's at the recent utilization, times the machine's speed."""
        return self._machine() * self.scale(self.u)

    def work_factor(self) -> float:
        """The same for a request's own computation (its own law)."""
        return self._machine() * self.work_scale(self.u)

    def _machine(self) -> float:
        """The machine's speed now (the trace's and the speed modes' factors), the recent utilization brought up to date."""
        now = self.env._now
        since, work = self._mark
        if now - since >= self.window:
            self.u = min(1.0, (self.work - work) / (self.servers * (now - since)))
            self._mark = (now, self.work)
        f = 1.0
        if self.trace is not None:
            every, factors = self.trace
            f = factors[min(max(int((now - self._origin) / every), 0), len(factors) - 1)]
        if self.modes is None:
            return f
        while now >= self._spell_end:  # the spells that ended since the last step
            self.slow = not self.slow
            self._spell_end += (self.modes[3] if self.slow else self.modes[2]) * self.exponential()  # type: ignore[misc]
        return f * self.modes[1 if self.slow else 0]

    def request(self, service: float, *args, **kwargs) -> Event:  # type: ignore[no-untyped-def, override]
        if service > 0:
            self.work += service
        if self.busy == 0 and self._batch == 0:
            self._batch = 1  # an idle processor: this step is a batch of its own
        return super().request(service, *args, **kwargs)

    def woken(self, service: float, value: str | None = None, timer: bool = False) -> Event:
        """A step woken by I/O (a new request, a reply) or, with ``timer``, by a timer (a sleep's end): the loop
        queues it when it next polls and runs its timers, that is after every step made ready during the batch now
        running, and a timer's after every step the poll found."""
        if self.servers != 1 or self.busy < self.servers:
            return self.request(service, value=value)
        job = self._waiting(service, value)  # the loop is busy: queued apart until the running batch ends
        (self._timed if timer else self._later).append(job)
        return job.event

    def _waiting(self, service: float, value: str | None) -> _Job:
        """A step that must wait, counted as :meth:`request` counts one (the processor never sheds); the caller queues it."""
        if service > 0:
            self.work += service
        self.n_arrivals += 1
        self.qlen += 1
        self.n_waited += 1
        if self.qlen > self.queue_max:
            self.queue_max = self.qlen
        return _Job(Event(self.env), service, self.env._now, "abandoned", INF, value)

    def probe(self, woken: bool) -> Event:
        """A zero-length step of the loop-lag probe (woken by its timer, or made ready by its own first step),
        queued as any other but left out of the station's counts and waits: it is not a request's."""
        arrivals, waited = self.n_arrivals, self.n_waited
        ev = self.woken(0.0, PROBE, timer=True) if woken else self.request(0.0, value=PROBE)
        self.n_arrivals, self.n_waited = arrivals, waited
        return ev

    def urgent(self, service: float) -> Event:
        """A worker thread's work once it holds the interpreter lock: served as soon as a server is free,
        ahead of every waiting step (and inside the batch now running)."""
        if self.busy < self.servers:
            return self.request(service)
        job = self._waiting(service, None)
        self.queue.appendleft(job)
        if self.servers == 1:
            self._batch += 1
        return job.event

    def boundary(self) -> Event:
        """An event when a worker thread gets the interpreter lock back: at once when the processor is
        idle, else when the running batch ends (one server) or the running step ends (several), and at
        the latest after the switch interval, when the interpreter makes the holder let go."""
        if self.busy == 0:
            return _fire(self.env, None)
        ev = Event(self.env)
        self._boundary.append(ev)
        timer = _fire(self.env, None, SWITCH_INTERVAL)
        timer.callbacks.append(lambda _t: self._let_go(ev))  # type: ignore[union-attr]
        return ev

    def _let_go(self, ev: Event) -> None:
        if ev._value is PENDING:
            ev._ok = True
            ev._value = None
            self.env.schedule(ev)

    def _start(self, ev: Event, service: float, arrived: float, now: float, timeout: float, value: str | None) -> None:
        if value.__class__ is DoorStep:  # the door's last check, as the step starts
            check: DoorStep = value  # type: ignore[assignment]
            if check.door.refuses():
                undone = service - check.step
                self.work -= undone
                check.account[2] -= undone  # the step's seconds and, of them, the request's own computation
                check.account[5] -= undone
                service, value = check.step, "full"
            else:
                value = None
        super()._start(ev, service, arrived, now, timeout, value)

    def _release(self, event: Event) -> None:
        if self.servers == 1:
            self._batch -= 1
            if self._batch > 0:
                super()._release(event)
                return
            if self._later:
                self.queue.extend(self._later)
                self._later.clear()
            if self._timed:
                self.queue.extend(self._timed)
                self._timed.clear()
            self._batch = self.qlen  # the next batch: what waited while this one ran
        if self._boundary:
            for ev in self._boundary:
                self._let_go(ev)
            self._boundary = []
        super()._release(event)


class Registry(Station):
    """The external registry: a station plus a token-bucket rate limit, a daily quota and mismatches."""

    def __init__(
        self,
        env: simpy.Environment,
        servers: int,
        limit: int | None,
        rate_limit: float | None,
        burst: float | None,
        daily_quota: int | None,
        mismatch: float,
        uniform: Callable[[], float],
    ):
        super().__init__(env, "registry", servers, limit)
        self.rate_limit = rate_limit
        self.burst = burst
        self.tokens = self._bucket_size()
        self._refilled = env.now
        self.daily_quota = daily_quota
        self.day = -1
        self.used_today = 0
        self.mismatch = mismatch
        self.uniform = uniform

    def _bucket_size(self) -> float:
        if self.rate_limit is None:
            return INF
        return self.burst if self.burst is not None else max(1.0, self.rate_limit)

    def set_rate_limit(self, rate: float | None) -> None:
        self._refill()
        self.rate_limit = rate
        self.tokens = min(self.tokens, self._bucket_size())

    def _refill(self) -> None:
        now = self.env._now
        if self.rate_limit is not None:
            self.tokens = min(self._bucket_size(), self.tokens + (now - self._refilled) * self.rate_limit)
        self._refilled = now

    def call(self, latency: float, timeout: float, deadline: float = INF, ev: Event | None = None, u: float | None = None) -> Event:
        """One NIK check: 429 past the rate limit, quota past the daily quota, else queue and serve.

        A served check answers ``"mismatch"`` with the configured probability:
        when ``u`` (the registrant's own uniform draw) is below it, else from the
        registry's stream.
        """
        env = self.env
        refusal = None
        if self.rate_limit is not None:
            self._refill()
            if self.tokens < 1.0:
                refusal = "rate_limited"
            else:
                self.tokens -= 1.0
        if refusal is None and self.daily_quota is not None:
            day = int(env._now // 86400)
            if day != self.day:
                self.day, self.used_today = day, 0
            if self.used_today >= self.daily_quota:
                refusal = "quota"
            else:
                self.used_today += 1
        if refusal is not None:
            if ev is None:
                return _fire(env, refusal)
            ev._ok = True
            ev._value = refusal
            env.schedule(ev)
            return ev
        value = "mismatch" if self.mismatch > 0 and (self.uniform() if u is None else u) < self.mismatch else None
        return self.request(latency, deadline, "abandoned", timeout, ev, value)


class Sender:
    """The email outbox: one sender, first in first out, one email every ``1 / rate``.

    With one server, a fixed sending time and nobody leaving the queue, each
    email's start and delivery times follow at once from the previous email's:
    ``start = max(now, free_at)``, ``delivered = start + 1 / rate(start)``, where
    ``rate(t)`` is the send rate in force at ``t`` (capacity changes included).
    So the sender needs no events of its own: :meth:`send` returns the delivery
    time and the registrant sleeps until then (plus its think time) in one event.
    Utilization, queue length and waits per interval are integrated exactly
    from the email records at each :meth:`flush`.
    """

    def __init__(self, env: simpy.Environment, name: str, rates: list[tuple[float, float]]):
        self.env = env
        self.name = name
        self.servers = 1
        self.times = [t for t, _ in rates]  # when each send rate takes effect (sorted; the first is -inf)
        self.rates = [r for _, r in rates]
        self.free_at = -INF
        self.waiting: deque[tuple[float, float, float]] = deque()  # (enqueued, start, end) not started by the last flush
        self.serving: deque[tuple[float, float, float]] = deque()  # started, maybe not finished by the last flush
        self.start_times: deque[float] = deque()  # for the queue length seen on arrival
        self.flushed_at = env.now
        self.queued_at_flush = 0
        self.wait = Histogram()
        self._reset()

    def _reset(self) -> None:
        self.n_arrivals = 0
        self.n_waited = 0
        self.enq_sum = 0.0
        self.queue_max = len(self.start_times)

    def rate_at(self, t: float) -> float:
        i = bisect_right(self.times, t) - 1
        return self.rates[max(i, 0)]

    def send(self) -> float:
        """Queue an email now; returns its delivery time."""
        now = self.env._now
        start = self.free_at if self.free_at > now else now
        end = start + 1.0 / self.rate_at(start)
        self.free_at = end
        self.waiting.append((now, start, end))
        self.n_arrivals += 1
        self.enq_sum += now
        starts = self.start_times
        while starts and starts[0] <= now:
            starts.popleft()
        if start > now:
            self.n_waited += 1
            starts.append(start)
            if len(starts) > self.queue_max:
                self.queue_max = len(starts)
        return end

    def flush(self) -> tuple[int, int, int, int, float, float, float, int, list[float]]:
        """Counters for the interval since the last flush, in :meth:`Station.flush`'s order."""
        t0, t1 = self.flushed_at, self.env._now
        busy = 0.0
        for _, start, end in self.serving:
            busy += min(end, t1) - max(start, t0)
        self.serving = deque(rec for rec in self.serving if rec[2] > t1)
        # queue integral: q(t0) (t1 - t0) + sum over arrivals (t1 - enq) - sum over starts (t1 - start)
        area = self.queued_at_flush * (t1 - t0) + self.n_arrivals * t1 - self.enq_sum
        waits: list[float] = []
        waiting = self.waiting
        while waiting and waiting[0][1] < t1:
            enq, start, end = waiting.popleft()
            area -= t1 - start  # it started in this interval: it leaves the queue here
            busy += min(end, t1) - start
            if start > enq:
                waits.append(start - enq)
            if end > t1:
                self.serving.append((enq, start, end))
        self.queued_at_flush = len(waiting)
        starts = self.start_times
        while starts and starts[0] <= t1:
            starts.popleft()
        out = (self.n_arrivals, 0, 0, self.n_waited, busy, t1 - t0, max(area, 0.0), self.queue_max, waits)
        self.flushed_at = t1
        self._reset()
        return out

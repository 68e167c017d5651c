"""A request's way through its stations (and the server's processor), chained by callbacks.

The registrant waits on one ``reply`` event for the whole route; each leg's
completion starts the next directly, and the last triggers ``reply``.  A
failure on any leg ends the route with its reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from simpy.events import Event

from models.distributions import Sampler
from models.stations import Door, DoorStep, Station

if TYPE_CHECKING:
    from models.funnel import FunnelModel

__all__ = ["Route", "CpuRoute", "cpu_legs", "VISIT", "HOLD", "DELAY", "RELEASE", "LOCK", "THREAD", "DOOR", "ACCOUNT"]


class Route:
    """One request's way through its stations, chained by callbacks.

    The registrant waits on one ``reply`` event for the whole route; each
    station's completion starts the next leg directly, and the last station
    triggers ``reply`` itself.  A failure on any leg ends the route with its reason.
    ``account`` is taken for :class:`CpuRoute`'s sake and left unused: without
    a processor there is nothing to account.
    """

    __slots__ = ("model", "visits", "i", "deadline", "reply", "u")

    def __init__(
        self,
        model: FunnelModel,
        visits: list[tuple[Station, Sampler | None]],
        deadline: float,
        reply: Event,
        u: float | None = None,
        account: list[float] | None = None,
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


VISIT, HOLD, DELAY, RELEASE, LOCK, THREAD, WORK, RESUME, DOOR = range(9)  # legs of a route through the processor
IO, TIMER = 1, 2  # what woke a step on the processor (0: made ready by a step before it; see CpuRoute._woken)
#: A request type's processor accounting in the model, as the reference server keeps it (refserver.cpu): requests,
#: loop steps (resume steps among them), their seconds (the own computation among them), resume steps, worker-thread
#: seconds, own-computation seconds, and requests turned away ("full")
ACCOUNT = ("requests", "steps", "seconds", "resumes", "thread_seconds", "work_seconds", "turned_away")


def cpu_legs(
    visits: list[tuple[Station, Sampler | None]],
    cpu: Station,
    steps: int,
    step: Sampler | None,
    threads: frozenset[str],
    locks: int = 0,
    work: Sampler | None = None,
    door: Door | None = None,
    resume: Sampler | None = None,
) -> list[tuple[int, Station | None, Any]]:
    """A request's route with its ``steps`` on the processor, as the reference server runs it.

    Each station is held for its whole visit: in a threaded station (its work
    runs in a worker thread) one step first, the thread's work; then the
    service; then the step in which the event loop resumes the request, which
    is waited for before the station is let go.  The thread's ``locks`` (its
    calls that give up the interpreter lock) each wait for the processor's
    current step to end, before the thread's step, which then runs ahead of the
    loop's waiting steps (it holds the lock); when the request has a step to
    spare, the next resumes it once the thread is done (a wait for the loop,
    as on the server, still inside the visit).  The other steps are spread
    over the gaps before, between and after the stations, first gaps first.
    The registry (an outside service) is visited, not held.  The request's own
    computation (``work``, e.g. a key stretch) adds to the step that resumes it
    inside its first held station, as the reference server runs it there, and
    counts in that station's busy time, which for the rest ends as the
    resuming step starts (the server lets the station go after the
    computation, then goes on in the same step) (a
    ``WORK`` leg, whose sampler is the pair: step and computation, each timed
    by its own utilization law).  A visit that had to wait for its station
    first takes a step to be resumed (``RESUME``, skipped when the station was
    free; its time drawn from ``resume``, else a step's): the server's event
    loop wakes the waiter in its own time, and the
    slot stays promised to it meanwhile, counted busy only once it runs.  A step
    that follows a service delay (the server's sleep), the registry's reply or
    the request's arrival is woken by a timer or I/O and queued behind the steps
    made ready by other steps (:meth:`models.stations.Processor.woken`).
    With admission at the ``door``, the request is turned away when a later
    station is full (a ``DOOR`` leg) just before its first station, again
    once it holds that station (resumed), and last as the step with its own
    computation starts (:class:`models.stations.DoorStep`; turned away, the
    step takes only its loop part), as the server's route does.
    """
    held = [j for j, (_, service) in enumerate(visits) if service is not None]
    thread_at = next((j for j in held if visits[j][0].name in threads), None)
    left = steps
    if thread_at is not None and left > 0:
        left -= 1
    else:
        thread_at = None
    wake = 1 if thread_at is not None and left > len(held) else 0
    left -= wake
    resumes = min(left, len(held))
    left -= resumes
    gaps = len(visits) + 1
    legs: list[tuple[int, Station | None, Any]] = []
    for j in range(gaps):
        legs += [(VISIT, cpu, step)] * (left // gaps + (1 if j < left % gaps else 0))
        if j == len(visits):
            break
        station, service = visits[j]
        if service is None:
            legs.append((VISIT, station, None))
            continue
        if door is not None and j == held[0]:
            legs.append((DOOR, door, None))  # type: ignore[arg-type]
        legs.append((HOLD, station, None))
        if step is not None:
            legs.append((RESUME, cpu, resume or step))
        if door is not None and j == held[0]:
            legs.append((DOOR, door, None))  # type: ignore[arg-type]
        if j == thread_at:
            legs += [(LOCK, cpu, None)] * locks
            legs.append((THREAD, cpu, step))
            if wake:
                legs.append((VISIT, cpu, step))
        legs.append((DELAY, None, service))
        own = work if held and j == held[0] else None
        if resumes > 0:
            legs.append((WORK, cpu, (step, own, door)) if own is not None else (VISIT, cpu, step))
            resumes -= 1
        elif own is not None:
            legs.append((WORK, cpu, (None, own, door)))
        legs.append((RELEASE, station, None))
    return legs


class CpuRoute:
    """A request's way through its stations and the processor (see :func:`cpu_legs`), chained by callbacks."""

    __slots__ = ("model", "legs", "i", "deadline", "reply", "u", "held", "since", "step", "kept", "asked", "account")

    def __init__(
        self,
        model: FunnelModel,
        legs: list[tuple[int, Any, Any]],
        deadline: float,
        reply: Event,
        u: float | None = None,
        account: list[float] | None = None,
    ):
        self.model = model
        self.legs = legs
        self.i = 0
        self.deadline = deadline
        self.reply = reply
        self.u = u
        self.held: Station | None = None
        self.since = 0.0
        self.step = 0.0  # CPU time of the latest step: the server lets a station go as its resumption step starts
        self.kept = 0.0  # of it, the request's own computation, which the server runs before it lets the station go
        self.asked = 0.0  # when the latest hold was asked for
        # the request type's processor accounting (:data:`ACCOUNT`), shared by its routes; a throwaway list without one
        self.account = account if account is not None else [0.0] * len(ACCOUNT)
        self.account[0] += 1

    def _end(self, value: str | None) -> None:
        if value == "full":
            self.account[6] += 1
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
                station.release(self.since, self.step - self.kept)
                self.held = None
                continue
            if kind == DOOR:
                if station.refuses():
                    self._end("full")
                    return
                continue
            self.step = self.kept = 0.0
            if kind == RESUME:
                if self.since == self.asked:
                    continue  # the station was free: no wait, nothing to resume
                self.step = sampler() * station.factor()
                account = self.account
                account[1] += 1
                account[2] += self.step
                account[3] += 1
                leg = station.request(self.step)
                leg.callbacks.append(self._resumed)  # type: ignore[union-attr]
                return
            if kind == HOLD:
                self.asked = m.env._now
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
            elif kind == THREAD:  # a worker thread's work, holding the interpreter lock: served next
                self.step = sampler() * station.factor()
                self.account[4] += self.step
                leg = station.urgent(self.step)
            elif kind == WORK:  # a step with the request's own computation in it: each part on its own law
                step, own, door = sampler
                part = step() * station.factor() if step is not None else 0.0
                self.kept = own() * station.work_factor()
                self.step = part + self.kept
                check: DoorStep | str | None = None
                if door is not None:  # the door's last check, as the step starts: now, or when the processor gets to it
                    if station.busy >= station.servers:
                        check = DoorStep(door, part, self.account)
                    elif door.refuses():
                        self.step, self.kept, check = part, 0.0, "full"
                account = self.account
                account[1] += 1
                account[2] += self.step  # a DoorStep turned away later takes its computation back off (Processor._start)
                account[5] += self.step - part
                woken = self._woken()
                leg = station.woken(self.step, check, woken == TIMER) if woken else station.request(self.step, value=check)
            else:  # a step on the processor: server work, never abandoned
                self.step = sampler() * station.factor()
                account = self.account
                account[1] += 1
                account[2] += self.step
                woken = self._woken()
                leg = station.woken(self.step, None, woken == TIMER) if woken else station.request(self.step)
            leg.callbacks.append(self.next)  # type: ignore[union-attr]
            return

    def _woken(self) -> int:
        """What woke the step about to start: ``TIMER`` after a service delay (the server's sleep), ``IO`` for the
        route's first (the request's arrival) or one after the registry's reply, else 0 (made ready by a step before it)."""
        i = self.i - 2
        if i < 0:
            return IO
        kind, _station, sampler = self.legs[i]
        return TIMER if kind == DELAY else IO if kind == VISIT and sampler is None else 0

    def _resumed(self, event: Event) -> None:
        self.since = self.model.env._now  # the server counts its slot busy from here
        self.next(event)

    def _held(self, event: Event) -> None:
        if event._value is None:
            self.held = self.legs[self.i - 1][1]
            self.since = self.model.env._now
        self.next(event)

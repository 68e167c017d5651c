"""The model's SimPy fast path: the few places where it reaches past SimPy's public API for speed.

A full-scale launch day is 1.4 million registrants and tens of millions of
events; these three pieces make it run in about a minute and a half:

- :class:`Calendar` keeps far-future wake-ups out of the event heap;
- :class:`Lean` drives a registrant's generator without a ``Process`` event;
- :func:`run_until` is ``Environment.run`` without a method call and an
  exception handler per event.

They write SimPy's private fields (``Environment._queue``, ``_eid``, ``_now``,
``Event._ok``, ``_value``), so they are proven on the SimPy versions that
``pyproject.toml`` allows (4.1.x), and fenced: :class:`StockEngine` does the same
with SimPy's public API only, and ``tests/test_fastpath.py`` runs a scenario on
both and compares.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Generator
from typing import Any

import simpy
from simpy.events import NORMAL, URGENT, Event

__all__ = ["Calendar", "Lean", "run_until", "Engine", "FastEngine", "StockEngine", "PROVEN_SIMPY"]

PROVEN_SIMPY = "4.1"  # the SimPy release series the fast path is tested on (pyproject.toml pins it)


class Calendar:
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


class Lean:
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


class Engine:
    """How a model drives SimPy: waits (``sleep``, ``defer``), starting a registrant, and the run loop."""

    far: float = 120.0  # a wait at least this long may end the registrant's process (see :meth:`defer`)

    def __init__(self, env: simpy.Environment):
        self.env = env

    def sleep(self, delay: float) -> Event:
        raise NotImplementedError

    def defer(self, delay: float, value: Any, callback: Callable[[Event], None]) -> None:
        raise NotImplementedError

    def start(self, gen: Generator[Event, Any, None]) -> None:
        raise NotImplementedError

    def run(self, until: float) -> None:
        raise NotImplementedError

    def clear(self) -> None:
        """Drop what is still scheduled (at the end of a run)."""


class FastEngine(Engine):
    """The fast path: :class:`Calendar`, :class:`Lean` and :func:`run_until`."""

    def __init__(self, env: simpy.Environment, width: float = 60.0):
        super().__init__(env)
        self.calendar = Calendar(env, width)
        self.far = self.calendar.far
        self.sleep = self.calendar.sleep  # type: ignore[method-assign]
        self.defer = self.calendar.defer  # type: ignore[method-assign]
        self.start = Lean  # type: ignore[method-assign,assignment]  # the class itself: one call per registrant started

    def run(self, until: float) -> None:
        run_until(self.env, until)

    def clear(self) -> None:
        self.env._queue.clear()  # type: ignore[attr-defined]
        self.calendar.buckets.clear()


class StockEngine(Engine):
    """The same waits and run with SimPy's public API only: the fence the fast path is tested against."""

    def sleep(self, delay: float) -> Event:
        return self.env.timeout(delay)

    def defer(self, delay: float, value: Any, callback: Callable[[Event], None]) -> None:
        self.env.timeout(delay, value).callbacks.append(callback)  # type: ignore[union-attr]

    def start(self, gen: Generator[Event, Any, None]) -> None:
        self.env.process(gen)

    def run(self, until: float) -> None:
        """Every event up to ``until`` inclusive, as :func:`run_until` (``Environment.run`` stops before ``until``'s own)."""
        env = self.env
        while env.peek() <= until:
            env.step()

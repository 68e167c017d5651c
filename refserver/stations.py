"""Stations of the reference server: concurrency, a bounded queue, configured work.

``async with station.slot(rt):`` waits for one of ``servers`` slots; when all
are busy and ``queue`` requests already wait, :class:`Overloaded` is raised at
once (the handler answers 503 with Retry-After: admission control).  Busy time
is accumulated per request type (with its square, and the sums of its logarithm
and squared logarithm, for the spread and for maximum-likelihood fits of heavy
tails), so that utilization U and the service demand D = U / X of each request
type can be read from ``/metrics``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

__all__ = ["Station", "Overloaded"]


class Overloaded(Exception):
    """A station's queue is full; retry after ``retry_after`` seconds."""

    def __init__(self, station: str, retry_after: int = 1):
        super().__init__(f"station {station!r} is full")
        self.station = station
        self.retry_after = retry_after


class Station:
    def __init__(self, name: str, servers: int, queue: int | None, threaded: bool = False, on_wait: Callable[[str], None] | None = None):
        self.name = name
        self.on_wait = on_wait  # told the request type of each request that has to wait for a slot (its wake-up is a loop step)
        self.threaded = threaded  # its work runs in a worker thread (published, for the model's system.cpu.threads)
        self.servers = servers
        self.queue_limit = queue
        self._sem = asyncio.Semaphore(servers)
        self.waiting = 0
        self.busy = 0
        self.busy_seconds = 0.0
        self.served = 0
        self.shed = 0
        self.by_type: dict[str, list[float]] = {}  # request type -> [served, sum t, sum t^2, sum ln t, sum (ln t)^2]

    def full(self) -> bool:
        """No free slot (a slot just let go stays promised to the waiter it woke until that waiter runs: the semaphore
        counts it taken, while busy does not count it yet) and the queue is full: an arrival now is shed."""
        return self.queue_limit is not None and self.waiting >= self.queue_limit and self._sem.locked()

    def refuse(self) -> Overloaded:
        """Count a request turned away for this station (here, or at the door for it) and the error that says so."""
        self.shed += 1
        return Overloaded(self.name)

    @asynccontextmanager
    async def slot(self, rt: str = "other") -> AsyncIterator[None]:
        if self.full():
            raise self.refuse()
        if self.on_wait is not None and self._sem.locked():
            self.on_wait(rt)
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.busy += 1
        started = time.perf_counter()
        try:
            yield
        finally:
            held = time.perf_counter() - started
            self.busy_seconds += held
            acc = self.by_type.get(rt)
            if acc is None:
                acc = self.by_type[rt] = [0, 0.0, 0.0, 0.0, 0.0]
            log = math.log(max(held, 1e-9))
            acc[0] += 1
            acc[1] += held
            acc[2] += held * held
            acc[3] += log
            acc[4] += log * log
            self.busy -= 1
            self.served += 1
            self._sem.release()

"""Open-model arrival pacing, as pure functions of time.

Locust runs a fixed pool of users; an open model needs one journey per
arrival, started at the arrival's intended time whatever the server does.  A
dispatcher releases arrivals as their times come (:meth:`Pacer.release`) into a
queue that idle users take from; :meth:`Pacer.accept` then records how late the
journey starts.  One that waited more than ``drop_after`` seconds for a free
user is *dropped* (like k6's dropped_iterations) and counted, never hidden; the
rate is never lowered.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Pacer", "Lateness"]


@dataclass
class Lateness:
    """How late journeys started, in seconds after their intended arrival times."""

    started: int = 0
    dropped: int = 0
    late_100ms: int = 0
    max_late: float = 0.0

    def record(self, late: float) -> None:
        self.started += 1
        if late > 0.1:
            self.late_100ms += 1
        if late > self.max_late:
            self.max_late = late

    @property
    def share_on_time(self) -> float:
        """Share of started journeys that began within 100 ms of their intended time."""
        return 1 - self.late_100ms / self.started if self.started else 1.0


class Pacer:
    """The arrival trace (seconds from the run's start) and what became of each arrival."""

    def __init__(self, times: list[float], drop_after: float = 1.0):
        self.times = times
        self.next = 0  # index of the first arrival not yet released
        self.drop_after = drop_after
        self.lateness = Lateness()

    @property
    def total(self) -> int:
        return len(self.times)

    def next_due(self) -> float | None:
        """Intended time of the next arrival not yet released (None when all are)."""
        return self.times[self.next] if self.next < len(self.times) else None

    def release(self, now: float) -> list[tuple[int, float]]:
        """The arrivals due by ``now`` that were not released yet: (index, intended time)."""
        out = []
        times = self.times
        while self.next < len(times) and times[self.next] <= now:
            out.append((self.next, times[self.next]))
            self.next += 1
        return out

    def accept(self, now: float, intended: float, lateness: Lateness | None = None) -> bool:
        """A user takes a released arrival at ``now``: start it (True) or count it dropped (in ``lateness``, default the pacer's)."""
        late = max(0.0, now - intended)
        counts = self.lateness if lateness is None else lateness
        if late > self.drop_after:
            counts.dropped += 1
            return False
        counts.record(late)
        return True

    @property
    def done(self) -> bool:
        return self.next >= len(self.times)

    def not_started(self, queued: int) -> int:
        """Arrivals neither started nor dropped: not yet released, or still queued at the stop."""
        return len(self.times) - self.next + queued

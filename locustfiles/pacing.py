"""Open-model arrival pacing, as pure functions of time.

Locust runs a fixed pool of users; an open model needs one journey per
arrival, started at the arrival's intended time whatever the server does.
:class:`Pacer` hands arrivals from the shared arrival trace to idle users: a
journey that starts after its intended time is *late* (by how much is
recorded), and one that found no idle user within ``drop_after`` seconds is
*dropped* (like k6's dropped_iterations).  The rate is never lowered silently.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["Pacer", "Lateness"]


@dataclass
class Lateness:
    """How late journeys started, in seconds after their intended arrival times."""

    started: int = 0
    dropped: int = 0
    late_100ms: int = 0
    max_late: float = 0.0
    samples: list[float] = field(default_factory=list)

    def record(self, late: float) -> None:
        self.started += 1
        self.samples.append(late)
        if late > 0.1:
            self.late_100ms += 1
        if late > self.max_late:
            self.max_late = late

    @property
    def share_on_time(self) -> float:
        """Share of started journeys that began within 100 ms of their intended time."""
        return 1 - self.late_100ms / self.started if self.started else 1.0


class Pacer:
    """Arrivals (seconds from the run's start) waiting to be taken by users."""

    def __init__(self, times: list[float], drop_after: float = 1.0):
        self.pending: deque[tuple[int, float]] = deque(enumerate(times))
        self.drop_after = drop_after
        self.lateness = Lateness()
        self.total = len(times)

    def next_due(self) -> float | None:
        """Intended time of the next arrival not yet taken (None when all are taken)."""
        return self.pending[0][1] if self.pending else None

    def take(self, now: float) -> tuple[int, float] | None:
        """An idle user at ``now`` takes the next due arrival: (index, intended time), or None.

        Arrivals whose intended time passed more than ``drop_after`` ago are dropped.
        """
        while self.pending and now - self.pending[0][1] > self.drop_after:
            self.pending.popleft()
            self.lateness.dropped += 1
        if not self.pending or self.pending[0][1] > now:
            return None
        index, intended = self.pending.popleft()
        self.lateness.record(now - intended)
        return index, intended

    @property
    def done(self) -> bool:
        return not self.pending

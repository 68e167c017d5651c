"""What the server's background workers and its storage are going through, for ``/healthz`` and the log.

A worker that hits an error keeps going (it retries with backoff) and reports
it here: the log gets one line when an episode starts and one when it ends,
never one per attempt, and ``/healthz`` answers 503 with the problem while it
lasts.  A worker that makes no progress while it has work is stuck, and says so
the same way.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

__all__ = ["Health", "STUCK_AFTER", "storage_full", "LOG"]

LOG = logging.getLogger("refserver")
STUCK_AFTER = 30.0  # seconds without progress while there is work: a worker is stuck


def storage_full(exc: BaseException) -> bool:
    """Whether an error means the disk (or the process's files) ran out: a 507, not a 500."""
    import errno
    import sqlite3

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE):
        return True
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("disk is full" in text or "unable to open database file" in text)


@dataclass
class Health:
    """Open problem episodes by name (a worker, or a kind of request failure) and each worker's last progress."""

    failing: dict[str, tuple[float, str]] = field(default_factory=dict)  # name -> (since, first error)
    progress: dict[str, float] = field(default_factory=dict)  # worker -> monotonic time of its last progress
    episodes: int = 0
    checked: float = -1e9  # when /healthz last asked the database whether emails wait
    waiting: bool = False  # its answer

    def fail(self, name: str, exc: BaseException) -> None:
        """``name`` hit an error; the first of an episode is logged."""
        if name not in self.failing:
            self.episodes += 1
            self.failing[name] = (time.monotonic(), f"{type(exc).__name__}: {str(exc)[:200]}")
            LOG.warning("refserver: %s failing: %s (retrying; logged once until it recovers)", name, self.failing[name][1])

    def ok(self, name: str) -> None:
        """``name`` worked again (or made progress): the episode, if any, ends."""
        self.progress[name] = time.monotonic()
        episode = self.failing.pop(name, None)
        if episode is not None:
            LOG.warning("refserver: %s recovered after %.1fs", name, time.monotonic() - episode[0])

    def problems(self, stuck: dict[str, bool] | None = None) -> list[str]:
        """What is wrong now: open episodes, and workers with work that made no progress for :data:`STUCK_AFTER`."""
        now = time.monotonic()
        out = [f"{name}: failing for {now - since:.0f}s ({why})" for name, (since, why) in sorted(self.failing.items())]
        for name, has_work in (stuck or {}).items():
            last = self.progress.get(name)
            if has_work and name not in self.failing and (last is None or now - last > STUCK_AFTER):
                out.append(f"{name}: stuck, no progress for {now - last:.0f}s with work waiting" if last else f"{name}: never ran")
        return out

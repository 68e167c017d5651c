"""The outbox's email sender: delivers queued verification emails at the configured send rate."""

from __future__ import annotations

import asyncio
import sqlite3
import time

from refserver.service import Service

__all__ = ["sender", "WORKER"]


WORKER = "email_sender"
BACKOFF = (0.5, 10.0)  # seconds: the first wait after a failure, and the longest


async def sender(svc: Service) -> None:
    """Deliver outbox emails at the configured send rate into the mailbox; never give up.

    A failed read or write (a full disk, no file descriptors) is reported to
    ``svc.health`` (one log line per episode, ``/healthz`` degraded) and tried
    again after a growing pause; the backlog drains once it works again.
    """
    pause = BACKOFF[0]
    svc.health.ok(WORKER)
    while True:
        try:
            await _send(svc)
            pause = BACKOFF[0]
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported, retried
            svc.health.fail(WORKER, exc)
            await asyncio.sleep(pause)
            pause = min(pause * 2, BACKOFF[1])


async def _send(svc: Service) -> None:
    """Send until an error: each tick, as many emails as the send rate allows."""
    tick = 0.05
    allowance = 0.0
    last = time.monotonic()
    while True:
        await asyncio.sleep(tick)
        now = time.monotonic()
        allowance = min(allowance + (now - last) * svc.cfg.email_rate, max(1.0, svc.cfg.email_rate))
        last = now
        n = int(allowance)
        if n < 1:
            continue
        ids = [r[0] for r in svc.db.all("SELECT id FROM outbox WHERE sent IS NULL ORDER BY id LIMIT ?", (n,))]
        if not ids:
            svc.health.ok(WORKER)  # nothing waits: as good as progress
            continue
        allowance -= len(ids)

        def work(conn: sqlite3.Connection, ids: list[int] = ids) -> None:
            conn.executemany("UPDATE outbox SET sent = ? WHERE id = ?", [(time.time(), i) for i in ids])

        await svc.db.write(work, "email_sender")
        svc.health.ok(WORKER)

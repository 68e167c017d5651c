"""The outbox's email sender: delivers queued verification emails at the configured send rate."""

from __future__ import annotations

import asyncio
import sqlite3
import time

from refserver.service import Service

__all__ = ["sender"]


async def sender(svc: Service) -> None:
    """Deliver outbox emails at the configured send rate into the mailbox."""
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
            continue
        allowance -= len(ids)

        def work(conn: sqlite3.Connection, ids: list[int] = ids) -> None:
            conn.executemany("UPDATE outbox SET sent = ? WHERE id = ?", [(time.time(), i) for i in ids])

        await svc.db.write(work, "email_sender")

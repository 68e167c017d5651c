"""SQLite storage with group commit: an acknowledged write is on disk.

One writer thread owns the write connection (WAL, ``synchronous=FULL``).  Writes
queued by request handlers are taken in batches; each runs in its own SAVEPOINT
inside one transaction, so a failing write (a duplicate email, a full batch)
rolls back alone and nothing half-written stays; the batch then commits with one
fsync and only then are the handlers answered.  Reads use a second connection
(WAL readers never block the writer).  The writer's CPU time is handed to
``on_cpu(request_type, seconds, calls)`` per write (its statements plus an equal
share of the batch's BEGIN/COMMIT), so the server's CPU can be accounted;
``calls`` are its statements (each lets go of the interpreter lock while SQLite
works and must take it back), with the same share of the batch's own.

The writer is one server with a queue: a write waits for the batch being
written, then for its own batch's statements and commit.  :meth:`Database.lines`
publishes what that costs in wall time (``surgecap_db_*``): batches, their
busy seconds and commit seconds, and per request type the writes and their
time from queued to committed.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["Database", "SCHEMA"]

T = TypeVar("T")
MAX_BATCH = 512

SCHEMA = """
CREATE TABLE IF NOT EXISTS registrants (
    id TEXT PRIMARY KEY,
    email_hash TEXT NOT NULL UNIQUE,
    nik_hash TEXT NOT NULL UNIQUE,
    phone_hash TEXT NOT NULL,
    birth_year INTEGER NOT NULL,
    created REAL NOT NULL,
    email_verified REAL,
    photo_path TEXT,
    nik_verified REAL,
    batch_id TEXT REFERENCES batches(id),
    joined REAL
);
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY,
    registrant_id TEXT NOT NULL REFERENCES registrants(id),
    used REAL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    registrant_id TEXT NOT NULL REFERENCES registrants(id),
    token TEXT NOT NULL,
    created REAL NOT NULL,
    sent REAL
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox(id) WHERE sent IS NULL;
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    quota INTEGER NOT NULL CHECK (quota >= 0),
    joined INTEGER NOT NULL DEFAULT 0,
    CHECK (joined <= quota)
);
"""

_STOP = object()


class Database:
    def __init__(self, path: str | Path, on_cpu: Callable[[str, float, float], None] | None = None):
        self.path = str(path)
        self.on_cpu = on_cpu
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        init = sqlite3.connect(self.path)
        init.execute("PRAGMA journal_mode=WAL")
        init.executescript(SCHEMA)
        init.commit()
        init.close()
        self._reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._reader.execute("PRAGMA query_only=ON")
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._writer, name="db-writer", daemon=True)
        self._thread.start()
        self.commits = 0
        self.writes = 0
        self.batch_seconds = 0.0  # wall time from taking a batch to its commit's end
        self.commit_seconds = 0.0  # wall time of the COMMITs (their fsync)
        self.by_type: dict[str, list[float]] = {}  # kind -> [writes, seconds queued to committed, their squares]

    # -- writing -------------------------------------------------------------
    def _writer(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        stop = False
        while not stop:
            item = self._queue.get()
            batch = []
            if item is _STOP:
                break
            batch.append(item)
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            outcomes: list[tuple[bool, Any]] = []
            own: list[float] = []
            calls: list[float] = []
            clock = time.thread_time
            batch_started = clock()
            wall_started = time.perf_counter()
            commit_started = wall_started
            try:
                conn.execute("BEGIN IMMEDIATE")
                for fn, _, _, _, _ in batch:
                    started = clock()
                    conn.execute("SAVEPOINT w")
                    counted = _Counted(conn)
                    try:
                        outcomes.append((True, fn(counted)))  # type: ignore[arg-type]
                        conn.execute("RELEASE w")
                    except Exception as exc:  # noqa: BLE001 - handed to the waiting handler
                        conn.execute("ROLLBACK TO w")
                        conn.execute("RELEASE w")
                        outcomes.append((False, exc))
                    own.append(clock() - started)
                    calls.append(counted.calls + 2)  # with its SAVEPOINT and RELEASE
                commit_started = time.perf_counter()
                conn.execute("COMMIT")
            except sqlite3.Error as exc:  # every write of the batch fails with it; the writer goes on with the next batch
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # the transaction is gone with the failed statement; a writer that stopped here would hang every write
                outcomes = [(False, exc)] * len(batch)
            done = time.perf_counter()
            self.commits += 1
            self.writes += len(batch)
            self.batch_seconds += done - wall_started
            self.commit_seconds += done - commit_started
            for _, _, _, kind, queued in batch:
                acc = self.by_type.get(kind)
                if acc is None:
                    acc = self.by_type[kind] = [0.0, 0.0, 0.0]
                acc[0] += 1
                acc[1] += done - queued
                acc[2] += (done - queued) ** 2
            if self.on_cpu is not None:
                total = clock() - batch_started
                share = max(total - sum(own), 0.0) / len(batch)
                for i, (_, _, _, kind, _) in enumerate(batch):
                    self.on_cpu(
                        kind, (own[i] if i < len(own) else 0.0) + share, (calls[i] if i < len(calls) else 0.0) + 2 / len(batch)
                    )  # BEGIN, COMMIT
            for (_, loop, fut, _, _), (ok, value) in zip(batch, outcomes, strict=True):
                loop.call_soon_threadsafe(_settle, fut, ok, value)
        conn.close()

    async def write(self, fn: Callable[[sqlite3.Connection], T], kind: str = "other") -> T:
        """Run ``fn(connection)`` in the next committed batch; its result once on disk.

        ``kind`` (a request type) is what the writer's CPU time is accounted to.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((fn, loop, fut, kind, time.perf_counter()))
        return await fut

    def lines(self) -> list[str]:
        """The writer's figures in Prometheus text (see the module's docstring)."""
        out = [
            "# HELP surgecap_db_batches_total Batches the database writer committed.",
            "# TYPE surgecap_db_batches_total counter",
            f"surgecap_db_batches_total {self.commits}",
            "# HELP surgecap_db_batch_seconds_total Wall time of the writer's batches, from taking one to its commit's end.",
            "# TYPE surgecap_db_batch_seconds_total counter",
            f"surgecap_db_batch_seconds_total {self.batch_seconds:.6f}",
            "# HELP surgecap_db_commit_seconds_total Wall time of the batches' COMMITs (their fsync).",
            "# TYPE surgecap_db_commit_seconds_total counter",
            f"surgecap_db_commit_seconds_total {self.commit_seconds:.6f}",
        ]
        typed = sorted(self.by_type.items())
        for i, (metric, fmt, text) in enumerate(
            [
                ("surgecap_db_writes_total", "{:.0f}", "Writes committed, by request type."),
                ("surgecap_db_write_seconds_total", "{:.6f}", "Wall time of writes from queued to committed."),
                ("surgecap_db_write_seconds_squared_total", "{:.9f}", "Sum of squared write times."),
            ]
        ):
            out += [f"# HELP {metric} {text}", f"# TYPE {metric} counter"]
            out += [f'{metric}{{request="{kind}"}} {fmt.format(acc[i])}' for kind, acc in typed]
        return out

    # -- reading -------------------------------------------------------------
    def one(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        row = self._reader.execute(sql, params).fetchone()
        return tuple(row) if row is not None else None

    def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self._reader.execute(sql, params).fetchall()]

    def close(self) -> None:
        """Finish the queued writes, then close."""
        self._queue.put(_STOP)
        self._thread.join(timeout=30)
        self._reader.close()


class _Counted:
    """The writer's connection as a write function sees it, counting the statements it runs."""

    __slots__ = ("conn", "calls")

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.calls = 0

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        self.calls += 1
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        self.calls += 1
        return self.conn.executemany(sql, rows)


def _settle(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)

"""The reference server's state and its plumbing: one :class:`Service` per app.

The handlers (``refserver.handlers``, ``refserver.operations``) and the email
sender (``refserver.outbox``) each take the service: its configuration, its
stations with their configured service times, the database, the photo store,
the registry's client and the metrics.  :meth:`Service.through` walks a request
type's route of stations.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request

from contracts import drawer, keyed_rng, sampler
from refserver.config import ServerConfig
from refserver.cpu import CpuClock
from refserver.db import Database
from refserver.health import LOG, Health
from refserver.metrics import Metrics
from refserver.photos import PUT_CALLS, PhotoStore
from refserver.stations import Station
from refserver.upstream import Upstream

__all__ = ["Service", "BadRequest", "read_body", "read_json", "json_fields", "MAX_JSON_BYTES"]

MAX_JSON_BYTES = 16_384  # a JSON request body larger than this is refused (413)


class BadRequest(Exception):
    """A 4xx answer: ``code`` and a JSON body ``{"error": ..., **extra}``."""

    def __init__(self, code: int, error: str, **extra: Any):
        super().__init__(error)
        self.code = code
        self.body = {"error": error, **extra}


def json_fields(body: Any, required: set[str]) -> dict[str, Any]:
    """``body`` when it is a JSON object with exactly the ``required`` string fields; :class:`BadRequest` otherwise."""
    if not isinstance(body, dict):
        raise BadRequest(400, "expected a JSON object")
    missing = sorted(required - body.keys())
    extra = sorted(body.keys() - required)
    if missing:
        raise BadRequest(422, f"missing field(s): {', '.join(missing)}")
    if extra:
        raise BadRequest(422, f"unknown field(s): {', '.join(extra)}; expected {', '.join(sorted(required))}")
    for k in required:
        if not isinstance(body[k], str):
            raise BadRequest(422, f"{k} must be a string")
    return body


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused (413) past ``limit`` bytes without reading the rest: by its declared
    Content-Length before reading anything, and a chunked body as soon as it passes the limit."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isascii() or not declared.isdigit() or int(declared) > limit):
        raise BadRequest(413 if declared.isdigit() else 400, "request body too large" if declared.isdigit() else "bad Content-Length")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, "request body too large")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, required: set[str]) -> dict[str, Any]:
    """The request's JSON object with exactly the ``required`` string fields (see :func:`json_fields`)."""
    raw = await read_body(request, MAX_JSON_BYTES)
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest(400, "malformed JSON") from None
    except RecursionError:  # nested thousands deep: under the size cap, past the parser's stack
        raise BadRequest(400, "JSON nested too deeply") from None
    return json_fields(body, required)


#: In test mode, the request's draw key (header ``X-Surgecap-Draw``): its service times then depend on the key alone,
#: so two servers given the same requests draw the same times (common random numbers for A/B runs).
DRAW_KEY: contextvars.ContextVar[str | None] = contextvars.ContextVar("draw_key", default=None)


def stretch(rounds: int, salt: str) -> float:
    """Iterated SHA-256 (``rounds`` times, holding the interpreter lock): a key stretch's CPU work; its thread CPU seconds."""
    started = time.thread_time()
    digest = hashlib.sha256(salt.encode()).digest()
    sha256 = hashlib.sha256
    for _ in range(rounds):
        digest = sha256(digest).digest()
    return time.thread_time() - started


class Service:
    """One server's state: configuration, stations, service times, metrics and, once started, its resources."""

    def __init__(self, cfg: ServerConfig, secret: bytes, reset_token: str | None = None):
        self.cfg = cfg
        self.secret = secret
        self.reset_token = reset_token
        rng = random.Random(cfg.seed)
        # the database write runs in the writer thread inside the db station, the photo write in a worker thread inside storage
        self.clock = CpuClock()
        self.stations = {
            name: Station(name, s.servers, s.queue, threaded=name in ("db", "storage"), on_wait=self.clock.resumed)
            for name, s in cfg.stations.items()
        }
        self.drawers: dict[tuple[str, str], Callable[[random.Random], float]] = {
            (name, rt): drawer(s.service.get(rt, s.service.get("default"))) for name, s in cfg.stations.items() for rt in cfg.routes
        }
        self.services: dict[tuple[str, str], Callable[[], float]] = {
            (name, rt): sampler(s.service.get(rt, s.service.get("default")), rng) for name, s in cfg.stations.items() for rt in cfg.routes
        }
        self.metrics = Metrics()
        self.health = Health()
        self._db: Database | None = None
        self._photos: PhotoStore | None = None
        self._registry: Upstream | None = None

    def start(self, db_path: str | Path, data_dir: str | Path, registry: Upstream) -> None:
        """Open the database and the photo store, and take the registry's client."""
        self._db = Database(db_path, on_cpu=self.clock.thread)
        self._photos = PhotoStore(Path(data_dir) / "photos")
        self._registry = registry

    async def stop(self) -> None:
        """Close what :meth:`start` opened (the database writer drains first); a step that fails (a full disk) is
        logged and the others still run, so that shutdown always completes."""
        steps: list[tuple[str, Any]] = []
        if self._registry is not None:
            steps.append(("registry client", self._registry.aclose))
        if self._photos is not None:
            steps.append(("photo store", self._photos.close))
        if self._db is not None:
            steps.append(("database", self._db.close))
        for what, close in steps:
            try:
                done = close()
                if asyncio.iscoroutine(done):
                    await done
            except Exception as exc:  # noqa: BLE001 - shutdown goes on
                LOG.warning("refserver: closing the %s failed: %s: %s", what, type(exc).__name__, str(exc)[:200])

    @property
    def db(self) -> Database:
        if self._db is None:
            raise RuntimeError("the service has not started")
        return self._db

    @property
    def photos(self) -> PhotoStore:
        if self._photos is None:
            raise RuntimeError("the service has not started")
        return self._photos

    @property
    def registry(self) -> Upstream:
        if self._registry is None:
            raise RuntimeError("the service has not started")
        return self._registry

    def _stored(self, rt: str, store: Callable[[], None]) -> Callable[[], None]:
        def timed() -> None:
            started = time.thread_time()
            try:
                store()
            finally:
                self.clock.thread(rt, time.thread_time() - started, PUT_CALLS)

        return timed

    async def through(
        self, rt: str, work: Callable[[sqlite3.Connection], Any] | None = None, store: Callable[[], None] | None = None
    ) -> Any:
        """Walk the request type's stations.

        The database work runs inside the db station, a file write (``store``)
        inside the storage station; work whose station is not on the route runs
        after it, and so does a database write whose db station comes before the
        storage station (it names the stored file).  With admission at the door
        (``ServerConfig.admission``), a request is turned away when a later
        station is full: before it enters its first station, once it has that
        station's slot, and just before its own computation (the key stretch),
        in the step from which it goes on to the later stations, so that no
        computation is spent on a request they would shed.
        """
        result = None
        entered = time.monotonic()
        rounds = self.cfg.work.get(rt, 0)
        route = self.cfg.routes.get(rt, [])
        door = self.cfg.admission == "door"
        if door:  # turned away before any work when a later station would shed it
            self._door(route)
        for name in route:
            async with self.stations[name].slot(rt):
                if door and name == route[0]:  # and again once in: its wait for the slot may have let a later one fill
                    self._door(route)
                if name == "db" and work is not None and store is None:  # a write naming the stored file waits for it
                    result = await self.db.write(work, rt)
                    work = None
                elif name == "storage" and store is not None:
                    await asyncio.to_thread(self._stored(rt, store))
                    store = None
                key = DRAW_KEY.get()
                pause = self.services[(name, rt)]() if key is None else self.drawers[(name, rt)](keyed_rng(self.cfg.seed, key, name, rt))
                if pause > 0:
                    await asyncio.sleep(pause)
                if rounds:  # the request's own computation, in the step that resumes it inside its first station
                    if door:  # its last chance to be turned away: the next station takes it in this same step
                        self._door(route)
                    self.clock.work(rt, stretch(rounds, key or rt))
                    rounds = 0
        if store is not None:
            await asyncio.to_thread(self._stored(rt, store))
        if work is not None:
            result = await self.db.write(work, rt)
        if self.cfg.fault:
            await self._fault(time.monotonic() - entered)
        return result

    def _door(self, route: list[str]) -> None:
        """Admission at the door: :class:`Overloaded` (counted at that station) when a station after the first is full."""
        for name in route[1:]:
            if self.stations[name].full():
                raise self.stations[name].refuse()

    async def _fault(self, spent: float) -> None:
        """The configured injected slowness (``ServerConfig.fault``), after a request's stations."""
        fault = self.cfg.fault
        if fault.get("cpu", 0.0) > 0:
            until = time.thread_time() + fault["cpu"]
            while time.thread_time() < until:  # real work on the event loop, as a slower handler would do
                pass
        wait = fault.get("slow", 0.0) * spent + fault.get("delay", 0.0)
        if wait > 0:
            await asyncio.sleep(wait)

    def registrant(self, rid: str) -> tuple[Any, ...]:
        """The registrant's row (id, email_verified, photo_path, nik_verified, batch_id, nik_hash); 404 when unknown."""
        row = self.db.one("SELECT id, email_verified, photo_path, nik_verified, batch_id, nik_hash FROM registrants WHERE id = ?", (rid,))
        if row is None:
            raise BadRequest(404, "unknown registrant")
        return row

"""The reference registration service (ASGI, Starlette).

Endpoints: ``GET /``, ``POST /api/register``, ``POST /api/verify-email``,
``POST /api/photo``, ``POST /api/verify-nik``, ``POST /api/join-batch``,
``GET /api/registrants/{id}``, ``GET /healthz``, ``GET /metrics``,
``GET /metrics/speed``, ``GET /openapi.json``; in test mode also ``GET /test/mailbox/{id}`` and
``POST /test/reset`` (loopback clients only; reset needs the reset token).

Every request walks its route of stations (``config.routes``), waiting in each
station's slot for its configured service time; the database work of a request
runs inside the ``db`` station's slot, a photo's write (``refserver.photos``)
inside the ``storage`` station's.  Bad input gets a 4xx JSON body saying what
was wrong; writes are atomic, so nothing is ever half-written.  The handlers
live in :mod:`refserver.handlers` (the funnel) and :mod:`refserver.operations`;
the email sender in :mod:`refserver.outbox`; the shared state in
:class:`refserver.service.Service`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from contracts import DRAW_HEADER, draw_key
from refserver import handlers, operations
from refserver.config import ServerConfig
from refserver.cpu import CpuClock
from refserver.handlers import BATCH_ID
from refserver.health import storage_full
from refserver.metrics import Metrics
from refserver.operations import MAILBOX_QUERY
from refserver.outbox import sender
from refserver.service import DRAW_KEY, BadRequest, Service
from refserver.stations import Overloaded
from refserver.upstream import HttpUpstream, Upstream

__all__ = ["create_app", "BATCH_ID", "MAILBOX_QUERY"]

Handler = Callable[[Service, Request], Awaitable[Response]]
#: path, request type (for metrics and CPU accounting), handler, methods
ROUTES: list[tuple[str, str, Handler, list[str] | None]] = [
    ("/", "landing", operations.landing, None),
    ("/api/register", "register", handlers.register, ["POST"]),
    ("/api/verify-email", "verify_email", handlers.verify_email, ["POST"]),
    ("/api/photo", "upload_photo", handlers.photo, ["POST"]),
    ("/api/verify-nik", "verify_nik", handlers.verify_nik, ["POST"]),
    ("/api/join-batch", "join_batch", handlers.join_batch, ["POST"]),
    ("/api/registrants/{rid}", "status", handlers.status, None),
    ("/healthz", "healthz", operations.healthz, None),
    ("/metrics", "metrics", operations.metrics_endpoint, None),
    ("/metrics/speed", "metrics", operations.speed_endpoint, None),
    ("/openapi.json", "openapi", operations.openapi, None),
]
TEST_ROUTES: list[tuple[str, str, Handler, list[str] | None]] = [
    ("/test/mailbox/{rid}", "mailbox", operations.mailbox, None),
    ("/test/reset", "reset", operations.reset, ["POST"]),
]


def _endpoint(svc: Service, name: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """The handler bound to the service, answering its errors as JSON and observed in the metrics."""

    async def wrapped(request: Request) -> Response:
        started = time.perf_counter()
        svc.metrics.in_flight += 1
        if svc.cfg.test_mode:
            DRAW_KEY.set(draw_key(request.headers.get(DRAW_HEADER)))  # this request's task only
        try:
            response = await handler(svc, request)
            if response.status_code < 500 and svc.health.failing:
                svc.health.ok("storage")  # a request went through: an open storage or request-failure episode ends
                svc.health.ok(f"{name} requests")
        except BadRequest as exc:
            response = JSONResponse(exc.body, status_code=exc.code)
        except Overloaded as exc:
            svc.clock.shed()
            response = JSONResponse(
                {"error": f"overloaded ({exc.station}), retry later"}, status_code=503, headers={"Retry-After": str(exc.retry_after)}
            )
        except ClientDisconnect:  # the client went away (or was cut off as too slow): no one to answer, nothing wrong here
            response = JSONResponse({"error": "client disconnected"}, status_code=400)
        except Exception as exc:  # noqa: BLE001 - answered in the error shape, logged once per episode
            response = _failure(svc, name, exc)
        finally:
            svc.metrics.in_flight -= 1
        svc.metrics.observe(name, response.status_code, time.perf_counter() - started)
        return response

    return wrapped


def _failure(svc: Service, name: str, exc: Exception) -> Response:
    """An unexpected error as the documented JSON shape: 507 when storage ran out, else 500; the connection stays usable."""
    if storage_full(exc):
        svc.health.fail("storage", exc)
        return JSONResponse({"error": "insufficient storage, retry later"}, status_code=507, headers={"Retry-After": "30"})
    svc.health.fail(f"{name} requests", exc)
    return JSONResponse({"error": "internal error, retry later"}, status_code=500, headers={"Retry-After": "5"})


def _prepare(cfg: ServerConfig) -> Callable[[sqlite3.Connection], None]:
    """The startup write: the training batch, and in test mode the mailbox's index."""

    def prepare(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT OR IGNORE INTO batches(id, quota) VALUES (?, ?)", (BATCH_ID, cfg.batch_quota))
        conn.execute("UPDATE batches SET quota = max(?, joined) WHERE id = ?", (cfg.batch_quota, BATCH_ID))
        if cfg.test_mode:  # the mailbox reads by registrant; without the index each poll scans the whole outbox
            conn.execute("CREATE INDEX IF NOT EXISTS outbox_registrant ON outbox(registrant_id)")

    return prepare


LAG_EVERY = 0.25  # seconds between the loop-lag probe's samples


async def loop_lag(metrics: Metrics) -> None:
    """Every :data:`LAG_EVERY` seconds, yield to the event loop once and time how long it takes to come back: the
    wait of a step that is ready now (the loop's other ready steps and I/O first), published as
    ``surgecap_loop_lag_seconds_total`` and ``_samples_total``.  Where a busy server's time goes past its stations."""
    while True:
        await asyncio.sleep(LAG_EVERY)
        started = time.perf_counter()
        await asyncio.sleep(0)
        metrics.lag_seconds += time.perf_counter() - started
        metrics.lag_samples += 1


def create_app(
    cfg: ServerConfig,
    db_path: str | Path,
    registry_url: str,
    secret: bytes,
    data_dir: str | Path,
    reset_token: str | None = None,
    upstream: Callable[[str, int], Upstream] = HttpUpstream,
) -> Starlette:
    """The server's ASGI app.  ``upstream(registry_url, connections)`` makes the registry's
    client when the app starts; tests pass one that reaches an in-process registry."""
    svc = Service(cfg, secret, reset_token)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        svc.start(db_path, data_dir, upstream(registry_url, max(16, cfg.registry.concurrency * 2)))
        await svc.db.write(_prepare(cfg))
        tasks = [asyncio.create_task(sender(svc)), asyncio.create_task(loop_lag(svc.metrics))]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await svc.stop()

    table = ROUTES + (TEST_ROUTES if cfg.test_mode else [])
    routes = [Route(path, _endpoint(svc, name, handler), methods=methods) for path, name, handler, methods in table]
    fixed = {path: name for path, name, _, _ in table if "{" not in path}
    prefixes = [(path.split("{", 1)[0], name) for path, name, _, _ in table if "{" in path]

    def kind(path: str) -> str:
        """The request type a path's CPU time is accounted to."""
        name = fixed.get(path)
        if name is None:
            name = next((n for prefix, n in prefixes if path.startswith(prefix)), "other")
        return name

    return Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(_CpuTimed, clock=svc.clock, kind=kind)])


class _CpuTimed:
    """ASGI middleware: each HTTP request's steps on the event loop are timed by request type."""

    def __init__(self, app: ASGIApp, clock: CpuClock, kind: Callable[[str], str]):
        self.app = app
        self.clock = clock
        self.kind = kind

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.clock.timed(self.kind(scope["path"]), self.app(scope, receive, send))  # type: ignore[arg-type]  # an ASGI app returns a coroutine

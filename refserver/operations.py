"""The operator's and the tests' endpoints: landing page, health, metrics, the API description, the test mailbox and reset."""

from __future__ import annotations

import secrets
import sqlite3
import time

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from contracts import is_loopback_host
from refserver.openapi import OPENAPI
from refserver.service import BadRequest, Service
from refserver.upstream import UpstreamError

__all__ = ["landing", "healthz", "metrics_endpoint", "speed_endpoint", "openapi", "mailbox", "reset", "MAILBOX_QUERY"]

# the test mailbox's lookup, by the index outbox_registrant, made in test mode only (a registration then pays for its upkeep)
MAILBOX_QUERY = "SELECT token, sent FROM outbox WHERE registrant_id = ? AND sent IS NOT NULL"


async def landing(svc: Service, _: Request) -> Response:
    return HTMLResponse(
        "<!doctype html><html lang=en><title>Registration</title><h1>Programme registration</h1>"
        "<p>Register with your name, email, NIK, birth date and phone; verify your email; upload a photo; "
        "have your NIK checked; join a training batch.</p></html>"
    )


async def healthz(svc: Service, _: Request) -> Response:
    """``ok``; or 503 with the problems while a worker is failing or stuck (an email waiting with the sender silent).

    The database is asked whether emails wait at most once a second: a health probe must stay cheap under load.
    """
    from refserver.outbox import WORKER

    now = time.monotonic()
    if now - svc.health.checked >= 1.0:
        try:
            svc.health.waiting = svc.db.one("SELECT 1 FROM outbox WHERE sent IS NULL LIMIT 1") is not None
        except Exception as exc:  # noqa: BLE001 - the database itself is the problem
            problem = f"database: {type(exc).__name__}: {str(exc)[:200]}"
            return JSONResponse({"status": "degraded", "problems": [problem]}, status_code=503)
        svc.health.checked = now
    if not svc.health.failing and not svc.health.waiting:
        return PlainTextResponse("ok")
    problems = svc.health.problems({WORKER: svc.health.waiting})
    if problems:
        return JSONResponse({"status": "degraded", "problems": problems}, status_code=503, headers={"Retry-After": "5"})
    return PlainTextResponse("ok")


async def metrics_endpoint(svc: Service, _: Request) -> Response:
    extra = {"db_commits_total": float(svc.db.commits), "db_writes_total": float(svc.db.writes)}
    more: list[str] = []
    try:  # the registry's own station figures, so that one scrape shows the whole system
        code, answer = await svc.registry.request("GET", "/metrics", timeout=1.0)
        if code == 200:
            more = [line for line in answer.decode("utf-8", "replace").splitlines() if line.startswith("surgecap_station_")]
    except UpstreamError:
        pass  # the registry's figures are missing from this scrape; the server's own are complete
    return PlainTextResponse(
        svc.metrics.render(svc.stations, extra, more, svc.clock.lines() + svc.db.lines()), media_type="text/plain; version=0.0.4"
    )


async def speed_endpoint(svc: Service, _: Request) -> Response:
    """The requests' own computation in short buckets of the server's clock (:meth:`refserver.cpu.CpuClock.speed_log`)."""
    return JSONResponse(svc.clock.speed_log())


async def openapi(svc: Service, _: Request) -> Response:
    return JSONResponse(OPENAPI)


def loopback_only(request: Request) -> None:
    """The test endpoints answer a client on loopback that asked for a loopback host: a page in a local browser
    that reached the server by a rebound DNS name sends that name, and is refused."""
    client = request.client.host if request.client else ""
    asked = (request.url.hostname or "").strip("[]")
    if not is_loopback_host(client):
        raise BadRequest(403, "test endpoints answer only on loopback")
    if not is_loopback_host(asked):
        raise BadRequest(403, f"test endpoints answer only for a loopback Host, not {asked[:60]!r}")


async def mailbox(svc: Service, request: Request) -> Response:
    loopback_only(request)
    rid = request.path_params["rid"]
    row = svc.db.one(MAILBOX_QUERY, (rid,))
    if row is None:
        raise BadRequest(404, "no email delivered to this registrant yet")
    return JSONResponse({"registrant_id": rid, "token": row[0], "delivered_at": row[1]})


async def reset(svc: Service, request: Request) -> Response:
    loopback_only(request)
    if svc.reset_token is None or not secrets.compare_digest(request.headers.get("x-reset-token", ""), svc.reset_token):
        raise BadRequest(403, "reset needs the X-Reset-Token header")

    def work(conn: sqlite3.Connection) -> None:
        for table in ("outbox", "tokens", "registrants"):
            conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
        conn.execute("UPDATE batches SET joined = 0")

    await svc.db.write(work, "reset")
    return JSONResponse({"status": "reset"})

"""The reference registration service (ASGI, Starlette).

Endpoints: ``GET /``, ``POST /api/register``, ``POST /api/verify-email``,
``POST /api/photo``, ``POST /api/verify-nik``, ``POST /api/join-batch``,
``GET /api/registrants/{id}``, ``GET /healthz``, ``GET /metrics``,
``GET /openapi.json``; in test mode also ``GET /test/mailbox/{id}`` and
``POST /test/reset`` (loopback clients only; reset needs the reset token).

Every request walks its route of stations (``config.routes``), waiting in each
station's slot for its configured service time; the database work of a request
runs inside the ``db`` station's slot, a photo's write (``refserver.photos``)
inside the ``storage`` station's.  Bad input gets a 4xx JSON body saying what
was wrong; writes are atomic, so nothing is ever half-written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from contracts import is_loopback_host, sampler
from refserver.config import ServerConfig
from refserver.cpu import CpuClock
from refserver.db import Database
from refserver.metrics import Metrics
from refserver.openapi import OPENAPI
from refserver.photos import PUT_CALLS, PhotoStore
from refserver.security import email_problem, keyed_hash, nik_problem
from refserver.stations import Overloaded, Station
from refserver.upstream import HttpUpstream, Upstream, UpstreamError

__all__ = ["create_app", "BATCH_ID"]

BATCH_ID = "wave-1"
JPEG, PNG = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
TEST_CLIENT = "testclient"  # the client address Starlette's TestClient reports

REGISTER_FIELDS = {"name", "email", "nik", "birth_date", "phone"}
# the test mailbox's lookup, by the index outbox_registrant, made in test mode only (a registration then pays for its upkeep)
MAILBOX_QUERY = "SELECT token, sent FROM outbox WHERE registrant_id = ? AND sent IS NOT NULL"


class BadRequest(Exception):
    """A 4xx answer: ``code`` and a JSON body ``{"error": ..., **extra}``."""

    def __init__(self, code: int, error: str, **extra: Any):
        super().__init__(error)
        self.code = code
        self.body = {"error": error, **extra}


def _json_fields(body: Any, required: set[str]) -> dict[str, Any]:
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


async def _read_json(request: Request, required: set[str]) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > 16_384:
        raise BadRequest(413, "request body too large")
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest(400, "malformed JSON") from None
    return _json_fields(body, required)


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
    rng = random.Random(cfg.seed)
    # the database write runs in the writer thread inside the db station, the photo write in a worker thread inside storage
    stations = {name: Station(name, s.servers, s.queue, threaded=name in ("db", "storage")) for name, s in cfg.stations.items()}
    services: dict[tuple[str, str], Callable[[], float]] = {}
    for name, s in cfg.stations.items():
        for rt in cfg.routes:
            spec = s.service.get(rt, s.service.get("default"))
            services[(name, rt)] = sampler(spec, rng)
    metrics = Metrics()
    clock = CpuClock()
    state: dict[str, Any] = {}

    def stored(rt: str, store: Callable[[], None]) -> Callable[[], None]:
        def timed() -> None:
            started = time.thread_time()
            try:
                store()
            finally:
                clock.thread(rt, time.thread_time() - started, PUT_CALLS)

        return timed

    def db() -> Database:
        return state["db"]  # type: ignore[no-any-return]

    async def through(rt: str, work: Callable[[sqlite3.Connection], Any] | None = None, store: Callable[[], None] | None = None) -> Any:
        """Walk the request type's stations: the database work runs inside the db
        station, a file write (``store``) inside the storage station; work whose
        station is not on the route runs after it, and so does a database write
        whose db station comes before the storage station (it names the stored file)."""
        result = None
        route = cfg.routes.get(rt, [])
        for name in route:
            async with stations[name].slot(rt):
                if name == "db" and work is not None and store is None:  # a write naming the stored file waits for it
                    result = await db().write(work, rt)
                    work = None
                elif name == "storage" and store is not None:
                    await asyncio.to_thread(stored(rt, store))
                    store = None
                pause = services[(name, rt)]()
                if pause > 0:
                    await asyncio.sleep(pause)
        if store is not None:
            await asyncio.to_thread(stored(rt, store))
        if work is not None:
            result = await db().write(work, rt)
        return result

    def registrant(rid: str) -> tuple[Any, ...]:
        row = db().one("SELECT id, email_verified, photo_path, nik_verified, batch_id, nik_hash FROM registrants WHERE id = ?", (rid,))
        if row is None:
            raise BadRequest(404, "unknown registrant")
        return row

    # -- endpoints ---------------------------------------------------------------
    async def landing(_: Request) -> Response:
        return HTMLResponse(
            "<!doctype html><html lang=en><title>Registration</title><h1>Programme registration</h1>"
            "<p>Register with your name, email, NIK, birth date and phone; verify your email; upload a photo; "
            "have your NIK checked; join a training batch.</p></html>"
        )

    async def register(request: Request) -> Response:
        body = await _read_json(request, REGISTER_FIELDS)
        name = body["name"].strip()
        if not 1 <= len(name) <= 100:
            raise BadRequest(422, "name must be 1 to 100 characters")
        problem = email_problem(body["email"])
        if problem:
            raise BadRequest(422, problem)
        try:
            born = date.fromisoformat(body["birth_date"])
        except ValueError:
            raise BadRequest(422, "birth_date must be a date like 1990-04-21") from None
        if not date(1900, 1, 1) <= born <= date.today():
            raise BadRequest(422, "birth_date must be between 1900-01-01 and today")
        problem = nik_problem(body["nik"], born)
        if problem:
            raise BadRequest(422, problem)
        phone = body["phone"].replace(" ", "")
        digits = phone[1:] if phone.startswith("+") else phone
        if not (digits.isdigit() and 8 <= len(digits) <= 15):
            raise BadRequest(422, "phone must be 8 to 15 digits, optionally after a +")
        rid = uuid.uuid4().hex
        token = secrets.token_urlsafe(24)
        now = time.time()
        email_h, nik_h = keyed_hash(secret, "email", body["email"]), keyed_hash(secret, "nik", body["nik"])

        def work(conn: sqlite3.Connection) -> str:
            conn.execute(
                "INSERT INTO registrants(id, email_hash, nik_hash, phone_hash, birth_year, created) VALUES (?,?,?,?,?,?)",
                (rid, email_h, nik_h, keyed_hash(secret, "phone", digits), born.year, now),
            )
            conn.execute("INSERT INTO tokens(token_hash, registrant_id) VALUES (?, ?)", (keyed_hash(secret, "token", token), rid))
            conn.execute("INSERT INTO outbox(registrant_id, token, created) VALUES (?,?,?)", (rid, token, now))
            return rid

        try:
            await through("register", work)
        except sqlite3.IntegrityError as exc:
            which = "email" if "email_hash" in str(exc) else "nik" if "nik_hash" in str(exc) else "registration"
            raise BadRequest(409, f"{which} already registered") from None
        return JSONResponse({"id": rid, "status": "registered", "next": "verify your email"}, status_code=201)

    async def verify_email(request: Request) -> Response:
        body = await _read_json(request, {"token"})
        th = keyed_hash(secret, "token", body["token"])
        row = db().one("SELECT registrant_id, used FROM tokens WHERE token_hash = ?", (th,))
        if row is None:
            raise BadRequest(404, "unknown token")
        if row[1] is not None:
            raise BadRequest(409, "token already used")

        def work(conn: sqlite3.Connection) -> bool:
            now = time.time()
            if conn.execute("UPDATE tokens SET used = ? WHERE token_hash = ? AND used IS NULL", (now, th)).rowcount != 1:
                return False
            conn.execute("UPDATE registrants SET email_verified = ? WHERE id = ?", (now, row[0]))
            return True

        if not await through("verify_email", work):
            raise BadRequest(409, "token already used")
        return JSONResponse({"id": row[0], "status": "email_verified"})

    async def photo(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cfg.photo_max_bytes + 4096:
            raise BadRequest(413, f"photo larger than {cfg.photo_max_bytes} bytes")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise BadRequest(415, "expected multipart/form-data with fields registrant_id and photo")
        try:
            form = await request.form(max_files=1, max_fields=2, max_part_size=cfg.photo_max_bytes + 1)
        except Exception as exc:  # noqa: BLE001 - a malformed or oversized form
            status = 413 if "size" in str(exc).lower() else 400
            raise BadRequest(status, f"unreadable form: {exc}") from None
        rid = form.get("registrant_id")
        upload = form.get("photo")
        if not isinstance(rid, str) or upload is None or isinstance(upload, str):
            raise BadRequest(422, "expected fields registrant_id (text) and photo (file)")
        data = await upload.read(cfg.photo_max_bytes + 1)
        if len(data) > cfg.photo_max_bytes:
            raise BadRequest(413, f"photo larger than {cfg.photo_max_bytes} bytes")
        if not data.startswith((JPEG, PNG)):  # the image's kind is known by its bytes, so the store keeps only them
            raise BadRequest(415, "photo must be a JPEG or PNG image")
        row = registrant(rid)
        if row[1] is None:
            raise BadRequest(409, "verify your email first")
        stored_at: list[str] = []

        def store() -> None:  # appended to a segment and on disk before the database names it (refserver/photos.py)
            stored_at.append(state["photos"].put(data))

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE registrants SET photo_path = ? WHERE id = ?", (stored_at[0], rid))

        await through("upload_photo", work, store)
        return JSONResponse({"id": rid, "status": "photo_stored"})

    async def verify_nik(request: Request) -> Response:
        body = await _read_json(request, {"registrant_id", "nik"})
        row = registrant(body["registrant_id"])
        if row[2] is None:
            raise BadRequest(409, "upload a photo first")
        if row[3] is not None:
            return JSONResponse({"id": row[0], "status": "verified"})
        if keyed_hash(secret, "nik", body["nik"]) != row[5]:
            raise BadRequest(422, "nik does not match the one registered")
        outcome: dict[str, Any] = {}

        async def ask_registry() -> None:
            try:
                code, answer = await state["registry"].request("POST", "/check", {"nik": body["nik"]}, timeout=cfg.registry.timeout)
            except UpstreamError:  # unreachable, or no answer in time
                outcome["status"] = "timeout"
                return
            try:
                reply = json.loads(answer)
            except ValueError:
                reply = None
            if not isinstance(reply, dict):
                outcome["status"] = "unavailable"
            elif code in (429, 503):
                outcome["status"] = str(reply.get("reason", "unavailable"))
            elif code == 200:
                outcome["status"] = "verified" if reply.get("match") else "mismatch"
            else:
                outcome["status"] = "unavailable"

        await through("verify_nik")  # the request's own stations; the registry call follows
        await ask_registry()
        status = outcome["status"]
        if status == "mismatch":
            return JSONResponse({"id": row[0], "status": "mismatch", "error": "the registry does not know this NIK"}, status_code=422)
        if status != "verified":
            return JSONResponse(
                {"id": row[0], "status": "registry_unavailable", "reason": status, "error": "registry unavailable, retry later"},
                status_code=503,
                headers={"Retry-After": "5"},
            )

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE registrants SET nik_verified = ? WHERE id = ? AND nik_verified IS NULL", (time.time(), row[0]))

        await db().write(work, "verify_nik")
        return JSONResponse({"id": row[0], "status": "verified"})

    async def join_batch(request: Request) -> Response:
        body = await _read_json(request, {"registrant_id", "batch_id"})
        row = registrant(body["registrant_id"])
        if row[3] is None:
            raise BadRequest(409, "have your NIK verified first")
        if db().one("SELECT id FROM batches WHERE id = ?", (body["batch_id"],)) is None:
            raise BadRequest(404, "unknown batch")
        if row[4] is not None:
            raise BadRequest(409, "already joined a batch", batch_id=row[4])

        def work(conn: sqlite3.Connection) -> str:
            if conn.execute("UPDATE batches SET joined = joined + 1 WHERE id = ? AND joined < quota", (body["batch_id"],)).rowcount != 1:
                return "quota_full"
            if (
                conn.execute(
                    "UPDATE registrants SET batch_id = ?, joined = ? WHERE id = ? AND batch_id IS NULL",
                    (body["batch_id"], time.time(), row[0]),
                ).rowcount
                != 1
            ):
                raise sqlite3.IntegrityError("already joined")
            return "joined"

        try:
            result = await through("join_batch", work)
        except sqlite3.IntegrityError:
            raise BadRequest(409, "already joined a batch") from None
        if result == "quota_full":
            raise BadRequest(409, "batch quota full", status="quota_full")
        return JSONResponse({"id": row[0], "status": "joined", "batch_id": body["batch_id"]})

    async def status(request: Request) -> Response:
        row = registrant(request.path_params["rid"])
        stage = (
            "joined" if row[4] else "nik_verified" if row[3] else "photo_stored" if row[2] else "email_verified" if row[1] else "registered"
        )
        return JSONResponse(
            {
                "id": row[0],
                "stage": stage,
                "email_verified": row[1] is not None,
                "photo": row[2] is not None,
                "nik_verified": row[3] is not None,
                "batch_id": row[4],
            }
        )

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok")

    async def metrics_endpoint(_: Request) -> Response:
        extra = {"db_commits_total": float(db().commits), "db_writes_total": float(db().writes)}
        more: list[str] = []
        try:  # the registry's own station figures, so that one scrape shows the whole system
            code, answer = await state["registry"].request("GET", "/metrics", timeout=1.0)
            if code == 200:
                more = [line for line in answer.decode("utf-8", "replace").splitlines() if line.startswith("surgecap_station_")]
        except UpstreamError:
            pass  # the registry's figures are missing from this scrape; the server's own are complete
        return PlainTextResponse(
            metrics.render(stations, extra, more, clock.lines() + db().lines()), media_type="text/plain; version=0.0.4"
        )

    async def openapi(_: Request) -> Response:
        return JSONResponse(OPENAPI)

    def loopback_only(request: Request) -> None:
        host = request.client.host if request.client else ""
        if not (is_loopback_host(host) or host == TEST_CLIENT):
            raise BadRequest(403, "test endpoints answer only on loopback")

    async def mailbox(request: Request) -> Response:
        loopback_only(request)
        rid = request.path_params["rid"]
        row = db().one(MAILBOX_QUERY, (rid,))
        if row is None:
            raise BadRequest(404, "no email delivered to this registrant yet")
        return JSONResponse({"registrant_id": rid, "token": row[0], "delivered_at": row[1]})

    async def reset(request: Request) -> Response:
        loopback_only(request)
        if reset_token is None or not secrets.compare_digest(request.headers.get("x-reset-token", ""), reset_token):
            raise BadRequest(403, "reset needs the X-Reset-Token header")

        def work(conn: sqlite3.Connection) -> None:
            for table in ("outbox", "tokens", "registrants"):
                conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
            conn.execute("UPDATE batches SET joined = 0")

        await db().write(work, "reset")
        return JSONResponse({"status": "reset"})

    # -- email sender --------------------------------------------------------------
    async def sender() -> None:
        """Deliver outbox emails at the configured send rate into the mailbox."""
        tick = 0.05
        allowance = 0.0
        last = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            allowance = min(allowance + (now - last) * cfg.email_rate, max(1.0, cfg.email_rate))
            last = now
            n = int(allowance)
            if n < 1:
                continue
            ids = [r[0] for r in db().all("SELECT id FROM outbox WHERE sent IS NULL ORDER BY id LIMIT ?", (n,))]
            if not ids:
                continue
            allowance -= len(ids)

            def work(conn: sqlite3.Connection, ids: list[int] = ids) -> None:
                conn.executemany("UPDATE outbox SET sent = ? WHERE id = ?", [(time.time(), i) for i in ids])

            await db().write(work, "email_sender")

    # -- plumbing ------------------------------------------------------------------
    def endpoint(name: str, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            started = time.perf_counter()
            metrics.in_flight += 1
            try:
                response = await handler(request)
            except BadRequest as exc:
                response = JSONResponse(exc.body, status_code=exc.code)
            except Overloaded as exc:
                response = JSONResponse(
                    {"error": f"overloaded ({exc.station}), retry later"}, status_code=503, headers={"Retry-After": str(exc.retry_after)}
                )
            finally:
                metrics.in_flight -= 1
            metrics.observe(name, response.status_code, time.perf_counter() - started)
            return response

        return wrapped

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        database = Database(db_path, on_cpu=clock.thread)
        state["db"] = database

        def prepare(conn: sqlite3.Connection) -> None:  # the training batch, and in test mode the mailbox's index
            conn.execute("INSERT OR IGNORE INTO batches(id, quota) VALUES (?, ?)", (BATCH_ID, cfg.batch_quota))
            conn.execute("UPDATE batches SET quota = max(?, joined) WHERE id = ?", (cfg.batch_quota, BATCH_ID))
            if cfg.test_mode:  # the mailbox reads by registrant; without the index each poll scans the whole outbox
                conn.execute("CREATE INDEX IF NOT EXISTS outbox_registrant ON outbox(registrant_id)")

        await database.write(prepare)
        state["photos"] = PhotoStore(Path(data_dir) / "photos")
        state["registry"] = upstream(registry_url, max(16, cfg.registry.concurrency * 2))
        task = asyncio.create_task(sender())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await state["registry"].aclose()
            state["photos"].close()
            database.close()

    table: list[tuple[str, str, Callable[[Request], Awaitable[Response]], list[str] | None]] = [
        ("/", "landing", landing, None),
        ("/api/register", "register", register, ["POST"]),
        ("/api/verify-email", "verify_email", verify_email, ["POST"]),
        ("/api/photo", "upload_photo", photo, ["POST"]),
        ("/api/verify-nik", "verify_nik", verify_nik, ["POST"]),
        ("/api/join-batch", "join_batch", join_batch, ["POST"]),
        ("/api/registrants/{rid}", "status", status, None),
        ("/healthz", "healthz", healthz, None),
        ("/metrics", "metrics", metrics_endpoint, None),
        ("/openapi.json", "openapi", openapi, None),
    ]
    if cfg.test_mode:
        table += [("/test/mailbox/{rid}", "mailbox", mailbox, None), ("/test/reset", "reset", reset, ["POST"])]
    routes = [Route(path, endpoint(name, handler), methods=methods) for path, name, handler, methods in table]
    fixed = {path: name for path, name, _, _ in table if "{" not in path}
    prefixes = [(path.split("{", 1)[0], name) for path, name, _, _ in table if "{" in path]

    def kind(path: str) -> str:
        """The request type a path's CPU time is accounted to."""
        name = fixed.get(path)
        if name is None:
            name = next((n for prefix, n in prefixes if path.startswith(prefix)), "other")
        return name

    return Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(_CpuTimed, clock=clock, kind=kind)])


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

"""The registration funnel's endpoints: register, verify email, upload a photo, verify the NIK, join a batch, status.

Each handler takes the :class:`~refserver.service.Service` and the request,
walks its request type's stations (``Service.through``) and answers JSON; bad
input raises :class:`~refserver.service.BadRequest` (a 4xx JSON answer).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
import uuid
from datetime import date
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from refserver.security import ascii_digits, email_problem, keyed_hash, nik_problem
from refserver.service import DRAW_KEY, BadRequest, Service, read_json
from refserver.upstream import UpstreamError

__all__ = ["register", "verify_email", "photo", "verify_nik", "join_batch", "status", "BATCH_ID"]

BATCH_ID = "wave-1"
JPEG, PNG = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
REGISTER_FIELDS = {"name", "email", "nik", "birth_date", "phone"}


async def register(svc: Service, request: Request) -> Response:
    body = await read_json(request, REGISTER_FIELDS)
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
    if not (ascii_digits(digits) and 8 <= len(digits) <= 15):
        raise BadRequest(422, "phone must be 8 to 15 digits (0-9), optionally after a +")
    rid = uuid.uuid4().hex
    token = secrets.token_urlsafe(24)
    now = time.time()
    email_h, nik_h = keyed_hash(svc.secret, "email", body["email"]), keyed_hash(svc.secret, "nik", body["nik"])

    def work(conn: sqlite3.Connection) -> str:
        conn.execute(
            "INSERT INTO registrants(id, email_hash, nik_hash, phone_hash, birth_year, created) VALUES (?,?,?,?,?,?)",
            (rid, email_h, nik_h, keyed_hash(svc.secret, "phone", digits), born.year, now),
        )
        conn.execute("INSERT INTO tokens(token_hash, registrant_id) VALUES (?, ?)", (keyed_hash(svc.secret, "token", token), rid))
        # the token itself is kept in the outbox only in test mode, for the test mailbox; the tokens table keeps its hash
        conn.execute("INSERT INTO outbox(registrant_id, token, created) VALUES (?,?,?)", (rid, token if svc.cfg.test_mode else "", now))
        return rid

    try:
        await svc.through("register", work)
    except sqlite3.IntegrityError as exc:
        which = "email" if "email_hash" in str(exc) else "nik" if "nik_hash" in str(exc) else "registration"
        raise BadRequest(409, f"{which} already registered") from None
    return JSONResponse({"id": rid, "status": "registered", "next": "verify your email"}, status_code=201)


async def verify_email(svc: Service, request: Request) -> Response:
    body = await read_json(request, {"token"})
    th = keyed_hash(svc.secret, "token", body["token"])
    row = svc.db.one("SELECT registrant_id, used FROM tokens WHERE token_hash = ?", (th,))
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

    if not await svc.through("verify_email", work):
        raise BadRequest(409, "token already used")
    return JSONResponse({"id": row[0], "status": "email_verified"})


async def photo(svc: Service, request: Request) -> Response:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > svc.cfg.photo_max_bytes + 4096:
        raise BadRequest(413, f"photo larger than {svc.cfg.photo_max_bytes} bytes")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadRequest(415, "expected multipart/form-data with fields registrant_id and photo")
    try:
        form = await request.form(max_files=1, max_fields=2, max_part_size=svc.cfg.photo_max_bytes + 1)
    except Exception as exc:  # noqa: BLE001 - a malformed or oversized form
        status = 413 if "size" in str(exc).lower() else 400
        raise BadRequest(status, f"unreadable form: {exc}") from None
    rid = form.get("registrant_id")
    upload = form.get("photo")
    if not isinstance(rid, str) or upload is None or isinstance(upload, str):
        raise BadRequest(422, "expected fields registrant_id (text) and photo (file)")
    data = await upload.read(svc.cfg.photo_max_bytes + 1)
    if len(data) > svc.cfg.photo_max_bytes:
        raise BadRequest(413, f"photo larger than {svc.cfg.photo_max_bytes} bytes")
    if not data.startswith((JPEG, PNG)):  # the image's kind is known by its bytes, so the store keeps only them
        raise BadRequest(415, "photo must be a JPEG or PNG image")
    row = svc.registrant(rid)
    if row[1] is None:
        raise BadRequest(409, "verify your email first")
    stored_at: list[str] = []

    def store() -> None:  # appended to a segment and on disk before the database names it (refserver/photos.py)
        stored_at.append(svc.photos.put(data))

    def work(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE registrants SET photo_path = ? WHERE id = ?", (stored_at[0], rid))

    await svc.through("upload_photo", work, store)
    return JSONResponse({"id": rid, "status": "photo_stored"})


async def verify_nik(svc: Service, request: Request) -> Response:
    body = await read_json(request, {"registrant_id", "nik"})
    row = svc.registrant(body["registrant_id"])
    if row[2] is None:
        raise BadRequest(409, "upload a photo first")
    if row[3] is not None:
        return JSONResponse({"id": row[0], "status": "verified"})
    if keyed_hash(svc.secret, "nik", body["nik"]) != row[5]:
        raise BadRequest(422, "nik does not match the one registered")
    outcome: dict[str, Any] = {}

    async def ask_registry() -> None:
        try:
            key = DRAW_KEY.get()  # the registry draws this request's latency from it too (test mode)
            ask = {"nik": body["nik"], **({"draw": key} if key is not None else {})}
            code, answer = await svc.registry.request("POST", "/check", ask, timeout=svc.cfg.registry.timeout)
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

    await svc.through("verify_nik")  # the request's own stations; the registry call follows
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

    await svc.db.write(work, "verify_nik")
    return JSONResponse({"id": row[0], "status": "verified"})


async def join_batch(svc: Service, request: Request) -> Response:
    body = await read_json(request, {"registrant_id", "batch_id"})
    row = svc.registrant(body["registrant_id"])
    if row[3] is None:
        raise BadRequest(409, "have your NIK verified first")
    if svc.db.one("SELECT id FROM batches WHERE id = ?", (body["batch_id"],)) is None:
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
        result = await svc.through("join_batch", work)
    except sqlite3.IntegrityError:
        raise BadRequest(409, "already joined a batch") from None
    if result == "quota_full":
        raise BadRequest(409, "batch quota full", status="quota_full")
    return JSONResponse({"id": row[0], "status": "joined", "batch_id": body["batch_id"]})


async def status(svc: Service, request: Request) -> Response:
    row = svc.registrant(request.path_params["rid"])
    stage = "joined" if row[4] else "nik_verified" if row[3] else "photo_stored" if row[2] else "email_verified" if row[1] else "registered"
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

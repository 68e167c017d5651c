"""The reference server's endpoints: success paths and bad input, with the database checked."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from models.calibrate import parse_prometheus
from refserver.operations import MAILBOX_QUERY
from refserver.photos import PhotoStore

from .refserver_helpers import JPEG_BYTES, PNG_BYTES, RESET_TOKEN, advance, config, make_client, nik_for, person, rows, token_of


def test_full_funnel_and_status(tmp_path: Path) -> None:
    with make_client(tmp_path) as client:
        assert client.get("/healthz").text == "ok"
        assert "<h1>" in client.get("/").text
        p = person()
        rid = advance(client, p, "nik_verified")
        assert client.get(f"/api/registrants/{rid}").json()["stage"] == "nik_verified"
        r = client.post("/api/join-batch", json={"registrant_id": rid, "batch_id": "wave-1"})
        assert r.status_code == 200 and r.json()["status"] == "joined"
        status = client.get(f"/api/registrants/{rid}").json()
        assert status["stage"] == "joined" and status["batch_id"] == "wave-1"
        metrics = client.get("/metrics").text
        assert 'surgecap_requests_total{endpoint="register",status="201"} 1' in metrics
        assert 'surgecap_station_served_total{station="db",request="register"} 1' in metrics
        assert 'surgecap_station_busy_seconds_total{station="db",request="register"}' in metrics
        assert 'surgecap_station_busy_log_seconds_total{station="web",request="join_batch"}' in metrics
        # the processor's accounting: each request type's event-loop steps and its worker-thread CPU time
        cpu = {(n, lab["request"]): v for n, lab, v in parse_prometheus(metrics) if n.startswith("surgecap_cpu_")}
        assert cpu[("surgecap_cpu_requests_total", "register")] == 1
        assert cpu[("surgecap_cpu_steps_total", "register")] >= 2  # it waits at least for its body and its commit
        assert cpu[("surgecap_cpu_loop_seconds_total", "register")] > 0
        assert cpu[("surgecap_cpu_thread_seconds_total", "register")] > 0  # the database writer's statements
        assert cpu[("surgecap_cpu_thread_seconds_total", "upload_photo")] > 0  # the photo file write
        # the writer's statements give up the interpreter lock: 3 inserts, SAVEPOINT and RELEASE, a share of BEGIN and COMMIT
        assert 5 < cpu[("surgecap_cpu_thread_calls_total", "register")] <= 7
        assert cpu[("surgecap_cpu_thread_calls_total", "upload_photo")] >= 2  # the segment's pwrite and fdatasync
        # the database writer: its batches, and each request type's writes from queued to committed
        samples = parse_prometheus(metrics)
        db = {n: v for n, lab, v in samples if n.startswith("surgecap_db_") and not lab}
        writes = {(n, lab["request"]): v for n, lab, v in samples if n.startswith("surgecap_db_write") and "request" in lab}
        assert writes[("surgecap_db_writes_total", "register")] == 1 and writes[("surgecap_db_writes_total", "join_batch")] == 1
        assert writes[("surgecap_db_writes_total", "verify_nik")] == 1  # its write is outside any station
        assert 1 <= db["surgecap_db_batches_total"] <= sum(v for (n, _), v in writes.items() if n == "surgecap_db_writes_total")
        assert 0 < db["surgecap_db_commit_seconds_total"] <= db["surgecap_db_batch_seconds_total"]
        assert writes[("surgecap_db_write_seconds_total", "register")] > 0
        assert client.get("/openapi.json").json()["openapi"].startswith("3.")
    # personal data is not stored in clear
    dump = "\n".join(str(r) for r in rows(tmp_path, "SELECT * FROM registrants"))
    assert p["nik"] not in dump and p["email"] not in dump and p["phone"].lstrip("+") not in dump
    assert rows(tmp_path, "SELECT joined FROM batches WHERE id = 'wave-1'") == [(1,)]


def test_png_photo_and_registry_mismatch(tmp_path: Path) -> None:
    with make_client(tmp_path) as client:
        p = person(nik=nik_for(match=False))
        rid = advance(client, p, "email_verified")
        r = client.post("/api/photo", data={"registrant_id": rid}, files={"photo": ("me.png", PNG_BYTES, "image/png")})
        assert r.status_code == 200
        r = client.post("/api/verify-nik", json={"registrant_id": rid, "nik": p["nik"]})
        assert r.status_code == 422 and r.json()["status"] == "mismatch"
    [(nik_verified, locator)] = rows(tmp_path, "SELECT nik_verified, photo_path FROM registrants WHERE id = ?", (rid,))
    assert nik_verified is None and PhotoStore(tmp_path / "photos").get(locator) == PNG_BYTES


def test_an_acknowledged_photo_is_on_disk_where_the_database_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # durable means the segment's name (its directory fsynced when it was made) and the photo's bytes and the
    # segment's new size (fdatasync), both before the answer; the database then names the photo's range
    synced: list[tuple[str, str]] = []
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def recorder(kind: str, real: Any) -> Any:
        def call(fd: int) -> None:
            synced.append((kind, os.readlink(f"/proc/self/fd/{fd}")))
            real(fd)

        return call

    with make_client(tmp_path) as client:
        rid = advance(client, person(), "email_verified")
        monkeypatch.setattr(os, "fsync", recorder("fsync", real_fsync))
        monkeypatch.setattr(os, "fdatasync", recorder("fdatasync", real_fdatasync))
        r = client.post("/api/photo", data={"registrant_id": rid}, files={"photo": ("me.png", PNG_BYTES, "image/png")})
        monkeypatch.undo()
        assert r.status_code == 200
    photos = (tmp_path / "photos").resolve()
    [(locator,)] = rows(tmp_path, "SELECT photo_path FROM registrants WHERE id = ?", (rid,))
    segment = str(photos / locator.split(":")[0])
    assert ("fdatasync", segment) in synced
    assert synced.index(("fsync", str(photos))) < synced.index(("fdatasync", segment))
    assert PhotoStore(photos).get(locator) == PNG_BYTES


def test_batch_quota_is_enforced(tmp_path: Path) -> None:
    with make_client(tmp_path, config(batch_quota=2)) as client:
        ids = [advance(client, person(), "nik_verified") for _ in range(3)]
        answers = [client.post("/api/join-batch", json={"registrant_id": i, "batch_id": "wave-1"}) for i in ids]
        assert [a.status_code for a in answers] == [200, 200, 409]
        assert answers[2].json()["status"] == "quota_full"
        again = client.post("/api/join-batch", json={"registrant_id": ids[0], "batch_id": "wave-1"})
        assert again.status_code == 409 and "already joined" in again.json()["error"]
    assert rows(tmp_path, "SELECT joined FROM batches") == [(2,)]
    assert rows(tmp_path, "SELECT count(*) FROM registrants WHERE batch_id IS NOT NULL") == [(2,)]


def _ok_person() -> dict[str, str]:
    return person()


# Each case: (id, stage the registrant is brought to first, method, path, request kwargs (a function of
# the registrant's id and data), expected status, fragment of the error, SQL whose result must not change)
REG_COUNT = "SELECT count(*) FROM registrants"
REG_STATE = "SELECT id, email_verified, photo_path, nik_verified, batch_id FROM registrants ORDER BY id"
CASES: list[tuple[str, str | None, str, Any, int, str]] = [
    (
        "register-malformed-json",
        None,
        "/api/register",
        lambda rid, p: {"content": b"{not json", "headers": {"content-type": "application/json"}},
        400,
        "malformed JSON",
    ),
    ("register-not-object", None, "/api/register", lambda rid, p: {"json": [1, 2]}, 400, "JSON object"),
    (
        "register-missing-field",
        None,
        "/api/register",
        lambda rid, p: {"json": {k: v for k, v in person().items() if k != "phone"}},
        422,
        "missing field(s): phone",
    ),
    ("register-extra-field", None, "/api/register", lambda rid, p: {"json": {**person(), "admin": "yes"}}, 422, "unknown field(s): admin"),
    ("register-number-field", None, "/api/register", lambda rid, p: {"json": {**person(), "phone": 628123}}, 422, "phone must be a string"),
    ("register-bad-email", None, "/api/register", lambda rid, p: {"json": person(email="not-an-email")}, 422, "email must be"),
    ("register-empty-name", None, "/api/register", lambda rid, p: {"json": person(name="  ")}, 422, "name must be"),
    (
        "register-bad-date",
        None,
        "/api/register",
        lambda rid, p: {"json": person(birth_date="21/04/1990")},
        422,
        "birth_date must be a date",
    ),
    (
        "register-future-date",
        None,
        "/api/register",
        lambda rid, p: {"json": person(birth_date="2990-01-01")},
        422,
        "between 1900-01-01 and today",
    ),
    ("register-nik-short", None, "/api/register", lambda rid, p: {"json": person(nik="32730121049000")}, 422, "16 digits"),
    ("register-nik-letters", None, "/api/register", lambda rid, p: {"json": person(nik="32730121049000AB")}, 422, "16 digits"),
    ("register-nik-region", None, "/api/register", lambda rid, p: {"json": person(nik="0000002104900001")}, 422, "region code"),
    (
        "register-nik-date-disagrees",
        None,
        "/api/register",
        lambda rid, p: {"json": person(nik="3273012205900001")},
        422,
        "does not match birth_date",
    ),
    ("register-nik-serial", None, "/api/register", lambda rid, p: {"json": person(nik="3273012104900000")}, 422, "serial"),
    ("register-bad-phone", None, "/api/register", lambda rid, p: {"json": person(phone="call me")}, 422, "phone must be"),
    (
        "register-duplicate-email",
        "registered",
        "/api/register",
        lambda rid, p: {"json": person(email=p["email"].upper())},
        409,
        "email already registered",
    ),
    ("register-duplicate-nik", "registered", "/api/register", lambda rid, p: {"json": person(nik=p["nik"])}, 409, "nik already registered"),
    ("register-too-large", None, "/api/register", lambda rid, p: {"json": person(name="x" * 20_000)}, 413, "too large"),
    ("verify-email-unknown-token", "registered", "/api/verify-email", lambda rid, p: {"json": {"token": "nope"}}, 404, "unknown token"),
    ("verify-email-missing-token", "registered", "/api/verify-email", lambda rid, p: {"json": {}}, 422, "missing field(s): token"),
    (
        "verify-email-extra",
        "registered",
        "/api/verify-email",
        lambda rid, p: {"json": {"token": "x", "id": "y"}},
        422,
        "unknown field(s): id",
    ),
    (
        "photo-unknown-registrant",
        None,
        "/api/photo",
        lambda rid, p: {"data": {"registrant_id": "nobody"}, "files": {"photo": ("a.jpg", JPEG_BYTES, "image/jpeg")}},
        404,
        "unknown registrant",
    ),
    (
        "photo-skips-email",
        "registered",
        "/api/photo",
        lambda rid, p: {"data": {"registrant_id": rid}, "files": {"photo": ("a.jpg", JPEG_BYTES, "image/jpeg")}},
        409,
        "verify your email first",
    ),
    (
        "photo-not-an-image",
        "email_verified",
        "/api/photo",
        lambda rid, p: {"data": {"registrant_id": rid}, "files": {"photo": ("a.jpg", b"GIF89a" + b"0" * 50, "image/jpeg")}},
        415,
        "JPEG or PNG",
    ),
    (
        "photo-too-large",
        "email_verified",
        "/api/photo",
        lambda rid, p: {"data": {"registrant_id": rid}, "files": {"photo": ("a.jpg", JPEG_BYTES + b"0" * 200_000, "image/jpeg")}},
        413,
        "larger than",
    ),
    ("photo-not-multipart", "email_verified", "/api/photo", lambda rid, p: {"json": {"registrant_id": rid}}, 415, "multipart/form-data"),
    (
        "photo-missing-file",
        "email_verified",
        "/api/photo",
        lambda rid, p: {"data": {"registrant_id": rid}, "files": {"other": ("a.jpg", JPEG_BYTES, "image/jpeg")}},
        422,
        "expected fields",
    ),
    (
        "nik-skips-photo",
        "email_verified",
        "/api/verify-nik",
        lambda rid, p: {"json": {"registrant_id": rid, "nik": p["nik"]}},
        409,
        "upload a photo first",
    ),
    (
        "nik-other-nik",
        "photo_stored",
        "/api/verify-nik",
        lambda rid, p: {"json": {"registrant_id": rid, "nik": nik_for()}},
        422,
        "does not match the one registered",
    ),
    (
        "nik-unknown-registrant",
        None,
        "/api/verify-nik",
        lambda rid, p: {"json": {"registrant_id": "nobody", "nik": p["nik"]}},
        404,
        "unknown registrant",
    ),
    (
        "batch-skips-nik",
        "photo_stored",
        "/api/join-batch",
        lambda rid, p: {"json": {"registrant_id": rid, "batch_id": "wave-1"}},
        409,
        "NIK verified first",
    ),
    (
        "batch-unknown-batch",
        "nik_verified",
        "/api/join-batch",
        lambda rid, p: {"json": {"registrant_id": rid, "batch_id": "wave-9"}},
        404,
        "unknown batch",
    ),
    (
        "batch-malformed",
        "nik_verified",
        "/api/join-batch",
        lambda rid, p: {"content": b"[", "headers": {"content-type": "application/json"}},
        400,
        "malformed JSON",
    ),
    ("status-unknown", None, "/api/registrants/nobody", None, 404, "unknown registrant"),
    ("reset-without-token", None, "/test/reset", lambda rid, p: {}, 403, "X-Reset-Token"),
]


@pytest.mark.parametrize("case, stage, path, kwargs, status, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_4xx_and_changes_nothing(tmp_path: Path, case, stage, path, kwargs, status, fragment) -> None:
    with make_client(tmp_path) as client:
        p = person()
        rid = advance(client, p, stage) if stage else "nobody"
        before = rows(tmp_path, REG_STATE), rows(tmp_path, "SELECT count(*) FROM outbox"), rows(tmp_path, "SELECT joined FROM batches")
        if kwargs is None:
            r = client.get(path)
        else:
            r = client.post(path, **kwargs(rid, p))
        assert r.status_code == status, r.text
        assert fragment in r.json()["error"]
        after = rows(tmp_path, REG_STATE), rows(tmp_path, "SELECT count(*) FROM outbox"), rows(tmp_path, "SELECT joined FROM batches")
        assert after == before, "a refused request must leave the database as it was"
    assert len(CASES) >= 30


def test_replayed_token_is_refused(tmp_path: Path) -> None:
    with make_client(tmp_path) as client:
        rid = advance(client, person(), "registered")
        token = token_of(client, rid)
        assert client.post("/api/verify-email", json={"token": token}).status_code == 200
        again = client.post("/api/verify-email", json={"token": token})
        assert again.status_code == 409 and "already used" in again.json()["error"]
    assert rows(tmp_path, "SELECT count(*) FROM tokens WHERE used IS NOT NULL") == [(1,)]


def test_reset_with_token_and_test_endpoints_only_in_test_mode(tmp_path: Path) -> None:
    with make_client(tmp_path) as client:
        advance(client, person(), "registered")
        r = client.post("/test/reset", headers={"X-Reset-Token": RESET_TOKEN})
        assert r.status_code == 200
    assert rows(tmp_path, REG_COUNT) == [(0,)]
    with make_client(tmp_path / "prod", config(test_mode=False)) as client:
        assert client.get("/test/mailbox/x").status_code == 404
        assert client.post("/test/reset", headers={"X-Reset-Token": RESET_TOKEN}).status_code == 404


def test_a_mailbox_lookup_reads_by_index_not_the_whole_outbox(tmp_path: Path) -> None:
    with make_client(tmp_path) as client:
        advance(client, person(), "registered")
    plan = " ".join(str(r) for r in rows(tmp_path, f"EXPLAIN QUERY PLAN {MAILBOX_QUERY}", ("x",)))
    assert "USING INDEX outbox_registrant" in plan, plan  # a scan would grow with every registration of the day
    served = tmp_path / "served"
    with make_client(served, config(test_mode=False)) as client:  # no mailbox: a registration does not pay for the index
        assert client.get("/healthz").status_code == 200
    assert rows(served, "SELECT name FROM sqlite_master WHERE name = 'outbox_registrant'") == []


def test_real_cpu_work_per_request_type_is_done_and_counted_apart(tmp_path: Path) -> None:
    # reference_server.work: rounds of iterated SHA-256 inside the request's first station, on the event loop
    with make_client(tmp_path, config(work={"register": 200_000})) as client:
        assert client.post("/api/register", json=person()).status_code == 201
        cpu = {(n, lab["request"]): v for n, lab, v in parse_prometheus(client.get("/metrics").text) if n.startswith("surgecap_cpu_")}
    work = cpu[("surgecap_cpu_work_seconds_total", "register")]
    assert cpu[("surgecap_cpu_work_requests_total", "register")] == 1
    assert work > 0.01  # 200,000 rounds: tens of milliseconds of CPU on any machine this runs on
    assert cpu[("surgecap_cpu_loop_seconds_total", "register")] >= work  # part of the request's own loop time
    assert cpu.get(("surgecap_cpu_work_requests_total", "verify_email"), 0) == 0


def test_the_speed_log_keeps_the_requests_own_work_in_quarter_seconds_of_the_servers_clock(tmp_path: Path, monkeypatch: Any) -> None:
    # /metrics/speed: each key stretch in the bucket of the server's clock it ended in; /metrics carries that clock, so a
    # client can place the buckets on its own; the log keeps its last SPEED_BUCKETS buckets
    import time

    from refserver import cpu as cpu_module

    with make_client(tmp_path, config(work={"register": 20_000})) as client:
        before = time.monotonic()
        for _ in range(3):
            assert client.post("/api/register", json=person()).status_code == 201
        after = time.monotonic()
        log = client.get("/metrics/speed").json()
        clock = {n: v for n, _, v in parse_prometheus(client.get("/metrics").text)}["surgecap_clock_seconds"]
    assert log["bucket"] == cpu_module.SPEED_BUCKET == 0.25
    assert before <= clock and before <= log["clock"]
    assert all(rt == "register" for _, rt, _, _ in log["work"])
    assert sum(n for *_, n in log["work"]) == 3 and all(s > 0 for _, _, s, _ in log["work"])
    assert all(before - 0.25 <= start <= after for start, *_ in log["work"])

    monkeypatch.setattr(cpu_module, "SPEED_BUCKETS", 2)
    clock_ = cpu_module.CpuClock()
    for k in range(4):  # four buckets' work: the first two are dropped
        monkeypatch.setattr(cpu_module.time, "monotonic", lambda k=k: 1000.0 + k * 0.25 + 0.1)
        clock_.work("register", 0.01 * (k + 1))
    rows_ = clock_.speed_log()["work"]
    assert [(start, s) for start, _, s, _ in rows_] == [(1000.5, 0.03), (1000.75, 0.04)]


@pytest.mark.parametrize("work", [{"register": -1}, {"register": 10**8}, {"nonsense": 5}])
def test_bad_cpu_work_is_refused(work: dict[str, int]) -> None:
    from refserver.config import ConfigError, ServerConfig

    with pytest.raises(ConfigError, match="work"):
        ServerConfig.from_dict({**config().to_dict(), "work": work})


def test_a_draw_key_makes_two_servers_draw_the_same_service_times(monkeypatch: pytest.MonkeyPatch) -> None:
    # common random numbers (test mode): the same X-Surgecap-Draw gives the same station times on any server of the config
    import asyncio

    from refserver import service as service_module
    from refserver.config import StationConfig
    from refserver.service import DRAW_KEY, Service

    pauses: list[float] = []

    async def no_wait(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr(service_module.asyncio, "sleep", no_wait)
    exponential = {"default": {"dist": "exponential", "mean": 1.0}}
    cfg = config(stations={name: StationConfig(servers=1, queue=1, service=exponential) for name in ("web", "db", "storage")})

    def walk(key: str | None) -> list[float]:
        async def go() -> None:
            DRAW_KEY.set(key)
            await Service(cfg, b"k" * 32).through("register")  # a fresh server each time

        pauses.clear()
        asyncio.run(go())
        return list(pauses)

    first, again, other = walk("7.0.1"), walk("7.0.1"), walk("8.0.1")
    assert len(first) == 2 and first == again  # web, then db: the same times on two servers
    assert other != first

"""Shared helpers for the reference-server tests."""

from __future__ import annotations

import hashlib
import itertools
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
from starlette.testclient import TestClient

from refserver.app import create_app
from refserver.config import RegistryConfig, ServerConfig, StationConfig
from refserver.registry import create_registry_app
from refserver.upstream import UpstreamError

RESET_TOKEN = "reset-me"
JPEG_BYTES = b"\xff\xd8\xff\xe0" + b"\x00" * 200
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200
_serial = itertools.count(1)


def config(**overrides: Any) -> ServerConfig:
    d: dict[str, Any] = {
        "stations": {
            "web": StationConfig(servers=8, queue=100, service={"default": 0.0}),
            "db": StationConfig(servers=2, queue=100, service={"default": 0.0}),
            "storage": StationConfig(servers=2, queue=20, service={"default": 0.0}),
        },
        "routes": {
            "register": ["web", "db"],
            "verify_email": ["web", "db"],
            "upload_photo": ["web", "storage", "db"],
            "verify_nik": ["web"],
            "join_batch": ["web", "db"],
        },
        "registry": RegistryConfig(concurrency=4, queue=10, latency=0.001, timeout=2.0, mismatch=0.3),
        "email_rate": 2000.0,
        "batch_quota": 3,
        "photo_max_bytes": 100_000,
        "test_mode": True,
    }
    d.update(overrides)
    return ServerConfig(**d)


def nik_for(born: str = "1990-04-21", match: bool = True, mismatch: float = 0.3) -> str:
    """A well-formed NIK for that birth date that the registry will (or will not) match."""
    y, m, d = born.split("-")
    while True:
        nik = f"327301{d}{m}{y[2:]}{next(_serial) % 10000:04d}"
        if nik.endswith("0000"):
            continue
        digest = int.from_bytes(hashlib.sha256(nik.encode()).digest()[:4], "big") / 2**32
        if (digest >= mismatch) == match:
            return nik


def person(**overrides: str) -> dict[str, str]:
    n = next(_serial)
    p = {"name": "Siti Rahma", "email": f"siti{n}@example.org", "nik": nik_for(), "birth_date": "1990-04-21", "phone": "+6281234567890"}
    p.update(overrides)
    return p


class InProcessRegistry:
    """The server's registry client, reaching a registry app in this process (no sockets)."""

    def __init__(self, app: Any):
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://registry")

    async def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, bytes]:
        try:
            r = await self.client.request(method, path, json=body, timeout=timeout)
        except httpx.HTTPError as exc:
            raise UpstreamError(str(exc)) from None
        return r.status_code, r.content

    async def aclose(self) -> None:
        await self.client.aclose()


def make_client(tmp_path: Path, cfg: ServerConfig | None = None) -> TestClient:
    cfg = cfg or config()
    registry = create_registry_app(cfg.registry)
    app = create_app(
        cfg,
        tmp_path / "db.sqlite",
        "http://registry",
        b"k" * 32,
        tmp_path,
        reset_token=RESET_TOKEN,
        upstream=lambda url, connections: InProcessRegistry(registry),
    )
    return TestClient(app, base_url="http://127.0.0.1", client=("127.0.0.1", 50000))  # a local client, as the test endpoints want


def rows(tmp_path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(tmp_path / "db.sqlite")
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def token_of(client: TestClient, rid: str, wait: float = 5.0) -> str:
    deadline = time.monotonic() + wait
    while True:
        r = client.get(f"/test/mailbox/{rid}")
        if r.status_code == 200:
            return str(r.json()["token"])
        if time.monotonic() > deadline:
            raise AssertionError(f"no email for {rid}: {r.status_code} {r.text}")
        time.sleep(0.02)


def advance(client: TestClient, p: dict[str, str], to: str) -> str:
    """Register ``p`` and take it through the funnel up to stage ``to``; returns its id."""
    r = client.post("/api/register", json=p)
    assert r.status_code == 201, r.text
    rid = str(r.json()["id"])
    if to == "registered":
        return rid
    assert client.post("/api/verify-email", json={"token": token_of(client, rid)}).status_code == 200
    if to == "email_verified":
        return rid
    assert client.post("/api/photo", data={"registrant_id": rid}, files={"photo": ("me.jpg", JPEG_BYTES, "image/jpeg")}).status_code == 200
    if to == "photo_stored":
        return rid
    r = client.post("/api/verify-nik", json={"registrant_id": rid, "nik": p["nik"]})
    assert r.status_code == 200, r.text
    return rid

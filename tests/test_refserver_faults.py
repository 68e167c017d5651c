"""Faults inside the reference server: a full disk while registrations and the email sender run.

Nothing fails silently: a failed write answers 507 in the JSON error shape (never a bare 500), the email sender
survives and retries, /healthz reports both while they last, the log gets one line per episode, and once the
disk has room again every acknowledged registration gets its email without a restart.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from refserver.db import Database

from .refserver_helpers import make_client, person, rows, token_of


def test_a_full_disk_is_a_507_reported_in_healthz_and_the_backlog_drains_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_write = Database.write
    full = {"on": False}

    async def write(self: Database, fn: Any, kind: str = "other") -> Any:
        if full["on"]:
            raise sqlite3.OperationalError("database or disk is full")
        return await real_write(self, fn, kind)

    monkeypatch.setattr(Database, "write", write)
    caplog.set_level(logging.WARNING, logger="refserver")
    with make_client(tmp_path) as client:
        before = [client.post("/api/register", json=person()).json()["id"] for _ in range(3)]
        full["on"] = True
        answers = [client.post("/api/register", json=person()) for _ in range(20)]
        assert {r.status_code for r in answers} == {507}
        assert answers[0].json() == {"error": "insufficient storage, retry later"} and answers[0].headers["retry-after"]
        late = client.post("/api/register", json=person())  # queued while full: refused, so nothing acknowledged is lost
        assert late.status_code == 507
        health = client.get("/healthz")
        assert health.status_code == 503 and any("storage" in p for p in health.json()["problems"])
        full["on"] = False
        after = client.post("/api/register", json=person())
        assert after.status_code == 201
        for rid in [*before, after.json()["id"]]:  # the sender kept going: every acknowledged registrant gets an email
            assert token_of(client, rid, wait=30)
        assert client.get("/healthz").text == "ok"
    assert len(rows(tmp_path, "SELECT id FROM registrants")) == 4  # exactly the acknowledged ones
    failing = [r for r in caplog.records if "failing" in r.getMessage()]
    assert 1 <= len(failing) <= 3, [r.getMessage() for r in failing]  # one line per episode, not per request (21 failed)


def test_the_email_sender_survives_failed_writes_says_so_and_catches_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the outbox's writes fail (the first failure ended the sender for good before): registrations go on
    real_write = Database.write
    broken = {"on": True}

    async def write(self: Database, fn: Any, kind: str = "other") -> Any:
        if broken["on"] and kind == "email_sender":
            raise sqlite3.OperationalError("unable to open database file")
        return await real_write(self, fn, kind)

    monkeypatch.setattr(Database, "write", write)
    with make_client(tmp_path) as client:
        ids = [client.post("/api/register", json=person()).json()["id"] for _ in range(5)]
        health = None
        for _ in range(500):  # the sender's first failure reaches /healthz within its first tick
            health = client.get("/healthz")
            if health.status_code == 503:
                break
        assert health is not None and health.status_code == 503
        assert any(p.startswith("email_sender: failing") for p in health.json()["problems"])
        assert client.get(f"/test/mailbox/{ids[0]}").status_code == 404  # nothing sent yet
        broken["on"] = False
        assert all(token_of(client, rid, wait=30) for rid in ids)  # caught up without a restart
        assert client.get("/healthz").text == "ok"

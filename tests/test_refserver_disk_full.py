"""A full disk during a load, on a real server whose data lives on a small tmpfs (root mounts it; skipped otherwise).

While the disk is full, registrations get a 507 in the JSON error shape on a connection that stays usable; once
space is freed they get 201 again, every acknowledged registration is in the database, every registrant gets
their verification email without a restart, and no request got a reset.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from refserver.serve import started

from .refserver_helpers import config, person

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_during_a_load_loses_nothing_acknowledged(small_disk: Path) -> None:
    acked: list[str] = []
    codes: dict[int, int] = {}
    resets: list[str] = []
    stop = threading.Event()
    with started(config().to_dict(), small_disk / "server") as url:

        def client() -> None:
            with httpx.Client(base_url=url, timeout=10) as c:  # one kept-alive connection
                while not stop.is_set():
                    try:
                        r = c.post("/api/register", json=person())
                    except httpx.HTTPError as exc:
                        resets.append(repr(exc))
                        continue
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1
                    if r.status_code == 201:
                        acked.append(r.json()["id"])
                    elif r.status_code == 507:
                        assert r.json() == {"error": "insufficient storage, retry later"}

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        filler = small_disk / "filler"
        with open(filler, "wb") as f:  # fill what is left of the disk
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
                    os.fsync(f.fileno())
            except OSError:
                pass
        with httpx.Client(base_url=url, timeout=10) as c:
            for _ in range(200):  # until the full disk has shown itself
                if codes.get(507, 0) >= 20:
                    break
                c.get("/healthz")
            assert codes.get(507, 0) >= 20, codes
            filler.unlink()
            before = len(acked)
            for _ in range(2000):  # until registrations succeed again
                if len(acked) >= before + 50:
                    break
                c.get("/healthz")
            stop.set()
            for t in threads:
                t.join(timeout=30)
            assert len(acked) >= before + 50, codes
            for rid in acked:  # every acknowledged registrant gets an email, without a restart
                for _ in range(3000):
                    if c.get(f"/test/mailbox/{rid}").status_code == 200:
                        break
                else:
                    raise AssertionError(f"no email for {rid}")
            assert c.get("/healthz").text == "ok"
    import sqlite3

    with sqlite3.connect(small_disk / "server" / "refserver.sqlite") as db:
        stored = {row[0] for row in db.execute("SELECT id FROM registrants")}
    assert set(acked) <= stored
    for name in ("refserver.sqlite", "secret", "reset-token"):  # personal data and keys: readable by the server's user only
        assert (small_disk / "server" / name).stat().st_mode & 0o077 == 0, name
    assert resets == [], resets[:3]
    assert set(codes) <= {201, 507}, codes

"""The reference server as real processes on loopback: durability, overload, registry limits."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from refserver.config import RegistryConfig, StationConfig
from refserver.serve import read_port, serve_cmd, wait_ready

from .conftest import ROOT
from .refserver_helpers import advance, config, make_client, person


def _start(tmp_path: Path, cfg: dict[str, Any]) -> tuple[subprocess.Popen[bytes], int]:
    """The server on a port it binds itself (port 0, named in DATA_DIR/port): its process and port."""
    cfg_path = tmp_path / "server.json"
    cfg_path.write_text(json.dumps(cfg))
    (tmp_path / "data" / "port").unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "refserver.serve", "--config", str(cfg_path), "--port", "0", "--data-dir", str(tmp_path / "data")],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    port = read_port(tmp_path / "data" / "port", proc)
    wait_ready(f"http://127.0.0.1:{port}/healthz", proc=proc)
    return proc, port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def _cfg(**over: Any) -> dict[str, Any]:
    c = config(**over).to_dict()
    c["test_mode"] = False
    return c


@pytest.mark.slow
def test_acknowledged_registrations_survive_sigkill(tmp_path: Path) -> None:
    cfg = _cfg()
    proc, port = _start(tmp_path, cfg)
    acked: list[str] = []
    stop = threading.Event()
    enough = threading.Event()  # set once many registrations are acknowledged: the kill lands mid-stream

    def client() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
            while not stop.is_set():
                try:
                    r = c.post("/api/register", json=person())
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code == 201:
                    acked.append(r.json()["id"])
                    if len(acked) >= 200:
                        enough.set()

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    assert enough.wait(timeout=60), "the clients should have been acknowledged many registrations"
    os.kill(proc.pid, signal.SIGKILL)  # mid-stream, no chance to clean up
    proc.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert len(acked) > 50, "the clients should have been acknowledged many registrations"
    proc, port = _start(tmp_path, cfg)  # restart on the same database
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            for rid in acked:
                assert c.get(f"/api/registrants/{rid}").status_code == 200, f"acknowledged {rid} lost"
    finally:
        _stop(proc)
    conn = sqlite3.connect(tmp_path / "data" / "refserver.sqlite")
    ids = [r[0] for r in conn.execute("SELECT id FROM registrants")]
    tokens = conn.execute("SELECT count(*) FROM tokens").fetchone()[0]
    outbox = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
    conn.close()
    assert len(ids) == len(set(ids)) and len(acked) == len(set(acked))
    assert set(acked) <= set(ids)
    # nothing half-written: every registrant has its token and its email, and nothing else exists
    assert tokens == outbox == len(ids)


async def _paced_load(url: str, rate: float, seconds: float, results: list[tuple[float, int, float]]) -> None:
    """Open-model arrivals at a fixed rate: each request starts on time whatever the others do."""
    limits = httpx.Limits(max_connections=400)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as c:
        start = time.monotonic()
        tasks = []

        async def one(at: float) -> None:
            t0 = time.monotonic()
            try:
                r = await c.post("/api/register", json=person())
                results.append((at, r.status_code, time.monotonic() - t0))
                if r.status_code == 503:
                    assert r.headers.get("retry-after"), "a shed request says when to retry"
            except httpx.HTTPError:
                results.append((at, 0, time.monotonic() - t0))

        n = int(rate * seconds)
        for i in range(n):
            at = i / rate
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(at)))
        await asyncio.gather(*tasks)


def _p95(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[int(0.95 * (len(xs) - 1))]


@pytest.mark.slow
def test_overload_sheds_with_retry_after_and_recovers(tmp_path: Path) -> None:
    # web: 2 slots of 50 ms = 40 registrations/s; queue of 4.  Load: 10 s at 3x (120/s).
    cfg = _cfg(
        stations={
            "web": StationConfig(servers=2, queue=4, service={"default": 0.05}),
            "db": StationConfig(servers=2, queue=100, service={"default": 0.0}),
            "storage": StationConfig(servers=1, queue=1, service={"default": 0.0}),
        }
    )
    proc, port = _start(tmp_path, cfg)
    url = f"http://127.0.0.1:{port}"
    try:
        before: list[tuple[float, int, float]] = []
        asyncio.run(_paced_load(url, 10, 3, before))
        surge: list[tuple[float, int, float]] = []
        asyncio.run(_paced_load(url, 120, 10, surge))
        after: list[tuple[float, int, float]] = []
        asyncio.run(_paced_load(url, 10, 5, after))
        assert proc.poll() is None, "the server stays up"
        assert httpx.get(f"{url}/healthz").status_code == 200
    finally:
        _stop(proc)
    codes = [c for _, c, _ in surge]
    assert codes.count(503) > 0.3 * len(codes), "past its capacity the server sheds"
    assert set(codes) <= {201, 503}, f"only accepted or shed, never an error: {set(codes)}"
    normal = _p95([d for _, c, d in before if c == 201])
    recovered = _p95([d for _, c, d in after if c == 201])
    assert all(c == 201 for _, c, _ in after), "within 5 s after the surge every request is accepted again"
    assert recovered <= max(2 * normal, normal + 0.05), f"p95 after the surge {recovered:.3f}s, before {normal:.3f}s"


def test_registry_limits_surface_as_retry_later(tmp_path: Path) -> None:
    reg = RegistryConfig(concurrency=4, queue=10, latency=0.001, timeout=2.0, rate_limit=0.5, burst=1, mismatch=0.0)
    with make_client(tmp_path, config(registry=reg)) as client:
        p1, p2 = person(), person()
        advance(client, p1, "nik_verified")  # takes the one token of the bucket
        rid2 = advance(client, p2, "photo_stored")
        r = client.post("/api/verify-nik", json={"registrant_id": rid2, "nik": p2["nik"]})
        assert r.status_code == 503 and r.headers["retry-after"]
        assert r.json() == {
            "id": rid2,
            "status": "registry_unavailable",
            "reason": "rate_limited",
            "error": "registry unavailable, retry later",
        }
    quota = RegistryConfig(concurrency=4, queue=10, latency=0.001, timeout=2.0, daily_quota=1, mismatch=0.0)
    with make_client(tmp_path / "q", config(registry=quota)) as client:
        p1, p2 = person(), person()
        advance(client, p1, "nik_verified")
        rid2 = advance(client, p2, "photo_stored")
        r = client.post("/api/verify-nik", json={"registrant_id": rid2, "nik": p2["nik"]})
        assert r.status_code == 503 and r.json()["reason"] == "quota"


@pytest.mark.parametrize("limit", ["rate", "quota"])
def test_registry_service_answers_429(limit: str) -> None:
    from starlette.testclient import TestClient

    from refserver.registry import create_registry_app

    # a bucket of 5 that refills one token in 1000 s: however slowly the 8 requests run, only the 5 pass
    cfg = RegistryConfig(latency=0.0, rate_limit=0.001, burst=5.0) if limit == "rate" else RegistryConfig(latency=0.0, daily_quota=3)
    with TestClient(create_registry_app(cfg)) as c:
        codes = [c.post("/check", json={"nik": "3273012104900001"}).status_code for _ in range(8)]
    allowed = 5 if limit == "rate" else 3
    assert codes[:allowed] == [200] * allowed
    assert codes[allowed:] == [429] * (8 - allowed)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_capacity_serve_stops_cleanly_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "capacity_cli", "serve", str(ROOT / "scenarios" / "smoke.yaml"), "--port", "0", "--data-dir", str(data)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = read_port(data / "port", proc)  # type: ignore[arg-type]
        wait_ready(f"http://127.0.0.1:{port}/healthz", proc=proc)
        r = httpx.post(f"http://127.0.0.1:{port}/api/register", json=person())
        assert r.status_code == 201
        rid = r.json()["id"]
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = proc.stdout.read() if proc.stdout else ""
    assert "serving on http://127.0.0.1" in out
    # the registry child is gone too, and the registration is in the closed database
    left = subprocess.run(["pgrep", "-f", f"--config {data}/server.json"], capture_output=True, text=True).stdout.split()
    assert left == [], f"stray processes: {left}"
    conn = sqlite3.connect(data / "refserver.sqlite")
    assert conn.execute("SELECT count(*) FROM registrants WHERE id = ?", (rid,)).fetchone() == (1,)
    conn.close()
    config_written = json.loads((data / "server.json").read_text())
    assert config_written["routes"]["register"] == ["web", "db"]
    assert config_written["registry"]["rate_limit"] == 10.0


def test_serve_refuses_a_non_loopback_bind(capsys) -> None:
    from capacity_cli import main

    assert main(["serve", str(ROOT / "scenarios" / "smoke.yaml"), "--host", "0.0.0.0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err


@pytest.mark.slow
def test_a_server_on_port_0_names_its_own_port_and_a_taken_port_is_refused(tmp_path: Path) -> None:
    # started() runs the server on port 0: it binds a free port itself and names it, so nothing can take the port
    # between choosing and binding, and the readiness probe cannot be answered by another process
    from refserver.serve import listening, started

    with started(_cfg(), tmp_path / "own") as url:
        port = int((tmp_path / "own" / "port").read_text())
        assert url == f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/healthz", timeout=5).text == "ok"
        assert (tmp_path / "own" / "registry-port").read_text() != str(port)
    with listening("127.0.0.1", 0) as taken:
        busy = taken.getsockname()[1]
        cfg_path = tmp_path / "server.json"
        cfg_path.write_text(json.dumps(_cfg()))
        done = subprocess.run(
            [sys.executable, "-m", "refserver.serve", "--config", str(cfg_path), "--port", str(busy), "--data-dir", str(tmp_path / "busy")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2 and f"cannot listen on 127.0.0.1:{busy}" in done.stderr
    no_port = subprocess.run(
        [sys.executable, "-m", "refserver.serve", "--config", str(cfg_path), "--port", "70000", "--data-dir", str(tmp_path / "bad")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert no_port.returncode == 2 and "cannot listen on 127.0.0.1:70000" in no_port.stderr and "Traceback" not in no_port.stderr
    unwritable = subprocess.run(
        serve_cmd(cfg_path, 0, tmp_path / "nowhere", "--port-file", str(tmp_path / "no-such-dir" / "port")),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unwritable.returncode == 2 and "cannot write the port file" in unwritable.stderr and "Traceback" not in unwritable.stderr
    assert not (tmp_path / "nowhere" / "registry-port").exists()  # found before the registry was started


def test_the_server_listens_on_sixteen_sockets_sharing_its_port_and_no_one_else_can_join() -> None:
    # uvloop takes one connection per listening socket per turn of its loop: sixteen sockets share the port so that a
    # saturated server still takes connections in as they come (its stations then decide, not the kernel's queue)
    import socket as socketlib

    from refserver.serve import LISTENERS, listeners

    socks = listeners("127.0.0.1", 0)
    try:
        ports = {s.getsockname()[1] for s in socks}
        assert len(socks) == LISTENERS == 16 and len(ports) == 1
        port = ports.pop()
        with pytest.raises(OSError):  # a second server on the same port fails at once, as without sharing
            listeners("127.0.0.1", port)
        clients = [socketlib.create_connection(("127.0.0.1", port), timeout=5) for _ in range(64)]
        taken = []
        for s in socks:  # the kernel spread the connections over the sockets
            s.setblocking(False)
            n = 0
            while True:
                try:
                    conn, _ = s.accept()
                except BlockingIOError:
                    break
                conn.close()
                n += 1
            taken.append(n)
        assert sum(taken) == 64 and sum(1 for n in taken if n) > 1
        for c in clients:
            c.close()
    finally:
        for s in socks:
            s.close()

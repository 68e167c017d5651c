"""Slow, idle and oversized clients on a real server (refserver/protocol.py): each is cut off, and /healthz stays reachable.

Marked slow: it starts the server.  Limits set low for the test: headers within 1 s, a body's pieces within 1 s,
at most 30 connections.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from refserver.serve import started

from .refserver_helpers import config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, tuple[str, int]]]:
    cfg = config().to_dict()
    cfg["limits"] = {"header_seconds": 1, "body_seconds": 1, "connections": 30}
    with started(cfg, tmp_path_factory.mktemp("limits")) as url:
        where = urlsplit(url)
        yield url, (str(where.hostname), int(where.port or 0))


def _answer(sock: socket.socket, wait: float = 10.0) -> bytes:
    sock.settimeout(wait)
    return sock.recv(4096)


def test_oversized_headers_get_a_431(server: tuple[str, tuple[str, int]]) -> None:
    with socket.create_connection(server[1]) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n")
        assert _answer(sock).startswith(b"HTTP/1.1 431")


def test_half_sent_headers_and_silent_connections_are_closed_with_a_408(server: tuple[str, tuple[str, int]]) -> None:
    for first in (b"GET /healthz HTTP/1.1\r\nHost: 127.0", b""):
        with socket.create_connection(server[1]) as sock:
            sock.sendall(first)
            started_at = time.monotonic()
            assert _answer(sock).startswith(b"HTTP/1.1 408")
            assert time.monotonic() - started_at < 8  # the limit is 1 s; far less than for ever


def test_a_body_shorter_than_its_length_does_not_hold_the_connection(server: tuple[str, tuple[str, int]]) -> None:
    with socket.create_connection(server[1]) as sock:
        sock.sendall(b'POST /api/register HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"a"')
        assert _answer(sock) == b""  # closed by the server
    assert httpx.get(f"{server[0]}/healthz").text == "ok"  # and nothing counted that as a failure


def test_idle_connections_past_the_cap_do_not_lock_out_healthz(server: tuple[str, tuple[str, int]]) -> None:
    idle = [socket.create_connection(server[1]) for _ in range(60)]
    try:
        for _ in range(3):
            assert httpx.get(f"{server[0]}/healthz", timeout=10).status_code == 200
    finally:
        for sock in idle:
            sock.close()


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(f"{name} "))


def test_past_the_cap_with_none_idle_a_new_connection_is_refused_and_counted(server: tuple[str, tuple[str, int]]) -> None:
    # connections inside a request (headers in, body still coming) are not idle: with the cap's 30 all such, the next
    # connection is refused with a 503 that says why, and /metrics counts it (beside the loop's lag probe)
    partial = b"POST /api/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    url = server[0]
    before = _metric(url, "surgecap_connections_refused_total")
    busy: list[socket.socket] = []
    try:
        for _ in range(29):
            busy.append(socket.create_connection(server[1]))
            busy[-1].sendall(partial)
        deadline = time.monotonic() + 10
        while _metric(url, "surgecap_in_flight") < 29:  # the server has read all 29 requests' headers
            assert time.monotonic() < deadline, "the server did not take the 29 requests in"
        answer = b""
        for _ in range(5):  # the 30th is taken in before the next connects (a fresh one not read yet is idle, and closed)
            busy.append(socket.create_connection(server[1]))
            busy[-1].sendall(partial)
            late = socket.create_connection(server[1])
            answer = _answer(late)
            late.close()
            if answer.startswith(b"HTTP/1.1 503"):
                break
    finally:
        for sock in busy:
            sock.close()
    assert answer.startswith(b"HTTP/1.1 503") and b'"reason": "connections"' in answer
    assert _metric(url, "surgecap_connections_refused_total") >= before + 1
    assert _metric(url, "surgecap_loop_lag_samples_total") >= 1

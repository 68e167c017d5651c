"""The registrant's HTTP client (locustfiles/client.py): what it puts on the wire and how it treats a closing server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from locustfiles.client import Client


def _client(host: str) -> Client:
    return Client(host, lambda **_: None, connections=4, connection_timeout=2.0, network_timeout=2.0)


def test_the_request_head_is_well_formed() -> None:
    c = _client("http://127.0.0.1:8123/base/")
    post = c.message("POST", "/api/register", b'{"a":1}', {"Content-Type": "application/json"})
    head, body = post.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /base/api/register HTTP/1.1"  # the target's base path goes first
    assert "Host: 127.0.0.1:8123" in lines and "Content-Type: application/json" in lines and "Content-Length: 7" in lines
    assert body == b'{"a":1}'
    get = c.message("GET", "/test/mailbox/x", b"", None).decode()
    assert get.startswith("GET /base/test/mailbox/x HTTP/1.1\r\n") and "Content-Length" not in get and get.endswith("\r\n\r\n")
    assert "Content-Length: 0" in c.message("POST", "/api/x", b"", None).decode()  # a POST always says how long its body is
    assert "Host: [::1]:9000\r\n" in _client("http://[::1]:9000").message("GET", "/", b"", None).decode()
    assert "Host: example.test\r\n" in _client("http://example.test").message("GET", "/", b"", None).decode()  # default port left out


@pytest.mark.parametrize("path", ["/a b", "/a\r\nX-Injected: 1", "api/no-slash", "/tab\there"])
def test_a_target_that_would_break_the_head_is_refused(path: str) -> None:
    with pytest.raises(ValueError, match="not a path"):
        _client("http://127.0.0.1:8123").message("GET", path, b"", None)


class _Server:
    """A loopback TCP server that answers ``answers`` requests per connection, then closes it; ``silent``: reads a
    request and never answers, the connection kept open."""

    def __init__(self, answers: int, silent: bool = False) -> None:
        self.answers, self.requests, self.silent = answers, 0, silent
        self.read = threading.Event()
        self.conns: list[socket.socket] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # the test closed the server
            if self.silent:
                self.conns.append(conn)
                if conn.recv(65536):
                    self.read.set()
                continue
            with conn:
                for _ in range(max(self.answers, 1)):
                    data = b""
                    while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
                        data += chunk
                    if not data:
                        break
                    self.requests += 1
                    if self.answers == 0:
                        break  # closed unanswered
                    conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}')


@pytest.fixture
def closing() -> Iterator[_Server]:
    server = _Server(answers=0)
    yield server
    server.sock.close()


@pytest.fixture
def answering() -> Iterator[_Server]:
    server = _Server(answers=3)
    yield server
    server.sock.close()


def test_answers_come_back_whole_and_connections_are_reused(answering: _Server) -> None:
    c = _client(f"http://127.0.0.1:{answering.port}")
    for _ in range(3):
        a = c.request("GET", "/x")
        assert (a.status, a.json(), a.error) == (200, {"ok": True}, None)
        assert a.seconds >= 0
    assert answering.requests == 3
    c.close()


def test_a_server_that_closes_unanswered_gives_status_0_and_only_idempotent_requests_go_twice(closing: _Server) -> None:
    c = _client(f"http://127.0.0.1:{closing.port}")
    post = c.request("POST", "/api/register", b"{}", {"Content-Type": "application/json"})
    assert post.status == 0 and post.error is not None
    assert closing.requests == 1  # a registration is never sent twice behind the registrant's back
    get = c.request("GET", "/test/mailbox/x")
    assert get.status == 0 and get.error is not None
    assert closing.requests == 3  # the poll went again once on a fresh connection
    c.close()


def test_a_request_gives_up_after_its_own_timeout() -> None:
    # the step's timeout (scenario journey[].timeout) is the request's, not the pool's
    silent = _Server(answers=0, silent=True)
    try:
        c = Client(f"http://127.0.0.1:{silent.port}", lambda **_: None, connections=1, connection_timeout=2.0, network_timeout=60.0)
        a = c.request("POST", "/api/register", b"{}", {"Content-Type": "application/json"}, timeout=0.3)
        assert a.status == 0 and a.error is not None and silent.read.is_set()
        assert 0.25 <= a.seconds < 30.0  # gave up on its own 0.3 s, not the pool's 60 s
        c.close()
    finally:
        silent.close()

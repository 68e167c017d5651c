"""The server's registry client (refserver/upstream.py): what it sends, what it reads, when it reuses a connection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from refserver import upstream
from refserver.upstream import HttpUpstream, UpstreamError

Answer = Callable[[bytes], Awaitable[bytes | None]]  # request head+body -> raw answer (None: close unanswered)


class _Peer:
    """A loopback server that reads one request at a time and writes what ``answer`` returns."""

    def __init__(self, answer: Answer):
        self.answer = answer
        self.requests: list[bytes] = []
        self.connections = 0
        self.open = self.most_open = 0

    async def __aenter__(self) -> _Peer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *_: Any) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")), 0)
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                raw = await self.answer(request)
                if raw is None:
                    return
                for i, part in enumerate(raw.split(b"|PAUSE|")):  # parts of an answer, a moment apart
                    if i:
                        await asyncio.sleep(0.05)
                    writer.write(part)
                    await writer.drain()
                if raw.startswith(b"HTTP/1.0") or b"connection: close" in raw.lower():
                    return
        finally:
            self.open -= 1
            writer.close()


def _json(status: int, body: Any, extra: bytes = b"") -> bytes:
    data = json.dumps(body).encode()
    return b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (status, len(data), extra, data)


async def _ok(request: bytes) -> bytes:
    return _json(200, {"match": True})


def test_a_json_post_is_sent_once_and_its_answer_read_on_one_kept_alive_connection() -> None:
    async def go() -> None:
        async with _Peer(_ok) as peer:
            client = HttpUpstream(peer.url, connections=4)
            for _ in range(3):
                assert await client.request("POST", "/check", {"nik": "3273012104900001"}) == (200, b'{"match": true}')
            assert await client.request("GET", "/metrics") == (200, b'{"match": true}')
            await client.aclose()
        assert peer.connections == 1  # one connection, reused after each complete answer
        head, body = peer.requests[0].split(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"POST /check HTTP/1.1"
        assert f"Host: {peer.url[7:]}".encode() in lines and b"Content-Type: application/json" in lines
        assert json.loads(body) == {"nik": "3273012104900001"} and f"Content-Length: {len(body)}".encode() in lines
        assert peer.requests[3] == f"GET /metrics HTTP/1.1\r\nHost: {peer.url[7:]}\r\n\r\n".encode()

    asyncio.run(go())


def test_chunked_close_delimited_and_connection_close_answers_are_read_whole() -> None:
    answers = iter(
        [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n|PAUSE|3;x=1\r\nefg\r\n0\r\n\r\n",
            b"HTTP/1.1 503 X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno",
            b"HTTP/1.0 200 OK\r\n\r\nuntil |PAUSE|the close",
        ]
    )

    async def answer(request: bytes) -> bytes | None:
        return next(answers)

    async def go() -> None:
        async with _Peer(answer) as peer:
            client = HttpUpstream(peer.url)
            assert await client.request("GET", "/a") == (200, b"abcdefg")
            assert await client.request("GET", "/b") == (503, b"no")
            assert await client.request("GET", "/c") == (200, b"until the close")  # read to the close, not to the first bytes
            await client.aclose()
        assert peer.connections == 2  # the connection the answer closed was not reused

    async def bounded() -> None:
        await asyncio.wait_for(go(), 10)

    asyncio.run(bounded())


@pytest.mark.parametrize(
    "raw, what",
    [
        (None, "IncompleteReadError"),
        (b"SMTP ready\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", "bad content-length"),
    ],
)
def test_a_peer_that_closes_or_answers_nonsense_is_an_upstream_error_and_the_request_is_not_repeated(raw: bytes | None, what: str) -> None:
    async def answer(request: bytes) -> bytes | None:
        return raw

    async def go() -> None:
        async with _Peer(answer) as peer:
            client = HttpUpstream(peer.url)
            with pytest.raises(UpstreamError, match=what):
                await client.request("POST", "/check", {"nik": "1"})
            await client.aclose()
        assert len(peer.requests) == 1

    asyncio.run(go())


def test_no_answer_in_time_is_an_upstream_error_and_that_connection_is_not_reused() -> None:
    slow = asyncio.Event()

    async def answer(request: bytes) -> bytes | None:
        if b"/slow" in request:
            await slow.wait()
        return _json(200, {})

    async def go() -> None:
        async with _Peer(answer) as peer:
            client = HttpUpstream(peer.url)
            with pytest.raises(UpstreamError, match="TimeoutError"):
                await client.request("GET", "/slow", timeout=0.2)
            slow.set()
            assert (await client.request("GET", "/fast"))[0] == 200  # not the late answer to /slow
            await client.aclose()
        assert peer.connections == 2

    asyncio.run(go())


def test_an_unreachable_upstream_is_an_upstream_error() -> None:
    async def go() -> None:
        async with _Peer(_ok) as peer:
            url = peer.url
        client = HttpUpstream(url)
        with pytest.raises(UpstreamError, match="ConnectionRefused|OSError"):
            await client.request("GET", "/healthz", timeout=2)

    asyncio.run(go())


def test_at_most_the_given_connections_are_open_and_stale_idle_ones_are_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    async def answer(request: bytes) -> bytes | None:
        await asyncio.sleep(0.02)
        return _json(200, {})

    async def go() -> None:
        async with _Peer(answer) as peer:
            client = HttpUpstream(peer.url, connections=2)
            codes = await asyncio.gather(*(client.request("GET", f"/{i}") for i in range(8)))
            assert [c for c, _ in codes] == [200] * 8
            assert peer.most_open == 2 and peer.connections == 2
            monkeypatch.setattr(upstream, "IDLE", 0.0)  # every idle connection is now too old to trust
            await client.request("GET", "/again")
            assert peer.connections == 3
            await client.aclose()

    asyncio.run(go())


@pytest.mark.parametrize("path", ["check", "/a b", "/a\r\nX-Injected: 1"])
def test_a_path_that_would_break_the_request_is_refused(path: str) -> None:
    async def go() -> None:
        with pytest.raises(ValueError, match="request path"):
            await HttpUpstream("http://127.0.0.1:9").request("GET", path)

    asyncio.run(go())


@pytest.mark.parametrize("url", ["https://127.0.0.1:9", "http://127.0.0.1", "127.0.0.1:9"])
def test_an_upstream_url_without_http_host_and_port_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="http://host:port"):
        HttpUpstream(url)

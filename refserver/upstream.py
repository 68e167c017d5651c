"""A small HTTP/1.1 client for the one upstream service the server calls (the registry).

The server asks the registry once per NIK check, tens of times a second in a
surge, so the call's own CPU is part of the server's capacity.  A general client
(cookies, redirects, header models, pluggable transports) spent about 3 ms of
the event loop per call here; this one writes one request and reads one answer
on a kept-alive connection, and nothing else.

- At most ``connections`` exchanges at once; others wait for a connection.
- An idle connection is reused only while it is fresh (``IDLE`` seconds, well
  under the registry's own keep-alive timeout) and still open, so a request is
  not sent on a connection the registry is closing.  A request is never sent
  twice.
- Any failure (refused, reset, timeout, a malformed answer) raises
  :class:`UpstreamError` and closes that connection; a connection is reused
  only after a complete answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any, Protocol
from urllib.parse import urlsplit

__all__ = ["Upstream", "UpstreamError", "HttpUpstream", "IDLE"]

IDLE = 2.0  # seconds an idle connection is reused for (uvicorn closes idle ones after 5 s)
MAX_HEAD = 16_384  # bytes of status line and headers an answer may have
MAX_BODY = 4 << 20  # bytes of body an answer may have


class UpstreamError(Exception):
    """The upstream service could not be asked or did not answer in time."""


class Upstream(Protocol):
    """What the server needs of its registry client."""

    async def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, bytes]:
        """``(status, body)`` of one exchange; a JSON-serializable ``body`` is sent as JSON."""
        ...

    async def aclose(self) -> None: ...


class HttpUpstream:
    """An :class:`Upstream` over HTTP/1.1 to ``url`` (``http://host:port``)."""

    def __init__(self, url: str, connections: int = 16):
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or parts.port is None:
            raise ValueError(f"upstream url must be http://host:port, got {url!r}")
        self.host, self.port = parts.hostname, parts.port
        self._authority = parts.netloc.encode("ascii")
        self._slots = asyncio.Semaphore(connections)
        self._idle: list[tuple[float, asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._open: set[asyncio.StreamWriter] = set()

    async def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, bytes]:
        if not path.startswith("/") or any(c in path for c in " \r\n\t"):
            raise ValueError(f"request path must start with / and have no spaces or line breaks: {path!r}")
        head = f"{method} {path} HTTP/1.1\r\nHost: ".encode("ascii") + self._authority
        if body is None:
            message = head + b"\r\n\r\n"
        else:
            data = json.dumps(body, separators=(",", ":")).encode()
            message = head + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data
        async with self._slots:
            reader = writer = None
            try:
                async with asyncio.timeout(timeout):
                    reader, writer = await self._connection()
                    writer.write(message)
                    status, answer, keep = await _answer(reader)
            except (OSError, EOFError, ValueError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                if writer is not None:
                    self._discard(writer)
                raise UpstreamError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
            except BaseException:  # cancelled mid-exchange: the connection's state is unknown
                if writer is not None:
                    self._discard(writer)
                raise
            if keep:
                self._idle.append((time.monotonic(), reader, writer))
            else:
                self._discard(writer)
            return status, answer

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        now = time.monotonic()
        while self._idle:
            since, reader, writer = self._idle.pop()
            if now - since < IDLE and not reader.at_eof() and not writer.is_closing():
                return reader, writer
            self._discard(writer)
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=MAX_HEAD)
        self._open.add(writer)
        return reader, writer

    def _discard(self, writer: asyncio.StreamWriter) -> None:
        self._open.discard(writer)
        writer.close()

    async def aclose(self) -> None:
        self._idle.clear()
        writers, self._open = list(self._open), set()
        for writer in writers:
            writer.close()
        for writer in writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Read one answer: ``(status, body, whether the connection may be reused)``."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    if not version.startswith(b"HTTP/1.") or len(rest) < 3 or not rest[:3].isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    status = int(rest[:3])
    length: int | None = None
    chunked = False
    keep = version == b"HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            if not value.isdigit() or int(value) > MAX_BODY:
                raise ValueError(f"bad content-length {value[:20]!r}")
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = value.endswith(b"chunked")
        elif name == b"connection":
            keep = value == b"keep-alive" if version == b"HTTP/1.0" else value != b"close"
    if chunked:
        return status, await _chunks(reader), keep
    if length is not None:
        return status, await reader.readexactly(length), keep
    if status in (204, 304) or 100 <= status < 200:
        return status, b"", keep
    return status, await _until_closed(reader), False


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    """A body delimited by the connection's close (HTTP/1.0 style)."""
    body = bytearray()
    while chunk := await reader.read(65_536):
        body += chunk
        if len(body) > MAX_BODY:
            raise ValueError("body too large")
    return bytes(body)


async def _chunks(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip() or b"x", 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return bytes(body)
        if len(body) + size > MAX_BODY:
            raise ValueError("chunked body too large")
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise ValueError("chunk not followed by CRLF")

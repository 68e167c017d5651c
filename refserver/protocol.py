"""The server's HTTP connections with limits on slow, idle and oversized clients.

uvicorn's httptools protocol with four guards (:class:`Limits`, from the
server's configuration):

- **header size**: a request line and headers past ``header_bytes`` get a 431
  and the connection is closed (a 50 MB header used to be read and answered);
- **header time**: a connection whose request headers are not all in within
  ``header_seconds`` of its first byte (or of its opening) gets a 408 and is
  closed (half-sent headers and silent connections used to stay for ever);
- **body time**: a body that stops arriving for ``body_seconds`` (shorter than
  its Content-Length, say) ends the connection;
- **connections**: past ``connections`` open at once (kept below the process's
  file limit), the longest-idle connection is closed to admit the new one, so a
  crowd of idle clients cannot lock out ``/healthz``; with none idle the new one
  gets a 503 and is closed.
"""

from __future__ import annotations

import asyncio
import resource
import time
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

__all__ = ["Limits", "guarded", "REFUSED"]

REFUSED = [0]  # connections refused past the connection limit, this process (published as surgecap_connections_refused_total)


@dataclass(frozen=True)
class Limits:
    header_bytes: int = 32 * 1024
    header_seconds: float = 10.0
    body_seconds: float = 30.0
    connections: int = 4096

    @classmethod
    def from_config(cls, d: dict[str, float]) -> Limits:
        """From the server configuration's ``limits`` (any left out keep their defaults)."""
        base = cls()
        return cls(
            int(d.get("header_bytes", base.header_bytes)),
            float(d.get("header_seconds", base.header_seconds)),
            float(d.get("body_seconds", base.body_seconds)),
            int(d.get("connections", base.connections)),
        )

    def within_files(self) -> Limits:
        """The connection cap kept 64 below the process's open-file limit (the database, the photos, the registry need some)."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        cap = self.connections if soft == resource.RLIM_INFINITY else min(self.connections, max(16, soft - 64))
        return Limits(self.header_bytes, self.header_seconds, self.body_seconds, cap)


def guarded(limits: Limits) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn (``Config(http=...)``) with these limits."""

    class Guarded(GuardedProtocol):
        pass

    Guarded.limits = limits.within_files()
    return Guarded


LINGER = 1.0  # seconds a connection refused mid-request still reads (and drops) what its client sends


class GuardedProtocol(HttpToolsProtocol):
    """Each connection keeps a deadline; one sweep a second acts on those past it (a timer per request cost /healthz
    a third of its throughput)."""

    limits = Limits()
    SWEEP = 0.5  # seconds between sweeps: a deadline is acted on at most this late

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_bytes = 0
        self.in_head = True
        self.lingering = False
        self.last_seen = time.monotonic()
        self.deadline = self.last_seen + self.limits.header_seconds
        self._sweeping()
        if len(self.connections) > self.limits.connections and not self._evict_idle():
            REFUSED[0] += 1
            self._refuse(503, "too many connections, retry later", "connections")

    def _sweeping(self) -> None:
        """Start the sweep of this server's connections (once per set of connections)."""
        owner = getattr(self.server_state, "_surgecap_sweep", None)
        if owner is None or owner.done():
            self.server_state._surgecap_sweep = self.loop.create_task(_sweep(self.connections, self.SWEEP))  # type: ignore[attr-defined]

    def _evict_idle(self) -> bool:
        idle = [c for c in self.connections if c is not self and isinstance(c, GuardedProtocol) and c._idle()]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c.last_seen)
        oldest.transport.close()
        self.connections.discard(oldest)
        return True

    def _idle(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # refused while the client was still sending: what it sends now is dropped
        now = self.last_seen = time.monotonic()
        if self.in_head:
            if self.head_bytes == 0:
                self.deadline = now + self.limits.header_seconds  # the next request's headers start: they get their time
            self.head_bytes += len(data)
            if self.head_bytes > self.limits.header_bytes and not self._head_done_in(data):
                self._refuse(431, "request headers too large", linger=True)
                return
        elif self.deadline:
            self.deadline = now + self.limits.body_seconds  # the body is still coming: its next piece gets its time
        super().data_received(data)

    def _head_done_in(self, data: bytes) -> bool:
        return b"\r\n\r\n" in data and self.head_bytes - len(data) + data.index(b"\r\n\r\n") <= self.limits.header_bytes

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.deadline = time.monotonic() + self.limits.body_seconds
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.deadline = 0.0  # the request is in; the handler takes its time
        self.in_head, self.head_bytes = True, 0
        super().on_message_complete()

    def check(self, now: float) -> None:
        """Act on a deadline that has passed (the sweep calls this)."""
        if not self.deadline or now < self.deadline or self.transport.is_closing():
            return
        if self.in_head:
            if self._idle():
                self._refuse(408, "request headers not received in time")
            self.deadline = 0.0
        else:
            self.transport.close()  # a body that stopped coming: the handler sees the disconnect

    def _refuse(self, status: int, message: str, reason: str = "", linger: bool = False) -> None:
        """Answer ``status`` and close.  With ``linger`` (the client may still be sending), the answer goes out with the
        writing side shut, and the connection reads and drops what still comes for :data:`LINGER` seconds before it
        closes: closed with the client's bytes unread, it would be reset, and the client could lose the answer."""
        body = ('{"error": "' + message + '"' + (f', "reason": "{reason}"' if reason else "") + "}").encode()
        head: list[Any] = [STATUS_LINE[status], b"content-type: application/json\r\n"]
        head += [b"content-length: ", str(len(body)).encode(), b"\r\n", b"connection: close\r\n\r\n", body]
        self.transport.write(b"".join(head))
        if linger and self.transport.can_write_eof():
            self.lingering, self.deadline = True, 0.0
            self.transport.write_eof()
            self.loop.call_later(LINGER, self.transport.close)
        else:
            self.transport.close()


async def _sweep(connections: set[Any], every: float) -> None:
    """Every ``every`` seconds, let each connection act on a deadline that has passed; ends with the last connection."""
    while connections:
        await asyncio.sleep(every)
        now = time.monotonic()
        for conn in list(connections):
            if isinstance(conn, GuardedProtocol):
                conn.check(now)

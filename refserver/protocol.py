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

__all__ = ["Limits", "guarded"]


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


class GuardedProtocol(HttpToolsProtocol):
    limits = Limits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_bytes = 0
        self.in_head = True
        self.last_seen = time.monotonic()
        self.guard: asyncio.TimerHandle | None = self.loop.call_later(self.limits.header_seconds, self._too_slow)
        if len(self.connections) > self.limits.connections and not self._evict_idle():
            self._refuse(503, "too many connections, retry later")

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

    def _arm(self, seconds: float) -> None:
        if self.guard is not None:
            self.guard.cancel()
        self.guard = self.loop.call_later(seconds, self._too_slow)

    def data_received(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        if self.in_head:
            if self.head_bytes == 0:
                self._arm(self.limits.header_seconds)  # the next request's headers start: they get their time
            self.head_bytes += len(data)
            if self.head_bytes > self.limits.header_bytes and not self._head_done_in(data):
                self._refuse(431, "request headers too large")
                return
        elif self.guard is not None:
            self._arm(self.limits.body_seconds)  # the body is still coming: its next piece gets its time
        super().data_received(data)

    def _head_done_in(self, data: bytes) -> bool:
        return b"\r\n\r\n" in data and self.head_bytes - len(data) + data.index(b"\r\n\r\n") <= self.limits.header_bytes

    def on_headers_complete(self) -> None:
        self.in_head = False
        self._arm(self.limits.body_seconds)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self.guard is not None:
            self.guard.cancel()
            self.guard = None
        self.in_head, self.head_bytes = True, 0
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.guard is not None:
            self.guard.cancel()
            self.guard = None
        super().connection_lost(exc)

    def _too_slow(self) -> None:
        self.guard = None
        if self.transport.is_closing():
            return
        if self.in_head and self._idle():
            self._refuse(408, "request headers not received in time")
        elif not self.in_head:
            self.transport.close()  # a body that stopped coming: the handler sees the disconnect

    def _refuse(self, status: int, message: str) -> None:
        body = ('{"error": "' + message + '"}').encode()
        head: list[Any] = [STATUS_LINE[status], b"content-type: application/json\r\n"]
        head += [b"content-length: ", str(len(body)).encode(), b"\r\n", b"connection: close\r\n\r\n", body]
        self.transport.write(b"".join(head))
        self.transport.close()

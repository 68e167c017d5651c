"""The registrant's HTTP client: one keep-alive connection pool, every request reported to Locust.

Locust's ``FastHttpSession`` wraps geventhttpclient in a user agent with a cookie
jar, redirects, URL re-parsing and a response wrapper on every request.  The
registrant needs none of them: the API answers JSON, sets no cookies and never
redirects, and one Locust user plays many registrants, so a cookie jar per user
would even carry one registrant's cookies into the next's journey.  This client
sends straight through geventhttpclient's pool and fires Locust's ``request``
event itself, so Locust's statistics, CSV and web UI see every request, named by
step, with its failure when the answer is wrong (what ``catch_response`` does).

The request head is written here, not by ``HTTPClient.request``: that merges and
validates its header dictionaries twice per request (about 20 µs, as much as a
twentieth of the registrant's whole cost per arrival), where the registrant's
heads are a handful of fixed fields.  geventhttpclient's pool, socket liveness
check and response parser do the rest.
"""

from __future__ import annotations

import errno
import json
import time
from typing import Any
from urllib.parse import urlsplit

import gevent
from geventhttpclient.client import HTTPClient
from geventhttpclient.response import HTTPConnectionClosed, HTTPParseError, HTTPSocketPoolResponse

# What a request can raise when the target is slow, closes or answers garbage:
# each is an answer-less request (status 0), as Locust's own session treats them.
POOL_TIMEOUT = -1.0  # Client.request's timeout left out: the pool's network_timeout
TRANSPORT_ERRORS = (OSError, gevent.Timeout, HTTPConnectionClosed, HTTPParseError)  # socket timeouts are OSErrors
JSON_HEADERS = {"Content-Type": "application/json"}
USER_AGENT = "surgecap-loadtest"
RETRIED = frozenset(
    {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}
)  # idempotent: sent again once when a kept-alive connection turns out closed
SENT_BROKEN = (errno.ECONNRESET, errno.EPIPE)  # the server closed while the request went out: its answer may still be there


class Answer:
    """One request's outcome: status (0 when nothing came back), raw body and the error if any."""

    __slots__ = ("status", "content", "error", "start", "seconds")

    def __init__(self, status: int, content: bytes, error: BaseException | None, start: float, seconds: float) -> None:
        self.status, self.content, self.error = status, content, error
        self.start, self.seconds = start, seconds  # when it was sent (epoch seconds) and how long until the whole answer was read

    def json(self) -> Any:
        """The body as JSON; ``{}`` for an empty or malformed body."""
        if not self.content:
            return {}
        try:
            return json.loads(self.content)
        except ValueError:
            return {}


class Client:
    """Requests to one target over a shared connection pool of at most ``connections`` sockets."""

    def __init__(self, host: str, fire: Any, connections: int, connection_timeout: float, network_timeout: float) -> None:
        self.fire = fire  # Locust's events.request.fire
        self.network_timeout = network_timeout
        self.http = HTTPClient.from_url(
            host, concurrency=connections, connection_timeout=connection_timeout, network_timeout=network_timeout
        )
        self.pool = self.http._connection_pool
        self.prefix = urlsplit(host).path.rstrip("/")  # a target under a base path, as Locust's --host allows
        netloc = self.http.host if ":" not in self.http.host else f"[{self.http.host}]"  # an IPv6 literal goes in brackets
        self.host_line = (
            f"Host: {netloc}" + (f":{self.http.port}" if self.http.port not in (80, 443) else "") + f"\r\nUser-Agent: {USER_AGENT}\r\n"
        )

    def message(self, method: str, path: str, body: bytes, headers: dict[str, str] | None) -> bytes:
        """The request as it goes on the wire: head and body in one buffer, so in one send."""
        target = self.prefix + path
        if not target.startswith("/") or not target.isprintable() or " " in target:
            raise ValueError(f"request target {target!r} is not a path (no spaces or control characters)")
        head = f"{method} {target} HTTP/1.1\r\n{self.host_line}"
        if headers:
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        if body or method not in RETRIED:
            head += f"Content-Length: {len(body)}\r\n"
        return (head + "\r\n").encode("latin-1") + body

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float | None = POOL_TIMEOUT
    ) -> Answer:
        """Send one request and read the whole answer; the caller judges it and calls :meth:`report`.

        ``timeout``: seconds the socket may stay silent (sending, then waiting for the answer) before the request
        gives up, status 0; None waits for ever; :data:`POOL_TIMEOUT` (left out), the pool's ``network_timeout``."""
        start = time.time()
        t0 = time.perf_counter()
        data = self.message(method, path, body or b"", headers)
        again = method in RETRIED
        try:
            while True:
                sock = self.pool.get_socket()
                sock.settimeout(self.network_timeout if timeout == POOL_TIMEOUT else timeout)  # pooled: set each time
                try:
                    sock.sendall(data)
                except OSError as exc:
                    if exc.errno not in SENT_BROKEN:
                        self.pool.release_socket(sock)
                        raise
                try:
                    resp = HTTPSocketPoolResponse(sock, self.pool, block_size=self.http.block_size, method=method)
                except HTTPConnectionClosed:  # the response gave its socket up already
                    if again:
                        again = False
                        continue
                    raise
                try:
                    status, content = resp.status_code, resp.read()
                finally:
                    resp.release()  # back to the pool when the answer was whole, closed otherwise
                return Answer(status, content, None, start, time.perf_counter() - t0)
        except TRANSPORT_ERRORS as exc:
            return Answer(0, b"", exc, start, time.perf_counter() - t0)

    def post_json(self, path: str, payload: dict[str, Any]) -> Answer:
        return self.request("POST", path, json.dumps(payload, separators=(",", ":")).encode(), JSON_HEADERS)

    def report(self, method: str, name: str, path: str, answer: Answer, failure: str | None) -> None:
        """Report one request to Locust's statistics: ``failure`` None is a success, else why it failed."""
        if failure is not None:
            exc: BaseException | None = answer.error or Failure(failure)
        else:
            exc = None
        self.fire(
            request_type=method,
            name=name,
            response_time=answer.seconds * 1000.0,
            response_length=len(answer.content),
            exception=exc,
            context={},
            url=path,
            start_time=answer.start,
            response=None,
        )

    def close(self) -> None:
        self.http.close()


class Failure(Exception):
    """An answer that came back but is not what the step expects (a wrong status or body)."""

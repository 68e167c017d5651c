"""What a command sends load to: the loopback rule, the reference server's configuration, the user pool, the CPUs."""

from __future__ import annotations

import os

from contracts import is_loopback_url
from models.scenario import REGISTRY, Scenario
from workflows import BadInput

__all__ = ["refuse_remote", "reachable", "server_config", "pool_size", "cpus"]


def refuse_remote(host: str | None, allow_remote: bool) -> None:
    """Raise :class:`BadInput` when ``host`` lies outside loopback and ``--allow-remote`` was not given."""
    if host and not is_loopback_url(host) and not allow_remote:
        raise BadInput(f"refusing to send load to {host}: only loopback targets unless --allow-remote is given")


def reachable(url: str, flag: str, timeout: float = 5.0) -> None:
    """Raise :class:`BadInput` unless something accepts a TCP connection at ``url`` (a load run against nothing proves nothing)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput(f"{flag} {url}: expected http://HOST:PORT")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise BadInput(f"{flag} {url}: the port is not a number in 1-65535") from None
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            pass
    except OSError as exc:
        raise BadInput(f"{flag} {url}: nothing answers there ({exc.strerror or exc}); start that build first") from None


def server_config(scenario: Scenario, test_mode: bool = False, fault: dict[str, float] | None = None) -> dict[str, object]:
    """The reference server's plain configuration (``refserver.config.ServerConfig``) for a scenario's system.

    ``fault`` injects slowness (``slow``, ``cpu``, ``delay``; see ``refserver.config.ServerConfig.fault``).
    """
    sysd = scenario.system
    stations = {
        name: {"servers": st.servers, "queue": st.queue, "service": {rt: dist.model_dump(by_alias=True) for rt, dist in st.service.items()}}
        for name, st in sysd.stations.items()
    }
    routes = {step.request_type: [n for n in step.stations if n != REGISTRY] for step in scenario.journey}
    cfg: dict[str, object] = {
        "stations": stations,
        "routes": routes,
        "admission": sysd.admission,
        "test_mode": test_mode,
        "seed": scenario.seed,
        "fault": fault or {},
        "work": dict(scenario.reference_server.work),
    }
    if sysd.registry is not None:
        r = sysd.registry
        cfg["registry"] = {
            "concurrency": r.concurrency,
            "queue": r.queue,
            "latency": r.latency.model_dump(by_alias=True),
            "timeout": r.timeout,
            "rate_limit": r.rate_limit,
            "burst": r.burst,
            "daily_quota": r.daily_quota,
            "mismatch": r.mismatch,
        }
    if sysd.email is not None:
        cfg["email_rate"] = sysd.email.rate
    if sysd.batch is not None:
        cfg["batch_quota"] = sysd.batch.quota
    return cfg


ANSWER_ALLOWANCE = 2.0  # seconds a journey's pool allows for each request's answer (more at overload, with room below)
POOL_CAP = 5000  # users: idle ones wait on the arrival queue and cost nothing but memory


def pool_size(scenario: Scenario, duration: float) -> int:
    """Users enough for the open model: peak arrival rate x the longest usual journey, with room.

    A journey's length allows each step its think time, an answer of
    :data:`ANSWER_ALLOWANCE` per attempt and the retry policy's backoffs at
    their longest (jitter up), so that a server past its knee, shedding and
    answering slowly while registrants retry, does not run the pool dry: an
    arrival that finds no idle user starts late (or is dropped, and counted),
    and the load would no longer be open.
    """
    import numpy as np

    from models.arrivals import rate_at

    start = scenario.window[0]
    grid = np.linspace(start, start + duration, 200)
    peak = float(rate_at(scenario.arrivals, grid, scenario.horizon).max()) * scenario.run.scale
    journey = 0.0
    for step in scenario.journey:
        retry = step.retry
        backoffs = sum(
            min(retry.backoff * retry.multiplier**k, retry.max_backoff) * (1 + retry.jitter) for k in range(retry.max_attempts - 1)
        )
        journey += (step.think.mean + backoffs) / scenario.run.compress + ANSWER_ALLOWANCE * retry.max_attempts
    return int(min(POOL_CAP, max(20, peak * journey * 1.5 + 10)))


def cpus() -> tuple[int | None, int | None]:
    """CPUs for the server and the load generator: apart when the machine has two or more."""
    return (0, 1) if (os.cpu_count() or 1) >= 2 else (None, None)

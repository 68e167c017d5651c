"""Plain configuration of the reference server and its registry service.

Built by the planner from a scenario (``capacity serve``) or written by hand as
JSON.  Distributions are plain mappings ``{"dist": ..., "mean": ..., "cv": ...}``
sampled by :func:`contracts.sampler` with the standard library.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["StationConfig", "RegistryConfig", "ServerConfig", "ConfigError", "FAULTS", "ADMISSION"]

FAULTS = ("slow", "cpu", "delay")
ADMISSION = ("station", "door")  # where admission control sheds (models.scenario.System.admission)
MAX_WORK = 10_000_000  # rounds of work per request: about 4 s of CPU


class ConfigError(ValueError):
    """The server configuration is unusable."""


@dataclass
class StationConfig:
    servers: int
    queue: int | None = None  # waiting places; None: unbounded
    service: dict[str, Any] = field(default_factory=dict)  # request type -> distribution ("default" for any)


@dataclass
class RegistryConfig:
    concurrency: int = 8
    queue: int | None = 100
    latency: dict[str, Any] | float = 0.05
    timeout: float = 10.0
    rate_limit: float | None = None
    burst: float | None = None
    daily_quota: int | None = None
    mismatch: float = 0.0


@dataclass
class ServerConfig:
    stations: dict[str, StationConfig]
    routes: dict[str, list[str]]  # request type -> stations visited (the registry excluded)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    email_rate: float = 100.0
    batch_quota: int = 1000
    photo_max_bytes: int = 2_000_000
    test_mode: bool = False
    # injected slowness, off by default (for proving that a regression test catches one): "slow" stretches the time a
    # request spends in its stations by this fraction, "cpu" burns this many seconds of the event loop's CPU, "delay" waits
    fault: dict[str, float] = field(default_factory=dict)
    # limits on clients (refserver.protocol.Limits): header_bytes, header_seconds, body_seconds, connections
    limits: dict[str, float] = field(default_factory=dict)
    # real CPU work per request type (a scenario's reference_server.work): rounds of iterated SHA-256, a key stretch as a
    # registration service does when it stores a credential, run on the event loop inside the request's first station
    work: dict[str, int] = field(default_factory=dict)
    seed: int = 1
    # where admission control sheds: "station" (each station as it is reached) or "door" (before the first station,
    # when any station on the request's route is full)
    admission: str = "station"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServerConfig:
        try:
            stations = {k: StationConfig(**v) for k, v in d["stations"].items()}
            reg = RegistryConfig(**d.get("registry", {}))
            cfg = cls(
                stations=stations,
                routes={k: list(v) for k, v in d.get("routes", {}).items()},
                registry=reg,
                email_rate=float(d.get("email_rate", 100.0)),
                batch_quota=int(d.get("batch_quota", 1000)),
                photo_max_bytes=int(d.get("photo_max_bytes", 2_000_000)),
                test_mode=bool(d.get("test_mode", False)),
                fault={str(k): float(v) for k, v in d.get("fault", {}).items()},
                limits={str(k): float(v) for k, v in d.get("limits", {}).items()},
                work={str(k): int(v) for k, v in d.get("work", {}).items()},
                seed=int(d.get("seed", 1)),
                admission=str(d.get("admission", "station")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"bad server configuration: {exc}") from None
        if cfg.admission not in ADMISSION:
            raise ConfigError(f"admission {cfg.admission!r}: expected one of {', '.join(ADMISSION)}")
        for key, value in cfg.fault.items():
            if key not in FAULTS or not 0 <= value <= 60:
                raise ConfigError(f"fault {key}={value}: expected one of {', '.join(FAULTS)} between 0 and 60")
        for key, value in cfg.limits.items():
            if key not in ("header_bytes", "header_seconds", "body_seconds", "connections") or not value > 0:
                raise ConfigError(f"limits {key}={value}: expected header_bytes, header_seconds, body_seconds or connections, above 0")
        for rt, rounds in cfg.work.items():
            if rt not in cfg.routes or not cfg.routes[rt] or not 0 <= rounds <= MAX_WORK:
                raise ConfigError(f"work {rt}={rounds}: expected a request type with stations and 0 to {MAX_WORK:,} rounds")
        for rt, names in cfg.routes.items():
            for n in names:
                if n not in cfg.stations:
                    raise ConfigError(f"route {rt!r} names unknown station {n!r}")
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> ServerConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

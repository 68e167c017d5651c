"""The population-registry (Dukcapil-like) service: a second HTTP server.

``POST /check`` with ``{"nik": ..., "birth_date": ...}`` answers
``{"match": true|false}``.  It has its own concurrency limit and queue (503
past it), a latency distribution, a token-bucket rate limit (429 with
``"reason": "rate_limited"``), a daily quota (429 with ``"reason": "quota"``) and
a configured share of mismatches, decided by the NIK itself so that the same
typo fails every time.
"""

from __future__ import annotations

import asyncio
import random
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from contracts import draw_key, drawer, keyed_rng, registry_mismatch, sampler
from refserver.config import RegistryConfig
from refserver.metrics import station_lines
from refserver.stations import Overloaded, Station

__all__ = ["create_registry_app"]


class _Bucket:
    def __init__(self, rate: float | None, burst: float | None):
        self.rate = rate
        self.size = burst if burst is not None else max(1.0, rate or 1.0)
        self.tokens = self.size
        self.at = time.monotonic()

    def take(self) -> bool:
        if self.rate is None:
            return True
        now = time.monotonic()
        self.tokens = min(self.size, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def create_registry_app(cfg: RegistryConfig, seed: int = 1) -> Starlette:
    station = Station("registry", cfg.concurrency, cfg.queue)
    latency = sampler(cfg.latency, random.Random(seed))
    keyed_latency = drawer(cfg.latency)
    bucket = _Bucket(cfg.rate_limit, cfg.burst)
    state = {"day": int(time.time() // 86400), "used": 0, "checks": 0, "refused": 0}

    async def check(request: Request) -> JSONResponse:
        try:
            body = await request.json()
            nik = str(body["nik"])
            key = draw_key(body.get("draw"))
        except Exception:  # noqa: BLE001 - any unreadable body is the caller's error
            return JSONResponse({"error": "expected JSON {nik, birth_date}"}, status_code=400)
        if not bucket.take():
            state["refused"] += 1
            return JSONResponse({"error": "rate limit", "reason": "rate_limited"}, status_code=429, headers={"Retry-After": "1"})
        day = int(time.time() // 86400)
        if day != state["day"]:
            state["day"], state["used"] = day, 0
        if cfg.daily_quota is not None and state["used"] >= cfg.daily_quota:
            state["refused"] += 1
            return JSONResponse({"error": "daily quota used up", "reason": "quota"}, status_code=429, headers={"Retry-After": "3600"})
        state["used"] += 1
        try:
            async with station.slot("verify_nik"):
                await asyncio.sleep(latency() if key is None else keyed_latency(keyed_rng(seed, key, "registry")))
        except Overloaded:
            return JSONResponse({"error": "registry busy", "reason": "full"}, status_code=503, headers={"Retry-After": "1"})
        state["checks"] += 1
        return JSONResponse({"match": not registry_mismatch(nik, cfg.mismatch)})

    async def healthz(_: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def metrics(_: Request) -> PlainTextResponse:
        lines = [
            f"registry_checks_total {state['checks']}",
            f"registry_refused_total {state['refused']}",
            f"registry_quota_used {state['used']}",
            *station_lines({"registry": station}, typed=False),
        ]
        return PlainTextResponse("\n".join(lines) + "\n")

    return Starlette(routes=[Route("/check", check, methods=["POST"]), Route("/healthz", healthz), Route("/metrics", metrics)])

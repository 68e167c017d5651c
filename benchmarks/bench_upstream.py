"""The server's registry client against httpx, side by side in one run.

Every NIK check the server answers is one POST /check to the registry, so the
client's own CPU per call is part of the server's capacity.  This runs the real
registry service (``refserver.serve --registry-only``) pinned to CPU 1, and on
CPU 0, in one uvloop event loop as the server has, ``concurrency`` tasks making
``calls`` checks each round: first with httpx.AsyncClient (the baseline, what
the server used before), then with refserver.upstream.HttpUpstream.  Rounds
alternate so that the machine's drifting speed hits both alike.  Prints the
event loop's CPU per call (thread CPU time), calls/s, and the ratio.

Needs taskset and the dev extras (httpx).  Run: .venv/bin/python benchmarks/bench_upstream.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import uvloop  # noqa: E402

from refserver.serve import read_port, stop, wait_ready  # noqa: E402
from refserver.upstream import HttpUpstream  # noqa: E402

CONFIG = {
    "stations": {"web": {"servers": 1, "queue": 1, "service": {"default": 0.0}}},
    "routes": {},
    "registry": {"concurrency": 64, "queue": 1000, "latency": 0.005, "timeout": 5.0, "mismatch": 0.0},
}


async def _round(kind: str, url: str, calls: int, concurrency: int) -> tuple[float, float]:
    """(loop CPU ms per call, calls/s) for one round after a warm-up of the same size."""
    if kind == "httpx":
        hx = httpx.AsyncClient(limits=httpx.Limits(max_connections=32))

        async def one(i: int) -> None:
            r = await hx.post(f"{url}/check", json={"nik": f"32730121049{i:05d}"}, timeout=5.0)
            assert r.status_code == 200, r.text
            r.json()

        close: Any = hx.aclose
    else:
        up = HttpUpstream(url, 32)

        async def one(i: int) -> None:
            status, body = await up.request("POST", "/check", {"nik": f"32730121049{i:05d}"}, timeout=5.0)
            assert status == 200, body
            json.loads(body)

        close = up.aclose

    async def worker(start: int) -> None:
        for i in range(start, calls, concurrency):
            await one(i)

    await asyncio.gather(*(worker(k) for k in range(concurrency)))  # warm: connections open, code paths hot
    t0, c0 = time.perf_counter(), time.thread_time()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    t1, c1 = time.perf_counter(), time.thread_time()
    await close()
    return (c1 - c0) / calls * 1e3, calls / (t1 - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=3000, help="checks per round and client")
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-upstream-") as tmp:
        cfg_path, port_file = Path(tmp) / "config.json", Path(tmp) / "registry-port"
        cfg_path.write_text(json.dumps(CONFIG))
        registry = subprocess.Popen(
            [
                "taskset",
                "-c",
                "1",
                sys.executable,
                "-m",
                "refserver.serve",
                "--config",
                str(cfg_path),
                "--registry-port",
                "0",
                "--port-file",
                str(port_file),
                "--registry-only",
            ],
            cwd=ROOT,
        )
        try:
            url = f"http://127.0.0.1:{read_port(port_file, registry)}"
            wait_ready(f"{url}/healthz", proc=registry)
            os.sched_setaffinity(0, {0})
            seen: dict[str, list[tuple[float, float]]] = {"httpx": [], "upstream": []}
            for r in range(args.rounds):
                for kind in seen:
                    cpu, rate = uvloop.run(_round(kind, url, args.calls, args.concurrency))
                    seen[kind].append((cpu, rate))
                    print(f"round {r + 1} {kind:9s} {cpu:7.3f} ms CPU per call  {rate:7.0f} calls/s", flush=True)
        finally:
            stop(registry, 10.0)
    base = statistics.median(c for c, _ in seen["httpx"])
    ours = statistics.median(c for c, _ in seen["upstream"])
    print(
        f"median CPU per call: httpx {base:.3f} ms, HttpUpstream {ours:.3f} ms; HttpUpstream costs {ours / base:.1%} of httpx "
        f"({base / ours:.1f}x less)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

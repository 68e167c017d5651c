"""Reference-server throughput, measured against its own /healthz in one run.

The server (one process) is pinned to CPU 0 and wrk to CPU 1 (taskset).  wrk
runs closed-loop with a fixed number of connections, first against /healthz (the
baseline: HTTP and the framework only), then with benchmarks/register.lua, where
every request is a new durable registration (a row committed with fsync before
the 201).  Prints requests/s, p50/p90/p99, the ratio register/healthz, and checks
that every 201 answer is a row in the database (rows exceed the 201s seen by wrk
only by requests in flight when wrk stopped: at most one per connection).

Targets (issue): >= 1,333 registrations/s with p99 <= 100 ms.

Needs wrk (Debian package) and taskset.  Run: .venv/bin/python benchmarks/bench_server.py
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from refserver.serve import free_port, serve_cmd, wait_ready  # noqa: E402

CONFIG = {
    "stations": {
        "web": {"servers": 256, "queue": 4096, "service": {"default": 0.0}},
        "db": {"servers": 64, "queue": 4096, "service": {"default": 0.0}},
    },
    "routes": {"register": ["web", "db"]},
    "registry": {"concurrency": 4, "latency": 0.001},
    "email_rate": 2000.0,
    "batch_quota": 10,
}


def wrk(url: str, seconds: int, connections: int, script: Path | None) -> dict[str, float]:
    cmd = ["taskset", "-c", "1", "wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency"]
    if script is not None:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    res: dict[str, float] = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    if script is not None:
        m = re.search(r"CREATED (\d+) OTHER (\d+)", out)
        res["created"], res["other"] = float(m.group(1)), float(m.group(2))  # type: ignore[union-attr]
        for key in ("P50", "P90", "P99"):
            res[key.lower()] = float(re.search(rf"^{key} ([\d.]+)", out, re.M).group(1))  # type: ignore[union-attr]
    else:
        for p in ("50", "90", "99"):
            m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
            scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]  # type: ignore[union-attr]
            res[f"p{p}"] = float(m.group(1)) * scale  # type: ignore[union-attr]
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    if not shutil.which("wrk") or not shutil.which("taskset"):
        sys.exit("bench_server: needs wrk and taskset (apt-get install -y wrk util-linux)")
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "server.json"
        cfg_path.write_text(json.dumps(CONFIG))
        port = free_port()
        proc = subprocess.Popen(
            ["taskset", "-c", "0", *serve_cmd(cfg_path, port, tmp)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(f"{url}/healthz", proc=proc)
            health = wrk(f"{url}/healthz", args.seconds, args.connections, None)
            reg = wrk(url, args.seconds, args.connections, ROOT / "benchmarks" / "register.lua")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        rows = sqlite3.connect(Path(tmp) / "refserver.sqlite").execute("SELECT count(*) FROM registrants").fetchone()[0]
    print(f"server pinned to CPU 0, wrk to CPU 1, {args.connections} connections, {args.seconds}s each")
    print(
        f"  /healthz:          {health['rps']:>8,.0f} req/s   p50 {health['p50']:.1f} ms  p90 {health['p90']:.1f} ms  p99 "
        f"{health['p99']:.1f} ms"
    )
    print(f"  /api/register:     {reg['rps']:>8,.0f} req/s   p50 {reg['p50']:.1f} ms  p90 {reg['p90']:.1f} ms  p99 {reg['p99']:.1f} ms")
    print(f"  ratio register/healthz: {reg['rps'] / health['rps']:.2f}")
    extra = rows - int(reg["created"])
    verdict = "every 201 is a row" if 0 <= extra <= args.connections else "MISMATCH"
    print(
        f"  201 answers {reg['created']:,.0f}, other answers {reg['other']:,.0f}, rows in the database {rows:,} "
        f"({verdict}; {extra} rows committed for requests still in flight when wrk stopped, at most one per connection)"
    )
    print("  target: >= 1,333 registrations/s with p99 <= 100 ms")


if __name__ == "__main__":
    main()

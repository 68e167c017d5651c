"""Load-generator speed, measured side by side with a bare Locust user in one run.

The reference server runs pinned to CPU 0, Locust (one process) to CPU 1.

1. Cost per request of the generator: Locust's CPU seconds per request, for the
   registrant user replaying a constant 1,000 registrations/s and for a bare
   FastHttpUser GET loop at about the same rate, alternated over --rounds rounds.
   Requests/s per process at
   saturation is 1 / (CPU seconds per request), so the ratio of the two costs is
   the ratio of the two users' capacities (target: registrant >= 80 % of bare).
2. The reported peak at 1:1 (scenarios/peak-register.yaml): 1,333 registrations/s
   for 120 s; share of arrivals started within 100 ms of their time (target
   >= 99 %), and the 201 answers against the rows in the database (equal).

Run: .venv/bin/python benchmarks/bench_load.py [--seconds 120]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from models.loader import load_scenario  # noqa: E402
from models.results import load  # noqa: E402
from refserver.serve import free_port, serve_cmd, wait_ready  # noqa: E402
from workflows.target import pool_size, server_config  # noqa: E402

PEAK = ROOT / "scenarios" / "peak-register.yaml"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_locust(locustfile: Path, host: str, users: int, seconds: float, env: dict[str, str], csv: Path) -> tuple[float, int]:
    """Run one headless Locust process on CPU 1: CPU seconds and requests while it sent load.

    Start-up (imports, the arrival trace) is left out: CPU time is sampled as the
    run goes and matched to Locust's per-second request history, from the first
    second with requests to the last.
    """
    cmd = [
        "taskset",
        "-c",
        "1",
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(locustfile),
        "--headless",
        "--host",
        host,
        "-u",
        str(users),
        "-r",
        str(users),
        "--run-time",
        f"{int(seconds)}s",
        "--stop-timeout",
        "3",
        "--only-summary",
        "--csv",
        str(csv),
        "--loglevel",
        "ERROR",
    ]
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples: list[tuple[float, float]] = []
    while proc.poll() is None:
        try:
            samples.append((time.time(), cpu_seconds(proc.pid)))
        except OSError:
            break
        time.sleep(0.1)
    history = [line.split(",") for line in Path(f"{csv}_stats_history.csv").read_text().splitlines()[1:]]
    agg = [(float(r[0]), int(r[17])) for r in history if r[3] == "Aggregated" and r[17].isdigit()]
    active = [(t, n) for t, n in agg if n > 0]
    (t0, n0), (t1, n1) = active[0], active[-1]

    def cpu_at(t: float) -> float:
        return min(samples, key=lambda s: abs(s[0] - t))[1]

    return cpu_at(t1) - cpu_at(t0), n1 - n0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=120.0, help="length of the peak replay")
    ap.add_argument("--cost-seconds", type=float, default=10.0, help="length of each cost measurement")
    ap.add_argument("--rounds", type=int, default=3, help="bare and registrant cost runs, alternated")
    args = ap.parse_args()
    scenario = load_scenario(PEAK)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "server"
        data.mkdir()
        (data / "server.json").write_text(json.dumps(server_config(scenario, test_mode=True)))
        port = free_port()
        server = subprocess.Popen(
            ["taskset", "-c", "0", *serve_cmd(data / "server.json", port, data)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        host = f"http://127.0.0.1:{port}"
        try:
            wait_ready(f"{host}/healthz", proc=server)
            # 1. cost per request: bare GET loop (100 users x 10/s) and the registrant at 1,000 arrivals/s,
            #    alternated over several rounds so that a drift in the machine's speed hits both alike
            cost_scn = Path(tmp) / "cost.yaml"
            cost_scn.write_text(PEAK.read_text().replace("rate: 80000/min", "rate: 1000/s"))
            bare_cpu = bare_n = reg_cpu = reg_n = 0.0
            for k in range(args.rounds):
                cpu, n = run_locust(ROOT / "benchmarks" / "bare_locustfile.py", host, 100, args.cost_seconds, {}, Path(tmp) / f"bare{k}")
                bare_cpu, bare_n = bare_cpu + cpu, bare_n + n
                out1 = Path(tmp) / f"cost-run{k}"
                env = {
                    "SURGECAP_SCENARIO": str(cost_scn),
                    "SURGECAP_DURATION": str(args.cost_seconds),
                    "SURGECAP_OUT": str(out1),
                    "SURGECAP_PROGRESS": "0",
                }
                cpu, n = run_locust(ROOT / "locustfiles" / "registrant.py", host, 300, args.cost_seconds + 2, env, Path(tmp) / f"reg{k}")
                reg_cpu, reg_n = reg_cpu + cpu, reg_n + n
                print(
                    f"  round {k + 1}: bare {bare_cpu / bare_n * 1e6:.0f} µs, registrant {reg_cpu / reg_n * 1e6:.0f} µs per request so far",
                    flush=True,
                )
            # 2. the peak at 1:1
            out2 = Path(tmp) / "peak-run"
            env = {
                "SURGECAP_SCENARIO": str(PEAK),
                "SURGECAP_DURATION": str(args.seconds),
                "SURGECAP_OUT": str(out2),
                "SURGECAP_PROGRESS": "0",
            }
            before = sqlite3.connect(data / "refserver.sqlite").execute("SELECT count(*) FROM registrants").fetchone()[0]
            users = pool_size(scenario, args.seconds)  # as capacity loadtest sizes its pool
            run_locust(ROOT / "locustfiles" / "registrant.py", host, users, args.seconds + 3, env, Path(tmp) / "peak")
            stats = (Path(tmp) / "peak_stats.csv").read_text().splitlines()
            reg = next(line for line in stats if ",register," in line).split(",")
            sent, failed = int(reg[2]), int(reg[3])
            answered_201 = sent - failed  # Locust's count of register requests minus its failures
            failures = (Path(tmp) / "peak_failures.csv").read_text().splitlines()[1:]
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        rows = sqlite3.connect(data / "refserver.sqlite").execute("SELECT count(*) FROM registrants").fetchone()[0] - before
        peak = load(out2)
    per_bare, per_reg = bare_cpu / bare_n, reg_cpu / reg_n
    print("Locust pinned to CPU 1, reference server to CPU 0")
    print(
        f"  bare FastHttpUser GET loop: {bare_n:,.0f} requests, {bare_cpu:.1f} CPU s = {per_bare * 1e6:.0f} µs/request -> "
        f"{1 / per_bare:,.0f} requests/s per process"
    )
    print(
        f"  registrant user (register): {reg_n:,.0f} requests, {reg_cpu:.1f} CPU s = {per_reg * 1e6:.0f} µs/request -> "
        f"{1 / per_reg:,.0f} requests/s per process"
    )
    print(f"  ratio registrant/bare: {per_bare / per_reg:.0%}   (target >= 80 %)")
    m = peak.meta
    created = sum(sum(r.ok) for r in peak.requests.values())
    print(
        f"Peak replay, {args.seconds:g} s at 1,333/s, a pool of {users:,} users: {m['arrivals_started']:,} of "
        f"{m['arrivals_planned']:,} arrivals started, {m['arrivals_dropped']:,} dropped"
    )
    print(
        f"  started within 100 ms of their time: {m['share_on_time_100ms']:.2%} (target >= 99 %), latest {m['max_lateness'] * 1000:.0f} ms"
    )
    print(
        f"  201 answers {answered_201:,} (of which sent within the window {created:,}); rows added to the database {rows:,} "
        f"({'equal' if answered_201 == rows else 'DIFFERENT'})"
    )
    print(f"  Locust counted {sent:,} register requests, {failed:,} failed" + "".join(f"\n    {line}" for line in failures))


if __name__ == "__main__":
    main()

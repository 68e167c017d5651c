"""How reliable is ``capacity regress`` on this machine?  False alarms on an unchanged server, detections on a slowed one.

One baseline (``--baseline-runs`` load tests of ``--duration`` each, fresh
reference servers), then ``--rounds`` pairs of ``capacity regress`` runs,
alternated: against an unchanged server, and against one slowed by
``--slow`` (the reference server's fault injection stretches every request's
time in its stations by that share).  Prints the false-alarm rate (bar: at most
1 in 20), the detection rate (bar: at least 19 in 20) and the wall time of one
regress run (bar: at most 2 minutes for the smoke scenario).

Run: .venv/bin/python benchmarks/bench_regress.py [--rounds 20] [--duration 30s] [--slow 20%]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def capacity(*args: str) -> tuple[int, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "capacity_cli", *args, "--quiet"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode == 2:
        raise SystemExit(f"capacity {' '.join(args)}: {done.stderr.strip()}")
    return done.returncode, time.monotonic() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="scenarios/smoke.yaml")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--duration", default="30s")
    ap.add_argument("--slow", default="20%")
    ap.add_argument("--baseline-runs", default="3")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = f"{tmp}/baseline.json"
        code, wall = capacity("baseline", args.scenario, "--to", base, "--runs", args.baseline_runs, "--duration", args.duration)
        print(f"baseline: {args.baseline_runs} runs of {args.duration} in {wall:.0f}s (exit {code})", flush=True)
        alarms = {"unchanged": 0, "slowed": 0}
        walls: list[float] = []
        for k in range(args.rounds):
            for kind, extra in (("unchanged", []), ("slowed", ["--server-fault", f"slow={args.slow}"])):
                out = f"{tmp}/{kind}-{k}"
                code, wall = capacity("regress", args.scenario, "--baseline", base, "--duration", args.duration, "--out", out, *extra)
                alarms[kind] += code == 1
                walls.append(wall)
            print(f"round {k + 1}: false alarms {alarms['unchanged']}/{k + 1}, detections {alarms['slowed']}/{k + 1}", flush=True)
    n = args.rounds
    print(
        f"false-alarm rate {alarms['unchanged']}/{n} (bar: <= 1 in 20); detection rate at {args.slow} slower {alarms['slowed']}/{n} "
        f"(bar: >= 19 in 20)"
    )
    print(f"one regress run: median {statistics.median(walls):.0f}s, longest {max(walls):.0f}s (bar: <= 120 s)")


if __name__ == "__main__":
    main()

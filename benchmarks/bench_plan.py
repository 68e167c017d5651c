"""capacity plan against one capacity simulate of the same scenario, side by side in one run.

1. The analytic screen alone (models.screen.screen) on the scenario, in this
   process: the best of a few runs (target: <= 5 s on the launch day).
2. ``capacity simulate SCENARIO`` (one replication) and ``capacity plan SCENARIO``
   as commands, alternated ``--rounds`` times so that a drift in the machine's
   speed hits both alike; prints each wall time and the ratio plan / simulate
   (target: <= 3x, aim 2x), and how many replications confirmed the plan.

Run: .venv/bin/python benchmarks/bench_plan.py [--scenario scenarios/prakerja-launch.yaml] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def timed(cmd: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="scenarios/prakerja-launch.yaml")
    ap.add_argument("--rounds", type=int, default=1, help="simulate/plan pairs, alternated")
    args = ap.parse_args()

    from models.loader import load_scenario
    from models.screen import screen

    scenario = load_scenario(ROOT / args.scenario)
    walls = []
    for _ in range(3):
        started = time.perf_counter()
        screen(scenario)
        walls.append(time.perf_counter() - started)
    print(f"screen alone on {scenario.name}: best {min(walls):.2f}s of {len(walls)} (target <= 5 s)")

    capacity = [sys.executable, "-m", "capacity_cli"]
    with tempfile.TemporaryDirectory() as tmp:
        sims, plans = [], []
        for k in range(args.rounds):
            sims.append(timed([*capacity, "simulate", args.scenario, "--quiet", "--out", f"{tmp}/sim-{k}"]))
            plans.append(timed([*capacity, "plan", args.scenario, "--quiet", "--out", f"{tmp}/plan-{k}"]))
            report = json.loads(Path(tmp, f"plan-{k}", "plan.json").read_text())
            reps = report["tables"]["slos"][0]["replications"] if report["tables"].get("slos") else 0
            rounds = len(report["tables"]["rounds"])
            print(
                f"round {k + 1}: simulate {sims[-1]:.1f}s, plan {plans[-1]:.1f}s: ratio {plans[-1] / sims[-1]:.2f}x "
                f"(plan confirmed by {reps} replications in {rounds} simulation round(s); screen {report['seconds']['screen']:.2f}s, "
                f"what-ifs {report['seconds']['what-ifs']:.2f}s)"
            )
    ratios = [p / s for p, s in zip(plans, sims, strict=True)]
    print(f"median ratio plan / simulate: {statistics.median(ratios):.2f}x over {len(ratios)} round(s) (target <= 3x, aim 2x)")


if __name__ == "__main__":
    main()

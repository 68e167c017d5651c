"""How reliable is ``capacity regress`` on this machine?  False alarms on an unchanged server, detections on a slowed one.

Both modes, alternated within every round so that the machine's drift meets
them alike:

- **baseline file**: one baseline first (``--baseline-runs`` load tests of
  ``--file-duration`` each, fresh reference servers), then per round one
  ``regress --baseline`` against an unchanged server and one against a server
  slowed by ``--slow``;
- **A/B**: per round a fresh unchanged reference server is started as the
  build compared with, and ``regress --against`` runs once with an unchanged
  current server and once with one slowed by ``--slow``.

The slowdown is the reference server's fault injection (every request's time
in its stations stretched by that share).  Prints, per mode, the false-alarm
rate (bar: at most 1 in 20), the detection rate (bar: at least 19 in 20), the
register p50 change each run measured, and the wall time of one regress run
(bar: at most 2 minutes for the smoke scenario).

Run: .venv/bin/python benchmarks/bench_regress.py [--rounds 20] [--modes file,ab] [--slow 20%]
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

from models.loader import load_scenario  # noqa: E402
from refserver.serve import started  # noqa: E402
from workflows.target import server_config  # noqa: E402


def capacity(*args: str) -> tuple[int, float]:
    started_at = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "capacity_cli", *args, "--quiet"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode == 2:
        raise SystemExit(f"capacity {' '.join(args)}: {done.stderr.strip()}")
    return done.returncode, time.monotonic() - started_at


def register_p50(out: str) -> float | None:
    """The register p50 change a regress run measured (None when it was not compared)."""
    try:
        rows = json.loads(Path(out, "regress.json").read_text())["comparisons"]
    except (OSError, ValueError, KeyError):
        return None
    return next((r["effect"] for r in rows if r["request"] == "register" and r["metric"] == "p50"), None)


class Tally:
    def __init__(self) -> None:
        self.alarms = {"unchanged": 0, "slowed": 0}
        self.runs = {"unchanged": 0, "slowed": 0}
        self.effects: dict[str, list[float]] = {"unchanged": [], "slowed": []}
        self.walls: list[float] = []

    def add(self, kind: str, code: int, wall: float, effect: float | None) -> None:
        self.alarms[kind] += code == 1
        self.runs[kind] += 1
        self.walls.append(wall)
        if effect is not None:
            self.effects[kind].append(effect)

    def line(self) -> str:
        return f"false alarms {self.alarms['unchanged']}/{self.runs['unchanged']}, detections {self.alarms['slowed']}/{self.runs['slowed']}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="scenarios/smoke.yaml")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--modes", default="file,ab", help="file, ab or both (file,ab)")
    ap.add_argument("--file-duration", default="30s", help="length of each baseline-file run and of the baseline's runs")
    ap.add_argument("--ab-duration", default="40s", help="length of each A/B run")
    ap.add_argument("--slow", default="20%")
    ap.add_argument("--baseline-runs", default="3")
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",")]
    scenario = load_scenario(ROOT / args.scenario)
    tallies = {m: Tally() for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        base = f"{tmp}/baseline.json"
        if "file" in modes:
            code, wall = capacity("baseline", args.scenario, "--to", base, "--runs", args.baseline_runs, "--duration", args.file_duration)
            print(f"baseline: {args.baseline_runs} runs of {args.file_duration} in {wall:.0f}s (exit {code})", flush=True)
        for k in range(args.rounds):
            for kind, extra in (("unchanged", []), ("slowed", ["--server-fault", f"slow={args.slow}"])):
                if "file" in modes:
                    out = f"{tmp}/file-{kind}-{k}"
                    run = ("regress", args.scenario, "--baseline", base, "--duration", args.file_duration, "--out", out, *extra)
                    code, wall = capacity(*run)
                    tallies["file"].add(kind, code, wall, register_p50(out))
                if "ab" in modes:
                    out = f"{tmp}/ab-{kind}-{k}"
                    with started(server_config(scenario, test_mode=True), Path(tmp, f"old-{kind}-{k}")) as old:
                        run = ("regress", args.scenario, "--against", old, "--duration", args.ab_duration, "--out", out, *extra)
                        code, wall = capacity(*run)
                    tallies["ab"].add(kind, code, wall, register_p50(out))
            print(f"round {k + 1}: " + "; ".join(f"{m}: {t.line()}" for m, t in tallies.items()), flush=True)
    print(f"\n{args.rounds} rounds, slowed by {args.slow}; bars: false alarms <= 1 in 20, detections >= 19 in 20, one run <= 120 s")
    for m, t in tallies.items():
        what = f"baseline file, runs of {args.file_duration}" if m == "file" else f"A/B, runs of {args.ab_duration}"
        print(f"{what}: {t.line()}; one regress run median {statistics.median(t.walls):.0f}s, longest {max(t.walls):.0f}s")
        for kind in ("unchanged", "slowed"):
            xs = t.effects[kind]
            if xs:
                print(
                    f"  register p50 change, {kind}: median {statistics.median(xs):+.1%}, "
                    f"range {min(xs):+.1%} to {max(xs):+.1%} over {len(xs)} runs"
                )


if __name__ == "__main__":
    main()

"""``capacity simulate``: replications of the SimPy model, a summary, and every replication in the result shape."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from models.scenario import Scenario
from workflows.output import ProgressBar

__all__ = ["Simulated", "run_simulation"]


@dataclass(frozen=True)
class Simulated:
    """What :func:`run_simulation` wrote and found."""

    run_dir: Path
    text: str  # the printable summary
    wall: float  # seconds
    missed: list[str]  # the SLOs and thresholds missed


def run_simulation(
    scenario: Scenario, run_dir: Path, replications: int = 1, seed: int | None = None, quiet: bool = False, calibration: str | None = None
) -> Simulated:
    """Simulate ``replications`` of ``scenario``; write ``summary.md``, ``summary.json`` and ``rep-NNN/`` to ``run_dir``."""
    from models.results import save
    from models.simulate import simulate, summarize
    from reports.summary import slo_verdicts, summary_text, verdicts_text

    bars: dict[int, ProgressBar] = {}

    def progress(rep: int, done: float, total: float) -> None:
        if not quiet:
            bars.setdefault(rep, ProgressBar(f"replication {rep + 1}/{replications}"))(done, total)

    started = time.monotonic()
    results = simulate(scenario, replications=replications, seed=seed, progress=progress)
    wall = time.monotonic() - started
    run_dir.mkdir(parents=True, exist_ok=True)
    for r, result in enumerate(results):
        save(result, run_dir / f"rep-{r:03d}")
    text = summary_text(scenario, results)
    verdicts = slo_verdicts(scenario, results)
    (run_dir / "summary.md").write_text(f"# Simulation of {scenario.name}\n\n```\n{text}\n```\n")
    summary = {
        "scenario": scenario.name,
        "scenario_file": scenario.path,
        "calibration": calibration,
        "seed": seed if seed is not None else scenario.seed,
        "replications": replications,
        "wall_seconds": round(wall, 2),
        "figures": {k: {"mean": e.mean, "ci95": e.half_width, "n": e.n} for k, e in summarize(results).items()},
        "slos": [{"slo": s.label, "value": v, "met": ok} for s, v, ok in verdicts],
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return Simulated(run_dir, text, wall, verdicts_text(scenario, results, "model")[1])

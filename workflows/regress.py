"""``capacity baseline`` and ``capacity regress``: a CI gate on a service's speed and reliability.

``baseline`` runs the scenario's load test one or more times and stores every
run in the result shape (per request type and per interval: histograms, errors,
throughput) with the environment it ran in.  ``regress`` runs the same load
test once more, judges the scenario's thresholds and SLOs, and compares every
request type's p50, p95, p99, error rate and throughput with the baseline
(:mod:`models.regression`).

With ``--against URL`` (A/B) no baseline file is needed: one load test serves
every arrival to both the current target and the build at URL, interleaved,
and the comparison pairs their figures interval by interval
(:func:`models.regression.compare_paired`), so a drift in the machine's speed
meets both alike.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from models.loader import load_scenario
from models.regression import ALPHA, MIN_REQUESTS, Comparison, compare_paired, compare_runs, min_p, unjudged
from models.results import RunResult, load
from models.scenario import Scenario
from models.thresholds import ThresholdVerdict, judge
from workflows import BadInput, RunFailed
from workflows.loadtest import LoadtestOptions, run_loadtest
from workflows.measure import raw_scenario
from workflows.output import machine_description, say

__all__ = ["Baseline", "RegressOutcome", "record_baseline", "regress", "regress_ab", "environment", "INTERVAL", "AB_INTERVAL", "FORMAT"]

FORMAT = 1
INTERVAL = 5.0  # seconds: the result intervals of a regression run, each one sample of every metric
AB_INTERVAL = 2.0  # seconds: the intervals of an A/B run, each one pair (a 30 s run gives 15)
PACKAGES = ("surgecap", "locust", "starlette", "uvicorn", "simpy", "numpy")


def environment(host: str | None, fault: dict[str, float]) -> dict[str, Any]:
    """Where a run was made: the machine, Python and package versions, the commit, and what served it."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "-"
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip() or "-"
    except (OSError, subprocess.SubprocessError):
        commit = "-"
    server = host or ("the reference server (refserver.serve)" + (f" with fault {fault}" if fault else ""))
    return {"machine": machine_description(), "python": sys.version.split()[0], "packages": versions, "commit": commit, "server": server}


@dataclass
class Baseline:
    """A stored baseline: its runs, how they were made and where."""

    scenario: str
    duration: float
    interval: float
    seed: int | None
    runs: list[RunResult]
    environment: dict[str, Any]
    created: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "scenario": self.scenario,
            "duration": self.duration,
            "interval": self.interval,
            "seed": self.seed,
            "created": self.created,
            "environment": self.environment,
            "runs": [r.to_dict() for r in self.runs],
        }

    @classmethod
    def read(cls, path: str | Path) -> Baseline:
        """A baseline file; :class:`BadInput` saying what is wrong with it."""
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
            if d.get("format") != FORMAT:
                raise ValueError(f"format {d.get('format')!r}, expected {FORMAT}")
            runs = [RunResult.from_dict(r) for r in d["runs"]]
            if not runs:
                raise ValueError("it holds no runs")
            return cls(
                d["scenario"],
                float(d["duration"]),
                float(d["interval"]),
                d.get("seed"),
                runs,
                d.get("environment", {}),
                d.get("created", ""),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BadInput(f"--baseline {path}: expected a baseline written by capacity baseline: {exc}") from None


def _slice(scenario: Scenario, duration: float, interval: float, run_dir: Path) -> Scenario:
    """The scenario with results kept every ``interval`` seconds, written to ``run_dir`` (Locust reads it there)."""
    raw = raw_scenario(scenario)
    raw["run"] = {**(raw.get("run") or {}), "interval": f"{interval:g}s"}
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "scenario.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_scenario(path)


def _one_run(scenario: Scenario, opts: LoadtestOptions, run_dir: Path) -> RunResult:
    result, interrupted = run_loadtest(scenario, opts, run_dir)
    if interrupted:
        raise KeyboardInterrupt
    if not any(sum(s.started) for s in result.requests.values()):
        raise RunFailed(f"the load test in {run_dir} sent no request; see {run_dir}/locust.log")
    return result


def record_baseline(scenario: Scenario, opts: LoadtestOptions, out: Path, runs: int, run_dir: Path) -> Baseline:
    """Run the load test ``runs`` times and store the runs as a baseline in ``out``."""
    sliced = _slice(scenario, opts.duration, INTERVAL, run_dir)
    results = []
    for k in range(runs):
        say("baseline", f"run {k + 1} of {runs}", opts.quiet)
        results.append(_one_run(sliced, opts, run_dir / f"run-{k + 1}"))
    base = Baseline(
        scenario.name, opts.duration, INTERVAL, opts.seed, results, environment(opts.host, opts.fault), f"{datetime.now():%Y-%m-%d %H:%M}"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(base.to_dict(), default=str))
    return base


@dataclass
class RegressOutcome:
    """What ``capacity regress`` found."""

    scenario: Scenario
    baseline: Baseline
    result: RunResult
    thresholds: list[ThresholdVerdict]
    slos: list[tuple[str, float, bool]]
    comparisons: list[Comparison]
    environment: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    against: str | None = None  # A/B: the target compared with (then ``baseline`` holds its run from this same load test)

    @property
    def regressions(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.regressed]

    @property
    def passed(self) -> bool:
        return not self.regressions and all(v.passed for v in self.thresholds) and all(ok for _, _, ok in self.slos)


def regress(scenario: Scenario, baseline: Baseline, opts: LoadtestOptions, run_dir: Path, min_effect: dict[str, float]) -> RegressOutcome:
    """One load test like the baseline's, judged by the thresholds and SLOs and compared with the baseline."""
    if baseline.scenario != scenario.name:
        raise BadInput(f"the baseline is of scenario {baseline.scenario!r}, not {scenario.name!r}")
    sliced = _slice(scenario, baseline.duration, baseline.interval, run_dir)
    same = LoadtestOptions(**{**opts.__dict__, "duration": baseline.duration, "seed": baseline.seed if opts.seed is None else opts.seed})
    result = _one_run(sliced, same, run_dir / "run")
    env = environment(opts.host, opts.fault)
    warnings = [
        f"the environment differs from the baseline's: {key} {baseline.environment.get(key)!r} then, {env[key]!r} now"
        for key in ("machine", "python", "packages")
        if baseline.environment.get(key) != env[key]
    ]
    if len(baseline.runs) < 2:
        warnings.append("the baseline holds one run, so the run-to-run noise is not known; record it with --runs 3")
    return _outcome(scenario, baseline, result, compare_runs(baseline.runs, result, min_effect), env, warnings)


def _outcome(
    scenario: Scenario, baseline: Baseline, result: RunResult, comparisons: list[Comparison], env: dict[str, Any], warnings: list[str]
) -> RegressOutcome:
    """The run judged by the scenario's thresholds and SLOs, with its comparisons."""
    from reports.summary import slo_verdicts

    return RegressOutcome(
        scenario,
        baseline,
        result,
        judge(scenario.threshold_list, [result], scenario.request_types),
        [(slo.label, value, ok) for slo, value, ok in slo_verdicts(scenario, [result])],
        comparisons,
        env,
        warnings,
    )


def regress_ab(scenario: Scenario, opts: LoadtestOptions, run_dir: Path, min_effect: dict[str, float]) -> RegressOutcome:
    """One A/B load test: every arrival served by the current target and by ``opts.against``, compared pair by pair."""
    against = opts.against
    if against is None:
        raise BadInput("an A/B run needs --against URL")
    if opts.host is not None and opts.host.rstrip("/") == against.rstrip("/"):
        raise BadInput(f"--against {against} is the --host itself; an A/B run compares two different targets")
    sliced = _slice(scenario, opts.duration, AB_INTERVAL, run_dir)
    result = _one_run(sliced, opts, run_dir / "run")
    try:
        other = load(run_dir / "run" / "against")
    except (OSError, ValueError, KeyError) as exc:
        raise RunFailed(f"the A/B run wrote no result for {against}: {exc}; see {run_dir}/run/locust.log") from None
    if not any(sum(s.started) for s in other.requests.values()):
        raise RunFailed(f"the A/B run sent no request to {against}; see {run_dir}/run/locust.log")
    env = environment(opts.host, opts.fault)
    made = f"{datetime.now():%Y-%m-%d %H:%M}"
    base = Baseline(scenario.name, opts.duration, AB_INTERVAL, opts.seed, [other], {**env, "server": against}, made)
    warnings = []
    left_out = unjudged(other, result)
    if left_out:
        warnings.append(f"too few intervals with {MIN_REQUESTS} requests on both targets to judge: {', '.join(left_out)} (run longer)")
    comparisons = compare_paired(other, result, min_effect)
    floor = min((min_p(c.samples[1]) for c in comparisons), default=1.0) * len(comparisons)
    if comparisons and floor >= ALPHA:
        warnings.append(
            f"the run is too short for any change to be significant: with {max(c.samples[1] for c in comparisons)} paired intervals "
            f"at most, the smallest Holm-adjusted p is {floor:.2g} (needs < {ALPHA}); run longer (--duration 40s or more)"
        )
    outcome = _outcome(scenario, base, result, comparisons, env, warnings)
    outcome.against = against
    return outcome

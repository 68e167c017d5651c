"""Replications of the funnel model, and their summary with confidence intervals.

Replication ``r`` draws every random stream from the scenario seed and ``r``
(independent streams), so one seed gives identical results and replications
differ.  :func:`summarize` reduces each replication to a set of named figures
(:func:`figures`) and reports, for each, the mean and the half-width of its 95 %
confidence interval (Student t over replications).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from models.funnel import Progress, simulate_once
from models.histogram import Histogram
from models.results import RunResult
from models.scenario import FAILURE_REASONS, Scenario

__all__ = ["simulate", "figures", "Estimate", "summarize", "t_quantile"]

# quantiles of Student's t by degrees of freedom: 0.975 (two-sided 95 %) and 0.995 (two-sided 99 %)
_T = {
    0.975: {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228, 11: 2.201,
            12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060,
            30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980},
    0.995: {1: 63.657, 2: 9.925, 3: 5.841, 4: 4.604, 5: 4.032, 6: 3.707, 7: 3.499, 8: 3.355, 9: 3.250, 10: 3.169, 15: 2.947,
            20: 2.845, 30: 2.750, 60: 2.660, 120: 2.617},
}  # fmt: skip


def t_quantile(df: int, p: float = 0.975) -> float:
    """The ``p`` quantile (0.975 or 0.995) of Student's t with ``df`` degrees of freedom.

    Between tabulated degrees of freedom, the next one down (a wider interval, never a narrower one).
    """
    if df < 1:
        return math.nan
    table = _T[p]
    return table[max(k for k in table if k <= df)]


@dataclass(frozen=True)
class Estimate:
    """A mean over replications with the half-width of its 95 % confidence interval."""

    mean: float
    half_width: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Estimate:
        xs = [v for v in values if not math.isnan(v)]
        n = len(xs)
        if n == 0:
            return cls(math.nan, math.nan, 0)
        m = sum(xs) / n
        if n == 1:
            return cls(m, math.nan, 1)
        sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
        return cls(m, t_quantile(n - 1) * sd / math.sqrt(n), n)

    def covers(self, value: float) -> bool:
        return abs(self.mean - value) <= self.half_width


def simulate(
    scenario: Scenario,
    replications: int = 1,
    seed: int | None = None,
    progress: Callable[[int, float, float], None] | None = None,
    replay: bool = False,
) -> list[RunResult]:
    """Run ``replications`` independent replications (progress gets replication, done, total).

    With ``replay`` every replication has the arrivals and registrants of replication 0 (those of a load test run
    with the scenario's seed) and differs only in the model's own draws: the model's spread for that very run."""
    results = []
    for r in range(replications):
        cb: Progress | None = None
        if progress is not None:
            cb = lambda done, total, r=r: progress(r, done, total)  # noqa: E731
        results.append(simulate_once(scenario, seed=seed, replication=r, progress=cb, registrants=0 if replay else None))
    return results


def figures(result: RunResult) -> dict[str, float]:
    """The named figures of one run that summaries and comparisons are made of."""
    out: dict[str, float] = {"arrivals": float(sum(result.arrivals))}
    for name, step in result.steps.items():
        out[f"step.{name}.reached"] = float(sum(step.reached))
        out[f"step.{name}.completed"] = float(sum(step.completed))
        out[f"step.{name}.dropped"] = float(sum(step.dropped))
        out[f"step.{name}.failed"] = float(sum(step.failed))
        out[f"step.{name}.duration_mean"] = step.duration.mean
    for name, rq in result.requests.items():
        totals = rq.totals()
        h: Histogram = rq.total_latency
        out[f"request.{name}.started"] = float(totals["started"])
        out[f"request.{name}.ok"] = float(totals["ok"])
        out[f"request.{name}.failed"] = float(totals["failed"])
        for reason in FAILURE_REASONS:
            out[f"request.{name}.failed_{reason}"] = float(totals.get(f"failed_{reason}", 0))
        out[f"request.{name}.mean"] = h.mean
        for p in (50, 95, 99):
            out[f"request.{name}.p{p}"] = h.percentile(p)
        out[f"request.{name}.error_rate"] = totals["failed"] / totals["started"] if totals["started"] else math.nan
    for name, st in result.stations.items():
        arrivals = sum(st.arrivals)
        cap = sum(st.capacity)
        out[f"station.{name}.arrivals"] = float(arrivals)
        out[f"station.{name}.utilization"] = sum(st.busy) / cap if cap > 0 else math.nan
        out[f"station.{name}.peak_utilization"] = st.peak_utilization
        out[f"station.{name}.max_queue"] = float(max(st.queue_max) if st.queue_max else 0)
        out[f"station.{name}.mean_wait"] = st.wait.total / arrivals if arrivals else math.nan
        out[f"station.{name}.p_wait"] = sum(st.waited) / arrivals if arrivals else math.nan
        out[f"station.{name}.p_shed"] = sum(st.shed) / arrivals if arrivals else math.nan
        out[f"station.{name}.p_abandon"] = sum(st.abandoned) / arrivals if arrivals else math.nan
    return out


def summarize(results: list[RunResult]) -> dict[str, Estimate]:
    """Mean and 95 % CI over replications for every figure."""
    per_run = [figures(r) for r in results]
    keys = list(per_run[0]) if per_run else []
    return {k: Estimate.of([f.get(k, math.nan) for f in per_run]) for k in keys}

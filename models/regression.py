"""Is a run worse than its baseline?  Per request type and metric, against the noise of both.

A metric (p50, p95, p99, error rate, throughput) is read per interval of a run,
so that one run gives a sample, not one number.  A change is a **regression**
when all of these hold:

1. it is larger than the minimum effect (default 10 % relative for latency
   and throughput, 1 point absolute for the error rate), in the worse direction;
2. it is significant within the runs: a one-sided permutation test on the
   per-interval figures (the difference of medians; 4,000 random permutations,
   seeded) gives p < ``alpha`` (default 0.01).  Under no change the intervals
   of both runs are exchangeable, so the test needs no normality;
3. with two or more baseline runs, it is beyond the run-to-run noise: the run's
   median lies outside the 99 % prediction interval of a run's median,
   mean ± t₀.₉₉₅,df · s · √(1 + 1/R) over the R baseline runs, where s is the
   spread of a run's median around its baseline mean pooled over every request
   type and metric of its kind (latency on a log scale, rates in points), so
   that even two baseline runs give it many degrees of freedom.  A machine
   whose speed drifts from run to run shifts every interval of a run
   together, which (2) alone would take for a regression.

Everything here works on the result shape (:mod:`models.results`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from models.results import RequestSeries, RunResult
from models.simulate import t_quantile

__all__ = ["Comparison", "interval_figures", "compare_runs", "permutation_p", "METRICS", "MIN_EFFECT"]

METRICS = ("p50", "p95", "p99", "error_rate", "throughput")
MIN_EFFECT = {"p50": 0.10, "p95": 0.10, "p99": 0.10, "error_rate": 0.01, "throughput": 0.10}
MIN_REQUESTS = 20  # an interval with fewer requests of the type gives no figure


@dataclass(frozen=True)
class Comparison:
    """One request type's metric: the baseline against the run, and the verdict."""

    request: str
    metric: str
    baseline: float  # median of the baseline's interval figures (all baseline runs pooled)
    current: float  # median of the run's interval figures
    effect: float  # relative change (latency, throughput) or points (error rate); positive: worse
    min_effect: float
    p_value: float
    band: tuple[float, float] | None  # the baseline runs' prediction interval for a run's median (None: one baseline run)
    samples: tuple[int, int]  # intervals with a figure: baseline, run

    @property
    def regressed(self) -> bool:
        beyond = self.band is None or not (self.band[0] <= self.current <= self.band[1])
        return self.effect > self.min_effect and self.p_value < ALPHA and beyond

    @property
    def label(self) -> str:
        return f"{self.request} {self.metric}"

    def describe(self) -> str:
        unit = "points" if self.metric == "error_rate" else ""
        change = f"{self.effect * 100:+.1f} {unit}".strip() if unit else f"{self.effect:+.1%}"
        band = f"; baseline runs' band {_fmt(self.metric, self.band[0])}–{_fmt(self.metric, self.band[1])}" if self.band else ""
        return (
            f"{self.label}: {_fmt(self.metric, self.baseline)} -> {_fmt(self.metric, self.current)} ({change} worse; "
            f"minimum effect {self.min_effect:.0%}; p = {self.p_value:.3g} over {self.samples[0]} + {self.samples[1]} intervals{band})"
        )


ALPHA = 0.01


def _fmt(metric: str, v: float) -> str:
    if math.isnan(v):
        return "-"
    return f"{v * 1000:.1f}ms" if metric.startswith("p") else f"{v:.2%}"


def interval_figures(series: RequestSeries, metric: str) -> list[float]:
    """The metric in each interval with at least :data:`MIN_REQUESTS` requests."""
    out = []
    for k, started in enumerate(series.started):
        if started < MIN_REQUESTS:
            continue
        if metric.startswith("p"):
            h = series.latency[k]
            if h.count >= MIN_REQUESTS:
                out.append(h.percentile(float(metric[1:])))
        elif metric == "error_rate":
            out.append(sum(c[k] for c in series.failed.values()) / started)
        else:
            out.append(series.ok[k] / started)
    return out


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if n == 0:
        return math.nan
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def permutation_p(baseline: Sequence[float], current: Sequence[float], worse_up: bool, rounds: int = 4000, seed: int = 1) -> float:
    """One-sided p-value that ``current``'s median exceeds (``worse_up``) or falls below ``baseline``'s by chance."""
    if not baseline or not current:
        return math.nan
    sign = 1.0 if worse_up else -1.0
    observed = sign * (_median(current) - _median(baseline))
    pooled = list(baseline) + list(current)
    n = len(current)
    rng = random.Random(seed)
    hits = 0
    for _ in range(rounds):
        rng.shuffle(pooled)
        if sign * (_median(pooled[:n]) - _median(pooled[n:])) >= observed - 1e-15:
            hits += 1
    return (hits + 1) / (rounds + 1)


def _pooled_spread(per_series: Sequence[Sequence[float]]) -> tuple[float, int]:
    """The standard deviation of a run's figure around its series' mean, pooled over series: (s, degrees of freedom)."""
    ss, df = 0.0, 0
    for xs in per_series:
        xs = [x for x in xs if not math.isnan(x)]
        if len(xs) >= 2:
            mean = sum(xs) / len(xs)
            ss += sum((x - mean) ** 2 for x in xs)
            df += len(xs) - 1
    return (math.sqrt(ss / df), df) if df else (math.nan, 0)


def _band(run_medians: Sequence[float], spread: tuple[float, int], log: bool) -> tuple[float, float] | None:
    """The prediction interval of a new run's median from the baseline runs' medians and the pooled spread."""
    xs = [x for x in run_medians if not math.isnan(x) and (x > 0 or not log)]
    s, df = spread
    if len(xs) < 2 or not df:
        return None
    scale = [math.log(x) for x in xs] if log else xs
    mean = sum(scale) / len(scale)
    half = t_quantile(df, 0.995) * s * math.sqrt(1 + 1 / len(xs))
    low, high = mean - half, mean + half
    return (math.exp(low), math.exp(high)) if log else (low, high)


def compare_runs(baselines: Sequence[RunResult], current: RunResult, min_effect: dict[str, float] | None = None) -> list[Comparison]:
    """Every request type and metric of ``current`` against the baseline runs (see the module's doc)."""
    limits = {**MIN_EFFECT, **(min_effect or {})}
    figures: dict[tuple[str, str], tuple[list[list[float]], list[float]]] = {}
    for rt, series in current.requests.items():
        runs = [b.requests[rt] for b in baselines if rt in b.requests]
        for metric in METRICS:
            per_run = [interval_figures(s, metric) for s in runs]
            now = interval_figures(series, metric)
            if runs and sum(len(xs) for xs in per_run) >= 3 and len(now) >= 3:
                figures[(rt, metric)] = (per_run, now)
    latency = [
        [math.log(m) for xs in per_run if (m := _median(xs)) > 0] for (_, metric), (per_run, _) in figures.items() if metric.startswith("p")
    ]
    rates = [[_median(xs) for xs in per_run if xs] for (_, metric), (per_run, _) in figures.items() if not metric.startswith("p")]
    spreads = {True: _pooled_spread(latency), False: _pooled_spread(rates)}
    out: list[Comparison] = []
    for (rt, metric), (per_run, now) in figures.items():
        base = [x for xs in per_run for x in xs]
        b, c = _median(base), _median(now)
        worse_up = metric != "throughput"
        if metric == "error_rate":
            effect = c - b
        elif b > 0:
            effect = (c / b - 1) if worse_up else (1 - c / b)
        else:
            effect = 0.0
        log = metric.startswith("p")
        band = _band([_median(xs) for xs in per_run if xs], spreads[log], log)
        out.append(Comparison(rt, metric, b, c, effect, limits[metric], permutation_p(base, now, worse_up), band, (len(base), len(now))))
    return out

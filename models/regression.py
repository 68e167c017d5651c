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

**A/B runs** (:func:`compare_paired`): the build compared with and the current
one were served the same arrivals, interleaved, in one run, so interval k of
both met the same machine.  The figures are paired by interval, d_k the log
ratio (latency, throughput) or the difference in points (error rate), and the
test is a one-sided sign-flip permutation test on the mean of d (exact for up
to 14 pairs, else 20,000 random flips, seeded): under no change each d_k is as
likely to be +x as -x.  The p-values are Holm-adjusted over all the run's
comparisons (one run judges some 25 metrics; unadjusted, one in four runs
without any change would show a p < 0.01 somewhere).  A regression is an
effect beyond the minimum with an adjusted p < ``alpha``; the noise band is the
99th percentile of the flipped means.  At least :data:`MIN_PAIRS` pairs are
needed (2^-7 < 0.01).

Everything here works on the result shape (:mod:`models.results`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

from models.results import RequestSeries, RunResult
from models.simulate import t_quantile

__all__ = [
    "Comparison",
    "interval_figures",
    "compare_runs",
    "compare_paired",
    "unjudged",
    "permutation_p",
    "sign_flip",
    "holm",
    "min_p",
    "METRICS",
    "MIN_EFFECT",
]

METRICS = ("p50", "p95", "p99", "error_rate", "throughput")
MIN_EFFECT = {"p50": 0.10, "p95": 0.10, "p99": 0.10, "error_rate": 0.01, "throughput": 0.10}
MIN_REQUESTS = 20  # an interval with fewer requests of the type gives no figure
MIN_PAIRS = 7  # A/B: fewer paired intervals cannot reach p < 0.01 by sign flips
EXACT_PAIRS = 14  # A/B: up to this many pairs every sign pattern is enumerated


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
    samples: tuple[int, int]  # intervals with a figure: baseline, run (A/B: the pairs, twice)
    paired: bool = False  # an A/B comparison: band is the reach of noise around the baseline figure, implied by p

    @property
    def regressed(self) -> bool:
        beyond = self.paired or self.band is None or not (self.band[0] <= self.current <= self.band[1])
        return self.effect > self.min_effect and self.p_value < ALPHA and beyond

    @property
    def label(self) -> str:
        return f"{self.request} {self.metric}"

    def describe(self) -> str:
        unit = "points" if self.metric == "error_rate" else ""
        change = f"{self.effect * 100:+.1f} {unit}".strip() if unit else f"{self.effect:+.1%}"
        if self.paired:
            band = f"; noise band {_fmt(self.metric, self.band[0])}–{_fmt(self.metric, self.band[1])}" if self.band else ""
            over = f"{self.samples[1]} paired intervals, Holm-adjusted"
        else:
            band = f"; baseline runs' band {_fmt(self.metric, self.band[0])}–{_fmt(self.metric, self.band[1])}" if self.band else ""
            over = f"{self.samples[0]} + {self.samples[1]} intervals"
        return (
            f"{self.label}: {_fmt(self.metric, self.baseline)} -> {_fmt(self.metric, self.current)} ({change} worse; "
            f"minimum effect {self.min_effect:.0%}; p = {self.p_value:.3g} over {over}{band})"
        )


ALPHA = 0.01


def _fmt(metric: str, v: float) -> str:
    if math.isnan(v):
        return "-"
    return f"{v * 1000:.1f}ms" if metric.startswith("p") else f"{v:.2%}"


def _figure(series: RequestSeries, metric: str, k: int) -> float | None:
    """The metric in interval ``k``; None with fewer than :data:`MIN_REQUESTS` requests (or successes, for latency)."""
    started = series.started[k]
    if started < MIN_REQUESTS:
        return None
    if metric.startswith("p"):
        h = series.latency[k]
        return h.percentile(float(metric[1:])) if h.count >= MIN_REQUESTS else None
    if metric == "error_rate":
        return sum(c[k] for c in series.failed.values()) / started
    return series.ok[k] / started


def interval_figures(series: RequestSeries, metric: str) -> list[float]:
    """The metric in each interval with at least :data:`MIN_REQUESTS` requests."""
    return [x for k in range(len(series.started)) if (x := _figure(series, metric, k)) is not None]


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


def sign_flip(d: Sequence[float], rounds: int = 20_000, seed: int = 1) -> tuple[float, float]:
    """One-sided sign-flip test of mean(d) > 0: (p-value, the 99th percentile of the flipped means: the noise band).

    Every sign pattern for up to :data:`EXACT_PAIRS` values, else ``rounds``
    random ones (seeded), the observed one counted in.
    """
    n = len(d)
    if n == 0:
        return math.nan, math.nan
    observed = sum(d) / n
    if n <= EXACT_PAIRS:
        means = [sum(-x if mask >> i & 1 else x for i, x in enumerate(d)) / n for mask in range(1 << n)]
        p = sum(1 for m in means if m >= observed - 1e-12) / len(means)
    else:
        rng = random.Random(seed)
        means = [sum(x if rng.random() < 0.5 else -x for x in d) / n for _ in range(rounds)]
        p = (sum(1 for m in means if m >= observed - 1e-12) + 1) / (rounds + 1)
    means.sort()
    return p, means[min(len(means) - 1, int(0.99 * len(means)))]


def min_p(pairs: int, rounds: int = 20_000) -> float:
    """The smallest p-value :func:`sign_flip` can give with ``pairs`` differences (all of one sign)."""
    return 2.0**-pairs if pairs <= EXACT_PAIRS else 1 / (rounds + 1)


def _paired(before: RequestSeries, after: RequestSeries, metric: str) -> tuple[list[float], list[float]]:
    """The figures of both sides in the intervals where both have one."""
    pairs = [(_figure(before, metric, k), _figure(after, metric, k)) for k in range(min(len(before.started), len(after.started)))]
    kept = [(b, a) for b, a in pairs if b is not None and a is not None and (metric == "error_rate" or (b > 0 and a > 0))]
    return [b for b, _ in kept], [a for _, a in kept]


def compare_paired(against: RunResult, current: RunResult, min_effect: dict[str, float] | None = None) -> list[Comparison]:
    """Every request type and metric of an A/B run: ``current`` against ``against``, interval by interval (see the module's doc).

    A metric with fewer than :data:`MIN_PAIRS` paired intervals is left out (:func:`unjudged` names them).
    """
    limits = {**MIN_EFFECT, **(min_effect or {})}
    out: list[Comparison] = []
    for rt, series in current.requests.items():
        if rt not in against.requests:
            continue
        for metric in METRICS:
            before, after = _paired(against.requests[rt], series, metric)
            if len(before) < MIN_PAIRS:
                continue
            if metric == "error_rate":
                d = [a - b for b, a in zip(before, after, strict=True)]
            elif metric == "throughput":
                d = [math.log(b / a) for b, a in zip(before, after, strict=True)]  # positive: fewer served, worse
            else:
                d = [math.log(a / b) for b, a in zip(before, after, strict=True)]
            p, q = sign_flip(d)
            mean = sum(d) / len(d)
            b = _median(before)
            if metric == "error_rate":
                effect, band = mean, (b - q, b + q)
            elif metric == "throughput":
                effect, band = 1 - math.exp(-mean), (b * math.exp(-q), b * math.exp(q))
            else:
                effect, band = math.exp(mean) - 1, (b * math.exp(-q), b * math.exp(q))
            out.append(Comparison(rt, metric, b, _median(after), effect, limits[metric], p, band, (len(d), len(d)), paired=True))
    adjusted = holm([c.p_value for c in out])
    return [replace(c, p_value=p) for c, p in zip(out, adjusted, strict=True)]


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: p-values that control the chance of any false alarm among them all."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def unjudged(against: RunResult, current: RunResult) -> list[str]:
    """Request types and metrics of an A/B run that had requests but too few paired intervals to judge."""
    out: list[str] = []
    for rt, series in current.requests.items():
        if rt in against.requests and any(series.started):
            out += [f"{rt} {m}" for m in METRICS if len(_paired(against.requests[rt], series, m)[0]) < MIN_PAIRS]
    return out

"""Arrival-rate curves and the one arrival sampler.

A curve is a pure function of time: :func:`rate_at` gives the rate (arrivals per
second) at any times, :func:`expected_arrivals` its integral.  The sampler draws a
non-homogeneous Poisson process on the curve by thinning (Lewis & Shedler): a
homogeneous process at a per-cell upper bound, each point kept with probability
``rate(t) / bound``.  The curves are monotone between their breakpoints, so the
larger end of each cell is a true bound and the thinning is exact.

The SimPy model and the load generator both call :func:`arrival_times`: with one
seed they see the same arrival trace.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from models.scenario import ConstantCurve, LaunchSurgeCurve, PiecewiseCurve, Scenario

__all__ = ["rate_at", "expected_arrivals", "arrival_times", "stream", "curve_problem", "surge_decay", "Curve"]

Curve = ConstantCurve | PiecewiseCurve | LaunchSurgeCurve

#: Purposes of the independent random streams derived from a scenario's seed.
STREAMS = {
    "arrivals": 0,
    "scale": 1,
    "journey": 2,
    "service": 3,
    "patience": 4,
    "registry": 5,
    "overhead": 6,
    "cpu": 7,
    "cpu_speed": 8,
    "screen": 9,
}

CELL = 1.0  # seconds: width of the thinning cells (breakpoints are added to the grid)


def stream(seed: int, purpose: str, replication: int = 0) -> np.random.Generator:
    """An independent generator for one purpose of one replication of a seed."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(replication, STREAMS[purpose])))


def _surge_parts(c: LaunchSurgeCurve, decay: float) -> Callable[[np.ndarray], np.ndarray]:
    t0 = c.peak_at - c.rise
    t1 = c.peak_at + c.hold

    def f(t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=float)
        out = np.full(t.shape, c.start_rate, dtype=float)
        if c.rise > 0:
            rising = (t >= t0) & (t < c.peak_at)
            out[rising] = c.start_rate + (c.peak - c.start_rate) * (t[rising] - t0) / c.rise
        out[(t >= c.peak_at) & (t < t1)] = c.peak
        after = t >= t1
        out[after] = c.floor + (c.peak - c.floor) * np.exp(-(t[after] - t1) / decay)
        return out

    return f


def _surge_integral(c: LaunchSurgeCurve, decay: float, end: float) -> float:
    """∫₀^end rate(t) dt for a launch-surge curve, in closed form."""
    t0 = c.peak_at - c.rise
    t1 = c.peak_at + c.hold
    total = c.start_rate * min(end, t0)
    if end > t0 and c.rise > 0:
        x = min(end, c.peak_at) - t0
        total += c.start_rate * x + (c.peak - c.start_rate) * x * x / (2 * c.rise)
    if end > c.peak_at:
        total += c.peak * (min(end, t1) - c.peak_at)
    if end > t1:
        x = end - t1
        total += c.floor * x + (c.peak - c.floor) * decay * -math.expm1(-x / decay)
    return total


def surge_decay(c: LaunchSurgeCurve, horizon: float) -> float:
    """The decay time constant: given, or solved so that the horizon holds ``total`` arrivals."""
    if c.decay is not None:
        return c.decay
    assert c.total is not None
    lo, hi = 1e-6, 1e9
    if not (_surge_integral(c, lo, horizon) <= c.total <= _surge_integral(c, hi, horizon)):
        raise ValueError(
            f"total {c.total:,.0f} cannot be reached within the horizon with this peak and floor "
            f"(possible: {_surge_integral(c, lo, horizon):,.0f} to {_surge_integral(c, hi, horizon):,.0f})"
        )
    for _ in range(200):  # bisection on a monotone function of the decay
        mid = math.sqrt(lo * hi)
        if _surge_integral(c, mid, horizon) < c.total:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + 1e-12:
            break
    return math.sqrt(lo * hi)


def curve_problem(s: Scenario) -> str | None:
    """Why the scenario's curve is impossible (or more arrivals than the model can hold), or None."""
    c = s.arrivals
    if isinstance(c, LaunchSurgeCurve):
        if c.peak_at > s.horizon:
            return f"peak_at ({c.peak_at:g}s) is after the horizon ({s.horizon:g}s)"
        try:
            surge_decay(c, s.horizon)
        except ValueError as exc:
            return str(exc)
    total = expected_arrivals(c, 0.0, s.horizon, s.horizon) * s.run.scale
    if not total <= MAX_ARRIVALS:
        held = f"{MAX_ARRIVALS:,}"
        return f"about {total:,.3g} arrivals in the horizon; the model holds at most {held} (about 4 GB; lower the rates or run.scale)"
    return None


MAX_ARRIVALS = 20_000_000  # registrants in one run: the model keeps a few hundred bytes each


def rate_at(curve: Curve, t: np.ndarray | float, horizon: float) -> np.ndarray:
    """The arrival rate (per second) at time(s) ``t``."""
    ts = np.atleast_1d(np.asarray(t, dtype=float))
    if isinstance(curve, ConstantCurve):
        return np.full(ts.shape, curve.rate)
    if isinstance(curve, PiecewiseCurve):
        times = np.array([p[0] for p in curve.points])
        rates = np.array([p[1] for p in curve.points])
        if curve.interpolation == "linear":
            return np.interp(ts, times, rates)
        idx = np.clip(np.searchsorted(times, ts, side="right") - 1, 0, len(rates) - 1)
        return rates[idx]
    return _surge_parts(curve, surge_decay(curve, horizon))(ts)


def _breakpoints(curve: Curve, horizon: float) -> list[float]:
    if isinstance(curve, PiecewiseCurve):
        return [p[0] for p in curve.points]
    if isinstance(curve, LaunchSurgeCurve):
        return [curve.peak_at - curve.rise, curve.peak_at, curve.peak_at + curve.hold]
    return []


def _grid(curve: Curve, start: float, end: float, horizon: float) -> np.ndarray:
    cells = max(1, math.ceil((end - start) / CELL))
    grid = np.linspace(start, end, cells + 1)
    extra = [b for b in _breakpoints(curve, horizon) if start < b < end]
    return np.unique(np.concatenate([grid, extra])) if extra else grid


def expected_arrivals(curve: Curve, start: float, end: float, horizon: float) -> float:
    """∫ rate over [start, end] (exact for these curves up to the cell quadrature)."""
    if end <= start:
        return 0.0
    if isinstance(curve, ConstantCurve):
        return curve.rate * (end - start)
    if isinstance(curve, LaunchSurgeCurve):
        d = surge_decay(curve, horizon)
        return _surge_integral(curve, d, end) - _surge_integral(curve, d, start)
    grid = _grid(curve, start, end, horizon)
    r = rate_at(curve, grid, horizon)
    if curve.interpolation == "linear":
        return float(np.sum((r[1:] + r[:-1]) / 2 * np.diff(grid)))
    return float(np.sum(r[:-1] * np.diff(grid)))


def _thinned(curve: Curve, start: float, end: float, horizon: float, rng: np.random.Generator) -> np.ndarray:
    grid = _grid(curve, start, end, horizon)
    left, right = grid[:-1], grid[1:]
    eps = 1e-9 * np.maximum(1.0, np.abs(right))
    bound = np.maximum(rate_at(curve, left, horizon), rate_at(curve, right - eps, horizon))
    if isinstance(curve, PiecewiseCurve) and curve.interpolation == "step":
        bound = rate_at(curve, left, horizon)  # constant within a cell
    counts = rng.poisson(bound * (right - left))
    n = int(counts.sum())
    cell = np.repeat(np.arange(len(left)), counts)
    t = left[cell] + rng.random(n) * (right - left)[cell]
    keep = rng.random(n) * bound[cell] < rate_at(curve, t, horizon)
    return np.sort(t[keep])


def arrival_times(scenario: Scenario, seed: int | None = None, replication: int = 0) -> np.ndarray:
    """The arrival times (seconds from the scenario's start) within the run window.

    The full trace over the horizon is drawn from the seed first; the window
    then cuts it and ``run.scale`` keeps each arrival with that probability from a
    separate stream, so a smaller scale is a subset of the larger one and a
    window is a piece of the whole day.
    """
    seed = scenario.seed if seed is None else seed
    times = _thinned(scenario.arrivals, 0.0, scenario.horizon, scenario.horizon, stream(seed, "arrivals", replication))
    if scenario.run.scale < 1.0:
        keep = stream(seed, "scale", replication).random(len(times)) < scenario.run.scale
        times = times[keep]
    start, end = scenario.window
    lo, hi = np.searchsorted(times, [start, end], side="left")
    return times[lo:hi]


_MASK = (1 << 64) - 1


_C_SEED, _C_INDEX, _C_SLOT, _C_ADD = 0x9E3779B97F4A7C15, 0xD1B54A32D192ED03, 0x8CB92BA72F3D8DD7, 0x9E3779B97F4A7C15


def decision(seed: int, index: int, slot: int) -> float:
    """A uniform number in [0, 1) owned by one registrant: arrival ``index`` of the trace, decision ``slot``.

    The model and the load generator draw the registrant's own choices (go on
    to a step, give up after a failure, a NIK the registry will not match) from
    this counter-based generator (SplitMix64 over seed, index and slot), so with
    one seed both see the same registrants making the same choices, and their
    funnel counts differ only where the systems behave differently.
    """
    return decision_at(decision_base(seed, slot), index)


def decision_base(seed: int, slot: int) -> int:
    """The part of :func:`decision` that does not depend on the registrant (precomputed by the model)."""
    return seed * _C_SEED + slot * _C_SLOT + _C_ADD


def decision_at(base: int, index: int) -> float:
    """``decision(seed, index, slot)`` from ``base = decision_base(seed, slot)``."""
    return (_mix(base, index) >> 11) * 1.1102230246251565e-16  # / 2**53


def word(seed: int, index: int, slot: int) -> int:
    """The 64 random bits behind :func:`decision`: for a registrant's draws that are not a probability (who they are)."""
    return _mix(decision_base(seed, slot), index)


def _mix(base: int, index: int) -> int:
    x = (base + index * _C_INDEX) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def decisions_at(base: int, count: int) -> np.ndarray:
    """``decision_at(base, i)`` for i = 0 .. count-1 at once (uint64 arithmetic wraps as the masks do)."""
    with np.errstate(over="ignore"):
        x = np.uint64(base & _MASK) + np.arange(count, dtype=np.uint64) * np.uint64(_C_INDEX)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 1.1102230246251565e-16


def proceed_slot(step: int) -> int:
    """The decision slot of going on to journey step ``step``."""
    return 1000 * step


def give_up_slot(step: int, attempt: int) -> int:
    """The decision slot of giving up after failed attempt ``attempt`` of step ``step``."""
    return 1000 * step + attempt


MISMATCH_SLOT = 999_999  # the decision slot of the registrant's NIK being one the registry does not match
PERSON_SLOT = 999_998  # the slot of the registrant's personal details (the load generator's :func:`word`)

"""The arrival sampler: counts per interval against the integral of the rate curve."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from models.arrivals import arrival_times, expected_arrivals, rate_at, surge_decay
from models.loader import parse_scenario

BASE = """
name: arrivals
seed: {seed}
horizon: {horizon}
arrivals: {arrivals}
journey: [{{name: s, stations: [q]}}]
system: {{stations: {{q: {{servers: 1, service: {{default: 1ms}}}}}}}}
"""

SURGE = "{shape: launch-surge, peak: 80000/min, peak_at: 10m, rise: 10m, hold: 1m, floor: 500/min, total: 1432133}"


def scenario(arrivals: str, horizon: str = "1h", seed: int = 1, run: str = ""):
    return parse_scenario(BASE.format(arrivals=arrivals, horizon=horizon, seed=seed) + run)


def assert_counts_match(times: np.ndarray, s, edges: np.ndarray) -> None:
    """Each interval's count n against its expected count m = integral of the rate (Poisson, sd sqrt(m)).

    The bound is "3 sigma" for the family of k intervals: z is chosen so that all
    k checks together fail by chance with the probability of one 3-sigma check
    (two-sided 0.27 %, Sidak-corrected), so more intervals do not mean more false alarms.
    """
    counts, _ = np.histogram(times, bins=edges)
    k = len(counts)
    alpha = 2 * (1 - NormalDist().cdf(3.0))
    z = NormalDist().inv_cdf(1 - (1 - (1 - alpha) ** (1 / k)) / 2)
    for n, a, b in zip(counts, edges[:-1], edges[1:], strict=False):
        m = expected_arrivals(s.arrivals, a, b, s.horizon)
        assert abs(n - m) <= z * math.sqrt(m), f"[{a:g}, {b:g}): {n} arrivals, expected {m:.1f} (bound {z:.2f} sigma)"


def test_constant_rate_counts() -> None:
    s = scenario("{shape: constant, rate: 50/s}", horizon="10m")
    times = arrival_times(s)
    assert_counts_match(times, s, np.linspace(0, 600, 11))
    assert abs(len(times) - 30000) <= 3 * math.sqrt(30000)


def test_surge_counts_and_total() -> None:
    s = scenario(SURGE, horizon="21h")
    times = arrival_times(s)
    # the decay is solved so that the horizon holds the given total
    assert expected_arrivals(s.arrivals, 0, s.horizon, s.horizon) == pytest.approx(1432133, rel=1e-9)
    assert abs(len(times) - 1432133) <= 3 * math.sqrt(1432133)
    edges = np.array([0, 300, 600, 660, 900, 1800, 3600, 4 * 3600, 21 * 3600], dtype=float)
    assert_counts_match(times, s, edges)


def test_surge_shape_is_a_pure_function_of_time() -> None:
    s = scenario(SURGE, horizon="21h")
    c = s.arrivals
    r = rate_at(c, np.array([0.0, 300.0, 600.0, 630.0, 660.0, 21 * 3600]), s.horizon)
    assert r[0] == pytest.approx(0.0)
    assert r[1] == pytest.approx(80000 / 60 / 2)  # half way up the linear rise
    assert r[2] == pytest.approx(80000 / 60) and r[3] == pytest.approx(80000 / 60)
    decay = surge_decay(c, s.horizon)
    later = rate_at(c, np.array([660.0 + decay]), s.horizon)[0]
    floor = 500 / 60
    assert later - floor == pytest.approx((80000 / 60 - floor) / math.e)
    assert r[5] == pytest.approx(floor, rel=1e-3)


def test_piecewise_linear_and_step() -> None:
    lin = scenario("{shape: piecewise, points: [[0s, 0/s], [100s, 100/s]]}", horizon="200s")
    assert rate_at(lin.arrivals, np.array([50.0, 150.0]), 200)[0] == pytest.approx(50)
    assert rate_at(lin.arrivals, np.array([150.0]), 200)[0] == pytest.approx(100)
    assert expected_arrivals(lin.arrivals, 0, 200, 200) == pytest.approx(5000 + 10000)
    times = arrival_times(lin)
    assert_counts_match(times, lin, np.linspace(0, 200, 9))
    step = scenario("{shape: piecewise, interpolation: step, points: [[0s, 10/s], [100s, 40/s]]}", horizon="200s")
    assert list(rate_at(step.arrivals, np.array([99.0, 100.0]), 200)) == [10, 40]
    assert_counts_match(arrival_times(step), step, np.linspace(0, 200, 9))


def test_same_seed_same_trace_and_slices_are_subsets() -> None:
    s = scenario("{shape: constant, rate: 20/s}", horizon="10m")
    a, b = arrival_times(s), arrival_times(s)
    assert np.array_equal(a, b)
    other = arrival_times(s, seed=2)
    assert len(other) != len(a) or not np.array_equal(a, other)
    half = s.with_run(scale=0.5)
    kept = arrival_times(half)
    assert set(kept.tolist()) <= set(a.tolist())
    assert abs(len(kept) - len(a) / 2) <= 3 * math.sqrt(len(a) / 4)
    window = s.with_run(window=(60.0, 120.0))
    w = arrival_times(window)
    assert np.array_equal(w, a[(a >= 60) & (a < 120)])

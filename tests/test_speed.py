"""Reading a processor's speed modes from timed pieces of work (models.speed)."""

from __future__ import annotations

import random

import pytest

from models.loader import ScenarioError, parse_scenario
from models.speed import SpeedModes, _markov_variance, estimate, probe


def synthetic(seconds: float, slow: float, share: float, tau: float, piece: float = 0.0003, seed: int = 5) -> list[tuple[float, float]]:
    """Pieces of work timed back to back on a two-state Markov processor: fast pieces take ``piece``
    seconds, slow ones ``slow`` x as long (2 % noise); spells are exponential with means
    tau / (1 - share) (slow) and tau / share (fast), so the state's correlation time is ``tau``."""
    rng = random.Random(seed)
    out = []
    t = 0.0
    is_slow = rng.random() < share
    spell_end = rng.expovariate(1 / (tau / (1 - share) if is_slow else tau / share))
    while t < seconds:
        while t >= spell_end:
            is_slow = not is_slow
            spell_end += rng.expovariate(1 / (tau / (1 - share) if is_slow else tau / share))
        c = piece * (slow if is_slow else 1.0) * (1 + 0.02 * rng.gauss(0, 1))
        out.append((t, c))
        t += c
    return out


def test_markov_window_variance_limits() -> None:
    # a window much longer than the correlation time averages it out (2 tau / W); a much shorter one keeps it all
    assert _markov_variance(100.0, 0.1) == pytest.approx(2 * 0.1 / 100, rel=0.01)
    assert _markov_variance(0.001, 10.0) == pytest.approx(1.0, abs=0.001)


def test_two_speeds_are_recovered() -> None:
    # 200 s of a processor 1.7 x slower 40 % of the time, correlation time 0.2 s (slow spells 0.33 s, fast 0.5 s).
    # Tolerances: the ratio from ~600k pieces is tight (2 %); the realized slow share of 200 s varies with
    # standard deviation sqrt(2 tau f (1 - f) / T) = 0.022, so within 3 sigma (0.066); tau comes from the variance
    # of 200 one-second shares, whose relative standard error is about sqrt(2 / 200) = 10 %, so tau within 30 %.
    modes = estimate(synthetic(200.0, 1.7, 0.4, 0.2))
    assert not modes.steady
    assert modes.slow == pytest.approx(1.7, rel=0.02)
    assert modes.share == pytest.approx(0.4, abs=0.066)
    tau = modes.slow_for * (1 - modes.share)
    assert tau == pytest.approx(0.2, rel=0.3)
    assert modes.fast_for * modes.share == pytest.approx(tau, rel=1e-9)  # both spells share one correlation time


def test_a_steady_processor_has_one_mode() -> None:
    modes = estimate(synthetic(20.0, 1.0, 0.5, 0.2))
    assert modes.steady and modes.slow == 1.0


def test_too_few_pieces_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least 20"):
        estimate([(i * 0.001, 0.001) for i in range(5)])


def test_probe_times_real_work() -> None:
    timings = probe(0.2)
    assert len(timings) >= 20
    assert all(c > 0 for _, c in timings)
    assert all(b[0] > a[0] for a, b in zip(timings, timings[1:], strict=False))


def test_modes_in_a_scenario_keep_the_mean_step() -> None:
    text = """
name: modes
horizon: 10s
arrivals: {shape: constant, rate: 1/s}
journey: [{name: ping, stations: [net]}]
system:
  stations: {net: {servers: 1, service: {default: {dist: constant, value: 1ms}}}}
  cpu:
    work: {ping: {steps: 1, step: {dist: constant, value: 1ms}}}
    modes: {slow: 1.7, share: 40%, slow_for: 300ms, fast_for: 500ms}
"""
    modes = parse_scenario(text).system.cpu.modes  # type: ignore[union-attr]
    assert modes is not None
    fast, slow = modes.factors()
    assert slow / fast == pytest.approx(1.7)
    assert 0.6 * fast + 0.4 * slow == pytest.approx(1.0)  # the measured step time is the time average
    with pytest.raises(ScenarioError, match="slow"):
        parse_scenario(text.replace("slow: 1.7", "slow: 0.5"))


def test_overlay_form_round_trips() -> None:
    m = SpeedModes(1.68, 0.46, 0.387, 0.447, 1000)
    o = m.to_overlay()
    assert o == {"slow": 1.68, "share": 0.46, "slow_for": "387ms", "fast_for": "447ms"}

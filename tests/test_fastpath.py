"""The SimPy fast path (models/fastpath.py) against SimPy's public API on the same scenarios.

The fast path writes SimPy's private fields; :class:`models.fastpath.StockEngine`
runs the same model with ``Environment.process``, ``timeout``, ``peek`` and
``step`` only.  Both see the same arrivals and the same random draws, and
process the same events; only events at the same instant may run in another
order.  So every count must agree within 1 % and every p50 / p95 within 2 %.
If SimPy changes what the fast path relies on, these fail.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import simpy

from models.fastpath import PROVEN_SIMPY
from models.funnel import simulate_once
from models.loader import load_scenario

from .conftest import SCENARIOS, TEST_SCENARIOS


def test_simpy_is_a_release_the_fast_path_is_proven_on() -> None:
    assert simpy.__version__.startswith(PROVEN_SIMPY + "."), f"SimPy {simpy.__version__}: the fast path is proven on {PROVEN_SIMPY}.x"


@pytest.mark.parametrize(
    "path, scale, window",
    [
        (SCENARIOS / "smoke.yaml", None, None),  # every mechanism: email waits, registry limits, retries, batch quota
        (TEST_SCENARIOS / "mg1-cpu.yaml", None, None),  # the processor's routes
        (SCENARIOS / "prakerja-launch.yaml", 0.02, (0.0, 7200.0)),  # long think times: the calendar's far wake-ups
    ],
)
def test_the_fast_path_runs_the_model_as_stock_simpy_does(path: Path, scale: float | None, window: tuple[float, float] | None) -> None:
    scenario = load_scenario(path)
    changes = {k: v for k, v in (("scale", scale), ("window", window)) if v is not None}
    if changes:
        scenario = scenario.with_run(**changes)
    fast = simulate_once(scenario, fast=True)
    stock = simulate_once(scenario, fast=False)
    assert sum(fast.arrivals) == sum(stock.arrivals) > 0
    for step, n in fast.funnel().items():
        assert n == pytest.approx(stock.funnel()[step], rel=0.01, abs=2), step
    for rt, series in fast.requests.items():
        other = stock.requests[rt]
        assert sum(series.ok) == pytest.approx(sum(other.ok), rel=0.01, abs=2), rt
        for q in (50, 95):
            a, b = series.total_latency.percentile(q), other.total_latency.percentile(q)
            if not (math.isnan(a) and math.isnan(b)):
                assert a == pytest.approx(b, rel=0.02), (rt, q)

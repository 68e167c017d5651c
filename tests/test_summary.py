"""SLO verdicts and the backlog-drain measure of the summary."""

from __future__ import annotations

import math

from models.funnel import simulate_once
from models.histogram import Histogram
from models.loader import load_scenario
from models.results import RequestSeries, RunResult, StationSeries
from reports.summary import drain_time, slo_verdicts, summary_text

from .conftest import SCENARIOS


def _result(queue_means: list[float]) -> RunResult:
    n = len(queue_means)
    st = StationSeries.empty(n)
    st.queue_mean = queue_means
    return RunResult("model", "t", 0.0, 60.0, [0] * n, {"r": RequestSeries.empty(n)}, {"s": st}, {})


def test_drain_time_is_the_end_of_the_last_backlogged_interval() -> None:
    assert drain_time(_result([0.0, 0.2, 0.0])) == 0.0  # momentary waits are no backlog
    assert drain_time(_result([5.0, 300.0, 2.0, 0.1, 0.0])) == 180.0
    assert math.isinf(drain_time(_result([0.0, 3.0, 4.0])))


def test_slo_verdicts_follow_the_results() -> None:
    s = load_scenario(SCENARIOS / "smoke.yaml")
    r = simulate_once(s)
    verdicts = {slo.label: (value, ok) for slo, value, ok in slo_verdicts(s, [r])}
    p95 = Histogram.merged(r.requests["register"].latency).percentile(95)
    value, ok = verdicts["register p95 < 500ms"]
    assert value == p95 and ok == (p95 < 0.5)
    started = sum(r.requests["register"].started)
    failed = sum(sum(c) for c in r.requests["register"].failed.values())
    value, ok = verdicts["register error rate < 1.00%"]
    assert value == failed / started and ok == (failed / started < 0.01)
    text = summary_text(s, [r])
    assert ("MISSED" in text) == (not all(ok for _, ok in verdicts.values()))

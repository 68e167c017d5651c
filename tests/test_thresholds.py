"""Thresholds (k6-style pass/fail criteria): parsing, verdicts on runs with known figures, and the exit code they set."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from capacity_cli import main
from models.histogram import Histogram
from models.loader import parse_scenario
from models.results import RequestSeries, RunResult
from models.thresholds import judge, parse_threshold

from .conftest import SCENARIOS


@pytest.mark.parametrize(
    "subject, text, metric, op, limit",
    [
        ("register", "p95 < 500ms", "p95", "<", 0.5),
        ("register", "p99.9<=2s", "p99.9", "<=", 2.0),
        ("all", "error_rate < 1%", "error_rate", "<", 0.01),
        ("verify_nik", "throughput >= 95%", "throughput", ">=", 0.95),
        ("run", "arrivals_late < 0.5%", "arrivals_late", "<", 0.005),
    ],
)
def test_thresholds_are_read_k6_style(subject: str, text: str, metric: str, op: str, limit: float) -> None:
    t = parse_threshold(subject, text)
    assert (t.subject, t.metric, t.op) == (subject, metric, op) and t.limit == pytest.approx(limit)


@pytest.mark.parametrize(
    "section, message",
    [
        ("register: [p95 < soon]", "thresholds.register[0]: expected a duration"),
        ("register: [p95 500ms]", "expected METRIC OP VALUE"),
        ("register: [latency < 1s]", "unknown metric 'latency'"),
        ("run: [p95 < 1s]", "thresholds.run[0]: unknown run metric 'p95'"),
        ("regster: [p95 < 1s]", "thresholds.regster: unknown request type 'regster'"),
        ("register: p95 < 1s", "thresholds.register: must be a valid list"),
    ],
)
def test_bad_thresholds_are_refused_with_the_line_and_field(
    section: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((SCENARIOS / "smoke.yaml").read_text() + f"\nthresholds:\n  {section}\n")
    assert main(["simulate", str(bad), "--out", str(tmp_path / "run"), "-q"]) == 2
    err = capsys.readouterr().err
    assert message in err and f"{bad}:" in err and "Traceback" not in err


def _run(latencies: list[float], ok: int, failed: int, meta: dict[str, float] | None = None) -> RunResult:
    series = RequestSeries.empty(1)
    series.started[0], series.ok[0] = ok + failed, ok
    series.failed["full"] = [failed]
    hist = Histogram()
    hist.record_many(latencies)
    series.latency[0] = hist
    return RunResult("measured", "t", 0.0, 60.0, [ok + failed], {"register": series}, {}, {}, dict(meta or {}))


def test_verdicts_on_a_run_with_known_figures() -> None:
    # 1000 latencies 1..1000 ms: p95 = 950 ms (to the histogram's 1 %); 990 succeeded of 1000: error 1 %, throughput 99 %
    run = _run(
        [k / 1000 for k in range(1, 1001)],
        990,
        10,
        {"arrivals_started": 1000, "late_over_100ms": 20, "arrivals_planned": 1000, "arrivals_dropped": 0},
    )
    texts = {
        ("register", "p95 < 1s"): True,
        ("register", "p95 < 900ms"): False,
        ("register", "error_rate < 1%"): False,  # 1 % is not below 1 %
        ("register", "error_rate <= 1%"): True,
        ("all", "throughput > 98%"): True,
        ("run", "arrivals_late < 1%"): False,  # 2 %
        ("run", "arrivals_dropped < 0.1%"): True,
    }
    verdicts = judge([parse_threshold(s, t) for s, t in texts], [run], ["register"])
    assert [v.passed for v in verdicts] == list(texts.values())
    assert verdicts[0].value == pytest.approx(0.950, rel=0.01)
    # a model run has no load generator: nothing to judge, shown as '-'
    model = judge([parse_threshold("run", "arrivals_late < 1%")], [_run([0.1], 1, 0)], ["register"])[0]
    assert math.isnan(model.value) and model.passed and model.shown == "-"


def test_a_breach_exits_1_and_no_fail_reports_it_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    strict = tmp_path / "strict.yaml"
    strict.write_text((SCENARIOS / "smoke.yaml").read_text() + "\nthresholds:\n  register: [p95 < 1ms]\n  all: [error_rate < 100%]\n")
    assert parse_scenario(strict.read_text()).threshold_list[0].limit == pytest.approx(0.001)
    assert main(["simulate", str(strict), "--out", str(tmp_path / "a"), "-q"]) == 1
    out, err = capsys.readouterr()
    assert "register: p95 < 1ms" in out and "FAIL" in out and "FAILED: register: p95 < 1ms" in err
    assert main(["simulate", str(strict), "--out", str(tmp_path / "b"), "-q", "--no-fail"]) == 0
    assert "missed: register: p95 < 1ms" in capsys.readouterr().err

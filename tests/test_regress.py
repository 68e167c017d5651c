"""capacity baseline / regress: the statistics on synthetic runs, the JUnit XML, bad input, and the end-to-end pass/fail pair.

The comparison (models/regression.py) calls a change a regression when it is
larger than the minimum effect, significant by a one-sided permutation test on
the per-interval figures (p < 0.01), and outside the baseline runs' 99 %
prediction band.  Under no change the permutation test's p-values are uniform,
so at most about 5 % fall below 0.05.

A/B runs pair the two targets' figures interval by interval: a one-sided
sign-flip test on the mean paired difference, Holm-adjusted over the run's
comparisons.  Under no change (differences symmetric about 0) its p-values are
uniform too; the same three-standard-error tolerance applies.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from capacity_cli import main
from models.histogram import Histogram
from models.regression import compare_paired, compare_runs, holm, permutation_p, sign_flip
from models.results import RequestSeries, RunResult

from .conftest import SCENARIOS


def _run(rng: np.random.Generator, scale: float, n: int = 12, per: int = 200) -> RunResult:
    """A measured run of one request type: ``n`` intervals of ``per`` lognormal latencies (median 50 ms x scale)."""
    series = RequestSeries.empty(n)
    for k in range(n):
        h = Histogram()
        h.record_many(rng.lognormal(np.log(0.05 * scale), 0.5, per))
        series.latency[k] = h
        series.started[k] = series.ok[k] = per
    return RunResult("measured", "t", 0.0, 5.0, [per] * n, {"register": series}, {}, {})


def test_no_change_alarms_at_its_nominal_rate_and_a_shift_is_caught() -> None:
    rng = np.random.default_rng(2026)
    p_values = [permutation_p(list(rng.normal(0, 1, 12)), list(rng.normal(0, 1, 12)), True, rounds=500, seed=s) for s in range(400)]
    share = sum(p < 0.05 for p in p_values) / len(p_values)
    assert share <= 0.05 + 3 * (0.05 * 0.95 / 400) ** 0.5  # within three standard errors of the nominal 5 %
    # whole comparisons of runs drawn from one distribution: (almost) never a regression
    alarms = sum(any(c.regressed for c in compare_runs([_run(rng, 1.0), _run(rng, 1.0)], _run(rng, 1.0))) for _ in range(15))
    assert alarms <= 1
    # a 30 % slower run: every latency metric flagged, with its effect and p-value
    slowed = compare_runs([_run(rng, 1.0), _run(rng, 1.0)], _run(rng, 1.3))
    flagged = {c.metric for c in slowed if c.regressed}
    assert {"p50", "p95"} <= flagged
    p95 = next(c for c in slowed if c.metric == "p95")
    assert p95.effect == pytest.approx(0.3, abs=0.08) and p95.p_value < 0.01 and "worse" in p95.describe()


def _pair(rng: np.random.Generator, slower: float, n: int = 20, per: int = 60) -> tuple[RunResult, RunResult]:
    """An A/B run's two sides: the same machine drift in every interval (up to 2x), the second side ``slower``."""
    drift = np.exp(rng.normal(0, 0.35, n))
    sides = []
    for scale in (1.0, slower):
        series = RequestSeries.empty(n)
        for k in range(n):
            h = Histogram()
            h.record_many(rng.lognormal(np.log(0.05 * scale * drift[k]), 0.3, per))
            series.latency[k] = h
            series.started[k] = series.ok[k] = per
        sides.append(RunResult("measured", "t", 0.0, 2.0, [per] * n, {"register": series}, {}, {}))
    return sides[0], sides[1]


def test_the_paired_test_holds_its_level_and_catches_a_shift_under_drift() -> None:
    rng = np.random.default_rng(18)
    p_values = [sign_flip(list(rng.normal(0, 1, 10)))[0] for _ in range(400)]  # exact: every sign pattern of 10
    share = sum(p < 0.05 for p in p_values) / len(p_values)
    assert share <= 0.05 + 3 * (0.05 * 0.95 / 400) ** 0.5
    assert sign_flip([0.2] * 10)[0] == pytest.approx(1 / 1024)  # all ten positive: only the observed pattern is as large
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # same build on both sides, the machine's speed drifting by a factor up to 2 between intervals: no alarm
    alarms = sum(any(c.regressed for c in compare_paired(*_pair(rng, 1.0))) for _ in range(20))
    assert alarms <= 1
    # 20 % slower: p50 and p95 flagged, the drift notwithstanding, the effect estimated within 5 points
    found = compare_paired(*_pair(rng, 1.2))
    p50 = next(c for c in found if c.metric == "p50")
    assert {"p50", "p95"} <= {c.metric for c in found if c.regressed}
    assert p50.effect == pytest.approx(0.2, abs=0.05) and p50.paired and "paired intervals" in p50.describe()


def _outcome(tmp_path: Path, rng: np.random.Generator, scale: float):  # type: ignore[no-untyped-def]
    from models.loader import load_scenario
    from models.thresholds import judge
    from workflows.regress import Baseline, RegressOutcome

    scenario = load_scenario(SCENARIOS / "smoke.yaml")
    base = Baseline("smoke", 60.0, 5.0, None, [_run(rng, 1.0), _run(rng, 1.0)], {"machine": "m"}, "now")
    now = _run(rng, scale)
    from models.regression import compare_runs as compare

    return RegressOutcome(scenario, base, now, judge(scenario.threshold_list, [now], ["register"]), [("register p95 < 500ms", 0.06, True)],
                          compare(base.runs, now), {"machine": "m"})  # fmt: skip


@pytest.mark.parametrize("scale, failures", [(1.0, 0), (1.5, 3)])
def test_junit_is_well_formed_and_its_counts_agree(tmp_path: Path, scale: float, failures: int) -> None:
    from reports.regress import write_regress_report

    outcome = _outcome(tmp_path, np.random.default_rng(7), scale)
    paths = write_regress_report(outcome, tmp_path, summary=tmp_path / "step-summary.md")
    root = ET.fromstring(paths["junit"].read_text())
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert {s.get("name") for s in suites} == {"thresholds", "slos", "baseline comparison"}
    for suite in suites:
        cases = suite.findall("testcase")
        assert int(suite.get("tests", -1)) == len(cases)
        assert int(suite.get("failures", -1)) == sum(1 for c in cases if c.find("failure") is not None)
        assert all(c.get("name") and c.get("classname") for c in cases)
    assert int(root.get("tests", -1)) == sum(int(s.get("tests", 0)) for s in suites)
    assert int(root.get("failures", -1)) == failures
    failed = [c.get("name") for c in root.iter("testcase") if c.find("failure") is not None]
    assert failed == (["register p50", "register p95", "register p99"] if failures else [])
    for case in root.iter("failure"):
        assert "worse" in case.get("message", "") and "p = " in case.get("message", "")
    assert ("FAILED" in paths["md"].read_text()) == bool(failures)
    assert (tmp_path / "step-summary.md").read_text() == paths["md"].read_text()
    assert json.loads(paths["json"].read_text())["passed"] == (failures == 0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["regress", str(SCENARIOS / "smoke.yaml"), "--baseline", "/nonexistent.json"], "expected a baseline written by capacity baseline"),
        (["regress", str(SCENARIOS / "smoke.yaml"), "--baseline", "x.json", "--host", "http://10.0.0.9:80"], "only loopback targets"),
        (["baseline", str(SCENARIOS / "smoke.yaml"), "--to", "b.json", "--server-fault", "slow=lots"], "expected slow=30%"),
        (["baseline", str(SCENARIOS / "smoke.yaml"), "--to", "b.json", "--runs", "0"], "--runs must be between 1 and 20"),
        (["serve", str(SCENARIOS / "smoke.yaml"), "--fault", "fast=2"], "unknown fault 'fast'"),
        (["regress", str(SCENARIOS / "smoke.yaml")], "give --baseline FILE"),
        (["regress", str(SCENARIOS / "smoke.yaml"), "--baseline", "x.json", "--against", "http://127.0.0.1:9"], "one of the two"),
        (["regress", str(SCENARIOS / "smoke.yaml"), "--against", "http://10.0.0.9:80"], "only loopback targets"),
        (["regress", str(SCENARIOS / "smoke.yaml"), "--against", "http://127.0.0.1:1"], "nothing answers there"),
        (["regress", str(SCENARIOS / "smoke.yaml"), "--against", "ftp://127.0.0.1:1"], "expected http://HOST:PORT"),
        (["regress", str(SCENARIOS / "smoke.yaml"), "--against", "http://127.0.0.1:99999"], "port is not a number"),
        (["regress", str(SCENARIOS / "smoke.yaml"), "--baseline", "x.json", "--host", "http://127.0.0.1:1"], "--host http://127.0.0.1:1"),
    ],
)
def test_bad_regress_input_is_refused_before_any_load(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    if "x.json" in argv:
        (tmp_path / "x.json").write_text("{}")
        argv = [str(tmp_path / "x.json") if a == "x.json" else a for a in argv]
    assert main([*argv, *(["--out", str(tmp_path / "run")] if argv[0] == "regress" else [])]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.slow
def test_regress_passes_an_unchanged_server_and_fails_a_slowed_one(tmp_path: Path) -> None:
    # a baseline of two 20 s runs (four 5 s intervals each): the band is the run-to-run noise read from two runs, so on
    # a machine whose speed drifts it flags only large changes (a server twice as slow stayed inside it once:
    # docs/validation.md, "The regression gate's slow test"); the server here is four times as slow (its stations'
    # time + 300 %).  Changes of 30 % need longer runs or the A/B mode (next test)
    smoke = str(SCENARIOS / "smoke.yaml")
    base = tmp_path / "smoke.json"
    assert main(["baseline", smoke, "--to", str(base), "--runs", "2", "--duration", "20s", "-q"]) == 0
    assert len(json.loads(base.read_text())["runs"]) == 2
    same = tmp_path / "same"
    assert main(["regress", smoke, "--baseline", str(base), "--duration", "20s", "--out", str(same), "-q"]) == 0
    slow = tmp_path / "slow"
    code = main(["regress", smoke, "--baseline", str(base), "--duration", "20s", "--out", str(slow), "-q", "--server-fault", "slow=300%"])
    assert code == 1
    root = ET.fromstring((slow / "junit.xml").read_text())
    failed = {c.get("name", "").split()[0] for c in root.iter("testcase") if c.find("failure") is not None}
    assert failed and failed <= {"register", "verify_email", "upload_photo", "verify_nik", "join_batch"}


@pytest.mark.slow
def test_ab_regress_passes_the_same_build_and_fails_a_slowed_one(tmp_path: Path) -> None:
    # the build compared with: an unchanged reference server started beside the one regress starts itself
    from models.loader import load_scenario
    from refserver.serve import started
    from workflows.target import server_config

    smoke = str(SCENARIOS / "smoke.yaml")
    with started(server_config(load_scenario(smoke), test_mode=True), tmp_path / "old") as old:
        same = tmp_path / "same"
        assert main(["regress", smoke, "--against", old, "--duration", "30s", "--out", str(same), "-q"]) == 0
        assert json.loads((same / "regress.json").read_text())["mode"] == "ab"
        assert (same / "run" / "against" / "result.json").exists()
        slow = tmp_path / "slow"
        code = main(["regress", smoke, "--against", old, "--duration", "30s", "--out", str(slow), "-q", "--server-fault", "slow=30%"])
    assert code == 1
    root = ET.fromstring((slow / "junit.xml").read_text())
    failures = [c for c in root.iter("testcase") if c.find("failure") is not None]
    assert {c.get("name", "").split()[0] for c in failures} >= {"register"}
    assert all("paired intervals" in (c.find("failure").get("message") or "") for c in failures)  # type: ignore[union-attr]

"""capacity plan: sizing against the exact answers, monotone in load and in the SLO, infeasibility, the calibration flag.

Theory: Erlang C's service level P(W <= t) = 1 - C(c, a) exp(-(c mu - lambda) t);
Erlang B's loss B(c, a); the blocking of M/M/c/K.  The screen must give the
exact smallest c; the simulation (3 replications, SLOs judged at the upper end
of their 95 % confidence interval) must confirm c and reject c - 1.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from capacity_cli import main
from models.loader import load_scenario, parse_scenario
from models.queueing import erlang_b, erlang_c, mmck
from models.screen import fluid_queue, rate_to_drain, screen
from workflows.plan import PlanOptions, run_plan

from .conftest import SCENARIOS, TEST_SCENARIOS


def _service_level(c: int, lam: float, mu: float, t: float) -> float:
    return 1 - erlang_c(c, lam / mu) * math.exp(-(c * mu - lam) * t)


def test_the_staffing_case_needs_14_agents_by_the_screen_and_by_simulation() -> None:
    # 100 calls / 30 min, 3 min handling: a = 10 Erlangs; 80 % answered within 20 s
    lam, mu = 100 / 1800, 1 / 180
    assert _service_level(13, lam, mu, 20) == pytest.approx(0.79559, abs=1e-5)
    assert _service_level(14, lam, mu, 20) == pytest.approx(0.88835, abs=1e-5)
    scenario = load_scenario(TEST_SCENARIOS / "staffing.yaml")
    assert screen(scenario).static() == {"agents": 14}
    outcome = run_plan(scenario, PlanOptions(quiet=True))
    assert outcome.feasible and outcome.recommended is not None
    assert outcome.recommended.peak() == {"agents": 14}
    tried = {r.judged.candidate.peak()["agents"]: r.judged.met for r in outcome.rounds}
    assert tried == {14: True, 13: False}  # confirmed, and one fewer misses the SLO in simulation


@pytest.mark.parametrize(
    "name, exact",
    [
        # Erlang B: the fewest lines with B(c, 10) <= 1 %
        ("loss-erlang-b", min(c for c in range(1, 60) if erlang_b(c, 10.0) <= 0.01)),
        # M/M/c/K with 5 waiting places: the fewest servers with blocking <= 2.5 %
        ("mmck-plan", min(c for c in range(1, 60) if mmck(10.0, 1.0, c, c + 5).p_block <= 0.025)),
    ],
)
def test_loss_sizing_matches_the_exact_formula_and_the_simulation(name: str, exact: int) -> None:
    assert exact == {"loss-erlang-b": 18, "mmck-plan": 13}[name]
    scenario = load_scenario(TEST_SCENARIOS / f"{name}.yaml")
    assert screen(scenario).static() == {"lines": exact}
    outcome = run_plan(scenario, PlanOptions(quiet=True))
    assert outcome.feasible and outcome.recommended is not None and outcome.recommended.peak() == {"lines": exact}
    assert outcome.confirmed is not None and len(outcome.confirmed.results) == 3


@pytest.mark.parametrize(
    "path, loads", [(SCENARIOS / "prakerja-launch.yaml", (0.5, 1.0, 2.0)), (SCENARIOS / "smoke.yaml", (0.25, 0.5, 1.0, 2.0, 4.0))]
)
def test_more_arrivals_never_need_fewer_servers(path: Path, loads: tuple[float, ...]) -> None:
    scenario = load_scenario(path)
    sizes = [screen(scenario, load=m).static() for m in loads]
    for smaller, larger in zip(sizes, sizes[1:], strict=False):
        assert all(larger[k] >= smaller[k] for k in smaller), (smaller, larger)
    assert any(sizes[-1][k] > sizes[0][k] for k in sizes[0])


@pytest.mark.parametrize("tighter, looser", [("wait_below: 20s", "wait_below: 60s"), ("percentile: 80", "percentile: 70")])
def test_a_looser_slo_never_costs_more(tighter: str, looser: str) -> None:
    text = (TEST_SCENARIOS / "staffing.yaml").read_text()
    assert tighter in text
    tight = screen(parse_scenario(text)).static()["agents"]
    loose = screen(parse_scenario(text.replace(tighter, looser))).static()["agents"]
    assert loose <= tight == 14


def test_fluid_backlog_and_the_rate_that_drains_it() -> None:
    # 100/s for 10 intervals of 60 s into a 50/s sender: 30,000 waiting at the peak, gone 10 intervals later
    # (empty at the end of the 20th interval, index 19); everything that came in goes out
    inflow = [100.0] * 10 + [0.0] * 30
    backlog, out = fluid_queue(np.array(inflow), np.full(40, 50.0), 60.0)
    assert backlog.max() == pytest.approx(30_000)
    assert int(np.argmax(backlog < 1)) == 19 and out.sum() * 60 == pytest.approx(60_000)
    # drained within 15 intervals (900 s): 60,000 items need 60,000 / 900 = 66.7/s
    assert rate_to_drain(np.array(inflow), 60.0, 900.0) == pytest.approx(60_000 / 900, rel=1e-3)


def test_a_plan_that_no_bound_allows_exits_1_naming_the_slo_and_the_bound(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "capped.yaml"
    bad.write_text((TEST_SCENARIOS / "staffing.yaml").read_text().replace("{min: 1, max: 40}", "{min: 1, max: 12}"))
    assert main(["plan", str(bad), "--out", str(tmp_path / "run"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "agents wait p80 < 20s" in err and "bound of 12 servers" in err
    assert (tmp_path / "run" / "plan.html").exists()  # the report says so too


@pytest.mark.parametrize(
    "section, message",
    [
        ("plan: {stations: {agnts: {max: 4}}}", "plan.stations.agnts: unknown station 'agnts'"),
        ("plan: {stations: {agents: {min: 9, max: 4}}}", "min (9) must not exceed max (4)"),
        ("plan: {replications: 1}", "plan.replications"),
        ("plan: {schedul: 1h}", "did you mean 'schedule'"),
    ],
)
def test_bad_plan_sections_are_refused_with_file_line_and_field(
    section: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (TEST_SCENARIOS / "staffing.yaml").read_text()
    text = text[: text.index("plan:")] + section + "\nrun: {interval: 10h}\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    assert main(["plan", str(bad), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and f"{bad}:" in err
    assert not (tmp_path / "run").exists()


def test_simulate_and_plan_take_a_calibration_and_its_header_names_the_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from models.overlay import Calibration
    from workflows.calibrate import calibration_header

    path = tmp_path / "calibration.yaml"
    scenario = str(TEST_SCENARIOS / "staffing.yaml")
    header = calibration_header(scenario, path, "test load")
    Calibration({"system": {"stations": {"agents": {"service": {"default": {"dist": "exponential", "mean": "90s"}}}}}}).write(path, header)
    commands = [line.split("with: ", 1)[1].rstrip(")").split()[1:] for line in header.splitlines() if "with: capacity" in line]
    assert [c[0] for c in commands] == ["simulate", "plan"]
    for argv in commands:
        assert main([*argv, "--out", str(tmp_path / argv[0]), "-q"]) == 0
    # half the handling time halves the offered load: the calibrated plan needs fewer agents than 14
    assert "agents | 8 |" in (tmp_path / "plan" / "plan.md").read_text()
    summary = (tmp_path / "simulate" / "summary.json").read_text()
    assert str(path) in summary
    assert main(["simulate", scenario, "--calibration", str(tmp_path / "missing.yaml")]) == 2
    assert "expected a calibration overlay" in capsys.readouterr().err

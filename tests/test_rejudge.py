"""``capacity validate --measured RUN_DIR``: the levels an earlier validation recorded, judged again without load.

The recorded levels here are made by the model itself (the same arrivals and
registrants, as a load test replays them; the model's web tier, or a slower one),
written the way a validate run writes a level: its scenario, its result, and a
calibration beside them.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from capacity_cli import main
from models.bottleneck import saturation
from models.loader import load_scenario
from models.results import save
from models.simulate import simulate
from workflows.measure import level_file, raw_scenario, recorded

from .conftest import TEST_SCENARIOS

SMALL = TEST_SCENARIOS / "validate-small.yaml"


def record(run: Path, fraction: float, web_mean: str = "40ms", speed: float = 1.0) -> Path:
    """A recorded validate run with one level at ``fraction``: the model's run (web's mean ``web_mean``) as its measurement,
    its rate placed at the machine's ``speed``."""
    scenario = load_scenario(SMALL)
    raw = raw_scenario(scenario)
    truth = copy.deepcopy(raw)
    truth["system"]["stations"]["web"]["service"]["default"]["mean"] = web_mean
    level = run / f"level-{fraction:g}"
    rate = fraction * saturation(scenario).rate / speed
    path = level_file(raw, f"{scenario.name}-level-{fraction:g}", rate, 12.0, level)
    shown = level_file(truth, "truth", rate, 12.0, run / "truth")
    save(simulate(load_scenario(shown), replications=1)[0], level)
    assert path.exists()
    (run / "calibration").mkdir(parents=True, exist_ok=True)
    (run / "calibration" / "calibration.yaml").write_text("{}\n")  # the configured service times
    return run


def test_a_recorded_level_is_read_back_with_its_scenario_and_result(tmp_path: Path) -> None:
    run = record(tmp_path / "rec", 0.5)
    m = recorded(run / "level-0.5")
    assert m.scenario.horizon == 12.0 and m.result.requests["register"].total_latency.count > 100
    assert m.before is None and m.after is None  # a level without server metrics keeps none
    assert m.speed is None  # nor a speed log
    log = {"bucket": 0.25, "clock": 12.0, "work": [[1.0, "register", 0.02, 2]]}
    m.speed = log
    m.keep(run / "level-0.5")  # as a live level keeps what the server told it
    again = recorded(run / "level-0.5")
    assert again.speed == log and again.before is None


def test_recorded_levels_are_judged_again_and_a_slower_server_fails(tmp_path: Path) -> None:
    same = record(tmp_path / "same", 0.5)
    out = tmp_path / "again"
    args = ["validate", str(SMALL), "--levels", "0.5", "--duration", "12s", "-q"]
    assert main([*args, "--measured", str(same), "--out", str(out)]) == 0
    report = json.loads((out / "validation.json").read_text())
    assert report["meta"]["measured"].startswith("recorded in") and report["levels"][0]["passed"]
    # a web tier 60 % slower than the model's: the medians miss by far more than the 10 % tolerance
    slow = record(tmp_path / "slow", 0.5, web_mean="64ms")
    assert main([*args, "--measured", str(slow), "--out", str(tmp_path / "slow-again")]) == 1
    checks = json.loads((tmp_path / "slow-again" / "validation.json").read_text())["levels"][0]["checks"]
    assert any(c["subject"] == "register" and c["metric"] == "p50" and c["verdict"] == "fail" for c in checks)


def test_a_level_placed_by_the_machines_speed_is_judged_again_at_the_rate_it_ran(tmp_path: Path) -> None:
    # placed at a machine 10 % slower, the 0.5 level ran at 0.5 / 1.1 of the saturation rate: judged again, it keeps that
    # rate and says what it was placed by
    run = record(tmp_path / "rec", 0.5, speed=1.1)
    placed = {"speed": 1.1, "read_in": 0.3}
    (run / "validation.json").write_text(json.dumps({"levels": [{"fraction": 0.5, "placed": placed}]}))
    out = tmp_path / "again"
    assert main(["validate", str(SMALL), "--levels", "0.5", "--duration", "12s", "-q", "--measured", str(run), "--out", str(out)]) == 0
    (level,) = json.loads((out / "validation.json").read_text())["levels"]
    assert level["rate"] == pytest.approx(0.5 * saturation(load_scenario(SMALL)).rate / 1.1)
    assert level["placed"] == placed


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--levels", "0.9"], "no recorded level 0.9; it has 0.5"),
        (["--host", "http://127.0.0.1:9"], "--host has nothing to do"),
    ],
)
def test_measured_refuses_what_it_cannot_judge(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    run = record(tmp_path / "rec", 0.5)
    argv = ["validate", str(SMALL), "--measured", str(run), "--out", str(tmp_path / "o"), "-q", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_measured_names_a_directory_that_is_not_there(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(SMALL), "--measured", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "-q"]) == 2
    assert "no such directory" in capsys.readouterr().err

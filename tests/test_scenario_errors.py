"""A bad scenario gets a clear error (file, line, field path, what was expected) and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from capacity_cli import main

from .conftest import ROOT


def _replace(old: str, new: str):
    def edit(text: str) -> str:
        assert old in text, f"test setup: {old!r} not in smoke.yaml"
        return text.replace(old, new)

    return edit


def _empty_journey(text: str) -> str:
    head, rest = text.split("journey:", 1)
    return head + "journey: []\nsystem:" + rest.split("system:", 1)[1]


# (case id, edit of smoke.yaml, fragments the message must contain)
CASES = [
    ("yaml-syntax", _replace("horizon: 2m", "horizon: [2m"), ["bad.yaml:7:", "YAML syntax error"]),
    ("missing-field", _replace("horizon: 2m\n", ""), ["bad.yaml:", "horizon", "required field is missing"]),
    (
        "unknown-field",
        _replace("      servers: 4\n", "      servrs: 4\n"),
        ["system.stations.web.servrs", "unknown field 'servrs'", "did you mean 'servers'"],
    ),
    ("zero-rate", _replace("peak: 40/s", "peak: 0/s"), ["bad.yaml:9:", "arrivals.peak", "greater than 0"]),
    ("negative-rate", _replace("rate: 20/s", "rate: -20/s"), ["system.email.rate", "greater than 0"]),
    ("probability-above-1", _replace("proceed: 80%", "proceed: 120%"), ["journey[1].proceed", "less than or equal to 1", "120%"]),
    ("probability-below-0", _replace("give_up: 10%", "give_up: -0.1"), ["journey[3].retry.give_up", "greater than or equal to 0"]),
    ("unknown-unit", _replace("hold: 10s", "hold: 10 fortnights"), ["arrivals.hold", "unknown time unit 'fortnights'", "expected one of"]),
    ("unknown-rate-unit", _replace("peak: 40/s", "peak: 40/week"), ["arrivals.peak", "unknown time unit 'week'"]),
    (
        "unknown-station",
        _replace("stations: [web, storage]", "stations: [web, storge]"),
        ["bad.yaml:31:", "journey[2].stations[1]", "unknown station 'storge'", "storage"],
    ),
    ("empty-journey", _empty_journey, ["journey", "at least 1 item"]),
    ("window-outside", _replace("  interval: 10s", "  interval: 10s\n  window: [0s, 5m]"), ["run.window", "must lie within the scenario"]),
    (
        "exponential-negative-mean",
        _replace("patience: {dist: exponential, mean: 5s}", "patience: {dist: exponential, mean: -5s}"),
        ["journey[0].patience.mean", "greater than 0"],
    ),
    (
        "uniform-high-below-low",
        _replace("{dist: uniform, low: 1s, high: 3s}", "{dist: uniform, low: 3s, high: 1s}"),
        ["journey[2].think", "high (1s) must be at least low (3s)"],
    ),
    ("lognormal-negative-cv", _replace("cv: 0.5}", "cv: -1}"), ["system.registry.latency.cv", "greater than 0"]),
    (
        "unknown-distribution",
        _replace("{dist: exponential, mean: 3s}", "{dist: weibull, mean: 3s}"),
        ["journey[4].think", "unknown dist 'weibull'", "lognormal"],
    ),
    (
        "service-missing-for-request",
        _replace("service: {upload_photo: {dist: lognormal, mean: 100ms, cv: 1.0}}", "service: {register: 1ms}"),
        ["journey[2].stations[1]", "no service time for request 'upload_photo'"],
    ),
    ("surge-total-unreachable", _replace("decay: 20s", "total: 99999999"), ["arrivals", "cannot be reached"]),
    (
        "cpu-unknown-thread-station",
        _replace("system:\n", "system:\n  cpu: {threads: [dbb], work: {default: {steps: 2, step: 1ms}}}\n"),
        ["system.cpu.threads[0]", "unknown station 'dbb'"],
    ),
    (
        "cpu-low-above-measured",
        _replace("system:\n", "system:\n  cpu: {low_at: 0.5, measured_at: 0.2, work: {default: {steps: 2, step: 1ms}}}\n"),
        ["system.cpu.low_at", "must not exceed measured_at"],
    ),
    (
        "cpu-trace-zero-factor",
        _replace("system:\n", "system:\n  cpu: {work: {default: {steps: 2, step: 1ms}}, trace: {every: 5s, factors: [1.0, 0]}}\n"),
        ["system.cpu.trace.factors[1]", "greater than 0"],
    ),
    (
        "cpu-trace-no-interval",
        _replace("system:\n", "system:\n  cpu: {work: {default: {steps: 2, step: 1ms}}, trace: {every: 0s, factors: [1.0]}}\n"),
        ["system.cpu.trace.every", "greater than 0"],
    ),
    (
        "cpu-unknown-request",
        _replace("system:\n", "system:\n  cpu: {work: {regster: {steps: 2, step: 1ms}}}\n"),
        ["system.cpu.work.regster", "unknown request type 'regster'"],
    ),
]


@pytest.mark.parametrize("case, edit, fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_scenario_is_named_and_exits_2(tmp_path: Path, smoke_text: str, capsys, case, edit, fragments) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(edit(smoke_text))
    code = main(["simulate", str(bad), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "invalid scenario" in err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists(), "nothing is written for a bad scenario"


def test_missing_file_and_bad_arguments_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["simulate", str(tmp_path / "nope.yaml")]) == 2
    assert "no such scenario file" in capsys.readouterr().err
    smoke = str(ROOT / "scenarios" / "smoke.yaml")
    assert main(["simulate", smoke, "--scale", "150%", "--quiet"]) == 2
    assert "--scale" in capsys.readouterr().err
    assert main(["simulate", smoke, "--window", "0s", "1d", "--quiet"]) == 2
    assert "--window" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["simulate", smoke, "--replications", "many"])
    assert exc.value.code == 2


def test_console_script_prints_no_traceback(tmp_path: Path, smoke_text: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(smoke_text.replace("proceed: 80%", "proceed: 180%"))
    proc = subprocess.run([sys.executable, "-m", "capacity_cli", "simulate", str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "journey[1].proceed" in proc.stderr and "Traceback" not in proc.stderr

"""The load run's settings: what the launcher writes into the environment is what the locustfile reads back."""

from __future__ import annotations

from pathlib import Path

import pytest

from locustfiles.settings import Settings, SettingsError

from .conftest import SCENARIOS


def test_settings_survive_the_trip_through_the_environment() -> None:
    sent = Settings(
        str(SCENARIOS / "smoke.yaml"),
        seed=7,
        duration=30.0,
        out="/tmp/run",
        drop_after=0.5,
        workers=3,
        worker_index=2,
        progress=False,
        metrics=True,
    )
    got = Settings.from_environ(sent.to_environ())
    assert got == Settings(str((SCENARIOS / "smoke.yaml").resolve()), 7, 30.0, "/tmp/run", 0.5, 3, 2, False, True)
    ab = Settings(str(SCENARIOS / "smoke.yaml"), against="http://127.0.0.1:9001")
    assert Settings.from_environ(ab.to_environ()).against == "http://127.0.0.1:9001"


def test_workers_split_one_trace_exactly_once() -> None:
    # worker k of 3 takes the arrivals whose index is k mod 3: together the whole trace, each arrival once
    parts = [Settings(str(SCENARIOS / "smoke.yaml"), duration=60.0, workers=3, worker_index=k).load() for k in range(3)]
    whole = Settings(str(SCENARIOS / "smoke.yaml"), duration=60.0).load()
    assert sorted(t for p in parts for t in p.times) == whole.times
    assert all(t < 60.0 for t in whole.times) and len(whole.times) > 100


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"SURGECAP_SEED": "abc"}, "SURGECAP_SEED must be a number"),
        ({"SURGECAP_WORKERS": "2", "SURGECAP_WORKER_INDEX": "2"}, "SURGECAP_WORKER_INDEX must be in [0, 2)"),
        ({"SURGECAP_DURATION": "-5"}, "SURGECAP_DURATION must be positive"),
        ({"SURGECAP_AGAINST": "http://127.0.0.1:9", "SURGECAP_WORKERS": "2"}, "needs one load generator process"),
    ],
)
def test_bad_settings_are_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        Settings.from_environ({"SURGECAP_SCENARIO": str(SCENARIOS / "smoke.yaml"), **environ})


def test_a_scenario_with_a_request_the_registrant_cannot_send_is_refused(tmp_path: Path) -> None:
    text = (SCENARIOS / "smoke.yaml").read_text().replace("name: register", "name: register\n    request: sign_up", 1)
    text = text.replace("{request: register,", "{request: sign_up,")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(SettingsError, match=r"request types \[.sign_up.\] have no endpoint"):
        Settings(str(bad)).load()

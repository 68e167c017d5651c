"""capacity loadtest: the surge replayed with Locust against the reference server on loopback."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from capacity_cli import main
from models.arrivals import expected_arrivals
from models.loader import load_scenario
from models.results import load
from models.simulate import figures

from .conftest import SCENARIOS, TEST_SCENARIOS

SMOKE = SCENARIOS / "smoke.yaml"
DURATION = 20.0


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("loadtest")
    assert main(["loadtest", str(SMOKE), "--duration", f"{DURATION:g}s", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.mark.slow
def test_result_is_in_the_model_shape(run: Path) -> None:
    result = load(run)
    assert result.source == "measured" and result.scenario == "smoke"
    f = figures(result)  # the same figures as a simulated run
    assert f["request.register.ok"] > 0 and f["step.register.completed"] > 0
    assert (run / "requests.csv").exists() and (run / "locust_stats.csv").exists()


@pytest.mark.slow
def test_arrivals_follow_the_curve_and_none_are_hidden(run: Path) -> None:
    s = load_scenario(SMOKE)
    meta = load(run).meta
    m = expected_arrivals(s.arrivals, 0.0, DURATION, s.horizon)
    # the trace: Poisson with mean m (3 sigma)
    assert abs(meta["arrivals_planned"] - m) <= 3 * math.sqrt(m)
    # every planned arrival is accounted for: started or reported dropped
    assert meta["arrivals_started"] + meta["arrivals_dropped"] + meta["arrivals_not_reached"] == meta["arrivals_planned"]
    assert sum(load(run).arrivals) == meta["arrivals_started"]


@pytest.mark.slow
def test_every_step_exercised_and_drop_off_matches_the_scenario(run: Path) -> None:
    s = load_scenario(SMOKE)
    r = load(run)
    for step in s.journey:
        assert sum(r.steps[step.name].reached) > 0, f"{step.name} was never reached"
    decisions = r.meta["proceed_decisions"]
    for step in s.journey[1:]:
        went, left = decisions[step.name]
        n = went + left
        p = step.proceed
        # of n registrants who finished the previous step, Binomial(n, p) go on: within 3 sigma
        assert abs(went - n * p) <= 3 * math.sqrt(n * p * (1 - p)), f"{step.name}: {went} of {n}, p = {p}"
        assert sum(r.steps[step.name].dropped) == left
        assert sum(r.steps[step.name].reached) <= went


def test_non_loopback_target_is_refused(tmp_path: Path, capsys) -> None:
    code = main(["loadtest", str(SMOKE), "--host", "http://10.0.0.7:8000", "--duration", "5s", "--out", str(tmp_path)])
    assert code == 2
    assert "--allow-remote" in capsys.readouterr().err
    assert not (tmp_path / "result.json").exists()


@pytest.mark.slow
def test_overloaded_generator_reports_late_and_dropped_arrivals(tmp_path: Path) -> None:
    # a pool of 3 users cannot carry journeys that last seconds at 5-40 arrivals/s
    assert main(["loadtest", str(SMOKE), "--duration", "8s", "--users", "3", "--out", str(tmp_path), "--quiet"]) == 0
    meta = load(tmp_path).meta
    assert meta["arrivals_dropped"] > 0
    assert meta["share_on_time_100ms"] < 1.0
    assert meta["arrivals_started"] + meta["arrivals_dropped"] + meta["arrivals_not_reached"] == meta["arrivals_planned"]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_ctrl_c_keeps_partial_results_and_leaves_no_processes(tmp_path: Path, how: str) -> None:
    """Ctrl-C (SIGINT), or a kill (SIGTERM), stops the run cleanly."""
    import signal
    import subprocess
    import sys
    import time

    from .conftest import ROOT

    proc = subprocess.Popen(
        [sys.executable, "-m", "capacity_cli", "loadtest", str(SMOKE), "--duration", "60s", "--out", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a suite started in the background inherits SIGINT ignored, and so would the command
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # interrupt once arrivals are flowing: the second progress line says so (however slowly Locust started)
    assert proc.stdout is not None
    lines = []
    progress = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and progress < 2:
        line = proc.stdout.readline()
        lines.append(line)
        progress += line.startswith("loadtest ")
        if not line:
            break
    assert progress == 2, lines
    proc.send_signal(getattr(signal, how))
    out, err = proc.communicate(timeout=120)
    out = "".join(lines) + out
    assert proc.returncode == 130, err
    assert "partial" in err
    result = load(tmp_path)
    assert 0 < result.meta["arrivals_started"] < result.meta["arrivals_planned"]
    assert "Journey" not in out and "register" in out
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert left == [], f"stray processes: {left}"


def check_merged(merged_dir: Path, part_dirs: list[Path]) -> None:
    """The master's merged result is the sum of the workers' and covers the arrival trace exactly once."""
    import numpy as np

    from models.arrivals import arrival_times

    parts = [load(d) for d in part_dirs]
    merged = load(merged_dir)
    assert merged.meta["workers_reported"] == list(range(len(parts)))
    # the merged totals are the sum of the workers'
    assert merged.meta["arrivals_planned"] == sum(p.meta["arrivals_planned"] for p in parts)
    assert sum(merged.arrivals) == sum(sum(p.arrivals) for p in parts)
    for rt in merged.requests:
        assert sum(merged.requests[rt].started) == sum(sum(p.requests[rt].started) for p in parts)
        assert merged.requests[rt].total_latency.count == sum(p.requests[rt].total_latency.count for p in parts)
    # and the workers together planned exactly the scenario's arrival trace
    trace = arrival_times(load_scenario(SMOKE))
    assert merged.meta["arrivals_planned"] == int(np.sum(trace < 10.0))
    assert abs(parts[0].meta["arrivals_planned"] - parts[1].meta["arrivals_planned"]) <= 1
    # distinct registrants: no worker repeated another's people
    assert sum(sum(c) for c in merged.requests["register"].failed.values()) == 0


@pytest.mark.slow
def test_distributed_workers_split_the_trace_and_merge(tmp_path: Path) -> None:
    assert main(["loadtest", str(SMOKE), "--duration", "10s", "--workers", "2", "--out", str(tmp_path), "--quiet"]) == 0
    check_merged(tmp_path, [tmp_path / f"worker-{k}" for k in range(2)])


@pytest.mark.slow
def test_master_and_workers_started_apart_merge_over_the_wire(tmp_path: Path) -> None:
    """What several machines do, here on loopback: one master, two workers as separate commands; no shared result files."""
    import subprocess
    import sys

    from refserver.serve import free_port

    port = str(free_port())
    base = [
        sys.executable,
        "-m",
        "capacity_cli",
        "loadtest",
        str(SMOKE),
        "--duration",
        "10s",
        "--workers",
        "2",
        "--master-port",
        port,
        "--quiet",
    ]
    master = subprocess.Popen(
        [*base, "--master", "--out", str(tmp_path / "master")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    workers = [
        subprocess.Popen(
            [*base, "--worker", "--master-host", "127.0.0.1", "--worker-index", str(k), "--out", str(tmp_path / f"w{k}")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(2)
    ]
    try:
        _, err = master.communicate(timeout=180)
        assert master.returncode == 0, err
        for w in workers:
            _, werr = w.communicate(timeout=60)
            assert w.returncode == 0, werr
    finally:
        for proc in (master, *workers):
            if proc.poll() is None:
                proc.kill()
    check_merged(tmp_path / "master", [tmp_path / f"w{k}" for k in range(2)])


@pytest.mark.slow
@pytest.mark.parametrize("answer", [b'{"status": "registered"}', b'{"id": "a b\\r\\nX-Evil: 1"}'], ids=["no-id", "id-not-a-token"])
def test_a_success_status_with_the_wrong_body_fails_the_journey(tmp_path: Path, answer: bytes) -> None:
    """A stand-in server answers every registration 201 but without a usable registrant id."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class WrongBody(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            self.rfile.read(int(self.headers.get("content-length", 0)))
            body = answer
            self.send_response(201)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), WrongBody)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host = f"http://127.0.0.1:{server.server_address[1]}"
        out = tmp_path / "wrong-body"
        assert (
            main(["loadtest", str(TEST_SCENARIOS / "register-only.yaml"), "--host", host, "--duration", "5s", "--out", str(out), "--quiet"])
            == 0
        )
    finally:
        server.shutdown()
    result = load(out)
    reg = result.requests["register"].totals()
    assert reg["started"] > 20
    assert reg["ok"] == 0 and reg["failed_error"] == reg["started"]  # each answer was a 201, none a success
    assert sum(result.steps["register"].failed) == reg["started"]
    # Locust's own statistics saw the same: every register request is one of its failures
    import csv

    rows = {row["Name"]: row for row in csv.DictReader((out / "locust_stats.csv").open())}
    assert int(rows["register"]["Request Count"]) == reg["started"]
    assert int(rows["register"]["Failure Count"]) == reg["started"]

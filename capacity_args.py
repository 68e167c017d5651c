"""The command line's arguments: one subcommand per workflow, each with the flags its users set.

Only the shapes live here; :mod:`capacity_cli` checks the values (through
:mod:`workflows.options`) and runs the commands.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

__all__ = ["build_parser"]


class _Parser(argparse.ArgumentParser):
    bad_input = 2  # the exit code of a usage error

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(self.bad_input, f"{self.prog}: error: {message}\n")


def _common(p: argparse.ArgumentParser, kind: str, target: str | None = None, model: bool = False, gate: bool = False) -> None:
    """The scenario, --out, --quiet; --host when the command sends load, --calibration when it runs the model, --no-fail when it gates."""
    p.add_argument("scenario", help="scenario YAML file (e.g. scenarios/smoke.yaml)")
    p.add_argument("--out", default=None, help=f"run directory (default runs/<timestamp>-{kind}<scenario>)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    if model:
        p.add_argument("--calibration", default=None, help="a calibration overlay written by capacity calibrate (default: as configured)")
    if gate:
        p.add_argument("--no-fail", action="store_true", help="report missed SLOs and thresholds, but exit 0")
    if target is not None:
        p.add_argument("--host", default=None, help=target)
        p.add_argument("--allow-remote", action="store_true", help="allow a target outside loopback")


def build_parser(bad_input: int = 2) -> argparse.ArgumentParser:
    """The parser; a usage error exits with ``bad_input``."""
    _Parser.bad_input = bad_input
    parser = _Parser(prog="capacity", description="Load testing and capacity planning for registration surges.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("simulate", help="run the SimPy model of a scenario and summarize it")
    _common(p, "", model=True, gate=True)
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the scenario's)")
    p.add_argument("--replications", "-r", type=int, default=1, help="independent replications (default 1)")
    p.add_argument("--scale", default=None, help="share of arrivals kept, e.g. 0.1 or 10%% (overrides run.scale)")
    p.add_argument("--window", nargs=2, metavar=("START", "END"), default=None, help="time window, e.g. 0h 2h (overrides run.window)")
    p = sub.add_parser(
        "plan", help="the cheapest capacity that meets every SLO: sizing, schedule, costs, what-ifs (HTML + Markdown + JSON)"
    )
    _common(p, "plan-", model=True)
    p.add_argument("--validation", default=None, help="a validation.json written by capacity validate that backs the calibration")
    p.add_argument("--workers", type=int, default=None, help="processes for the confirming replications (default: the machine's cores)")
    p = sub.add_parser("serve", help="run the reference server (and its registry) configured from a scenario")
    p.add_argument("scenario", help="scenario YAML file")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0: a free one, written to DATA_DIR/port)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (loopback unless --allow-remote)")
    p.add_argument("--allow-remote", action="store_true", help="allow binding a non-loopback address")
    p.add_argument("--db", default=None, help="SQLite file (default DATA_DIR/refserver.sqlite)")
    p.add_argument("--data-dir", default=None, help="database, photos and keys (default runs/<timestamp>-serve-<scenario>)")
    p.add_argument("--test-mode", action="store_true", help="enable the loopback-only mailbox and reset endpoints")
    p.add_argument("--fault", action="append", metavar="slow=30%|cpu=2ms|delay=5ms", help="inject slowness (off by default)")
    p = sub.add_parser("loadtest", help="replay a scenario's surge with Locust (open-model arrivals)")
    _common(p, "loadtest-", "target URL (default: start the reference server for the scenario)", gate=True)
    p.add_argument("--duration", default=None, help="how much of the window to replay, e.g. 60s (default: all of it)")
    p.add_argument("--users", type=int, default=None, help="Locust users in the pool (default: from peak rate x journey length)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="Locust worker processes (distributed mode); with --master or --worker: the number of workers in all",
    )
    p.add_argument(
        "--master",
        action="store_true",
        help="run only the master and wait for --workers workers started elsewhere (capacity loadtest ... --worker)",
    )
    p.add_argument("--master-bind-host", default="127.0.0.1", help="with --master: the address workers connect to (default loopback)")
    p.add_argument("--master-port", type=int, default=5557, help="the master's port (default 5557)")
    p.add_argument("--worker", action="store_true", help="run one worker for a master started with --master (on this or another machine)")
    p.add_argument("--master-host", default=None, help="with --worker: the master's address")
    p.add_argument(
        "--worker-index",
        type=int,
        default=0,
        help="with --worker: this worker's index K in 0..N-1; it takes every arrival whose index is K mod N",
    )
    p.add_argument("--seed", type=int, default=None, help="arrival seed (default: the scenario's)")
    for name, what in (("baseline", "record"), ("regress", "compare with")):
        p = sub.add_parser(name, help=f"{what} a baseline of the scenario's load test (a CI regression gate)")
        _common(p, f"{name}-", "target URL (default: start the reference server for the scenario)")
        p.add_argument("--duration", default=None, help="how much of the window to replay (default: 60s or the window)")
        p.add_argument("--seed", type=int, default=None, help="arrival seed (default: the scenario's; regress: the baseline's)")
        p.add_argument(
            "--server-fault", action="append", metavar="slow=30%|cpu=2ms|delay=5ms", help="slow down the reference server started"
        )
    p = sub.choices["baseline"]
    p.add_argument("--baseline-file", "--to", dest="baseline_file", required=True, help="where to store it, e.g. baselines/smoke.json")
    p.add_argument("--runs", type=int, default=3, help="load tests in the baseline (default 3: their spread is the run-to-run noise)")
    p = sub.choices["regress"]
    p.add_argument("--baseline", default=None, help="a baseline written by capacity baseline (or --against)")
    p.add_argument(
        "--against",
        default=None,
        metavar="URL",
        help="A/B in one run: serve every arrival to URL too (the build compared with), interleaved, and compare pair by pair",
    )
    p.add_argument("--junit", default=None, help="write JUnit XML here too (default RUN_DIR/junit.xml)")
    p.add_argument("--summary", default=None, help="append the Markdown summary here (e.g. $GITHUB_STEP_SUMMARY)")
    p.add_argument(
        "--min-effect",
        action="append",
        metavar="METRIC=SHARE",
        help="smallest change that counts, e.g. p95=15%% (default 10%%; error_rate 1 point)",
    )
    p = sub.add_parser("calibrate", help="measure service demands at low load (D = U / X) and write a calibration overlay")
    _common(p, "calibrate-", "target URL with surgecap station metrics (default: a fresh reference server)")
    p.add_argument("--duration", default=None, help="length of the low-load run (default 120s)")
    p = sub.add_parser("validate", help="check the model against load tests at several load levels (HTML + JSON report)")
    _common(p, "validate-", "validate against this server instead of fresh reference servers")
    p.add_argument(
        "--levels", default=None, help="fractions of the saturation rate, e.g. 0.3,0.6,0.9,1.1 (default: the scenario's validation.levels)"
    )
    p.add_argument("--duration", default=None, help="measured time per level (default: the scenario's validation.duration)")
    p.add_argument("--calibration", default=None, help="a calibration overlay to use, or 'none' (default: calibrate first)")
    p.add_argument(
        "--processor",
        choices=["calibrated", "level"],
        default="calibrated",
        help="the server's CPU time per request in the model: from calibration (default), or measured in each level itself "
        "(operational validation; "
        "the cpu station's utilization is then an input, shown but not judged)",
    )
    p.add_argument(
        "--no-diagnosis",
        action="store_true",
        help="with the calibrated processor, skip the model's second run per level given the level's own CPU time",
    )
    p.add_argument(
        "--speed-reference",
        choices=["auto", "work", "bracket", "none"],
        default="auto",
        help="with the calibrated processor, scale each level's CPU times by the machine's speed: work, from the CPU time of the "
        "server's fixed computation during the level (reference_server.work); bracket, from the calibration's processor phase rerun "
        "after every level; auto (default): work where the calibration has such a computation, else bracket; none: as calibrated. "
        "With a processor knee the speed read in a level also places the next level's rate (with --processor level, the saturation "
        "rate the level's own CPU time per request gives places it)",
    )
    p.add_argument(
        "--replications",
        "-r",
        type=int,
        default=10,
        help="model replications per level (default 10): their spread gives each check its sampling margin",
    )
    p.add_argument(
        "--measured",
        default=None,
        metavar="RUN_DIR",
        help="judge the levels an earlier validate run recorded (its --out directory) again with the model as it is now, "
        "sending no load (with its calibration, unless --calibration)",
    )
    return parser

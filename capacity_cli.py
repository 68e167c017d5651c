"""capacity: the command line of surgecap.

Each command parses its arguments, loads the scenario once and calls one
workflow (``workflows/``).  Exit codes: 0 success, 1 a failed check or a run
that could not be made, 2 bad input (scenario, calibration or arguments).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from models.loader import ScenarioError, load_scenario
from models.overlay import CalibrationError
from models.scenario import Scenario
from workflows import BadInput, WorkflowError
from workflows.options import calibration_option, duration_option, levels_option, run_slice
from workflows.output import run_dir
from workflows.target import refuse_remote

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _scenario(args: argparse.Namespace) -> Scenario:
    """The scenario, with --calibration merged on where the command takes one."""
    calibration = calibration_option(getattr(args, "calibration", None))
    if calibration is None or calibration.empty or args.command == "validate":
        return load_scenario(args.scenario)
    return calibration.apply(args.scenario)


def _verdict(command: str, missed: list[str], no_fail: bool) -> int:
    """Exit 1 when an SLO or a threshold was missed (k6's semantics), unless --no-fail."""
    if missed:
        print(f"capacity {command}: {'missed' if no_fail else 'FAILED'}: {'; '.join(missed)}", file=sys.stderr)
    return EXIT_FAILED if missed and not no_fail else EXIT_OK


# --- commands: one workflow each ------------------------------------------------------------------------------


def cmd_simulate(args: argparse.Namespace, scenario: Scenario) -> int:
    from workflows.simulate import run_simulation

    if args.replications < 1:
        raise BadInput("--replications must be at least 1")
    scenario = run_slice(scenario, args.scale, args.window)
    done = run_simulation(
        scenario, run_dir(args.out, scenario.name), args.replications, args.seed, args.quiet, calibration=args.calibration
    )
    print(done.text)
    print(f"\nsimulated in {done.wall:.1f}s; results in {done.run_dir}/ (summary.md, summary.json, rep-*/result.json and CSV)")
    return _verdict("simulate", done.missed, args.no_fail)


def cmd_serve(args: argparse.Namespace, scenario: Scenario) -> int:
    import json

    from contracts import is_loopback_host
    from refserver import serve
    from workflows.target import server_config

    if not is_loopback_host(args.host) and not args.allow_remote:
        raise BadInput(f"refusing to bind {args.host}; the reference server binds loopback unless --allow-remote is given")
    data_dir = Path(args.data_dir) if args.data_dir else run_dir(None, f"serve-{scenario.name}")
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "server.json").write_text(json.dumps(server_config(scenario, test_mode=args.test_mode), indent=1))
    argv = ["--config", str(data_dir / "server.json"), "--host", args.host, "--port", str(args.port), "--data-dir", str(data_dir)]
    return serve.main(argv + (["--db", args.db] if args.db else []))


def cmd_loadtest(args: argparse.Namespace, scenario: Scenario) -> int:
    from reports.summary import loadtest_text, verdicts_text
    from workflows.loadtest import LoadtestOptions, run_loadtest

    refuse_remote(args.host, args.allow_remote)
    if args.master and args.worker:
        raise BadInput("--master and --worker exclude each other")
    window = scenario.window[1] - scenario.window[0]
    role = "master" if args.master else "worker" if args.worker else "local"
    opts = LoadtestOptions(
        duration_option(args.duration, window, low=1e-9, high=window),
        args.users,
        args.workers,
        role,
        args.master_host,
        args.master_bind_host,
        args.master_port,
        args.worker_index,
        args.host,
        args.seed,
        args.quiet,
    )
    opts.check(window)
    out = run_dir(args.out, f"loadtest-{scenario.name}")
    result, interrupted = run_loadtest(scenario, opts, out)
    print(loadtest_text(scenario, result))
    print(f"\nresults in {out}/ (result.json and CSV in the model's shape, locust_*.csv, locust.log)")
    if interrupted:
        print("capacity loadtest: interrupted; the results above are partial", file=sys.stderr)
        return EXIT_INTERRUPTED
    return _verdict("loadtest", verdicts_text(scenario, [result], "measured")[1], args.no_fail)


def cmd_calibrate(args: argparse.Namespace, scenario: Scenario) -> int:
    from workflows.calibrate import calibrate
    from workflows.measure import Lab

    refuse_remote(args.host, args.allow_remote)
    duration = duration_option(args.duration, 120.0)
    out = run_dir(args.out, f"calibrate-{scenario.name}")
    with Lab(args.host, args.quiet) as lab:
        done = calibrate(scenario, out, duration, lab)
    print(done.text)
    print(f"\ncalibrated overlay: {done.path} (measured run in {out}/)")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace, scenario: Scenario) -> int:
    from workflows.validate import ValidateOptions, validate

    refuse_remote(args.host, args.allow_remote)
    opts = ValidateOptions(
        levels=levels_option(args.levels, scenario.validation.levels),
        duration=duration_option(args.duration, scenario.validation.duration),
        calibration=calibration_option(args.calibration),
        processor=args.processor,
        speed_reference=args.speed_reference,
        replications=args.replications,
        diagnose=not args.no_diagnosis,
        host=args.host,
        quiet=args.quiet,
    )
    if opts.replications < 2:
        raise BadInput("--replications must be at least 2 (the model's band needs a spread)")
    return EXIT_OK if validate(scenario, opts, run_dir(args.out, f"validate-{scenario.name}")) else EXIT_FAILED


# --- the parser -------------------------------------------------------------------------------------------------


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


def build_parser() -> argparse.ArgumentParser:
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
        choices=["bracket", "none"],
        default="bracket",
        help="with the calibrated processor: rerun the calibration's processor phase after every level and scale each level's CPU times "
        "by the machine's speed measured just before and after it (default bracket; none: as calibrated)",
    )
    p.add_argument("--replications", "-r", type=int, default=5, help="model replications per level (default 5)")
    return parser


def cmd_plan(args: argparse.Namespace, scenario: Scenario) -> int:
    from reports.plan import write_plan_report
    from workflows.plan import PlanOptions, read_validation, run_plan

    if args.workers is not None and args.workers < 1:
        raise BadInput(f"--workers must be at least 1, got {args.workers}")
    try:
        validation = read_validation(args.validation) if args.validation else None
    except ValueError as exc:
        raise BadInput(f"--validation {exc}") from None
    out = run_dir(args.out, f"plan-{scenario.name}")
    outcome = run_plan(scenario, PlanOptions(calibration_option(args.calibration), validation, args.workers, args.quiet))
    paths = write_plan_report(outcome, out)
    print(paths["md"].read_text().split("## Provenance")[0].strip())
    print(f"\nplan report: {paths['html']} (and plan.md, plan.json)")
    if not outcome.feasible:
        print("capacity plan: no configuration within the bounds meets every SLO: " + "; ".join(outcome.infeasible), file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _terminated(_signum: int, _frame: object) -> NoReturn:
    raise KeyboardInterrupt  # a kill stops a run as Ctrl-C does: servers and load generators stopped, partial results kept


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = globals()[f"cmd_{args.command}"]  # one cmd_<name> per subcommand
    previous = signal.signal(signal.SIGTERM, _terminated) if threading.current_thread() is threading.main_thread() else None
    try:
        return int(command(args, _scenario(args)))
    except ScenarioError as exc:
        print(f"capacity {args.command}: invalid scenario", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (WorkflowError, CalibrationError) as exc:
        print(f"capacity {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, WorkflowError) else EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"capacity {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())

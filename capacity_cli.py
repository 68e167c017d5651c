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
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from capacity_args import build_parser
from models.loader import ScenarioError, load_scenario
from models.overlay import CalibrationError
from models.scenario import Scenario
from workflows import BadInput, RunFailed, WorkflowError
from workflows.options import calibration_option, duration_option, effects_option, fault_option, levels_option, run_slice
from workflows.output import run_dir
from workflows.target import reachable, refuse_remote

if TYPE_CHECKING:
    from workflows.loadtest import LoadtestOptions

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


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
    (data_dir / "server.json").write_text(
        json.dumps(server_config(scenario, test_mode=args.test_mode, fault=fault_option(args.fault, "--fault")), indent=1)
    )
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
        measured=Path(args.measured) if args.measured else None,
    )
    if opts.measured is not None and opts.host is not None:
        raise BadInput("--measured judges recorded levels again and sends no load, so --host has nothing to do; pass one of the two")
    if opts.replications < 2:
        raise BadInput("--replications must be at least 2 (the model's band needs a spread)")
    return EXIT_OK if validate(scenario, opts, run_dir(args.out, f"validate-{scenario.name}")) else EXIT_FAILED


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


def _load_options(args: argparse.Namespace, scenario: Scenario) -> LoadtestOptions:
    """A load test of the whole window (or --duration) against --host or a fresh reference server (with --server-fault)."""
    from workflows.loadtest import LoadtestOptions

    refuse_remote(args.host, args.allow_remote)
    if args.host:
        reachable(args.host, "--host")
    window = scenario.window[1] - scenario.window[0]
    duration = duration_option(args.duration, min(window, 60.0), low=1e-9, high=window)
    opts = LoadtestOptions(duration, host=args.host, seed=args.seed, quiet=args.quiet, fault=fault_option(args.server_fault))
    opts.check(window)
    return opts


def _not_made(exc: RunFailed) -> BadInput:
    """In a CI gate exit 1 says the service got worse: a run that could not be made (no server, no result) is exit 2."""
    return BadInput(f"the load test could not be made: {exc}")


def cmd_baseline(args: argparse.Namespace, scenario: Scenario) -> int:
    from workflows.regress import record_baseline

    if not 1 <= args.runs <= 20:
        raise BadInput(f"--runs must be between 1 and 20, got {args.runs}")
    opts = _load_options(args, scenario)
    try:
        record_baseline(scenario, opts, Path(args.baseline_file), args.runs, run_dir(None, f"baseline-{scenario.name}"))
    except RunFailed as exc:
        raise _not_made(exc) from None
    print(f"baseline: {args.baseline_file} ({args.runs} run(s) of {opts.duration:g}s)")
    return EXIT_OK


def cmd_regress(args: argparse.Namespace, scenario: Scenario) -> int:
    from reports.regress import write_regress_report
    from workflows.regress import Baseline, regress, regress_ab

    if (args.baseline is None) == (args.against is None):
        raise BadInput("give --baseline FILE (a recorded baseline) or --against URL (A/B in one run), one of the two")
    opts, effects = _load_options(args, scenario), effects_option(args.min_effect)
    out = run_dir(args.out, f"regress-{scenario.name}")
    try:
        if args.against is not None:
            refuse_remote(args.against, args.allow_remote)
            reachable(args.against, "--against")
            outcome = regress_ab(scenario, replace(opts, against=args.against), out, effects)
        else:
            outcome = regress(scenario, Baseline.read(args.baseline), opts, out, effects)
    except RunFailed as exc:
        raise _not_made(exc) from None
    paths = write_regress_report(outcome, out, Path(args.junit) if args.junit else None, Path(args.summary) if args.summary else None)
    print(paths["md"].read_text())
    print(f"regression report: {paths['html']} (JUnit {paths['junit']}, regress.md, regress.json)")
    return EXIT_OK if outcome.passed else EXIT_FAILED


def _terminated(_signum: int, _frame: object) -> NoReturn:
    raise KeyboardInterrupt  # a kill stops a run as Ctrl-C does: servers and load generators stopped, partial results kept


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(EXIT_BAD_INPUT).parse_args(argv)
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

"""capacity: the command line of surgecap.

    capacity simulate SCENARIO [--seed N] [--replications R] [--out DIR]
                               [--scale F] [--window START END]
    capacity serve SCENARIO [--port P] [--db PATH] [--data-dir DIR] [--test-mode]
    capacity loadtest SCENARIO [--host URL] [--duration D] [--users N] [--out DIR]

Exit codes: 0 success, 1 a failed check, 2 bad input (scenario or arguments).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from models.loader import ScenarioError, load_scenario
from models.scenario import Scenario
from models.units import UnitError, format_duration, parse_duration, parse_fraction

if TYPE_CHECKING:
    from models.calibrate import Snapshot
    from models.results import RunResult
    from models.scenario import CpuReference
    from models.speed import SpeedModes
    from reports.validation import Level, Speed

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


class ProgressBar:
    """Progress over simulated time on stderr: a live bar on a terminal, a line per 10 % otherwise."""

    def __init__(self, label: str, stream: TextIO = sys.stderr, width: int = 30):
        self.label = label
        self.stream = stream
        self.width = width
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.last_draw = 0.0
        self.last_decile = -1

    def __call__(self, done: float, total: float) -> None:
        frac = min(1.0, done / total) if total > 0 else 1.0
        now = time.monotonic()
        elapsed = now - self.started
        eta = elapsed / frac - elapsed if frac > 0 else float("nan")
        text = f"{self.label} {frac:6.1%}  simulated {format_duration(done)} of {format_duration(total)}  wall {elapsed:.0f}s"
        if 0 < frac < 1:
            text += f"  eta {eta:.0f}s"
        if self.tty:
            if now - self.last_draw < 0.2 and frac < 1:
                return
            self.last_draw = now
            filled = int(frac * self.width)
            self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {text}\033[K")
            if frac >= 1:
                self.stream.write("\n")
        else:
            decile = int(frac * 10)
            if decile == self.last_decile:
                return
            self.last_decile = decile
            self.stream.write(text + "\n")
        self.stream.flush()


def _run_dir(out: str | None, scenario_name: str) -> Path:
    if out:
        return Path(out)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{scenario_name}"


def cmd_simulate(args: argparse.Namespace) -> int:
    from models.results import save
    from models.simulate import simulate, summarize
    from reports.summary import slo_verdicts, summary_text

    scenario = load_scenario(args.scenario)
    changes: dict[str, object] = {}
    try:
        if args.scale is not None:
            scale = parse_fraction(args.scale)
            if not 0 < scale <= 1:
                raise UnitError(f"--scale must be in (0, 1], got {args.scale!r}")
            changes["scale"] = scale
        if args.window is not None:
            window = (parse_duration(args.window[0]), parse_duration(args.window[1]))
            if not 0 <= window[0] < window[1] <= scenario.horizon:
                raise UnitError(f"--window must lie within [0, {format_duration(scenario.horizon)}] and end after it starts")
            changes["window"] = window
    except UnitError as exc:
        print(f"capacity simulate: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if changes:
        scenario = scenario.with_run(**changes)
    if args.replications < 1:
        print("capacity simulate: error: --replications must be at least 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    run_dir = _run_dir(args.out, scenario.name)
    bars: dict[int, ProgressBar] = {}

    def progress(rep: int, done: float, total: float) -> None:
        if args.quiet:
            return
        bar = bars.setdefault(rep, ProgressBar(f"replication {rep + 1}/{args.replications}"))
        bar(done, total)

    started = time.monotonic()
    results = simulate(scenario, replications=args.replications, seed=args.seed, progress=progress)
    wall = time.monotonic() - started
    run_dir.mkdir(parents=True, exist_ok=True)
    for r, result in enumerate(results):
        save(result, run_dir / f"rep-{r:03d}")
    text = summary_text(scenario, results)
    est = summarize(results)
    (run_dir / "summary.md").write_text(f"# Simulation of {scenario.name}\n\n```\n{text}\n```\n")
    (run_dir / "summary.json").write_text(
        json.dumps(
            {
                "scenario": scenario.name,
                "scenario_file": scenario.path,
                "seed": args.seed if args.seed is not None else scenario.seed,
                "replications": args.replications,
                "wall_seconds": round(wall, 2),
                "figures": {k: {"mean": e.mean, "ci95": e.half_width, "n": e.n} for k, e in est.items()},
                "slos": [{"slo": s.label, "value": v, "met": ok} for s, v, ok in slo_verdicts(scenario, results)],
            },
            indent=1,
            default=str,
        )
    )
    print(text)
    print(f"\nsimulated in {wall:.1f}s; results in {run_dir}/ (summary.md, summary.json, rep-*/result.json and CSV)")
    return EXIT_OK


def server_config(scenario: Scenario, test_mode: bool = False) -> dict[str, object]:
    """The reference server's plain configuration for a scenario's system."""
    from models.scenario import REGISTRY

    sysd = scenario.system
    stations = {
        name: {
            "servers": st.servers,
            "queue": st.queue,
            "service": {rt: dist.model_dump(by_alias=True) for rt, dist in st.service.items()},
        }
        for name, st in sysd.stations.items()
    }
    routes = {step.request_type: [n for n in step.stations if n != REGISTRY] for step in scenario.journey}
    cfg: dict[str, object] = {"stations": stations, "routes": routes, "test_mode": test_mode, "seed": scenario.seed}
    if sysd.registry is not None:
        r = sysd.registry
        cfg["registry"] = {
            "concurrency": r.concurrency,
            "queue": r.queue,
            "latency": r.latency.model_dump(by_alias=True),
            "timeout": r.timeout,
            "rate_limit": r.rate_limit,
            "burst": r.burst,
            "daily_quota": r.daily_quota,
            "mismatch": r.mismatch,
        }
    if sysd.email is not None:
        cfg["email_rate"] = sysd.email.rate
    if sysd.batch is not None:
        cfg["batch_quota"] = sysd.batch.quota
    return cfg


def cmd_serve(args: argparse.Namespace) -> int:
    from refserver import serve

    scenario = load_scenario(args.scenario)
    if args.host not in ("127.0.0.1", "::1", "localhost") and not args.allow_remote:
        print(f"capacity serve: error: refusing to bind {args.host}; the reference server binds loopback unless --allow-remote is given", file=sys.stderr)
        return EXIT_BAD_INPUT
    data_dir = Path(args.data_dir) if args.data_dir else _run_dir(None, f"serve-{scenario.name}")
    data_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = data_dir / "server.json"
    cfg_path.write_text(json.dumps(server_config(scenario, test_mode=args.test_mode), indent=1))
    argv = ["--config", str(cfg_path), "--host", args.host, "--port", str(args.port), "--data-dir", str(data_dir)]
    if args.db:
        argv += ["--db", args.db]
    return serve.main(argv)


LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}


def _is_loopback(url: str) -> bool:
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _remote_refused(command: str, host: str | None, allow_remote: bool) -> bool:
    """Print the refusal and say so when ``host`` is outside loopback without --allow-remote."""
    if host and not _is_loopback(host) and not allow_remote:
        print(f"capacity {command}: error: refusing to send load to {host}: only loopback targets unless --allow-remote is given", file=sys.stderr)
        return True
    return False


def _pool_size(scenario: Scenario, duration: float) -> int:
    """Users enough for the open model: peak arrival rate x expected journey length, with room."""
    import numpy as np

    from models.arrivals import rate_at

    start = scenario.window[0]
    grid = np.linspace(start, start + duration, 200)
    peak = float(rate_at(scenario.arrivals, grid, scenario.horizon).max()) * scenario.run.scale
    journey = sum(step.think.mean / scenario.run.compress + 2.0 for step in scenario.journey)
    return int(min(5000, max(20, peak * journey * 1.5 + 10)))


def cmd_loadtest(args: argparse.Namespace) -> int:
    import contextlib

    from locustfiles.launch import LoadRun, LoadTestError, run_locust
    from refserver.serve import started
    from reports.summary import loadtest_text

    scenario = load_scenario(args.scenario)
    if _remote_refused("loadtest", args.host, args.allow_remote):
        return EXIT_BAD_INPUT
    window = scenario.window[1] - scenario.window[0]
    try:
        duration = parse_duration(args.duration) if args.duration else window
    except UnitError as exc:
        print(f"capacity loadtest: error: --duration: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not 0 < duration <= window:
        print(f"capacity loadtest: error: --duration must be in (0, {format_duration(window)}] (the scenario's window)", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.workers < 1:
        print("capacity loadtest: error: --workers must be at least 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    role = "master" if args.master else "worker" if args.worker else "local"
    if args.master and args.worker:
        print("capacity loadtest: error: --master and --worker exclude each other", file=sys.stderr)
        return EXIT_BAD_INPUT
    if role == "worker" and (args.master_host is None or not 0 <= args.worker_index < args.workers):
        print("capacity loadtest: error: --worker needs --master-host HOST, --workers N (all the workers) and --worker-index K (0 <= K < N)", file=sys.stderr)
        return EXIT_BAD_INPUT
    run_dir = _run_dir(args.out, f"loadtest-{scenario.name}")
    run_dir.mkdir(parents=True, exist_ok=True)
    users = args.users or _pool_size(scenario, duration)
    if role == "worker":  # a worker's share of the pool: the master's -u is split across the workers
        users = max(1, users // args.workers)
    with contextlib.ExitStack() as stack:
        if role == "worker":
            host = "(from the master)"
        else:
            host = args.host or stack.enter_context(started(server_config(scenario, test_mode=True), run_dir / "server"))
        what = {"local": "", "master": f" as master for {args.workers} worker(s) on {args.master_bind_host}:{args.master_port}", "worker": f" as worker {args.worker_index} of {args.workers} of the master at {args.master_host}:{args.master_port}"}[role]
        print(f"capacity loadtest: {scenario.name} for {format_duration(duration)} against {host}{what} with a pool of {users} users; results in {run_dir}/", file=sys.stderr)
        run = LoadRun(
            Path(args.scenario), host, duration, run_dir, users, args.workers, args.seed, args.quiet, metrics=args.host is None and role != "worker",
            role=role, master_host=args.master_host if role == "worker" else args.master_bind_host, master_port=args.master_port, worker_index=args.worker_index,
        )
        try:
            result, interrupted = run_locust(run)
        except LoadTestError as exc:
            print(f"capacity loadtest: error: {exc}", file=sys.stderr)
            return EXIT_FAILED
    print(loadtest_text(scenario, result))
    print(f"\nresults in {run_dir}/ (result.json and CSV in the model's shape, locust_*.csv, locust.log)")
    if interrupted:
        print("capacity loadtest: interrupted; the results above are partial", file=sys.stderr)
        return 130
    return EXIT_OK


class CalibrationError(RuntimeError):
    """Service demands cannot be measured on this target."""


CALIBRATION_LOAD = 0.15  # calibrate at this fraction of the saturation rate: the bottleneck about 15 % busy
# The processor is measured at this fraction of the saturation rate (see calibrate): near the top of the
# range validated, where its queueing matters most and where its CPU time per request is steadiest.  On the
# development machine the registration's loop CPU per request at level 0.9 was 0.49-0.58 ms over seven validations,
# where a phase at 0.5 measured 0.49-0.68 ms; levels between the two phases are interpolated.
CPU_LOAD = 0.9
IDLE_WATCH = 3.0  # seconds the fresh server is watched idle before calibration: its CPU use with no load
# The machine's speed reference (validate --speed-reference bracket): the calibration's processor phase, run again
# as it was (load, length, think times, its first CPU_WARMUP left out) on a fresh server after every level.
# On the development machine the server's CPU time per request moved by 6-16 % (rms) between runs minutes apart
# at the same load, and by 4-6 % between a run and the mean of the runs just before and just after it; shorter
# reruns (24 s) read 5-6 % dearer than the levels around them.
SPEED_PROBE = (5.0, 30.0)  # seconds the server's CPU is timed before calibration (a quarter of the phase, within these)


def _cpus() -> tuple[int | None, int | None]:
    """CPUs for the server and the load generator: apart when the machine has two or more."""
    import os

    return (0, 1) if (os.cpu_count() or 1) >= 2 else (None, None)


def _pending_writes(meminfo: str) -> int:
    """Bytes the kernel holds to write to disk (Dirty + Writeback in ``/proc/meminfo``)."""
    total = 0
    for line in meminfo.splitlines():
        name, _, value = line.partition(":")
        if name in ("Dirty", "Writeback"):
            parts = value.split()
            total += int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    return total


def _flush_writes(quiet: bool) -> int:
    """Write the machine's pending writes to disk before a measurement; return how many bytes were pending.

    The reference server commits every registration with an fsync, so the db
    station's time is the disk's.  Whatever ran just before (installing
    packages, copying files) leaves hundreds of megabytes that the kernel writes
    back about 30 s later, in the middle of whichever phase runs then: on the
    development machine 520 MB of copied files moved the db station's
    utilization 5.5 points between calibration and a level.  ``os.sync`` lands
    them first.
    """
    import os

    try:
        pending = _pending_writes(Path("/proc/meminfo").read_text())
    except OSError:
        pending = 0
    started_at = time.monotonic()
    os.sync()
    took = time.monotonic() - started_at
    if not quiet and (pending >= 16 << 20 or took >= 1.0):
        print(f"capacity: wrote the machine's pending writes ({pending / 1e6:.0f} MB) to disk before measuring, {took:.1f}s", file=sys.stderr)
    return pending


UPLOADS: list[Path] = []  # photo directories of the fresh servers this command ran, removed when it ends (see _measure)


def _measure(level_file: Path, run_dir: Path, host: str | None, quiet: bool, idle: float = 0.0) -> tuple[Scenario, RunResult, Snapshot | None, Snapshot | None]:
    """One steady load level against ``host`` (or a fresh, pinned reference server).

    Returns the level's scenario, the measured RunResult, and the station
    metrics scraped just before and just after the run (None when the target
    publishes none).  With ``idle`` seconds, the server is first watched idle
    for that long: ``before.idle_cpu`` is its CPU use with no load.  The fresh
    server's database stays in the run directory; the photos the registrants
    uploaded (filler bytes, about 750 MB a minute at 0.9 of the Prakerja
    saturation rate) are removed when the command ends (:data:`UPLOADS`), so that
    no level is measured while a gigabyte is being deleted.  The machine's
    pending writes go to disk first (:func:`_flush_writes`).
    """
    import contextlib

    from locustfiles.launch import LoadRun, run_locust
    from models.calibrate import snapshot
    from refserver.serve import scrape, started

    scenario = load_scenario(level_file)
    duration = scenario.horizon
    server_cpu, load_cpu = _cpus()
    _flush_writes(quiet)
    with contextlib.ExitStack() as stack:
        target = host or stack.enter_context(started(server_config(scenario, test_mode=True), run_dir / "server", cpu=server_cpu, registry_cpu=load_cpu))

        def snap() -> Snapshot | None:
            try:
                found = snapshot(scrape(target), time.monotonic())
            except OSError:
                return None
            return found if found.has_stations else None

        before = snap()
        if idle > 0 and before is not None and before.cpu_seconds is not None:
            time.sleep(idle)
            quiet_end = snap()
            if quiet_end is not None and quiet_end.cpu_seconds is not None:
                quiet_end.idle_cpu = max(0.0, (quiet_end.cpu_seconds - before.cpu_seconds) / (quiet_end.at - before.at))
                before = quiet_end
        run = LoadRun(level_file, target, duration, run_dir, _pool_size(scenario, duration), quiet=quiet, metrics=before is not None, cpu=load_cpu)
        measured, interrupted = run_locust(run)
        after = snap()
    if host is None:
        UPLOADS.append(run_dir / "server" / "photos")
    if interrupted:
        raise KeyboardInterrupt
    return scenario, measured, before, after


def _level_file(raw: dict[str, object], name: str, rate: float, duration: float, run_dir: Path, everyone: bool = False, compress: float | None = None) -> Path:
    import yaml

    from models.calibrate import steady_scenario

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "scenario.yaml"
    path.write_text(yaml.safe_dump(steady_scenario(raw, name, rate, duration, compress=compress, everyone=everyone), sort_keys=False))
    return path


def _raw(path: str) -> dict[str, object]:
    import yaml

    data = yaml.safe_load(Path(path).read_text())
    return data if isinstance(data, dict) else {}


def _duration_arg(text: str | None, default: float) -> float:
    if text is None:
        return default
    value = parse_duration(text)
    if not 5 <= value <= 3600:
        raise UnitError(f"--duration must be between 5s and 1h, got {text!r}")
    return value


def calibrate(scenario_path: str, run_dir: Path, duration: float, host: str | None, quiet: bool) -> tuple[dict[str, object], str]:
    """Measure service demands at low load, then the server's processor at a working load; return the overlay and a printable table.

    The processor is measured apart because its time per request falls as it
    gets busier (warm caches, wake-ups shared by several requests): on the
    reference server a registration cost about a quarter less CPU with the
    processor 56 % busy than at 9 % (0.90 against 1.21 ms).  Demands measured at low load would size
    the processor for a load it never sees, so its phase runs the scenario's
    own journey at :data:`CPU_LOAD` of the saturation rate, for half as long
    (near the top of what is validated: levels between the two phases are
    interpolated, never extrapolated).
    """
    import yaml

    from models.bottleneck import saturation
    from models.calibrate import (
        calibration_overlay,
        cpu_estimates,
        cpu_speedup,
        held_services,
        overheads,
        service_estimates,
        steady_scenario,
    )
    from models.loader import parse_scenario
    from reports.summary import table

    scenario = load_scenario(scenario_path)
    raw = _raw(scenario_path)
    # every registrant walks the whole journey, so that rare request types (a batch join) are measured as often as
    # registration; the rate is set against this journey's own saturation, so every station stays lightly loaded
    whole = steady_scenario(raw, f"{scenario.name}-calibration", 1.0, duration, everyone=True)
    knee = saturation(parse_scenario(yaml.safe_dump(whole), scenario_path))
    rate = CALIBRATION_LOAD * knee.rate
    level_file = _level_file(raw, f"{scenario.name}-calibration", rate, duration, run_dir, everyone=True)
    _flush_writes(quiet)
    modes = _speed_modes(duration, quiet) if host is None else None  # before the server starts: the CPU to itself
    if not quiet:
        print(f"capacity calibrate: {rate:.4g} arrivals/s, every registrant walking the whole journey ({CALIBRATION_LOAD:.0%} of that journey's saturation rate {knee.rate:.4g}/s, set by {knee.resource}) for {format_duration(duration)}", file=sys.stderr)
    level, measured, before, after = _measure(level_file, run_dir, host, quiet, idle=IDLE_WATCH)
    if before is None or after is None:
        raise CalibrationError(f"{host}/metrics publishes no surgecap_station_* figures, so service demands cannot be measured; the model keeps the scenario's configured service times")
    estimates = service_estimates(before, after)
    background = before.idle_cpu or 0.0
    low_cpu = cpu_estimates(before, after, scenario.request_types, background)
    threads = {name for name, v in after.threaded.items() if v and name in scenario.system.stations}
    overhead = overheads(level, measured, estimates)  # without a processor phase the model has none to add CPU time back
    overlay = calibration_overlay(scenario, estimates, overhead)
    cpu = {}
    cpu_rate = 0.0
    if low_cpu:
        # the processor at a working load: the scenario's own journey and mix, CPU_LOAD of the stations' saturation
        cpu_rate = CPU_LOAD * saturation(load_scenario(scenario_path, overlay=overlay)).rate
        cpu_duration = max(10.0, duration / 2)
        cpu_file = _level_file(raw, f"{scenario.name}-calibration-cpu", cpu_rate, cpu_duration, run_dir / "cpu")
        if not quiet:
            print(f"capacity calibrate: the server's processor at {cpu_rate:.4g} arrivals/s ({CPU_LOAD:.0%} of the saturation rate) for {format_duration(cpu_duration)}", file=sys.stderr)
        _, _, cpu_before, cpu_after = _measure(cpu_file, run_dir / "cpu", host, quiet)
        cpu_before, cpu_after = _warm(run_dir / "cpu" / "scrapes.json", cpu_duration, cpu_before, cpu_after)
        if cpu_before is not None and cpu_after is not None:
            cpu = cpu_estimates(cpu_before, cpu_after, scenario.request_types, background)
        if cpu:
            # the model now holds each station through its own resumption (and thread) steps: take them out of the demands
            held = held_services(level, estimates, low_cpu, threads)
            overhead = overheads(level, measured, held, low_cpu)
            overlay = calibration_overlay(scenario, held, overhead, cpu, threads)
            speedup, u_low, u_work = cpu_speedup(low_cpu, cpu, before, after, cpu_before, cpu_after)  # type: ignore[arg-type]
            overlay["system"]["cpu"].update({"measured_at": round(u_work, 3), "low_at": round(min(u_low, u_work), 3), "speedup": round(speedup, 3), "background": round(background, 4)})  # type: ignore[index]
            reference = {"rate": round(cpu_rate, 4), "duration": cpu_duration, "compress": round(load_scenario(cpu_file).run.compress, 4)}
            overlay["system"]["cpu"]["reference"] = reference  # type: ignore[index]
    header = f"# Calibrated on {datetime.now():%Y-%m-%d %H:%M} at {rate:.4g} arrivals/s for {format_duration(duration)}" + (f", the processor at {cpu_rate:.4g}/s" if cpu else "") + f"\n# (load with: capacity simulate {scenario_path} --overlay THIS_FILE)\n"
    (run_dir / "calibration.yaml").write_text(header + yaml.safe_dump(overlay, sort_keys=False))
    rows = []
    for (station, rt), est in sorted(estimates.items()):
        if station == "registry" and scenario.system.registry is not None:
            configured = scenario.system.registry.latency
        else:
            st = scenario.system.stations.get(station)
            configured = st.service_for(rt) if st is not None else None  # type: ignore[assignment]
        rows.append([station, rt, f"{est.n}", f"{est.mean * 1000:.2f}ms", f"{est.cv:.2f}",
                     f"{configured.mean * 1000:.2f}ms" if configured else "-", f"{configured.cv:.2f}" if configured else "-",
                     f"{(est.mean / configured.mean - 1):+.1%}" if configured and configured.mean > 0 else "-", f"{est.utilization:.1%}"])
    text = table(["station", "request", "served", "D measured", "cv", "D configured", "cv", "diff", "U"], rows)
    if cpu:
        text += (
            f"\n\nserver processor, CPU per request (own work, and with its share of the work no request owns), at low load ({u_low:.1%} of one core) "
            f"and at the working load ({u_work:.1%}; the model uses these, scaled by 1 - {speedup:.3g} x (U - {u_work:.3f}) at processor utilization U between {u_low:.3f} and {u_work:.3f}):\n"
        )
        text += table(
            ["request", "own low", "with share low", "requests", "own", "with share", "steps", "step cv"],
            [[rt, f"{low_cpu[rt].own * 1000:.3f}ms" if rt in low_cpu else "-", f"{low_cpu[rt].demand * 1000:.3f}ms" if rt in low_cpu else "-",
              f"{e.n}", f"{e.own * 1000:.3f}ms", f"{e.demand * 1000:.3f}ms", f"{e.steps}", f"{e.cv:.2f}"] for rt, e in sorted(cpu.items())],
        )
        if modes is not None:
            text += "\n\n" + _modes_text(modes)
    elif not low_cpu:
        text += "\n\nthe server publishes no CPU accounting (surgecap_cpu_*): the model keeps no processor station"
    if overhead:
        text += "\n\noverhead outside the stations and the processor (mean latency at low load minus the station demands and the CPU time):\n"
        text += "\n".join(f"  {rt:14s} {v * 1000:.2f}ms" for rt, v in overhead.items())
    return overlay, text


def _speed_modes(duration: float, quiet: bool) -> SpeedModes | None:
    """Time a fixed piece of work on the server's CPU before the server starts (see :mod:`models.speed`)."""
    import json
    import subprocess

    from models.speed import SpeedModes

    server_cpu, _ = _cpus()
    seconds = min(max(duration / 4, SPEED_PROBE[0]), SPEED_PROBE[1])
    if not quiet:
        print(f"capacity calibrate: timing the server's CPU for {format_duration(seconds)} (does its speed change?)", file=sys.stderr)
    cmd = [sys.executable, "-m", "models.speed", "--seconds", f"{seconds:g}"] + (["--cpu", str(server_cpu)] if server_cpu is not None else [])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, cwd=Path(__file__).resolve().parent)
    if done.returncode != 0:
        print(f"capacity calibrate: the CPU speed probe failed, the model keeps a steady processor: {done.stderr.strip()}", file=sys.stderr)
        return None
    return SpeedModes(**json.loads(done.stdout))


def _modes_text(modes: SpeedModes) -> str:
    if modes.steady:
        return f"the server's CPU ran at a steady speed while timed ({modes.samples} pieces of work)"
    return (
        f"the server's CPU changes speed: timed pieces of work took {modes.slow:.2f} x as long {modes.share:.0%} of the time, "
        f"in spells of {modes.slow_for * 1000:.0f} ms on average (fast ones {modes.fast_for * 1000:.0f} ms).  The CPU time per request "
        f"measured here holds only while the machine keeps this pace: if validation at high load misses on the processor, "
        f"compare with --processor level.  To plan for such a CPU, add system.cpu.modes: {modes.to_overlay()}"
    )


CPU_WARMUP = 0.25  # share of the processor phase left out: a fresh server's first requests cost more (imports, caches, connections)


def _warm(scrapes: Path, duration: float, before: Snapshot | None, after: Snapshot | None) -> tuple[Snapshot | None, Snapshot | None]:
    """The processor phase's scrapes from :data:`CPU_WARMUP` of the run to its end, when the run kept them."""
    from models.calibrate import Snapshot

    try:
        snaps = [Snapshot.from_dict(d) for d in json.loads(scrapes.read_text())]
    except (OSError, ValueError, KeyError, TypeError):
        return before, after
    warm = [snap for snap in snaps if snap.at >= CPU_WARMUP * duration - 1e-6]
    if len(warm) < 2 or warm[-1].at - warm[0].at < duration / 2:
        return before, after
    return warm[0], warm[-1]


def _cpu_section(overlay: dict[str, object]) -> dict[str, Any] | None:
    """An overlay's ``system.cpu`` section, None when it has none."""
    system = overlay.get("system")
    cpu = system.get("cpu") if isinstance(system, dict) else None
    return cpu if isinstance(cpu, dict) else None


def _reference_speed(raw: dict[str, object], scenario: Scenario, cpu: dict[str, Any], reference: CpuReference, run_dir: Path, quiet: bool) -> float | None:
    """Run the calibration's processor phase again on a fresh server; the machine's speed now against calibration.

    ``reference`` is that phase (its load, length and think times, from the
    overlay's ``system.cpu.reference``); its first :data:`CPU_WARMUP` is left
    out, as calibration left it out.  The answer is
    :func:`models.calibrate.speed_index` of what it measured against ``cpu``,
    the overlay's ``system.cpu`` section (1.1: the same requests cost 10 % more
    CPU time than when calibrated); None when the run measured no CPU accounting.
    """
    from models.calibrate import cpu_estimates, speed_index

    level_file = _level_file(raw, f"{scenario.name}-speed-reference", reference.rate, reference.duration, run_dir, compress=reference.compress)
    _, _, before, after = _measure(level_file, run_dir, None, quiet)
    before, after = _warm(run_dir / "scrapes.json", reference.duration, before, after)
    if before is None or after is None:
        return None
    return speed_index(cpu.get("work", {}), cpu_estimates(before, after, scenario.request_types, float(cpu.get("background", 0.0))))


def _speed_run(raw: dict[str, object], scenario: Scenario, cpu: dict[str, Any], reference: CpuReference, run_dir: Path, when: str, quiet: bool) -> float | None:
    """:func:`_reference_speed` with its progress line and its result printed."""
    if not quiet:
        print(f"capacity validate: speed reference {when}: the calibration's processor phase again ({reference.rate:.4g} arrivals/s for {format_duration(reference.duration)})", file=sys.stderr)
    found = _reference_speed(raw, scenario, cpu, reference, run_dir, quiet)
    if not quiet:
        print(
            f"capacity validate: speed reference {when}: "
            + (f"the same requests took {found:.3f} x calibration's CPU time" if found is not None else "no CPU accounting measured; the level around it keeps the other reference"),
            file=sys.stderr,
        )
    return found


def cmd_calibrate(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario)
    if _remote_refused("calibrate", args.host, args.allow_remote):
        return EXIT_BAD_INPUT
    try:
        duration = _duration_arg(args.duration, 120.0)
    except UnitError as exc:
        print(f"capacity calibrate: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    run_dir = _run_dir(args.out, f"calibrate-{scenario.name}")
    try:
        _, text = calibrate(args.scenario, run_dir, duration, args.host, args.quiet)
    except CalibrationError as exc:
        print(f"capacity calibrate: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(text)
    print(f"\ncalibrated overlay: {run_dir}/calibration.yaml (measured run in {run_dir}/)")
    return EXIT_OK


def _levels_arg(text: str | None, default: list[float]) -> list[float]:
    if text is None:
        return list(default)
    try:
        levels = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UnitError(f"--levels must be fractions separated by commas, e.g. 0.3,0.6,0.9; got {text!r}") from None
    if not levels or any(not 0 < x <= 3 for x in levels):
        raise UnitError(f"--levels must be fractions of the saturation rate in (0, 3], e.g. 0.3,0.6,0.9; got {text!r}")
    return sorted(levels)


def _level_processor(overlay: dict[str, object], scenario: Scenario, before: Snapshot | None, after: Snapshot | None) -> dict[str, object]:
    """The overlay with the processor's CPU time per request as measured over this level (``--processor level``).

    Everything else stays calibrated.  The work is measured at this level's own
    load, so the speedup law has nothing left to do.  The overlay comes back
    unchanged when the level has no CPU accounting or the overlay no processor.
    """
    import copy

    from models.calibrate import cpu_estimates

    cpu = _cpu_section(overlay)
    if cpu is None or before is None or after is None:
        return overlay
    measured = cpu_estimates(before, after, scenario.request_types, float(cpu.get("background", 0.0)))
    if not measured:
        return overlay
    out = copy.deepcopy(overlay)
    cpu_out = out["system"]["cpu"]  # type: ignore[index]
    cpu_out["work"] = {**cpu_out.get("work", {}), **{rt: est.as_work() for rt, est in measured.items()}}
    busy = (after.cpu_seconds - before.cpu_seconds) / max(after.at - before.at, 1e-9)  # type: ignore[operator]
    cpu_out.update({"measured_at": round(min(max(busy, 0.0), 1.0), 3), "low_at": round(min(max(busy, 0.0), 1.0), 3), "speedup": 0.0})
    return out


def judge_level(
    f: float, rate: float, level_file: Path, ldir: Path, measured: RunResult, before: Snapshot | None, after: Snapshot | None,
    overlay: dict[str, object], scenario: Scenario, processor: str, replications: int, diagnose: bool = True, quiet: bool = True,
    speed: Speed | None = None,
) -> Level:
    """Run the model on one measured level and compare; the model's runs are saved under ``ldir / "model"``.

    ``processor`` "calibrated" takes the server's CPU time per request from the
    overlay and, with ``diagnose``, runs the model once more given the level's
    own (``Level.given_cpu``); "level" takes the level's own outright, and the
    cpu station's utilization is then an input.  With ``speed`` (the machine's
    speed around the level, from the reference runs), the calibrated
    processor's CPU times are scaled by its factor first.
    """
    import yaml

    from models.calibrate import scaled_processor
    from models.compare import CPU_SUBJECT, compare
    from models.results import save
    from models.simulate import simulate
    from reports.validation import Level

    tol = scenario.validation.tolerances
    ldir.mkdir(parents=True, exist_ok=True)
    level_overlay, inputs = overlay, frozenset[str]()
    cpu = _cpu_section(overlay)
    if processor == "calibrated" and speed is not None and cpu is not None:
        level_overlay = {**overlay, "system": {**overlay["system"], "cpu": scaled_processor(cpu, speed.factor)}}  # type: ignore[dict-item]
        (ldir / "processor.yaml").write_text(yaml.safe_dump(level_overlay["system"]["cpu"], sort_keys=False))  # type: ignore[index]
    if processor == "level":
        level_overlay = _level_processor(overlay, scenario, before, after)
        if level_overlay is not overlay:
            inputs = frozenset({CPU_SUBJECT})
            (ldir / "processor.yaml").write_text(yaml.safe_dump(level_overlay["system"]["cpu"], sort_keys=False))  # type: ignore[index]
        elif not quiet:
            print(f"capacity validate: level {f:g}: no CPU accounting in this level, so the calibrated processor stays", file=sys.stderr)
    models = simulate(load_scenario(level_file, overlay=level_overlay), replications=replications)
    for r, m in enumerate(models):
        save(m, ldir / "model" / f"rep-{r:03d}")
    lv = Level(f, rate, models, measured, compare(models, measured, tol, overload=f > 1.0, inputs=inputs), speed=speed)
    if processor == "calibrated" and diagnose:
        # the same level once more with the model given the CPU time per request measured in it: whether a
        # miss is the processor's speed having moved since calibration or the model's structure
        given = _level_processor(overlay, scenario, before, after)
        if given is not overlay:
            again = simulate(load_scenario(level_file, overlay=given), replications=replications)
            lv.given_cpu = compare(again, measured, tol, overload=f > 1.0, inputs=frozenset({CPU_SUBJECT}))
    return lv


def cmd_validate(args: argparse.Namespace) -> int:
    import yaml

    from models.bottleneck import busiest_step, level_duration, saturation
    from reports.validation import Knee, Speed, verdict_table, write_report

    scenario = load_scenario(args.scenario)
    if _remote_refused("validate", args.host, args.allow_remote):
        return EXIT_BAD_INPUT
    try:
        levels = _levels_arg(args.levels, scenario.validation.levels)
        duration = _duration_arg(args.duration, scenario.validation.duration)
    except UnitError as exc:
        print(f"capacity validate: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.replications < 2:
        print("capacity validate: error: --replications must be at least 2 (the model's band needs a spread)", file=sys.stderr)
        return EXIT_BAD_INPUT
    run_dir = _run_dir(args.out, f"validate-{scenario.name}")
    run_dir.mkdir(parents=True, exist_ok=True)
    overlay: dict[str, object] = {}
    calibrated_now = False
    calibration = "none: the scenario's configured service times"
    if args.calibration and args.calibration != "none":
        loaded = yaml.safe_load(Path(args.calibration).read_text()) if Path(args.calibration).is_file() else None
        if not isinstance(loaded, dict):
            print(f"capacity validate: error: --calibration {args.calibration}: expected a calibration overlay (YAML mapping) written by capacity calibrate", file=sys.stderr)
            return EXIT_BAD_INPUT
        overlay, calibration = loaded, args.calibration
    elif args.calibration is None:
        try:
            # twice a level's length: every level's model rests on these estimates, and their noise is the model's
            overlay, text = calibrate(args.scenario, run_dir / "calibration", min(2 * duration, 300.0), args.host, args.quiet)
            calibration = str(run_dir / "calibration" / "calibration.yaml")
            calibrated_now = True
            if not args.quiet:
                print(text, file=sys.stderr)
        except CalibrationError as exc:
            print(f"capacity validate: calibration skipped: {exc}", file=sys.stderr)
    calibrated = load_scenario(args.scenario, overlay=overlay)
    knee = saturation(calibrated)
    raw = _raw(args.scenario)
    tol = scenario.validation.tolerances
    done: list[Level] = []
    durations: list[float] = []
    cpu_overlay = _cpu_section(overlay)
    reference = calibrated.system.cpu.reference if calibrated.system.cpu is not None else None
    bracket = args.processor == "calibrated" and args.speed_reference == "bracket" and cpu_overlay is not None and reference is not None
    if args.processor == "calibrated" and args.speed_reference == "bracket" and cpu_overlay is not None and reference is None and not args.quiet:
        print("capacity validate: the calibration overlay records no processor phase (system.cpu.reference), so there is no speed reference: the calibrated processor is used as it is", file=sys.stderr)
    if bracket and args.host is not None:
        bracket = False
        if not args.quiet:
            print("capacity validate: no speed reference with --host (it needs fresh reference servers): the calibrated processor is used as it is", file=sys.stderr)
    speed_before: float | None = None
    if bracket:
        if calibrated_now:
            speed_before = 1.0  # the calibration's processor phase, the reference load itself, ran just before the first level
        else:
            speed_before = _speed_run(raw, scenario, cpu_overlay, reference, run_dir / "speed-reference-0", "before the first level", args.quiet)  # type: ignore[arg-type]
    for i, f in enumerate(levels):
        rate = f * knee.rate
        ldir = run_dir / f"level-{f:g}"
        lasts = level_duration(calibrated, rate, duration, scenario.validation.samples, 4 * duration)
        durations.append(lasts)
        if not args.quiet:
            longer = f" (so that every request type can reach {scenario.validation.samples} requests)" if lasts > duration else ""
            print(f"capacity validate: level {f:g}: {rate:.4g} arrivals/s for {format_duration(lasts)}{longer}", file=sys.stderr)
        level_file = _level_file(raw, f"{scenario.name}-level-{f:g}", rate, lasts, ldir)
        level, measured, before, after = _measure(level_file, ldir, args.host, args.quiet)
        if before is not None and after is not None and before.cpu_seconds is not None and after.cpu_seconds is not None:
            measured.meta["server_cpu_utilization"] = (after.cpu_seconds - before.cpu_seconds) / (after.at - before.at)
        speed = None
        if bracket:
            speed_after = _speed_run(raw, scenario, cpu_overlay, reference, run_dir / f"speed-reference-{i + 1}", f"after level {f:g}", args.quiet)  # type: ignore[arg-type]
            speed, speed_before = Speed(speed_before, speed_after), speed_after
        lv = judge_level(
            f, rate, level_file, ldir, measured, before, after, overlay, scenario, args.processor, args.replications,
            diagnose=not args.no_diagnosis, quiet=args.quiet, speed=speed,
        )
        done.append(lv)
        cpu = measured.meta.get("server_cpu_utilization")
        print(f"\nlevel {f:g} ({rate:.4g} arrivals/s): {'pass' if lv.passed else 'FAIL'}" + (f"; server process CPU {cpu:.0%} of one core" if cpu is not None else ""))
        print(verdict_table(lv.checks, judged_only=True))
        if (why := lv.diagnosis()) is not None:
            print(f"processor: {why}")
    # the knee: the bottleneck's request type at saturation against the highest measured
    i_top, visits_top = busiest_step(calibrated, knee)
    rt = calibrated.journey[i_top].request_type
    served = [(sum(lv.measured.requests[rt].ok) + sum(lv.measured.requests[rt].failed.get("mismatch", []))) / lasts for lv, lasts in zip(done, durations)]
    knee_check = Knee(knee.resource, rt, knee.rate, knee.rate * visits_top, max(served), max(levels) >= 1.0, tol.throughput)
    meta = {
        "scenario_file": args.scenario,
        "levels": levels,
        "duration_per_level": durations,
        "samples": scenario.validation.samples,
        "replications": args.replications,
        "calibration": calibration,
        "processor": "the CPU time per request measured in each level (operational validation)" if args.processor == "level" else "calibrated",
        "speed_reference": (
            f"bracket: the calibration's processor phase ({reference.rate:.4g} arrivals/s for {reference.duration:g}s) run again on a fresh server "
            "after every level (and before the first, unless calibrated just before); each level's calibrated CPU times scaled by the mean of the two around it"
            if bracket and reference is not None else "none"
        ),
        "saturation": {"resource": knee.resource, "arrival_rate": knee.rate, "kind": knee.kind},
        "tolerances": tol.model_dump(),
        "host": args.host or "a fresh reference server per level",
    }
    html_path, json_path = write_report(run_dir, scenario.name, done, knee_check, meta)
    print(f"\nknee: {knee_check.resource} saturates at {knee_check.arrival_rate:.4g} arrivals/s = {knee_check.predicted:.4g} {rt}/s; highest measured {knee_check.measured:.4g}/s: {knee_check.verdict}")
    failed = [lv.fraction for lv in done if not lv.passed]
    print(f"validation report: {html_path} and {json_path}")
    if failed or knee_check.verdict == "fail":
        print(f"capacity validate: FAILED at level(s) {', '.join(f'{x:g}' for x in failed) or '-'}{'; knee check failed' if knee_check.verdict == 'fail' else ''}", file=sys.stderr)
        return EXIT_FAILED
    print("capacity validate: every check passed")
    return EXIT_OK


def _target_args(p: argparse.ArgumentParser, host_help: str) -> None:
    """--host and --allow-remote, as every command that sends load takes them."""
    p.add_argument("--host", default=None, help=host_help)
    p.add_argument("--allow-remote", action="store_true", help="allow a target outside loopback")


def _output_args(p: argparse.ArgumentParser, kind: str) -> None:
    """--out and --quiet, as every command that writes a run directory takes them."""
    p.add_argument("--out", default=None, help=f"run directory (default runs/<timestamp>-{kind}-<scenario>)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="capacity", description="Load testing and capacity planning for registration surges.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("simulate", help="run the SimPy model of a scenario and summarize it")
    p.add_argument("scenario", help="scenario YAML file (e.g. scenarios/prakerja-launch.yaml)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the scenario's)")
    p.add_argument("--replications", "-r", type=int, default=1, help="independent replications (default 1)")
    p.add_argument("--out", default=None, help="run directory (default runs/<timestamp>-<scenario>)")
    p.add_argument("--scale", default=None, help="share of arrivals kept, e.g. 0.1 or 10%% (overrides run.scale)")
    p.add_argument("--window", nargs=2, metavar=("START", "END"), default=None, help="time window, e.g. 0h 2h (overrides run.window)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_simulate)
    p = sub.add_parser("serve", help="run the reference server (and its registry) configured from a scenario")
    p.add_argument("scenario", help="scenario YAML file")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0: a free one, printed)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (loopback unless --allow-remote)")
    p.add_argument("--allow-remote", action="store_true", help="allow binding a non-loopback address")
    p.add_argument("--db", default=None, help="SQLite file (default DATA_DIR/refserver.sqlite)")
    p.add_argument("--data-dir", default=None, help="database, photos and keys (default runs/<timestamp>-serve-<scenario>)")
    p.add_argument("--test-mode", action="store_true", help="enable the loopback-only mailbox and reset endpoints")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("loadtest", help="replay a scenario's surge with Locust (open-model arrivals)")
    p.add_argument("scenario", help="scenario YAML file")
    _target_args(p, "target URL (default: start the reference server for the scenario)")
    p.add_argument("--duration", default=None, help="how much of the window to replay, e.g. 60s (default: all of it)")
    p.add_argument("--users", type=int, default=None, help="Locust users in the pool (default: from peak rate x journey length)")
    p.add_argument("--workers", type=int, default=1, help="Locust worker processes on this machine (distributed mode: one master, N workers); with --master or --worker: the number of workers in all")
    p.add_argument("--master", action="store_true", help="run only the master and wait for --workers workers started elsewhere (capacity loadtest ... --worker)")
    p.add_argument("--master-bind-host", default="127.0.0.1", help="with --master: the address workers connect to (default loopback; give the machine's address for remote workers)")
    p.add_argument("--master-port", type=int, default=5557, help="the master's port (default 5557)")
    p.add_argument("--worker", action="store_true", help="run one worker for a master started with --master (on this or another machine)")
    p.add_argument("--master-host", default=None, help="with --worker: the master's address")
    p.add_argument("--worker-index", type=int, default=0, help="with --worker: this worker's index K in 0..N-1; worker K takes every arrival whose index is K mod N")
    p.add_argument("--seed", type=int, default=None, help="arrival seed (default: the scenario's)")
    _output_args(p, "loadtest")
    p.set_defaults(func=cmd_loadtest)
    p = sub.add_parser("calibrate", help="measure service demands at low load (D = U / X) and write a scenario overlay")
    p.add_argument("scenario", help="scenario YAML file")
    _target_args(p, "target URL with surgecap station metrics (default: a fresh reference server)")
    p.add_argument("--duration", default=None, help="length of the low-load run (default 120s)")
    _output_args(p, "calibrate")
    p.set_defaults(func=cmd_calibrate)
    p = sub.add_parser("validate", help="check the model against load tests at several load levels (HTML + JSON report)")
    p.add_argument("scenario", help="scenario YAML file")
    p.add_argument("--levels", default=None, help="fractions of the saturation rate, e.g. 0.3,0.6,0.9,1.1 (default: the scenario's validation.levels)")
    p.add_argument("--duration", default=None, help="measured time per level (default: the scenario's validation.duration, 60s)")
    p.add_argument("--calibration", default=None, help="a calibration overlay to use, or 'none' (default: calibrate first)")
    p.add_argument(
        "--processor",
        choices=["calibrated", "level"],
        default="calibrated",
        help="the server's CPU time per request in the model: from calibration (default), or measured in each level itself "
        "(operational validation, for machines whose CPU speed drifts between calibration and the levels; the cpu station's utilization is then an input, shown but not judged)",
    )
    p.add_argument(
        "--no-diagnosis",
        action="store_true",
        help="with the calibrated processor, skip the model's second run per level given the level's own CPU time per request "
        "(the report's line on whether a miss is the processor's speed or the model)",
    )
    p.add_argument(
        "--speed-reference",
        choices=["bracket", "none"],
        default="bracket",
        help="with the calibrated processor: run the calibration's processor phase again on a fresh server after every level "
        "(as long as it ran) and scale each level's calibrated CPU times by the machine's speed measured just before and "
        "just after it (default bracket; none: the calibrated CPU times as they are)",
    )
    p.add_argument("--replications", "-r", type=int, default=5, help="model replications per level (default 5)")
    _target_args(p, "validate against this server instead of fresh reference servers")
    _output_args(p, "validate")
    p.set_defaults(func=cmd_validate)
    return parser


def _terminated(_signum: int, _frame: object) -> NoReturn:
    raise KeyboardInterrupt  # a kill stops a run as Ctrl-C does: servers and load generators stopped, partial results kept


def main(argv: Sequence[str] | None = None) -> int:
    import signal
    import threading

    parser = build_parser()
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminated) if threading.current_thread() is threading.main_thread() else None
    try:
        return int(args.func(args))
    except ScenarioError as exc:
        print(f"capacity {args.command}: invalid scenario", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"capacity {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        while UPLOADS:
            shutil.rmtree(UPLOADS.pop(), ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

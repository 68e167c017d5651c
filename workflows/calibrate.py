"""``capacity calibrate``: service demands at low load (D = U / X), then the server's processor at a working load.

The result is a :class:`models.overlay.Calibration` written to
``calibration.yaml`` and a printable table of what was measured.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from models.calibrate import CpuEstimate, ServiceEstimate, Snapshot, Stall
from models.overlay import Calibration
from models.scenario import Scenario
from models.speed import SpeedModes
from models.units import format_duration
from workflows import RunFailed
from workflows.measure import SCRAPES, Lab, flush_writes, level_file, raw_scenario, warm
from workflows.output import machine_description, say
from workflows.target import cpus

__all__ = ["calibrate", "calibration_header", "Calibrated", "NoMetrics", "CALIBRATION_LOAD", "CPU_LOAD"]

CALIBRATION_LOAD = 0.15  # calibrate at this fraction of the saturation rate: the bottleneck about 15 % busy
# The processor is measured at this fraction of the saturation rate: near the top of the range validated, where
# its queueing matters most and its CPU time per request is steadiest (docs/validation.md); levels between the two
# phases are interpolated.
CPU_LOAD = 0.9
# Then once more near the top of the processor's range, at about this utilization (by the first phase's CPU time per
# request): the loop's steps kept getting cheaper there while the fixed work did not (docs/validation.md), and the
# levels from 0.8 up are interpolated to it rather than held at the first phase's cost.  The law holds its top
# point's cost beyond it, so this aims at about the 0.95 level's own utilization (0.945 on one run); aimed at 0.97,
# the phase ran the processor saturated (99 %, docs/validation.md).
TOP_UTILIZATION = 0.95
IDLE_WATCH = 3.0  # seconds the fresh server is watched idle before calibration: its CPU use with no load
SPEED_PROBE = (5.0, 30.0)  # seconds the server's CPU is timed before calibration (a quarter of the phase, within these)


class NoMetrics(RunFailed):
    """The target publishes no station metrics, so its service demands cannot be measured."""


@dataclass(frozen=True)
class Calibrated:
    """What :func:`calibrate` found: the calibration (also written to ``path``) and a printable table."""

    calibration: Calibration
    path: Path
    text: str


def calibrate(scenario: Scenario, run_dir: Path, duration: float, lab: Lab) -> Calibrated:
    """Measure service demands at low load, then the server's processor at a working load.

    The processor is measured apart because its time per request falls as it
    gets busier (warm caches, wake-ups shared by several requests): demands
    measured at low load would size the processor for a load it never sees, so
    its phase runs the scenario's own journey at :data:`CPU_LOAD` of the
    saturation rate, for half as long.  :class:`NoMetrics`: no station metrics.
    """
    from models.bottleneck import saturation
    from models.calibrate import (
        busy_between,
        calibration_overlay,
        cpu_estimates,
        cpu_law,
        disk_waits,
        fitted_overheads,
        held_services,
        overheads,
        service_estimates,
        steady_scenario,
        without_stalls,
    )
    from models.loader import parse_scenario

    quiet = lab.quiet
    raw = raw_scenario(scenario)
    source = scenario.path or scenario.name
    # every registrant walks the whole journey, so that rare request types (a batch join) are measured as often as
    # registration; the rate is set against this journey's own saturation, so every station stays lightly loaded
    whole = steady_scenario(raw, f"{scenario.name}-calibration", 1.0, duration, everyone=True)
    knee = saturation(parse_scenario(yaml.safe_dump(whole), source))
    flush_writes(quiet)
    modes = speed_modes(duration, quiet) if lab.host is None else None  # before the server starts: the CPU to itself
    knee_rate, knee_by = _low_load_knee(raw, scenario.name, knee.rate, knee.resource, run_dir / "pilot", lab)
    rate = CALIBRATION_LOAD * knee_rate
    low_file = level_file(raw, f"{scenario.name}-calibration", rate, duration, run_dir, everyone=True)
    say(
        "calibrate",
        f"{rate:.4g} arrivals/s, every registrant walking the whole journey ({CALIBRATION_LOAD:.0%} of that journey's saturation "
        f"rate {knee_rate:.4g}/s, set by {knee_by}) for {format_duration(duration)}",
        quiet,
    )
    low = lab.measure(low_file, run_dir, idle=IDLE_WATCH)
    before, after = low.before, low.after
    if before is None or after is None:
        raise NoMetrics(
            f"{lab.host}/metrics publishes no surgecap_station_* figures, so service demands cannot be measured; the model keeps "
            f"the scenario's configured service times"
        )
    # a second in which the disk stalled (one flush taking hundreds of milliseconds) would put its wait, and that of every
    # write queued behind it, into the db station's demand: those seconds are left out of the demands
    clean, stalls = without_stalls(before, after, low.scrapes)
    stalled = stalls_text(stalls, low.scrapes) if stalls else ""
    if stalled:
        say("calibrate", stalled, quiet)
    estimates = service_estimates(before, clean)
    disk = disk_waits(scenario, before, clean)
    background = before.idle_cpu or 0.0
    low_cpu = cpu_estimates(before, after, scenario.request_types, background)
    threads = {name for name, v in after.threaded.items() if v and name in scenario.system.stations}
    overhead = overheads(low.scenario, low.result, estimates)  # without a processor phase the model has none to add CPU time back
    overlay = calibration_overlay(scenario, estimates, overhead, disk=disk)
    cpu: dict[str, CpuEstimate] = {}
    cpu_rate = 0.0
    law: list[dict[str, float]] = []
    fitted = False
    # the processor's phase runs at a share of the saturation rate with the processor as measured at low load in it:
    # a server whose own CPU is the knee saturates well below its stations
    held_low = held_services(low.scenario, estimates, low_cpu, threads)
    with_cpu = calibration_overlay(scenario, held_low, overheads(low.scenario, low.result, held_low, low_cpu), low_cpu, threads, disk)
    phase = _processor_phase(scenario, raw, Calibration(with_cpu), duration, run_dir / "cpu", lab, background) if low_cpu else None
    if phase is not None and phase.cpu:
        cpu, cpu_rate = phase.cpu, phase.rate
        # the model now holds each station through its own resumption (and thread) steps: take them out of the demands
        held = held_services(low.scenario, estimates, low_cpu, threads)
        overhead = overheads(low.scenario, low.result, held, low_cpu)
        overlay = calibration_overlay(scenario, held, overhead, cpu, threads, disk)
        u_low, u_work = busy_between(before, after), busy_between(phase.before, phase.after)
        top = _top_phase(scenario, raw, phase, u_work, duration, run_dir / "cpu-top", lab, background)
        law = cpu_law((cpu, u_work), [(low_cpu, u_low), *([(top.cpu, busy_between(top.before, top.after))] if top is not None else [])])
        overlay["system"]["cpu"].update(
            {
                "measured_at": round(u_work, 3),
                "background": round(background, 4),
                "reference": {"rate": round(phase.rate, 4), "duration": phase.duration, "compress": round(phase.compress, 4)},
            }
        )
        if len(law) >= 2:
            overlay["system"]["cpu"]["law"] = law
        # the model with its processor runs the low load itself: the overhead is what its median lacks there
        overhead = fitted_overheads(low_file, overlay, low.result)
        overlay["system"].pop("overhead", None)
        if overhead:
            overlay["system"]["overhead"] = calibration_overlay(scenario, {}, overhead)["system"]["overhead"]
        fitted = True
    path = run_dir / "calibration.yaml"
    header = calibration_header(
        source, path, f"{rate:.4g} arrivals/s for {format_duration(duration)}" + (f", the processor at {cpu_rate:.4g}/s" if cpu else "")
    )
    if stalled:
        header += f"# {stalled}\n"
    calibration = Calibration(overlay, str(path), header)
    calibration.write(path, header)
    text = _calibration_text(scenario, estimates, low_cpu, cpu, law, modes, overhead, fitted)
    if stalled:
        text += "\n\n" + stalled
    return Calibrated(calibration, path, text)


PILOT = 15.0  # seconds of the pilot that measures the processor's time per arrival before calibration
PILOT_LOAD = 0.05  # the pilot's rate: this share of the stations' saturation rate


def _low_load_knee(raw: dict[str, Any], name: str, stations_rate: float, stations_by: str, run_dir: Path, lab: Lab) -> tuple[float, str]:
    """The whole journey's saturation rate for choosing calibration's low load: the stations', or the processor's when lower.

    The scenario's stations say nothing about the server's own CPU, which can
    be its knee (a key stretch per registration).  A short pilot at
    :data:`PILOT_LOAD` of the stations' rate measures the server's CPU seconds
    per arrival; one core saturates at its inverse.
    """
    rate = PILOT_LOAD * stations_rate
    say("calibrate", f"pilot: {rate:.4g} arrivals/s for {format_duration(PILOT)}, measuring the server's CPU per arrival", lab.quiet)
    pilot = lab.measure(level_file(raw, f"{name}-calibration-pilot", rate, PILOT, run_dir, everyone=True), run_dir)
    busy = pilot.cpu_utilization
    if busy is None or busy <= 0:
        return stations_rate, stations_by
    cpu_rate = rate / busy
    return (cpu_rate, "the server's processor (pilot)") if cpu_rate < stations_rate else (stations_rate, stations_by)


def _calibration_text(
    scenario: Scenario,
    estimates: dict[tuple[str, str], ServiceEstimate],
    low_cpu: dict[str, CpuEstimate],
    cpu: dict[str, CpuEstimate],
    law: list[dict[str, float]],
    modes: SpeedModes | None,
    overhead: dict[str, float],
    fitted: bool = False,
) -> str:
    """What calibration found, printable: the demands, the processor (``law``: its ``system.cpu.law`` points), the overheads
    (``fitted``: matched to the low load's medians by the model itself, see :func:`models.calibrate.fitted_overheads`)."""
    text = _estimates_text(scenario, estimates)
    if cpu:
        text += "\n\n" + _processor_text(low_cpu, cpu, law)
        if modes is not None:
            text += "\n\n" + modes_text(modes)
    elif not low_cpu:
        text += "\n\nthe server publishes no CPU accounting (surgecap_cpu_*): the model keeps no processor station"
    if overhead:
        text += (
            "\n\noverhead outside the stations and the processor (the delay that brings the model's median latency at low load, its own "
            "queueing included, to the measured median):\n"
            if fitted
            else "\n\noverhead outside the stations and the processor (mean latency at low load minus the station demands and the CPU "
            "time):\n"
        )
        text += "\n".join(f"  {rt:14s} {v * 1000:.2f}ms" for rt, v in overhead.items())
    return text


def stalls_text(stalls: list[Stall], scrapes: list[Snapshot]) -> str:
    """One sentence on the disk stalls calibration's low load left out of the service demands."""
    worst = max(stalls, key=lambda s: s.flush)
    intervals = max(len(scrapes) - 1, 1)
    return (
        f"the disk stalled in {len(stalls)} of the low load's {intervals} scrape intervals (flushes of {worst.flush * 1000:.3g} ms "
        f"on average in the worst, {worst.flush / worst.typical:.0f}x the median interval's {worst.typical * 1000:.3g} ms): "
        f"what those intervals counted is left out of the service demands and the disk's time per visit"
    )


def calibration_header(scenario_file: str, path: Path, load: str) -> str:
    """The comment lines a calibration file begins with: when, at what load, on which machine, and the commands that load it."""
    machine = machine_description()
    return (
        f"# Calibrated on {datetime.now():%Y-%m-%d %H:%M} at {load}\n"
        f"# machine: {machine}\n"
        f"# (load with: capacity simulate {scenario_file} --calibration {path})\n"
        f"# (plan with: capacity plan {scenario_file} --calibration {path})\n"
    )


@dataclass(frozen=True)
class ProcessorPhase:
    """The processor measured at a working load: its load, length, think-time compression, scrapes and CPU estimates."""

    rate: float
    duration: float
    compress: float
    before: Snapshot
    after: Snapshot
    cpu: dict[str, CpuEstimate]


def _processor_phase(
    scenario: Scenario,
    raw: dict[str, Any],
    calibration: Calibration,
    duration: float,
    run_dir: Path,
    lab: Lab,
    background: float,
    rate: float | None = None,
    why: str = "",
) -> ProcessorPhase | None:
    """The scenario's own journey and mix at :data:`CPU_LOAD` of the calibrated stations' saturation (or at ``rate``,
    said with ``why``), for half as long.

    Its first quarter is left out (:func:`workflows.measure.warm`); None when it measured no CPU accounting.
    """
    from models.bottleneck import saturation
    from models.calibrate import cpu_estimates

    if rate is None:
        rate, why = CPU_LOAD * saturation(calibration.on(scenario)).rate, f"{CPU_LOAD:.0%} of the saturation rate"
    length = max(10.0, duration / 2)
    path = level_file(raw, f"{scenario.name}-calibration-cpu", rate, length, run_dir)
    say("calibrate", f"the server's processor at {rate:.4g} arrivals/s ({why}) for {format_duration(length)}", lab.quiet)
    work = lab.measure(path, run_dir)
    before, after = warm(run_dir / SCRAPES, length, work.before, work.after)
    if before is None or after is None:
        return None
    return ProcessorPhase(
        rate, length, work.scenario.run.compress, before, after, cpu_estimates(before, after, scenario.request_types, background)
    )


def _top_phase(
    scenario: Scenario,
    raw: dict[str, Any],
    phase: ProcessorPhase,
    busy: float,
    duration: float,
    run_dir: Path,
    lab: Lab,
    background: float,
) -> ProcessorPhase | None:
    """The processor phase again at about :data:`TOP_UTILIZATION` (by the first one's CPU time per arrival; cheaper
    steps at the higher load leave it somewhat lower); None when the first was already that busy or measured nothing."""
    from models.calibrate import LAW_APART

    if busy <= 0 or busy >= TOP_UTILIZATION - LAW_APART:
        return None
    rate = phase.rate * TOP_UTILIZATION / busy
    why = f"the top of the processor's range: about {TOP_UTILIZATION:.0%} busy at the first phase's CPU time per arrival"
    top = _processor_phase(scenario, raw, Calibration(), duration, run_dir, lab, background, rate, why)
    return top if top is not None and top.cpu else None


def _estimates_text(scenario: Scenario, estimates: dict[tuple[str, str], ServiceEstimate]) -> str:
    from models.distributions import Distribution
    from reports.summary import table

    rows = []
    for (station, rt), est in sorted(estimates.items()):
        configured: Distribution | None
        if station == "registry" and scenario.system.registry is not None:
            configured = scenario.system.registry.latency
        else:
            st = scenario.system.stations.get(station)
            configured = st.service_for(rt) if st is not None else None
        rows.append(
            [
                station,
                rt,
                f"{est.n}",
                f"{est.mean * 1000:.2f}ms",
                f"{est.cv:.2f}",
                f"{configured.mean * 1000:.2f}ms" if configured else "-",
                f"{configured.cv:.2f}" if configured else "-",
                f"{(est.mean / configured.mean - 1):+.1%}" if configured and configured.mean > 0 else "-",
                f"{est.utilization:.1%}",
            ]
        )
    return table(["station", "request", "served", "D measured", "cv", "D configured", "cv", "diff", "U"], rows)


def _processor_text(low_cpu: dict[str, CpuEstimate], cpu: dict[str, CpuEstimate], law: list[dict[str, float]]) -> str:
    from reports.summary import table

    text = (
        "server processor, CPU per request (own work, and with its share of the work no request owns), at low load and at the "
        "working load; the model uses the working load's:\n"
    )
    text += table(
        ["request", "own low", "with share low", "requests", "own", "with share", "steps", "step cv"],
        [
            [
                rt,
                f"{low_cpu[rt].own * 1000:.3f}ms" if rt in low_cpu else "-",
                f"{low_cpu[rt].demand * 1000:.3f}ms" if rt in low_cpu else "-",
                f"{e.n}",
                f"{e.own * 1000:.3f}ms",
                f"{e.demand * 1000:.3f}ms",
                f"{e.steps}",
                f"{e.cv:.2f}",
            ]
            for rt, e in sorted(cpu.items())
        ],
    )
    if len(law) >= 2:
        text += (
            "\n\nand scales them with the processor's utilization U (system.cpu.law: CPU time over the working load's, "
            "interpolated between the points measured, the nearest held outside):\n"
        )
        text += table(
            ["U", "loop steps", "own computation"],
            [[f"{p['at']:.1%}", f"{p['steps']:.3f}", f"{p['work']:.3f}" if "work" in p else "-"] for p in law],
        )
    return text


def speed_modes(duration: float, quiet: bool) -> SpeedModes | None:
    """Time a fixed piece of work on the server's CPU before the server starts (see :mod:`models.speed`)."""
    server_cpu, _ = cpus()
    seconds = min(max(duration / 4, SPEED_PROBE[0]), SPEED_PROBE[1])
    say("calibrate", f"timing the server's CPU for {format_duration(seconds)} (does its speed change?)", quiet)
    cmd = [sys.executable, "-m", "models.speed", "--seconds", f"{seconds:g}"] + (
        ["--cpu", str(server_cpu)] if server_cpu is not None else []
    )
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        print(f"capacity calibrate: the CPU speed probe failed, the model keeps a steady processor: {done.stderr.strip()}", file=sys.stderr)
        return None
    return SpeedModes(**json.loads(done.stdout))


def modes_text(modes: SpeedModes) -> str:
    """What the speed probe found, in a sentence."""
    if modes.steady:
        return f"the server's CPU ran at a steady speed while timed ({modes.samples} pieces of work)"
    return (
        f"the server's CPU changes speed: timed pieces of work took {modes.slow:.2f} x as long {modes.share:.0%} of the time, "
        f"in spells of {modes.slow_for * 1000:.0f} ms on average (fast ones {modes.fast_for * 1000:.0f} ms).  The CPU time per request "
        f"measured here holds only while the machine keeps this pace: if validation at high load misses on the processor, "
        f"compare with --processor level.  To plan for such a CPU, add system.cpu.modes: {modes.to_overlay()}"
    )

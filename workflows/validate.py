"""``capacity validate``: the calibrated model against load tests at several load levels.

For each level (a fraction of the model's saturation rate) a fresh reference
server is measured, the model runs the same level, and :func:`models.compare.compare`
judges them; the report goes to ``validation.html`` and ``validation.json``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from models.bottleneck import Limit
from models.overlay import Calibration
from models.results import RunResult
from models.scenario import CPU, CpuReference, NonNegativeDuration, Scenario
from models.units import format_duration
from reports.validation import Disk, Knee, Level, Placement, Speed, verdict_table
from workflows import BadInput
from workflows.calibrate import NoMetrics, calibrate
from workflows.measure import SCRAPES, Lab, Measurement, level_file, raw_scenario, recorded, warm
from workflows.output import say

__all__ = [
    "ValidateOptions",
    "LevelRun",
    "validate",
    "judge_level",
    "level_processor",
    "level_disk",
    "level_trace",
    "traced",
    "reference_speed",
    "placement",
]


@dataclass(frozen=True)
class ValidateOptions:
    """How ``capacity validate`` runs (its command-line options, checked)."""

    levels: list[float]
    duration: float
    calibration: Calibration | None  # None: calibrate first
    processor: str = "calibrated"  # or "level": each level's own CPU time per request (operational validation)
    speed_reference: str = "auto"  # "work", "bracket" or "none"; auto: work where the calibration has fixed work, else bracket
    replications: int = 10
    diagnose: bool = True
    host: str | None = None
    quiet: bool = False
    measured: Path | None = None  # judge the levels recorded in this validate run's directory again, without load


@dataclass(frozen=True)
class LevelRun:
    """One measured level: its fraction of the saturation rate, rate, scenario file, directory and measurement."""

    fraction: float
    rate: float
    file: Path
    dir: Path
    measurement: Measurement


def level_processor(calibration: Calibration, measurement: Measurement) -> Calibration:
    """The calibration with the processor's CPU time per request as measured over this level (``--processor level``).

    Everything else stays calibrated.  The work is measured at this level's own
    load, so the speedup law has nothing left to do.  The calibration comes back
    unchanged (the same object) when the level has no CPU accounting or the
    calibration no processor.
    """
    from models.calibrate import cpu_estimates

    cpu, before, after = calibration.cpu, measurement.before, measurement.after
    busy = measurement.cpu_utilization
    if cpu is None or before is None or after is None or busy is None:
        return calibration
    measured = cpu_estimates(before, after, measurement.scenario.request_types, float(cpu.get("background", 0.0)))
    if not measured:
        return calibration
    at = round(min(max(busy, 0.0), 1.0), 3)
    work = {**cpu.get("work", {}), **{rt: est.as_work() for rt, est in measured.items()}}
    kept = {k: v for k, v in cpu.items() if k != "law"}
    return calibration.with_cpu({**kept, "work": work, "measured_at": at, "low_at": at, "speedup": 0.0})


DISK_BUSY = 0.5  # the level's processor utilization above which its flush times are shown, not taken (see level_disk)


def level_disk(calibration: Calibration, measurement: Measurement) -> tuple[Calibration, Disk | None]:
    """The calibration with the db station's service times moved by the level's own flush times.

    Calibration records, per request type, the part of a db visit spent on
    the disk's flush of its write (``system.stations.db.disk``, see
    :func:`models.calibrate.disk_waits`); a disk whose flushes slowed or sped
    up since calibration moves it.  Each service time keeps its shape and
    moves by the level's change in that part (never below a tenth of itself).
    The writer times a flush until its thread has the interpreter lock back,
    so on a busy processor the flush time grows with the load
    (docs/calibration.md), a wait the model has of its own (its lock
    takes): above :data:`DISK_BUSY` the flush
    times are shown and the calibration is left as it is.  Comes back
    unchanged, with None, when the calibration recorded no flush times or
    the level has no scrapes.  The stalls among the level's own scrapes
    (:func:`models.calibrate.disk_stalls`) are counted and shown, never
    taken out: the level is judged as measured.
    """
    from pydantic import TypeAdapter

    from models.calibrate import DATABASE, disk_stalls, disk_waits
    from models.distributions import Distribution

    station = (calibration.overlay.get("system") or {}).get("stations", {}).get(DATABASE) or {}
    recorded = TypeAdapter(dict[str, NonNegativeDuration]).validate_python(station.get("disk") or {})
    if not recorded or measurement.before is None or measurement.after is None:
        return calibration, None
    now = {rt: w for rt, w in disk_waits(measurement.scenario, measurement.before, measurement.after).items() if rt in recorded}
    if not now:
        return calibration, None
    before, after = measurement.before.typed, measurement.after.typed
    visits = {rt: after.get((DATABASE, rt), [0.0])[0] - before.get((DATABASE, rt), [0.0])[0] for rt in now}
    total = sum(visits.values()) or 1.0
    busy = measurement.cpu_utilization
    taken = busy is None or busy <= DISK_BUSY
    disk = Disk(
        calibrated=sum(recorded[rt] * n for rt, n in visits.items()) / total,
        level=sum(now[rt] * n for rt, n in visits.items()) / total,
        taken=taken,
        stalls=len(disk_stalls(measurement.scrapes)),
        intervals=max(len(measurement.scrapes) - 1, 0),
    )
    if not taken:
        return calibration, disk
    overlay = copy.deepcopy(calibration.overlay)
    moved = overlay["system"]["stations"][DATABASE]
    dist = TypeAdapter(Distribution)
    for rt, w in now.items():
        if rt not in moved.get("service", {}):
            continue
        service = dist.validate_python(moved["service"][rt])
        if service.mean <= 0:
            continue
        mean = max(service.mean + w - recorded[rt], service.mean / 10)
        moved["service"][rt] = service.scaled(mean / service.mean).model_dump(by_alias=True, exclude_defaults=False)
        moved["disk"][rt] = f"{w * 1000:.4g}ms"
    return Calibration(overlay, calibration.source, calibration.header), disk


TRACE_EVERY = 1.0  # seconds: the intervals of a level's speed trace (the load scrapes the server about every second)
TRACE_MIN = 30.0  # seconds: a shorter level keeps its average speed (its few intervals would each weigh too much)
TRACE_FINE = 0.5  # seconds: with the server's speed log, each interval is cut into parts this long


def level_trace(calibration: Calibration, measurement: Measurement) -> dict[str, Any] | None:
    """The machine's speed through a level, interval by interval (:func:`models.calibrate.speed_trace`, in
    :data:`TRACE_EVERY` intervals), as a ``system.cpu.trace``; None when the server did no fixed work or the load
    kept no scrapes, and for a level shorter than :data:`TRACE_MIN` seconds.  The calibration's speedup law
    is divided out of each interval, as the model applies it
    itself; a calibration without one (:func:`level_processor`'s) leaves the intervals as measured.

    A level's average speed hides its swings, and the queue in a slow
    interval is far longer than at the average.  On this toolkit's
    validation machine the fixed work's CPU time doubled for a few seconds
    at a time, which five-second intervals halve and one-second ones follow
    (docs/validation.md, "The speed trace in one-second intervals").  It moves
    within the second too: where the server kept its speed log
    (``Measurement.speed``), each interval is cut into :data:`TRACE_FINE`
    parts that follow it (:func:`models.calibrate.finer_trace`; docs/validation.md,
    "The speed trace within the second").
    """
    from models.calibrate import finer_trace, speed_trace
    from models.scenario import Cpu

    if calibration.cpu is None or len(measurement.scrapes) < 3:
        return None
    cpu = Cpu.model_validate(calibration.cpu)
    work = calibration.cpu.get("work", {})
    trace = speed_trace(work, measurement.scrapes, cpu.work_factor, every=TRACE_EVERY)
    if trace is None or len(trace["factors"]) * trace["every"] < TRACE_MIN - 1e-9:
        return None
    if measurement.speed is not None:
        trace = finer_trace(trace, work, measurement.scrapes, measurement.speed, round(trace["every"] / TRACE_FINE))
    return trace


def traced(calibration: Calibration, trace: dict[str, Any] | None) -> Calibration:
    """The calibration with its processor following ``trace`` (unchanged without one or without a processor)."""
    if trace is None or calibration.cpu is None:
        return calibration
    return calibration.with_cpu({**calibration.cpu, "trace": trace})


def judge_level(
    run: LevelRun,
    calibration: Calibration,
    processor: str,
    replications: int,
    diagnose: bool = True,
    quiet: bool = True,
    speed: Speed | None = None,
    placed: Placement | None = None,
) -> Level:
    """Run the model on one measured level and compare; the model's runs are saved under ``run.dir / "model"``.

    ``processor`` "calibrated" takes the server's CPU time per request from the
    calibration and, with ``diagnose``, runs the model once more given the
    level's own (``Level.given_cpu``); "level" takes the level's own outright,
    and the cpu station's utilization is then an input.  Either way the level's
    own CPU time comes with the level's own flush times of the database
    writes in the db station (:func:`level_disk`), the disk's share of the machine.  With ``speed`` (the
    machine's speed around the level, from the reference runs), the calibrated
    processor's CPU times are scaled by its factor first.  ``placed``: the machine's speed the level's rate was
    placed by, for the report.
    """
    from models.calibrate import scaled_processor
    from models.compare import CPU_SUBJECT, chance, compare
    from models.results import save
    from models.simulate import simulate

    tol = run.measurement.scenario.validation.tolerances.at(run.fraction)
    measured = run.measurement.result
    if (lag := run.measurement.loop_lag) is not None:
        measured.meta["loop_lag"] = lag
    if (accounts := run.measurement.cpu_typed) is not None:
        measured.meta["cpu_typed"] = accounts
    overload = run.fraction > 1.0
    run.dir.mkdir(parents=True, exist_ok=True)
    used, inputs = calibration, frozenset[str]()
    given_cpu = level_processor(calibration, run.measurement)  # the level's own CPU time, no speedup law
    given, disk = level_disk(given_cpu, run.measurement)  # and the disk's flushes as they took in the level
    given_trace = level_trace(given, run.measurement) if given_cpu is not calibration else None
    if processor == "calibrated" and speed is not None and calibration.cpu is not None:
        # with the speed read during the level (not bracketed), the processor follows it through the level too
        trace = level_trace(calibration, run.measurement) if speed.during is not None else None
        used = traced(calibration.with_cpu(scaled_processor(calibration.cpu, speed.factor)), trace)
        if trace is not None:
            speed = dataclasses.replace(speed, trace=trace["factors"])
    if processor == "level":
        if given_cpu is calibration:
            say("validate", f"level {run.fraction:g}: no CPU accounting in this level, so the calibrated processor stays", quiet)
        else:
            inputs = frozenset({CPU_SUBJECT})
        used = traced(given, given_trace)
    if used is not calibration and used.cpu is not None:
        (run.dir / "processor.yaml").write_text(yaml.safe_dump(used.cpu, sort_keys=False))
    models = simulate(used.apply(run.file), replications=replications, replay=True)
    for r, m in enumerate(models):
        save(m, run.dir / "model" / f"rep-{r:03d}")
    lv = Level(
        run.fraction,
        run.rate,
        models,
        measured,
        compare(models, measured, tol, overload=overload, inputs=inputs),
        speed=speed,
        disk=disk,
        placed=placed,
    )
    lv.chance = chance(models, tol, overload=overload, inputs=inputs)
    if processor == "calibrated" and diagnose:
        # the same level once more with the model given the CPU time per request measured in it: whether a
        # miss is the processor's speed having moved since calibration or the model's structure
        if given_cpu is not calibration:
            again = simulate(traced(given, given_trace).apply(run.file), replications=replications, replay=True)
            lv.given_cpu = compare(again, measured, tol, overload=overload, inputs=frozenset({CPU_SUBJECT}))
    return lv


PLACE_BUSY = 0.5  # a level's speed places the next level only when its processor was at least this busy
# with --processor level, the level's CPU time per request places it from this busy: without the law, a lighter level
# reads the machine somewhat slower than it is, so the next level lands lower, never past the knee (docs/validation.md)
PLACE_BUSY_CPU = 0.4


def placement(
    knee: Limit,
    fraction: float,
    read: Speed | None,
    busy: float | None,
    reference_after: float | None = None,
    least: float = PLACE_BUSY,
) -> Placement | None:
    """The machine's speed the level after the one at ``fraction`` is placed by, ``read`` in it (the fixed work's speed
    during the level, or with ``--processor level`` its CPU time's, :func:`_cpu_read`); None when the knee is not the
    processor or the level says nothing reliable about it.

    With a speed reference run after the level (``reference_after``, bracketing), that run is the machine just
    before the next level.  Otherwise the speed during the level counts when its processor was at least ``least``
    busy (:data:`PLACE_BUSY`: a lightly loaded level's reading rests mostly on the utilization law's low end;
    :data:`PLACE_BUSY_CPU` for the CPU time's reading) and the level was below saturation.
    """
    if knee.resource != CPU:
        return None
    if reference_after is not None:
        return Placement(reference_after, fraction)
    if read is None or read.during is None or busy is None or busy < least or fraction >= 1.0:
        return None
    return Placement(read.factor, fraction)


def reference_speed(
    raw: dict[str, Any], scenario: Scenario, calibration: Calibration, reference: CpuReference, run_dir: Path, lab: Lab
) -> float | None:
    """Run the calibration's processor phase again on a fresh server; the machine's speed now against calibration.

    ``reference`` is that phase (its load, length and think times, from the
    calibration's ``system.cpu.reference``); its first quarter is left out, as
    calibration left it out.  The answer is :func:`models.calibrate.speed_index`
    of what it measured against the calibrated CPU work (1.1: the same requests
    cost 10 % more CPU time than when calibrated); None when the run measured no
    CPU accounting.
    """
    from models.calibrate import cpu_estimates, speed_index

    cpu = calibration.cpu or {}
    path = level_file(raw, f"{scenario.name}-speed-reference", reference.rate, reference.duration, run_dir, compress=reference.compress)
    done = lab.measure(path, run_dir)
    before, after = warm(run_dir / SCRAPES, reference.duration, done.before, done.after)
    if before is None or after is None:
        return None
    return speed_index(cpu.get("work", {}), cpu_estimates(before, after, scenario.request_types, float(cpu.get("background", 0.0))))


def _speed_run(
    raw: dict[str, Any], scenario: Scenario, calibration: Calibration, reference: CpuReference, run_dir: Path, when: str, lab: Lab
) -> float | None:
    """:func:`reference_speed` with its progress line and its result printed."""
    say(
        "validate",
        f"speed reference {when}: the calibration's processor phase again ({reference.rate:.4g} arrivals/s for "
        f"{format_duration(reference.duration)})",
        lab.quiet,
    )
    found = reference_speed(raw, scenario, calibration, reference, run_dir, lab)
    say(
        "validate",
        f"speed reference {when}: "
        + (
            f"the same requests took {found:.3f} x calibration's CPU time"
            if found is not None
            else "no CPU accounting measured; the level around it keeps the other reference"
        ),
        lab.quiet,
    )
    return found


def _calibration(scenario: Scenario, opts: ValidateOptions, run_dir: Path, lab: Lab) -> tuple[Calibration, bool]:
    """The calibration the levels use, and whether it was measured just now."""
    if opts.calibration is not None:
        return opts.calibration, False
    try:
        # twice a level's length: every level's model rests on these estimates, and their noise is the model's
        found = calibrate(scenario, run_dir / "calibration", min(2 * opts.duration, 300.0), lab)
    except NoMetrics as exc:
        say("validate", f"calibration skipped: {exc}")
        return Calibration(), False
    if not opts.quiet:
        print(found.text, file=sys.stderr)
    return found.calibration, True


def speed_mode(opts: ValidateOptions, calibration: Calibration) -> str:
    """How each level's machine speed is found: "work" (the server's fixed computation during the level), "bracket"
    (reference runs around it) or "none"; "auto" is work where the calibration has such a computation, else bracket."""
    if opts.processor != "calibrated" or calibration.cpu is None or opts.speed_reference == "none":
        return "none"
    if opts.speed_reference != "auto":
        return opts.speed_reference
    return "work" if _fixed_work(calibration) else "bracket"


def _fixed_work(calibration: Calibration) -> bool:
    """Whether the calibration has the server's fixed computation (``work`` in a request type's processor work)."""
    work = (calibration.cpu or {}).get("work", {})
    return any(isinstance(w, dict) and isinstance(w.get("work"), dict) for w in work.values())


def _cpu_read(calibration: Calibration, knee: Limit, scenario: Scenario, measurement: Measurement) -> Speed | None:
    """With ``--processor level``: the machine's speed in a level as the calibrated saturation rate over the one the
    level's own CPU time per request gives (:func:`level_processor`; 1.1: the processor saturates 10 % sooner than
    calibrated); None when the knee is not the processor or the level has no CPU accounting.

    The model of the next level is given that level's own CPU time, so its rate is placed by the CPU time the
    machine took in the level before, whatever calibration's law and the fixed work's speed say: the loop's steps
    move apart from the fixed work, and near the knee a few percent of CPU time moves the processor's queue by a
    factor (docs/validation.md).
    """
    from models.bottleneck import saturation

    given = level_processor(calibration, measurement)
    if knee.resource != CPU or given is calibration:
        return None
    then = saturation(given.on(scenario))
    return Speed(None, None, during=knee.rate / then.rate) if then.resource == CPU and then.rate > 0 else None


def _during(calibration: Calibration, calibrated: Scenario, measurement: Measurement, fraction: float, quiet: bool) -> Speed | None:
    """The machine's speed during a level from the server's fixed computation (None, said, when it did none).

    The model already makes CPU work cheaper as the processor gets busier (the
    calibrated utilization law), so the fixed work's CPU time is compared with
    what the law gives the fixed work at the level's own utilization, not with
    its calibrated time at the calibration's load.
    """
    from models.calibrate import work_speed

    cpu = calibration.cpu or {}
    found = (
        work_speed(cpu.get("work", {}), measurement.before, measurement.after)
        if measurement.before is not None and measurement.after is not None
        else None
    )
    if found is None:
        say("validate", f"level {fraction:g}: the server reported no fixed work, so its processor stays as calibrated", quiet)
        return None
    busy, law = measurement.cpu_utilization, calibrated.system.cpu
    if busy is not None and law is not None:
        found /= law.work_factor(busy)
    return Speed(None, None, during=found)


def _bracket(opts: ValidateOptions, calibration: Calibration, reference: CpuReference | None) -> bool:
    """Whether each level is bracketed by speed-reference runs, saying why not when it was asked for and cannot be."""
    if speed_mode(opts, calibration) != "bracket":
        return False
    if reference is None:
        say(
            "validate",
            "the calibration overlay records no processor phase (system.cpu.reference), so there is no speed reference: "
            "the calibrated processor is used as it is",
            opts.quiet,
        )
        return False
    if opts.host is not None:
        say(
            "validate",
            "no speed reference with --host (it needs fresh reference servers): the calibrated processor is used as it is",
            opts.quiet,
        )
        return False
    return True


def _recorded_levels(measured: Path) -> list[dict[str, Any]]:
    """The levels a recorded validation reported (its validation.json); none when it has no readable report."""
    try:
        levels = json.loads((measured / "validation.json").read_text()).get("levels", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [lv for lv in levels if isinstance(lv, dict) and isinstance(lv.get("fraction"), int | float)] if isinstance(levels, list) else []


def _recorded_speeds(measured: Path) -> dict[float, Speed]:
    """The machine's speed around each level of a recorded validation, where it was measured."""
    out: dict[float, Speed] = {}
    for lv in _recorded_levels(measured):
        speed = lv.get("machine_speed")
        if isinstance(speed, dict):
            out[float(lv["fraction"])] = Speed(speed.get("before"), speed.get("after"))
    return out


def _recorded_placements(measured: Path) -> dict[float, Placement]:
    """The machine's speed each level of a recorded validation was placed by, where it was placed by one."""
    out: dict[float, Placement] = {}
    for lv in _recorded_levels(measured):
        placed = lv.get("placed")
        if isinstance(placed, dict) and isinstance(placed.get("speed"), int | float) and isinstance(placed.get("read_in"), int | float):
            out[float(lv["fraction"])] = Placement(float(placed["speed"]), float(placed["read_in"]))
    return out


def rejudge(scenario: Scenario, opts: ValidateOptions, run_dir: Path) -> bool:
    """Judge the levels a validate run recorded (``opts.measured``) again with the model as it is now; no load is sent.

    The calibration is the recorded run's own unless one is given; with the
    calibrated processor each level keeps the machine's speed measured around
    it then.  For working on the model: a change is checked against the same
    measurements, in seconds, before a new validation measures again.
    """
    from models.bottleneck import saturation

    measured = opts.measured
    assert measured is not None
    if not measured.is_dir():
        raise BadInput(f"--measured {measured}: no such directory (a capacity validate run's --out)")
    calibration = opts.calibration
    if calibration is None:
        from models.overlay import CalibrationError

        try:
            calibration = Calibration.read(measured / "calibration" / "calibration.yaml")
        except CalibrationError as exc:
            raise BadInput(f"--measured {measured}: {exc}; pass --calibration") from None
    found: dict[float, Path] = {}
    for d in measured.glob("level-*"):
        try:
            found[float(d.name.removeprefix("level-"))] = d
        except ValueError:
            continue  # not a level's directory
    missing = [f for f in opts.levels if f not in found]
    if missing or not found:
        raise BadInput(
            f"--measured {measured}: no recorded level {', '.join(f'{f:g}' for f in missing) or '(none at all)'}; it has "
            f"{', '.join(f'{f:g}' for f in sorted(found)) or 'none'} (pass --levels)"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    calibrated = calibration.on(scenario)
    knee = saturation(calibrated)
    mode = speed_mode(opts, calibration)
    speeds: dict[float, Speed | None] = {**_recorded_speeds(measured)} if mode == "bracket" else {}
    placements = _recorded_placements(measured)
    say("validate", f"judging the levels recorded in {measured}/ again (no load): {', '.join(f'{f:g}' for f in opts.levels)}", opts.quiet)
    done: list[Level] = []
    durations: list[float] = []
    for f in opts.levels:
        measurement = recorded(found[f])
        durations.append(measurement.scenario.horizon)
        if mode == "work":
            speeds[f] = _during(calibration, calibrated, measurement, f, opts.quiet)
        arrivals = measurement.scenario.arrivals
        rate = float(getattr(arrivals, "rate", None) or f * knee.rate)  # as placed when measured
        lv = judge_level(
            LevelRun(f, rate, found[f] / "scenario.yaml", run_dir / f"level-{f:g}", measurement),
            calibration,
            opts.processor,
            opts.replications,
            diagnose=opts.diagnose,
            quiet=opts.quiet,
            speed=speeds.get(f),
            placed=placements.get(f),
        )
        done.append(lv)
        _print_level(lv, measurement.cpu_utilization)
    reference = calibrated.system.cpu.reference if calibrated.system.cpu is not None and mode == "bracket" and speeds else None
    meta = {**_meta(scenario, opts, durations, calibration, reference, knee, mode), "measured": f"recorded in {measured}, judged again"}
    return _finish(run_dir, scenario, opts, calibration, calibrated, knee, done, durations, meta)


def validate(scenario: Scenario, opts: ValidateOptions, run_dir: Path) -> bool:
    """Calibrate (unless given a calibration), measure and judge every level, write the report; True when every check passed."""
    from models.bottleneck import level_duration, saturation

    if opts.measured is not None:
        return rejudge(scenario, opts, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    raw = raw_scenario(scenario)
    with Lab(opts.host, opts.quiet) as lab:
        calibration, calibrated_now = _calibration(scenario, opts, run_dir, lab)
        calibrated = calibration.on(scenario)
        knee = saturation(calibrated)
        reference = calibrated.system.cpu.reference if calibrated.system.cpu is not None else None
        bracket = _bracket(opts, calibration, reference)
        speed_before: float | None = None
        if bracket and reference is not None:
            # after a calibration just now, its processor phase (the reference load itself) ran just before the first level
            speed_before = (
                1.0
                if calibrated_now
                else _speed_run(raw, scenario, calibration, reference, run_dir / "speed-reference-0", "before the first level", lab)
            )
        done: list[Level] = []
        durations: list[float] = []
        placed: Placement | None = None  # the machine's speed the next level's rate is placed by
        for i, f in enumerate(opts.levels):
            rate = f * knee.rate / (placed.speed if placed is not None else 1.0)
            ldir = run_dir / f"level-{f:g}"
            lasts = level_duration(calibrated, rate, opts.duration, scenario.validation.samples, 4 * opts.duration)
            durations.append(lasts)
            longer = f" (so that every request type can reach {scenario.validation.samples} requests)" if lasts > opts.duration else ""
            at = f" ({placed.describe()})" if placed is not None else ""
            say("validate", f"level {f:g}: {rate:.4g} arrivals/s{at} for {format_duration(lasts)}{longer}", opts.quiet)
            path = level_file(raw, f"{scenario.name}-level-{f:g}", rate, lasts, ldir)
            measurement = lab.measure(path, ldir)
            if (cpu := measurement.cpu_utilization) is not None:
                measurement.result.meta["server_cpu_utilization"] = cpu
            # the machine's speed during the level, which places the next level's rate: the fixed work's, which the
            # calibrated model's processor follows too ("work"); given each level's own CPU time, the CPU time's
            read: Speed | None = None
            if speed_mode(opts, calibration) == "work":
                read = _during(calibration, calibrated, measurement, f, opts.quiet)
            elif opts.processor == "level":
                read = _cpu_read(calibration, knee, scenario, measurement)
            speed = read if speed_mode(opts, calibration) == "work" else None
            speed_after: float | None = None
            if bracket and reference is not None:
                speed_after = _speed_run(
                    raw, scenario, calibration, reference, run_dir / f"speed-reference-{i + 1}", f"after level {f:g}", lab
                )
                speed, speed_before = Speed(speed_before, speed_after), speed_after
            lv = judge_level(
                LevelRun(f, rate, path, ldir, measurement),
                calibration,
                opts.processor,
                opts.replications,
                diagnose=opts.diagnose,
                quiet=opts.quiet,
                speed=speed,
                placed=placed,
            )
            done.append(lv)
            _print_level(lv, cpu)
            placed = placement(knee, f, read, cpu, speed_after, PLACE_BUSY_CPU if opts.processor == "level" else PLACE_BUSY) or placed
    meta = _meta(scenario, opts, durations, calibration, reference if bracket else None, knee, speed_mode(opts, calibration))
    return _finish(run_dir, scenario, opts, calibration, calibrated, knee, done, durations, meta)


def _finish(
    run_dir: Path,
    scenario: Scenario,
    opts: ValidateOptions,
    calibration: Calibration,
    calibrated: Scenario,
    knee: Limit,
    done: list[Level],
    durations: list[float],
    meta: dict[str, Any],
) -> bool:
    """The knee check, the model's curve and the report; True when every check passed."""
    from reports.validation import write_report

    raw = raw_scenario(scenario)
    knee_check = _knee(calibrated, knee, done, durations, opts.levels)
    curve = model_curve(raw, scenario.name, calibration, knee.rate, opts.duration, run_dir / "curve", opts.quiet)
    html_path, json_path = write_report(run_dir, scenario.name, done, knee_check, meta, curve)
    print(
        f"\nknee: {knee_check.resource} saturates at {knee_check.arrival_rate:.4g} arrivals/s = "
        f"{knee_check.law if knee_check.law is not None else knee_check.predicted:.4g} {knee_check.request}/s by the utilization law"
        + (f" (at the machine's speed then, {knee_check.speed:.3f} x calibration's CPU time)" if knee_check.speed is not None else "")
        + (
            f"; the model carries {knee_check.predicted:.4g}/s at level {knee_check.model_level:g}"
            if knee_check.model_level is not None
            else ""
        )
        + f"; highest measured {knee_check.measured:.4g}/s: {knee_check.verdict}"
    )
    print(f"validation report: {html_path} and {json_path}")
    failed = [lv.fraction for lv in done if not lv.passed]
    if failed or knee_check.verdict == "fail":
        say(
            "validate",
            f"FAILED at level(s) {', '.join(f'{x:g}' for x in failed) or '-'}"
            + ("; knee check failed" if knee_check.verdict == "fail" else ""),
        )
        return False
    print("capacity validate: every check passed")
    return True


CURVE_POINTS = tuple(round(0.1 + 0.05 * k, 2) for k in range(25))  # 0.10, 0.15, ... 1.30 of the saturation rate


def model_curve(
    raw: dict[str, Any], name: str, calibration: Calibration, knee_rate: float, duration: float, run_dir: Path, quiet: bool
) -> dict[str, Any]:
    """The calibrated model's latency against load, drawn continuously: one model run per point of :data:`CURVE_POINTS`.

    Each point is a steady level like the measured ones (same length and
    think-time compression); returns ``{"fractions": [...], "requests": {rt: {"p50": [...], "p95": [...]}}}``.
    """
    from models.simulate import simulate

    curve: dict[str, Any] = {"fractions": list(CURVE_POINTS), "requests": {}}
    say("validate", f"the model's curve: {len(CURVE_POINTS)} load points, {CURVE_POINTS[0]:g} to {CURVE_POINTS[-1]:g}", quiet)
    for k, f in enumerate(CURVE_POINTS):
        path = level_file(raw, f"{name}-curve-{f:g}", f * knee_rate, duration, run_dir / f"point-{f:g}")
        (result,) = simulate(calibration.apply(path), replications=1)
        for rt, series in result.requests.items():
            row = curve["requests"].setdefault(rt, {"p50": [math.nan] * len(CURVE_POINTS), "p95": [math.nan] * len(CURVE_POINTS)})
            h = series.total_latency
            if h.count:
                row["p50"][k], row["p95"][k] = h.percentile(50), h.percentile(95)
        if (k + 1) % 5 == 0:
            say("validate", f"the model's curve: {k + 1} of {len(CURVE_POINTS)} points", quiet)
    return curve


def _print_level(lv: Level, cpu: float | None) -> None:
    """A level's verdict, its judged checks and the processor's line, on stdout."""
    print(
        f"\nlevel {lv.fraction:g} ({lv.rate:.4g} arrivals/s): {'pass' if lv.passed else 'FAIL'}"
        + (f"; server process CPU {cpu:.0%} of one core" if cpu is not None else "")
    )
    print(verdict_table(lv.checks, judged_only=True))
    if (why := lv.diagnosis()) is not None:
        print(f"machine: {why}")
    if (noisy := lv.within_noise()) is not None:
        print(f"within noise: {noisy}")
    if (noise := lv.by_chance()) is not None:
        print(f"by chance: {noise}")


def _meta(
    scenario: Scenario,
    opts: ValidateOptions,
    durations: list[float],
    calibration: Calibration,
    reference: CpuReference | None,
    knee: Limit,
    mode: str = "none",
) -> dict[str, Any]:
    """What the report says about how the validation ran (``reference``: the speed reference's phase, when bracketing)."""
    return {
        "scenario_file": scenario.path,
        "levels": opts.levels,
        "duration_per_level": durations,
        "samples": scenario.validation.samples,
        "replications": opts.replications,
        "calibration": calibration.source,
        "processor": "the CPU time per request measured in each level (operational validation)"
        if opts.processor == "level"
        else "calibrated",
        "speed_reference": (
            f"bracket: the calibration's processor phase ({reference.rate:.4g} arrivals/s for {reference.duration:g}s) run again on "
            "a fresh server after every level (and before the first, unless calibrated just before); each level's calibrated CPU "
            "times scaled by the mean of the two around it"
            if reference is not None
            else "work: each level's calibrated CPU times scaled by the machine's speed during it, the CPU time of the server's "
            "fixed computation (reference_server.work) over calibration's"
            if mode == "work"
            else "none in the model, which is given each level's own CPU time; with the processor as the knee, the next "
            "level's rate is placed at the saturation rate that CPU time per request gives"
            if opts.processor == "level"
            else "none"
        ),
        "saturation": {"resource": knee.resource, "arrival_rate": knee.rate, "kind": knee.kind},
        "tolerances": scenario.validation.tolerances.model_dump(),
        "host": opts.host or "a fresh reference server per level",
    }


def _knee(calibrated: Scenario, knee: Limit, done: list[Level], durations: list[float], levels: list[float]) -> Knee:
    """The bottleneck's request type at saturation against the highest measured throughput.

    When the processor is the bottleneck and the levels were scaled by the
    machine's speed, the saturation rate is the calibrated one over the speed
    at the level that carried the most (a processor 20 % faster then carries
    20 % more), and saturation counts as reached when that level's rate is at
    or past it.  A level whose model was not scaled (``--processor level``) but
    whose rate was placed by the speed read in the level before takes that speed.
    Once saturation was reached, the prediction judged is the model's own
    throughput at that level (the mean of its replications, counted as the
    load counts), the law's rate kept beside it: the law has every arrival
    bring its whole funnel, and past the knee the door turns part of it away.
    """
    from models.bottleneck import busiest_step

    i_top, visits_top = busiest_step(calibrated, knee)
    rt = calibrated.journey[i_top].request_type

    def served(result: RunResult, lasts: float) -> float:
        series = result.requests.get(rt)
        return (sum(series.ok) + sum(series.failed.get("mismatch", []))) / lasts if series is not None else 0.0

    measured = [served(lv.measured, lasts) for lv, lasts in zip(done, durations, strict=True)]
    top = max(range(len(measured)), key=measured.__getitem__)
    at_top, placed = done[top].speed, done[top].placed
    factor = at_top.factor if at_top is not None else placed.speed if placed is not None else None
    speed = factor if knee.resource == CPU else None
    rate = knee.rate / speed if speed else knee.rate
    reached = done[top].rate >= rate * (1 - 1e-9) if speed else max(levels) >= 1.0
    law = rate * visits_top
    models = done[top].models
    if not reached or not models:
        return Knee(knee.resource, rt, rate, law, measured[top], reached, calibrated.validation.tolerances.throughput, speed)
    own = sum(served(m, durations[top]) for m in models) / len(models)
    return Knee(
        knee.resource, rt, rate, own, measured[top], reached, calibrated.validation.tolerances.throughput, speed, law, done[top].fraction
    )

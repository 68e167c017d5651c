"""Measured load levels: one steady level against a target (a fresh, pinned reference server by default).

:class:`Lab` runs the levels of one command (calibrate, validate) and cleans up
after them; :func:`level_file` writes a level's scenario; :func:`flush_writes`
lands the machine's pending writes before a measurement.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from models.calibrate import Snapshot
from models.results import RunResult
from models.scenario import Scenario
from workflows import BadInput, RunFailed
from workflows.output import say
from workflows.target import cpus, pool_size, server_config

__all__ = [
    "Lab",
    "Measurement",
    "level_file",
    "raw_scenario",
    "recorded",
    "flush_writes",
    "pending_writes",
    "warm",
    "CPU_WARMUP",
    "SNAPSHOTS",
    "SCRAPES",
    "SPEED",
]

CPU_WARMUP = 0.25  # share of a processor phase left out: a fresh server's first requests cost more (imports, caches, connections)


@dataclass
class Measurement:
    """One measured level: its scenario, what Locust recorded, and the station metrics scraped around it (None: none published).

    ``scrapes``: the metrics the load scraped during the level, about every second (``at`` from its start).
    ``speed``: the server's speed log read after the level (``/metrics/speed``: its own computation in short buckets
    of the server's clock), None when it keeps none.
    """

    scenario: Scenario
    result: RunResult
    before: Snapshot | None
    after: Snapshot | None
    scrapes: list[Snapshot] = field(default_factory=list)
    speed: dict[str, Any] | None = None

    def keep(self, level_dir: Path) -> None:
        """Write the metrics scraped around the level to ``level_dir``/:data:`SNAPSHOTS`, and the speed log to
        :data:`SPEED` (:func:`recorded` reads them)."""
        snaps = {"before": self.before.to_dict() if self.before else None, "after": self.after.to_dict() if self.after else None}
        (level_dir / SNAPSHOTS).write_text(json.dumps(snaps))
        if self.speed is not None:
            (level_dir / SPEED).write_text(json.dumps(self.speed))

    @property
    def cpu_utilization(self) -> float | None:
        """The server process's CPU use over the level, as a share of one core (None without CPU accounting)."""
        b, a = self.before, self.after
        if b is None or a is None or b.cpu_seconds is None or a.cpu_seconds is None or a.at <= b.at:
            return None
        return (a.cpu_seconds - b.cpu_seconds) / (a.at - b.at)

    @property
    def loop_lag(self) -> dict[str, float] | None:
        """The server's loop-lag probe over the level (``seconds`` summed, ``samples``), as the model reports its own
        in ``meta["loop_lag"]``; None when the server published none."""
        b, a = self.before, self.after
        if b is None or a is None or "lag_samples" not in a.loop:
            return None
        n = a.loop["lag_samples"] - b.loop.get("lag_samples", 0.0)
        return {"seconds": a.loop.get("lag_seconds", 0.0) - b.loop.get("lag_seconds", 0.0), "samples": n} if n > 0 else None

    @property
    def cpu_typed(self) -> dict[str, dict[str, float]] | None:
        """The server's processor accounting per request type over the level, in the model's terms
        (``models.routes.ACCOUNT``, its ``meta["cpu_typed"]``), and ``shared_seconds``: the request type's share of
        the process's CPU time that no request owns, one equal share a request, as calibration puts it into the
        model's steps (the idle server's own use, a fraction of a percent, is left in it); None when the server
        published none."""
        from models.calibrate import cpu_fields
        from models.routes import ACCOUNT

        b, a = self.before, self.after
        if b is None or a is None or not a.cpu_typed:
            return None
        # the server's fields (refserver.cpu) for requests, steps, loop seconds, resumes, thread seconds, own work, shed
        where = (0, 1, 2, 8, 4, 6, 9)
        out: dict[str, dict[str, float]] = {}
        for rt, counts in a.cpu_typed.items():
            now, then = cpu_fields(counts), cpu_fields(b.cpu_typed.get(rt, []))
            if now[0] - then[0] > 0:
                out[rt] = {k: now[j] - then[j] for k, j in zip(ACCOUNT, where, strict=True)}
        if not out:
            return None
        owned = sum(mine["seconds"] + mine["thread_seconds"] for mine in out.values())
        unowned = max((a.cpu_seconds or 0.0) - (b.cpu_seconds or 0.0) - owned, 0.0) if a.cpu_seconds is not None else 0.0
        requests = sum(mine["requests"] for mine in out.values())
        for mine in out.values():
            mine["shared_seconds"] = unowned * mine["requests"] / requests
        return out


SNAPSHOTS = "snapshots.json"  # a measured level's server metrics just before and just after its load
SCRAPES = "scrapes.json"  # the metrics the load itself scraped during the level, about every second
SPEED = "speed.json"  # the server's speed log, read after the level (refserver.cpu.CpuClock.speed_log)


def _scrapes(path: Path) -> list[Snapshot]:
    """The metrics a load scraped (its ``scrapes.json``; none when it kept none)."""
    return [Snapshot.from_dict(d) for d in json.loads(path.read_text())] if path.exists() else []


def recorded(level_dir: Path) -> Measurement:
    """A level measured earlier, read back from its directory: its scenario, result and the metrics around it.

    The metrics are those :meth:`Measurement.keep` wrote; a level recorded
    before they were kept falls back on the first and last of the load's own
    scrapes (``scrapes.json``, seconds inside the load rather than just around
    it).  :class:`BadInput` when the directory holds no measured level.
    """
    from models.calibrate import Snapshot
    from models.loader import ScenarioError, load_scenario
    from models.results import load

    try:
        scenario = load_scenario(level_dir / "scenario.yaml")
        result = load(level_dir)
    except (OSError, ValueError, KeyError, ScenarioError) as exc:
        raise BadInput(f"{level_dir}: not a measured level (scenario.yaml and result.json of a validate run): {exc}") from None
    before = after = None
    try:
        if (level_dir / SNAPSHOTS).exists():
            snaps = json.loads((level_dir / SNAPSHOTS).read_text())
            before = Snapshot.from_dict(snaps["before"]) if snaps.get("before") else None
            after = Snapshot.from_dict(snaps["after"]) if snaps.get("after") else None
        scrapes = _scrapes(level_dir / SCRAPES)
        if before is None and after is None and len(scrapes) >= 2:
            before, after = scrapes[0], scrapes[-1]
        speed = json.loads((level_dir / SPEED).read_text()) if (level_dir / SPEED).exists() else None
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise BadInput(f"{level_dir}: its server metrics cannot be read: {exc}") from None
    return Measurement(scenario, result, before, after, scrapes, speed if isinstance(speed, dict) else None)


def pending_writes(meminfo: str) -> int:
    """Bytes the kernel holds to write to disk (Dirty + Writeback in ``/proc/meminfo``)."""
    total = 0
    for line in meminfo.splitlines():
        name, _, value = line.partition(":")
        if name in ("Dirty", "Writeback"):
            parts = value.split()
            total += int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    return total


def flush_writes(quiet: bool) -> int:
    """Write the machine's pending writes to disk before a measurement; return how many bytes were pending.

    The reference server commits every registration with an fsync, so the db
    station's time is the disk's.  Whatever ran just before (installing
    packages, copying files) leaves writes that the kernel writes back about
    30 s later, in the middle of whichever phase runs then; ``os.sync`` lands
    them first.
    """
    try:
        pending = pending_writes(Path("/proc/meminfo").read_text())
    except OSError:
        pending = 0
    started_at = time.monotonic()
    os.sync()
    took = time.monotonic() - started_at
    if not quiet and (pending >= 16 << 20 or took >= 1.0):
        print(
            f"capacity: wrote the machine's pending writes ({pending / 1e6:.0f} MB) to disk before measuring, {took:.1f}s", file=sys.stderr
        )
    return pending


def raw_scenario(scenario: Scenario) -> dict[str, Any]:
    """The scenario file's YAML data as written (the base of the level scenarios)."""
    if scenario.path is None:
        raise RunFailed(f"scenario {scenario.name!r} was not read from a file, so its level scenarios cannot be written")
    data = yaml.safe_load(Path(scenario.path).read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def level_file(
    raw: dict[str, Any], name: str, rate: float, duration: float, run_dir: Path, everyone: bool = False, compress: float | None = None
) -> Path:
    """Write the scenario of one steady level (:func:`models.calibrate.steady_scenario`) to ``run_dir/scenario.yaml``."""
    from models.calibrate import steady_scenario

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "scenario.yaml"
    path.write_text(yaml.safe_dump(steady_scenario(raw, name, rate, duration, compress=compress, everyone=everyone), sort_keys=False))
    return path


def warm(scrapes: Path, duration: float, before: Snapshot | None, after: Snapshot | None) -> tuple[Snapshot | None, Snapshot | None]:
    """A processor phase's scrapes from :data:`CPU_WARMUP` of its ``duration`` to the last one inside it, when the run
    kept them.  The scrapes after the arrivals end (the load generator drains its last requests for a few seconds)
    are left out: counted, they made a phase's utilization, where the law's points sit, read 4-8 % low (0.718 for 0.755
    and 0.917 for 0.99 on one calibration; docs/validation.md)."""
    try:
        snaps = _scrapes(scrapes)
    except (OSError, ValueError, KeyError, TypeError):
        return before, after
    kept = [snap for snap in snaps if CPU_WARMUP * duration - 1e-6 <= snap.at <= duration + 1e-6]
    if len(kept) < 2 or kept[-1].at - kept[0].at < duration / 2:
        return before, after
    return kept[0], kept[-1]


class Lab:
    """The measured levels of one command, against ``host`` or a fresh reference server per level.

    A fresh server runs pinned to one CPU and its registry and Locust to the
    other.  Its database stays in the level's directory; the photos the
    registrants uploaded (filler bytes, about 750 MB a minute at 0.9 of the
    Prakerja saturation rate) are removed when the lab closes, so that no level
    is measured while a gigabyte is being deleted.
    """

    def __init__(self, host: str | None, quiet: bool):
        self.host = host
        self.quiet = quiet
        self.uploads: list[Path] = []

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        while self.uploads:
            shutil.rmtree(self.uploads.pop(), ignore_errors=True)

    def measure(self, scenario_file: Path, run_dir: Path, idle: float = 0.0) -> Measurement:
        """One steady level (the scenario in ``scenario_file``, for its whole horizon).

        With ``idle`` seconds, the server is first watched idle for that long:
        ``before.idle_cpu`` is its CPU use with no load.  The machine's pending
        writes go to disk first (:func:`flush_writes`).
        """
        from locustfiles.launch import LoadRun, LoadTestError, run_locust
        from models.calibrate import snapshot
        from models.loader import load_scenario
        from refserver.serve import scrape, speed_log, started

        scenario = load_scenario(scenario_file)
        duration = scenario.horizon
        server_cpu, load_cpu = cpus()
        flush_writes(self.quiet)
        with contextlib.ExitStack() as stack:
            try:
                target = self.host or stack.enter_context(
                    started(server_config(scenario, test_mode=True), run_dir / "server", cpu=server_cpu, registry_cpu=load_cpu)
                )
            except (OSError, RuntimeError) as exc:
                raise RunFailed(f"the reference server did not start: {exc}") from None

            def snap() -> Snapshot | None:
                try:
                    found = snapshot(scrape(target), time.monotonic())
                except OSError:
                    return None
                return found if found.has_stations else None

            before = snap()
            if idle > 0 and before is not None and before.cpu_seconds is not None:
                time.sleep(idle)  # the measurement itself: the server's CPU use over this much idle time
                quiet_end = snap()
                if quiet_end is not None and quiet_end.cpu_seconds is not None:
                    quiet_end.idle_cpu = max(0.0, (quiet_end.cpu_seconds - before.cpu_seconds) / (quiet_end.at - before.at))
                    before = quiet_end
            run = LoadRun(
                scenario_file,
                target,
                duration,
                run_dir,
                pool_size(scenario, duration),
                quiet=self.quiet,
                metrics=before is not None,
                cpu=load_cpu,
            )
            try:
                measured, interrupted = run_locust(run)
            except LoadTestError as exc:
                raise RunFailed(f"the load run in {run_dir} failed: {exc}") from None
            after = snap()
            speed = speed_log(target) if after is not None else None
        if self.host is None:
            self.uploads.append(run_dir / "server" / "photos")
        if interrupted:
            raise KeyboardInterrupt
        try:
            scrapes = _scrapes(run_dir / SCRAPES)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            say("validate", f"the load's own scrapes in {run_dir} cannot be read, so the level has no speed trace: {exc}", self.quiet)
            scrapes = []
        found = Measurement(scenario, measured, before, after, scrapes, speed)
        found.keep(run_dir)
        return found

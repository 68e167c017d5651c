"""The load run's settings: what ``capacity loadtest`` passes to the locustfile through the environment.

:meth:`Settings.to_environ` (the launcher's side) and :meth:`Settings.from_environ`
(the locustfile's side) are the one definition of the variables:

    SURGECAP_SCENARIO   scenario file (default scenarios/smoke.yaml)
    SURGECAP_SEED       arrival seed (default the scenario's)
    SURGECAP_DURATION   seconds of the window to replay (default the whole window)
    SURGECAP_OUT        directory for result.json (default: none written)
    SURGECAP_DROP_AFTER seconds an arrival may wait for a free user before it is dropped (default 1)
    SURGECAP_WORKERS, SURGECAP_WORKER_INDEX
                        in distributed runs: how many workers share the trace, and which one this is
    SURGECAP_PROGRESS   0: no progress lines
    SURGECAP_METRICS    1: scrape the target's /metrics about every second (the first worker only)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from models.arrivals import arrival_times
from models.loader import ScenarioError, load_scenario
from models.scenario import Scenario

__all__ = ["Settings", "SettingsError", "KNOWN_REQUESTS"]

ROOT = Path(__file__).resolve().parent.parent
#: the request types the registrant can send (one endpoint each)
KNOWN_REQUESTS = frozenset({"register", "verify_email", "upload_photo", "verify_nik", "join_batch"})


class SettingsError(ValueError):
    """The environment does not describe a load run this locustfile can make."""


@dataclass(frozen=True)
class Settings:
    """One worker's (or the only process's) view of the run."""

    scenario_file: str
    seed: int | None = None  # None: the scenario's
    duration: float | None = None  # None: the whole window
    out: str | None = None
    drop_after: float = 1.0
    workers: int = 1
    worker_index: int = 0
    progress: bool = True
    metrics: bool = False
    against: str | None = None  # A/B: a second target served the same arrivals, interleaved (its result in OUT/against)

    def to_environ(self) -> dict[str, str]:
        """The variables that carry these settings to the locustfile."""
        env = {
            "SURGECAP_SCENARIO": str(Path(self.scenario_file).resolve()),
            "SURGECAP_DROP_AFTER": repr(self.drop_after),
            "SURGECAP_PROGRESS": "1" if self.progress else "0",
            "SURGECAP_METRICS": "1" if self.metrics else "0",
            "SURGECAP_WORKERS": str(self.workers),
            "SURGECAP_WORKER_INDEX": str(self.worker_index),
        }
        for name, value in (
            ("SURGECAP_SEED", self.seed),
            ("SURGECAP_DURATION", self.duration),
            ("SURGECAP_OUT", self.out),
            ("SURGECAP_AGAINST", self.against),
        ):
            if value is not None:
                env[name] = str(value)
        return env

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Read the settings back; :class:`SettingsError` names a variable that is wrong."""

        def number(name: str, kind: type[int] | type[float]) -> int | float | None:
            text = environ.get(name)
            if text is None or text == "":
                return None
            try:
                return kind(text)
            except ValueError:
                raise SettingsError(f"{name} must be a number, got {text!r}") from None

        seed, duration, drop, workers, index = (
            number("SURGECAP_SEED", int),
            number("SURGECAP_DURATION", float),
            number("SURGECAP_DROP_AFTER", float),
            number("SURGECAP_WORKERS", int),
            number("SURGECAP_WORKER_INDEX", int),
        )
        settings = cls(
            scenario_file=environ.get("SURGECAP_SCENARIO") or str(ROOT / "scenarios" / "smoke.yaml"),
            seed=None if seed is None else int(seed),
            duration=duration,
            out=environ.get("SURGECAP_OUT") or None,
            drop_after=1.0 if drop is None else float(drop),
            workers=1 if workers is None else int(workers),
            worker_index=0 if index is None else int(index),
            progress=environ.get("SURGECAP_PROGRESS", "1") == "1",
            metrics=environ.get("SURGECAP_METRICS") == "1",
            against=environ.get("SURGECAP_AGAINST") or None,
        )
        if settings.workers < 1 or not 0 <= settings.worker_index < settings.workers:
            raise SettingsError(f"SURGECAP_WORKER_INDEX must be in [0, {settings.workers}), got {settings.worker_index}")
        if settings.against is not None and settings.workers > 1:
            raise SettingsError("SURGECAP_AGAINST (an A/B run) needs one load generator process, got SURGECAP_WORKERS > 1")
        if settings.duration is not None and not settings.duration > 0:
            raise SettingsError(f"SURGECAP_DURATION must be positive, got {settings.duration}")
        return settings

    def load(self) -> Run:
        """The scenario and this worker's arrivals."""
        try:
            scenario = load_scenario(self.scenario_file)
        except ScenarioError as exc:
            raise SettingsError("\n".join(exc.problems)) from None
        unknown = [s.request_type for s in scenario.journey if s.request_type not in KNOWN_REQUESTS]
        if unknown:
            raise SettingsError(f"request types {unknown} have no endpoint; expected some of {sorted(KNOWN_REQUESTS)}")
        start, end = scenario.window
        duration = min(self.duration if self.duration is not None else end - start, end - start)
        seed = self.seed if self.seed is not None else scenario.seed
        # distributed runs split the one arrival trace: worker k takes every arrival whose index is k mod workers
        trace = [t - start for t in arrival_times(scenario, seed).tolist() if t - start < duration]
        return Run(self, scenario, seed, duration, trace[self.worker_index :: self.workers])


@dataclass(frozen=True)
class Run:
    """The settings resolved against the scenario: its seed, the replayed duration and this worker's arrival offsets."""

    settings: Settings
    scenario: Scenario
    seed: int
    duration: float
    times: list[float]

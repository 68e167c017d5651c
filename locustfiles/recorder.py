"""Collects a load test's requests into the result shape (source="measured")."""

from __future__ import annotations

import math
from typing import Any

from models.histogram import Histogram
from models.results import RequestSeries, RunResult, StationSeries, StepSeries

__all__ = ["Recorder"]


class Recorder:
    """Per-interval counts and latency histograms of one run, as the model records them."""

    def __init__(
        self, scenario_name: str, request_types: list[str], steps: list[str], interval: float, duration: float, start: float = 0.0
    ):
        self.interval = interval
        self.n = max(1, math.ceil(duration / interval - 1e-9))
        self.result = RunResult(
            source="measured",
            scenario=scenario_name,
            start=start,
            interval=interval,
            arrivals=[0] * self.n,
            requests={rt: RequestSeries.empty(self.n) for rt in request_types},
            stations={},
            steps={s: StepSeries.empty(self.n) for s in steps},
        )
        self.from_arrival = Histogram()
        self.decisions: dict[str, list[int]] = {s: [0, 0] for s in steps}  # step -> [went on, dropped]

    def _k(self, t: float) -> int | None:
        k = int(t // self.interval)
        return k if 0 <= k < self.n else None

    def arrival(self, t: float) -> None:
        k = self._k(t)
        if k is not None:
            self.result.arrivals[k] += 1

    def request(self, rt: str, sent: float, latency: float, reason: str | None) -> None:
        """A request of type ``rt`` sent at ``sent`` (run seconds): None for success or why it failed."""
        k = self._k(sent)
        if k is None:
            return
        series = self.result.requests[rt]
        series.started[k] += 1
        if reason is None:
            series.ok[k] += 1
            series.latency[k].record(latency)
        else:
            series.fail_counts(reason)[k] += 1

    def step(self, name: str, what: str, t: float, duration: float | None = None) -> None:
        k = self._k(t)
        if k is None:
            return
        s = self.result.steps[name]
        getattr(s, what)[k] += 1
        if what == "completed" and duration is not None:
            s.duration.record(duration)

    def finish(self, meta: dict[str, Any], stations: dict[str, StationSeries] | None = None) -> RunResult:
        self.result.meta.update(meta)
        self.result.meta["first_request_from_arrival"] = self.from_arrival.to_dict()
        self.result.meta["proceed_decisions"] = self.decisions
        if stations:
            self.result.stations.update(stations)
        return self.result

"""Distributed runs: the workers' results reach the master over Locust's own connection and are merged there.

When the master stops, it asks every worker to stop and send its result (one
message each); the master waits for them, merges them
(:func:`models.results.merge`) and saves the run, so no shared disk is needed
between machines.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import gevent
import gevent.event
from locust.runners import MasterRunner, WorkerRunner

from models.results import RunResult, merge, save

__all__ = ["Results", "send_result", "STOP_MESSAGE", "RESULT_MESSAGE"]

STOP_MESSAGE, RESULT_MESSAGE = "surgecap_stop", "surgecap_result"
RESULT_WAIT = 60.0  # seconds the master waits for the workers' results


class Results:
    """The master's collection of its workers' results (worker index → result as a dict)."""

    def __init__(self, expected: int, out: str | None):
        self.expected = expected
        self.out = out
        self.parts: dict[int, dict[str, Any]] = {}
        self.all_in = gevent.event.Event()

    def _keep(self, worker: int, result: dict[str, Any]) -> None:
        self.parts[worker] = result
        if len(self.parts) >= self.expected:
            self.all_in.set()

    def listen(self, runner: MasterRunner | WorkerRunner) -> None:
        """On the master: keep each worker's result; on a worker: stop when the master says so."""
        if isinstance(runner, MasterRunner):
            runner.register_message(RESULT_MESSAGE, lambda environment, msg, **_: self._keep(int(msg.data["worker"]), msg.data["result"]))
        else:
            runner.register_message(STOP_MESSAGE, lambda environment, msg, **_: gevent.spawn(runner.stop))

    def collect(self, wait: float = RESULT_WAIT) -> RunResult | None:
        """On the master: wait up to ``wait`` seconds for every worker's result, merge them and save the run."""
        self.all_in.wait(timeout=wait)
        if not self.parts:
            sys.stderr.write("locustfile: no worker sent its result\n")
            return None
        merged = merge([RunResult.from_dict(self.parts[k]) for k in sorted(self.parts)])
        merged.meta.update({"workers": self.expected, "workers_reported": sorted(self.parts), "worker": None})
        if self.out:
            save(merged, self.out)
            Path(self.out, "lateness.json").write_text(json.dumps(merged.meta, indent=1, default=str))
        return merged


def send_result(runner: WorkerRunner, worker: int, result: RunResult) -> None:
    """On a worker: send this worker's result to the master."""
    runner.send_message(RESULT_MESSAGE, {"worker": worker, "result": result.to_dict()})

"""``capacity loadtest``: the scenario's surge replayed with Locust against a target (the reference server by default)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from models.results import RunResult
from models.scenario import Scenario
from models.units import format_duration
from workflows import BadInput, RunFailed
from workflows.output import say
from workflows.target import pool_size, server_config

__all__ = ["LoadtestOptions", "run_loadtest"]


@dataclass(frozen=True)
class LoadtestOptions:
    """How ``capacity loadtest`` runs (its command-line options)."""

    duration: float
    users: int | None = None
    workers: int = 1
    role: str = "local"  # "master" or "worker" in distributed mode
    master_host: str | None = None
    master_bind_host: str = "127.0.0.1"
    master_port: int = 5557
    worker_index: int = 0
    host: str | None = None
    seed: int | None = None
    quiet: bool = False
    fault: dict[str, float] = field(default_factory=dict)  # injected slowness of the reference server it starts (refserver.config)
    against: str | None = None  # A/B: a second target served every arrival too, interleaved (capacity regress --against)

    def check(self, window: float) -> None:
        """Raise :class:`BadInput` for options that cannot run, before anything starts."""
        if not 0 < self.duration <= window:
            raise BadInput(f"--duration must be in (0, {format_duration(window)}] (the scenario's window)")
        if self.workers < 1:
            raise BadInput("--workers must be at least 1")
        if self.users is not None and self.users < 1:
            raise BadInput(f"--users must be at least 1, got {self.users}")
        if self.against is not None and (self.workers > 1 or self.role != "local"):
            raise BadInput("--against (an A/B run) runs in one load generator process: no --workers, --master or --worker")
        if self.role == "worker" and (self.master_host is None or not 0 <= self.worker_index < self.workers):
            raise BadInput("--worker needs --master-host HOST, --workers N (all the workers) and --worker-index K (0 <= K < N)")


def run_loadtest(scenario: Scenario, opts: LoadtestOptions, run_dir: Path) -> tuple[RunResult, bool]:
    """Run the load test; return the measured result and whether it was interrupted (results then partial)."""
    from locustfiles.launch import LoadRun, LoadTestError, run_locust
    from refserver.serve import started

    if scenario.path is None:
        raise BadInput(f"scenario {scenario.name!r} was not read from a file; Locust reads the scenario by its path")
    run_dir.mkdir(parents=True, exist_ok=True)
    users = opts.users or pool_size(scenario, opts.duration) * (2 if opts.against else 1)
    if opts.role == "worker":  # a worker's share of the pool: the master's -u is split across the workers
        users = max(1, users // opts.workers)
    with contextlib.ExitStack() as stack:
        if opts.role == "worker":
            host = "(from the master)"
        elif opts.host:
            host = opts.host
        else:
            try:
                host = stack.enter_context(started(server_config(scenario, test_mode=True, fault=opts.fault), run_dir / "server"))
            except (OSError, RuntimeError) as exc:
                raise RunFailed(f"the reference server did not start: {exc}") from None
        what = {
            "local": "",
            "master": f" as master for {opts.workers} worker(s) on {opts.master_bind_host}:{opts.master_port}",
            "worker": f" as worker {opts.worker_index} of {opts.workers} of the master at {opts.master_host}:{opts.master_port}",
        }[opts.role]
        say(
            "loadtest",
            f"{scenario.name} for {format_duration(opts.duration)} against {host}{what}"
            f"{f' and, interleaved, {opts.against}' if opts.against else ''} with a pool of {users} users; results in "
            f"{run_dir}/",
        )
        run = LoadRun(
            Path(scenario.path),
            host,
            opts.duration,
            run_dir,
            users,
            opts.workers,
            opts.seed,
            opts.quiet,
            metrics=opts.host is None and opts.role != "worker",
            role=opts.role,
            master_host=opts.master_host if opts.role == "worker" and opts.master_host else opts.master_bind_host,
            master_port=opts.master_port,
            worker_index=opts.worker_index,
            against=opts.against,
        )
        try:
            return run_locust(run)
        except LoadTestError as exc:
            raise RunFailed(str(exc)) from None

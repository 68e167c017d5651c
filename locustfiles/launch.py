"""Starting Locust for a scenario: one process, or a local master with workers.

The planner's process never imports Locust (gevent patches the interpreter): it
starts ``locust -f locustfiles/registrant.py`` as subprocesses, passes the run's
settings in the environment, waits with a hard deadline and reads the result
files back.  :func:`run_locust` is what ``capacity loadtest``, ``calibrate`` and
``validate`` share.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from locustfiles.settings import Settings
from models.results import RunResult, load
from refserver.serve import die_with_parent

__all__ = ["LoadRun", "LoadTestError", "run_locust", "LOCUSTFILE", "GRACE"]

LOCUSTFILE = Path(__file__).resolve().parent / "registrant.py"
GRACE = 5.0  # seconds after the window for journeys in flight to finish
RESULT_WAIT_S = 30  # seconds Locust gets to stop and write its result after Ctrl-C


class LoadTestError(RuntimeError):
    """The load test could not run or wrote no result; the message says where to look."""


@dataclass
class LoadRun:
    """What to run: a scenario file against ``host`` for ``duration`` seconds, results into ``run_dir``.

    ``role`` is ``"local"`` (one process, or a master with ``workers`` local
    worker processes when ``workers`` > 1), ``"master"`` (a master that waits
    for ``workers`` workers started elsewhere, e.g. on other machines) or
    ``"worker"`` (worker ``worker_index`` of ``workers``, connecting to
    ``master_host``:``master_port``).
    """

    scenario: Path
    host: str
    duration: float
    run_dir: Path
    users: int
    workers: int = 1
    seed: int | None = None
    quiet: bool = False
    metrics: bool = False  # scrape the target's /metrics for station series
    cpu: int | None = None  # pin the Locust processes to this CPU
    role: str = "local"
    master_host: str = "127.0.0.1"  # the master's address (a worker connects to it; a master binds it)
    master_port: int | None = None
    worker_index: int = 0
    against: str | None = None  # A/B: a second target served the same arrivals (its result in run_dir/against)


MASTER_WAIT = 300  # seconds a master waits for its workers to connect


def _settings(run: LoadRun, worker_index: int | None = None) -> Settings:
    """The locustfile's settings for this run (for local worker ``worker_index``: its own output, and only the first reports)."""
    settings = Settings(
        str(run.scenario),
        seed=run.seed,
        duration=run.duration,
        out=str(run.run_dir),
        workers=run.workers,
        worker_index=run.worker_index,
        progress=not run.quiet,
        metrics=run.metrics,
        against=run.against,
    )
    if worker_index is None:
        return settings
    first = worker_index == 0
    return replace(
        settings,
        out=str(run.run_dir / f"worker-{worker_index}"),
        worker_index=worker_index,
        progress=settings.progress and first,
        metrics=settings.metrics and first,
    )


def _env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.to_environ()}


def _pinned(cmd: list[str], cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if cpu is not None else cmd


def _worker_cmd(host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--worker",
        "--master-host",
        host,
        "--master-port",
        str(port),
        "--loglevel",
        "WARNING",
    ]


def _headless_cmd(run: LoadRun) -> list[str]:
    """The command of the one Locust process that runs (or, as master, leads) a headless run."""
    return [
        *(sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", run.host),
        *("-u", str(run.users), "-r", str(run.users), "--run-time", f"{int(run.duration + GRACE)}s", "--stop-timeout", "5"),
        *("--only-summary", "--csv", str(run.run_dir / "locust"), "--loglevel", "WARNING"),
    ]


def _stop_or_kill(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait up to ``timeout`` seconds for ``proc`` to end, then kill its process group."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait(locust: subprocess.Popen[bytes], deadline: float, run_dir: Path) -> bool:
    """Wait for Locust to end by ``deadline`` seconds (killed past it); True when Ctrl-C interrupted it."""
    try:
        locust.wait(timeout=deadline)
    except subprocess.TimeoutExpired:
        os.killpg(locust.pid, signal.SIGKILL)
        locust.wait()
        raise LoadTestError(f"Locust did not stop in time and was killed; see {run_dir}/locust.log") from None
    except KeyboardInterrupt:
        os.killpg(locust.pid, signal.SIGINT)  # Locust stops its users and writes what it has
        _stop_or_kill(locust, RESULT_WAIT_S)  # interrupted too early (while starting) or stuck: it goes
        return True
    return False


def _start(cmd: list[str], run: LoadRun, env: dict[str, str], log: IO[bytes] | IO[str]) -> subprocess.Popen[bytes]:
    # own sessions: a terminal's Ctrl-C reaches this process, which stops them in order; and they stop if it is killed
    return subprocess.Popen(_pinned(cmd, run.cpu), env=env, stderr=log, start_new_session=True, preexec_fn=die_with_parent)


def run_locust(run: LoadRun) -> tuple[RunResult, bool]:
    """Run the load test; return its result (merged over workers) and whether it was interrupted.

    Every process is started in its own session and killed if it overstays
    its deadline; Ctrl-C stops Locust cleanly and keeps what it has.  In
    distributed runs each worker sends its result to the master, which merges
    them (each worker also keeps its own in ``run_dir/worker-K`` when local).
    """
    from refserver.serve import free_port

    run.run_dir.mkdir(parents=True, exist_ok=True)
    env = _env(_settings(run))
    deadline = run.duration + GRACE + 60
    cmd = _headless_cmd(run)
    workers: list[subprocess.Popen[bytes]] = []
    with open(run.run_dir / "locust.log", "w") as log:  # Locust's own logging; progress lines stay on stdout
        if run.role == "worker":
            cmd = _worker_cmd(run.master_host, run.master_port or 5557)
            deadline += MASTER_WAIT
        elif run.role == "master" or run.workers > 1:
            port = run.master_port or free_port()
            bind = run.master_host if run.role == "master" else "127.0.0.1"
            cmd += ["--master", "--master-bind-host", bind, "--master-bind-port", str(port), "--expect-workers", str(run.workers)]
            if run.role == "master":
                cmd += ["--expect-workers-max-wait", str(MASTER_WAIT)]
                deadline += MASTER_WAIT
            else:
                workers = [_start(_worker_cmd("127.0.0.1", port), run, _env(_settings(run, k)), log) for k in range(run.workers)]
        locust = _start(cmd, run, env, log)
        try:
            interrupted = _wait(locust, deadline, run.run_dir)
        finally:
            for w in workers:
                _stop_or_kill(w, 30)
    if not (run.run_dir / "result.json").exists():
        raise LoadTestError(f"the load test wrote no result; see {run.run_dir}/locust.log")
    result = load(run.run_dir)
    reported = result.meta.get("workers_reported")
    if reported is not None and len(reported) < run.workers:
        missing = sorted(set(range(run.workers)) - set(reported))
        raise LoadTestError(
            f"workers {missing} sent no result; the merged result in {run.run_dir} lacks their arrivals; see {run.run_dir}/locust.log"
        )
    return result, interrupted

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
from dataclasses import dataclass
from pathlib import Path

from models.results import RunResult, load, merge, save

__all__ = ["LoadRun", "LoadTestError", "run_locust", "LOCUSTFILE", "GRACE"]

LOCUSTFILE = Path(__file__).resolve().parent / "registrant.py"
GRACE = 5.0  # seconds after the window for journeys in flight to finish


class LoadTestError(RuntimeError):
    """The load test could not run or wrote no result; the message says where to look."""


@dataclass
class LoadRun:
    """What to run: a scenario file against ``host`` for ``duration`` seconds, results into ``run_dir``."""

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


def _env(run: LoadRun) -> dict[str, str]:
    env = {
        **os.environ,
        "SURGECAP_SCENARIO": str(run.scenario.resolve()),
        "SURGECAP_DURATION": str(run.duration),
        "SURGECAP_OUT": str(run.run_dir),
        "SURGECAP_PROGRESS": "0" if run.quiet else "1",
        "SURGECAP_METRICS": "1" if run.metrics else "0",
    }
    if run.seed is not None:
        env["SURGECAP_SEED"] = str(run.seed)
    return env


def _pinned(cmd: list[str], cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if cpu is not None else cmd


def run_locust(run: LoadRun) -> tuple[RunResult, bool]:
    """Run the load test; return its result (merged over workers) and whether it was interrupted.

    Every process is started in its own session and killed if it overstays
    the window by a minute; Ctrl-C stops Locust cleanly and keeps what it has.
    """
    from refserver.serve import free_port

    run.run_dir.mkdir(parents=True, exist_ok=True)
    env = _env(run)
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", run.host,
        "-u", str(run.users), "-r", str(run.users), "--run-time", f"{int(run.duration + GRACE)}s", "--stop-timeout", "5",
        "--only-summary", "--csv", str(run.run_dir / "locust"), "--loglevel", "WARNING",
    ]
    interrupted = False
    workers: list[subprocess.Popen[bytes]] = []
    with open(run.run_dir / "locust.log", "w") as log:  # Locust's own logging; progress lines stay on stdout
        if run.workers > 1:
            master_port = free_port()
            cmd += ["--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(master_port), "--expect-workers", str(run.workers)]
            for k in range(run.workers):
                wenv = {**env, "SURGECAP_OUT": str(run.run_dir / f"worker-{k}"), "SURGECAP_WORKERS": str(run.workers), "SURGECAP_WORKER_INDEX": str(k)}
                wenv["SURGECAP_PROGRESS"] = env["SURGECAP_PROGRESS"] if k == 0 else "0"
                wcmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker", "--master-host", "127.0.0.1", "--master-port", str(master_port), "--loglevel", "WARNING"]
                workers.append(subprocess.Popen(_pinned(wcmd, run.cpu), env=wenv, stderr=log, start_new_session=True))
            env = {k: v for k, v in env.items() if k != "SURGECAP_OUT"}
        locust = subprocess.Popen(_pinned(cmd, run.cpu), env=env, stderr=log, start_new_session=True)
        try:
            locust.wait(timeout=run.duration + GRACE + 60)
        except subprocess.TimeoutExpired:
            os.killpg(locust.pid, signal.SIGKILL)
            locust.wait()
            raise LoadTestError(f"Locust did not stop in time and was killed; see {run.run_dir}/locust.log") from None
        except KeyboardInterrupt:
            interrupted = True
            os.killpg(locust.pid, signal.SIGINT)  # Locust stops its users and writes what it has
            locust.wait(timeout=30)
        finally:
            for w in workers:
                try:
                    w.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(w.pid, signal.SIGKILL)
                    w.wait()
    if workers:
        parts = [run.run_dir / f"worker-{k}" for k in range(run.workers)]
        missing = [str(p) for p in parts if not (p / "result.json").exists()]
        if missing:
            raise LoadTestError(f"workers wrote no result in {', '.join(missing)}; see {run.run_dir}/locust.log")
        save(merge([load(p) for p in parts]), run.run_dir)
    if not (run.run_dir / "result.json").exists():
        raise LoadTestError(f"the load test wrote no result; see {run.run_dir}/locust.log")
    return load(run.run_dir), interrupted

"""The server's own CPU time, by request type.

The reference server runs one event loop on one core; every request's Python
work (parsing its body, checking it, building the answer) runs on that loop one
step at a time, between the awaits.  When the loop is busy with one request's
step, every other ready step waits: at high load this queueing for the CPU is a
real part of the latency, so the model has a ``system.cpu`` station and
``capacity calibrate`` needs its demand per request type.

:class:`CpuClock` measures it without touching the event loop's internals (so
it works under uvloop as well as asyncio):

- :meth:`CpuClock.timed` wraps a request's coroutine and times each of its
  steps (each ``send`` into it), so the loop time of a request type and the
  size of its steps are known;
- :meth:`CpuClock.thread` adds CPU time spent for a request type in a worker
  thread (the photo file write, the database writer's statements).

``process_cpu_seconds_total`` minus the sum of both is the work no request
owns (HTTP parsing in the protocol, the email sender, the loop itself).

The requests' own computation is also kept in :data:`SPEED_BUCKET` buckets of
the server's clock (:meth:`CpuClock.speed_log`, served as ``/metrics/speed``):
the machine's speed moves within a second, and the scrapes of ``/metrics``
come about once a second; ``/metrics`` carries the clock
(``surgecap_clock_seconds``) so that a client can place the buckets on its own.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any, TypeVar

__all__ = ["CpuClock", "SPEED_BUCKET", "SPEED_BUCKETS"]

SPEED_BUCKET = 0.25  # seconds of the server's clock per bucket of the speed log
SPEED_BUCKETS = 14_400  # buckets kept (an hour's); older ones are dropped

T = TypeVar("T")

# per request type: [requests, steps, sum of step seconds, sum of squared step seconds, thread seconds, thread calls,
# seconds of the request's own computation (refserver.service.stretch; within its loop steps), requests that did it,
# steps that resumed a request after it waited for a station's slot (part of steps), and of the requests those that a
# station's admission control turned away (503): requests, their steps, step seconds, squared step seconds and resume
# steps (part of the steps, seconds, squares and resumes before), and the seconds of the resume steps (part of the sum)]
REQUESTS, STEPS, SUM, SQUARES, THREAD, CALLS, WORK, WORKED, RESUMES = range(9)
SHED, SHED_STEPS, SHED_SUM, SHED_SQUARES, SHED_RESUMES, RESUME_SUM = range(9, 15)

#: the request being timed in this task (set by CpuClock.timed's driver): admission control marks it shed
_CURRENT: contextvars.ContextVar[_Timed[Any] | None] = contextvars.ContextVar("surgecap_cpu_current", default=None)


class _Timed(Awaitable[T]):
    __slots__ = ("coro", "acc", "shed", "resumes")

    def __init__(self, coro: Coroutine[Any, Any, T], acc: list[float]):
        self.coro = coro
        self.acc = acc
        self.shed = False
        self.resumes = 0  # its steps that resumed it after a wait for a station's slot

    def __await__(self) -> Generator[Any, Any, T]:
        coro = self.coro
        clock = time.thread_time  # CPU time of the loop thread: a step preempted by a worker thread is not charged for it
        value: Any = None
        error: BaseException | None = None
        acc = self.acc
        steps, total, squares = 0, 0.0, 0.0  # this request's own, for the shed ones' account when it ends
        waits = 0  # the resumes counted so far: a step that counts one ends waiting for a slot, so the next resumes it
        _CURRENT.set(self)  # the request's own task: each HTTP request runs in one
        try:
            while True:
                resuming = self.resumes != waits
                waits = self.resumes
                started = clock()
                try:
                    yielded = coro.send(value) if error is None else coro.throw(error)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                finally:
                    seconds = clock() - started
                    acc[STEPS] += 1
                    acc[SUM] += seconds
                    acc[SQUARES] += seconds * seconds
                    if resuming:
                        acc[RESUME_SUM] += seconds
                    steps += 1
                    total += seconds
                    squares += seconds * seconds
                try:
                    value = yield yielded
                    error = None
                except GeneratorExit:
                    coro.close()
                    raise
                except BaseException as exc:  # noqa: BLE001 - handed on to the wrapped coroutine (cancellation too)
                    value, error = None, exc
        finally:
            if self.shed:
                acc[SHED] += 1
                acc[SHED_STEPS] += steps
                acc[SHED_SUM] += total
                acc[SHED_SQUARES] += squares
                acc[SHED_RESUMES] += self.resumes


class CpuClock:
    def __init__(self) -> None:
        self.by_type: dict[str, list[float]] = {}
        self._lock = threading.Lock()  # worker threads add concurrently
        self.speed: dict[int, dict[str, list[float]]] = {}  # bucket of the clock -> request type -> [own work seconds, requests]

    def _acc(self, rt: str) -> list[float]:
        acc = self.by_type.get(rt)
        if acc is None:
            acc = self.by_type[rt] = [0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0, 0, 0.0, 0.0, 0, 0.0]
        return acc

    def timed(self, rt: str, coro: Coroutine[Any, Any, T]) -> Awaitable[T]:
        """``await clock.timed(rt, coro)``: run ``coro``, timing each of its steps as ``rt``."""
        acc = self._acc(rt)
        acc[REQUESTS] += 1
        return _Timed(coro, acc)

    def thread(self, rt: str, seconds: float, calls: float = 0.0) -> None:
        """Add CPU seconds spent for ``rt`` in a worker thread (measure with ``time.thread_time``), and the
        thread's calls that let go of the interpreter lock and take it back (each waits for the event loop to let go)."""
        with self._lock:
            acc = self._acc(rt)
            acc[THREAD] += seconds
            acc[CALLS] += calls

    def work(self, rt: str, seconds: float) -> None:
        """Add the CPU seconds of one request's own computation (already part of its loop step's time)."""
        acc = self._acc(rt)
        acc[WORK] += seconds
        acc[WORKED] += 1
        k = int(time.monotonic() / SPEED_BUCKET)
        bucket = self.speed.get(k)
        if bucket is None:
            bucket = self.speed[k] = {}
            if len(self.speed) > SPEED_BUCKETS:
                del self.speed[next(iter(self.speed))]
        mine = bucket.get(rt)
        if mine is None:
            mine = bucket[rt] = [0.0, 0]
        mine[0] += seconds
        mine[1] += 1

    def speed_log(self) -> dict[str, Any]:
        """The requests' own computation by bucket of the server's clock: ``bucket`` (seconds), ``clock`` (now), and
        ``work``: rows of [bucket start, request type, CPU seconds, requests]."""
        buckets = list(self.speed.items())
        rows = [[round(k * SPEED_BUCKET, 6), rt, round(v[0], 9), v[1]] for k, bucket in buckets for rt, v in bucket.items()]
        return {"bucket": SPEED_BUCKET, "clock": time.monotonic(), "work": rows}

    def resumed(self, rt: str) -> None:
        """Count a step that will resume a request of ``rt`` after it waited for a station's slot: a step the request
        takes only when it had to wait (the model adds it itself, so calibration counts the steps without it)."""
        self._acc(rt)[RESUMES] += 1
        current = _CURRENT.get()
        if current is not None:
            current.resumes += 1

    @staticmethod
    def shed() -> None:
        """Mark the request being handled in this task as turned away by admission control (its 503): its steps are
        then counted apart as well (a shed request's few steps are not a served request's)."""
        current = _CURRENT.get()
        if current is not None:
            current.shed = True

    def lines(self) -> list[str]:
        """Prometheus lines: per request type, requests, loop steps, loop and thread CPU seconds; and the server's clock."""
        out: list[str] = [
            "# HELP surgecap_clock_seconds The server's monotonic clock at this scrape (the speed log's buckets are on it).",
            "# TYPE surgecap_clock_seconds gauge",
            f"surgecap_clock_seconds {time.monotonic():.6f}",
        ]
        for metric, i, fmt, help_ in (
            ("surgecap_cpu_requests_total", REQUESTS, "{:.0f}", "Requests whose loop steps were timed."),
            ("surgecap_cpu_steps_total", STEPS, "{:.0f}", "Event-loop steps of requests."),
            ("surgecap_cpu_loop_seconds_total", SUM, "{:.6f}", "Event-loop time of requests' steps."),
            ("surgecap_cpu_loop_seconds_squared_total", SQUARES, "{:.9f}", "Sum of squared step times."),
            ("surgecap_cpu_thread_seconds_total", THREAD, "{:.6f}", "CPU time of worker threads for requests."),
            ("surgecap_cpu_thread_calls_total", CALLS, "{:.2f}", "Worker-thread calls that give up the interpreter lock and take it back."),
            ("surgecap_cpu_work_seconds_total", WORK, "{:.6f}", "CPU time of requests' own computation (part of their loop time)."),
            ("surgecap_cpu_work_requests_total", WORKED, "{:.0f}", "Requests that did their own computation."),
            ("surgecap_cpu_resumes_total", RESUMES, "{:.0f}", "Steps that resumed a request after it waited for a station's slot."),
            ("surgecap_cpu_shed_requests_total", SHED, "{:.0f}", "Requests turned away by a station's admission control (503)."),
            ("surgecap_cpu_shed_steps_total", SHED_STEPS, "{:.0f}", "Event-loop steps of requests turned away (part of the steps)."),
            ("surgecap_cpu_shed_loop_seconds_total", SHED_SUM, "{:.6f}", "Event-loop time of requests turned away."),
            ("surgecap_cpu_shed_loop_seconds_squared_total", SHED_SQUARES, "{:.9f}", "Sum of squared step times of requests turned away."),
            (
                "surgecap_cpu_shed_resumes_total",
                SHED_RESUMES,
                "{:.0f}",
                "Resume steps of requests turned away (a wait at an earlier station).",
            ),
            ("surgecap_cpu_resume_seconds_total", RESUME_SUM, "{:.6f}", "Event-loop time of the resume steps (part of the loop time)."),
        ):
            out += [f"# HELP {metric} {help_}", f"# TYPE {metric} counter"]
            for rt, acc in sorted(self.by_type.items()):
                out.append(f'{metric}{{request="{rt}"}} {fmt.format(acc[i])}')
        return out

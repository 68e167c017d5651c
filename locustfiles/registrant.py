"""One Locust user plays one registrant's journey per arrival, as the scenario says.

Arrivals come from the scenario's rate curve through the same seeded sampler as
the SimPy model (:func:`models.arrivals.arrival_times`), so with one seed the
load test and the model see the same arrival trace.  A pool of users takes
arrivals as they fall due (:class:`locustfiles.pacing.Pacer`); lateness and
dropped arrivals are counted, never hidden.

Settings come from the environment, as ``capacity loadtest`` sets them
(:mod:`locustfiles.settings`); the merge of distributed runs is in
:mod:`locustfiles.distributed`.

Interactive use with Locust's web UI: ``locust -f locustfiles/registrant.py --host http://127.0.0.1:8000``.
"""

from __future__ import annotations

import csv
import gc
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import gevent
from gevent.queue import Queue
from locust import User, events, task
from locust.env import Environment
from locust.exception import LocustError, StopUser
from locust.runners import LocalRunner, MasterRunner, WorkerRunner
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV
from locust.user.users import LOCUST_STATE_RUNNING, LOCUST_STATE_STOPPING, LOCUST_STATE_WAITING

from contracts import DRAW_HEADER, decision_seed, registry_mismatch
from locustfiles.client import JSON_HEADERS, Client
from locustfiles.distributed import STOP_MESSAGE, Results, send_result
from locustfiles.pacing import Lateness, Pacer
from locustfiles.recorder import Recorder
from locustfiles.settings import Settings, SettingsError
from models.arrivals import MISMATCH_SLOT, PERSON_SLOT, decision, give_up_slot, proceed_slot, word
from models.calibrate import Snapshot, snapshot, station_series
from models.histogram import Histogram
from models.results import StationSeries, save

try:
    RUN = Settings.from_environ().load()
except SettingsError as exc:
    raise SystemExit(f"locustfile: {exc}") from None
SETTINGS, SCENARIO, SEED, DURATION = RUN.settings, RUN.scenario, RUN.seed, RUN.duration
OUT, WORKERS, WORKER_INDEX = SETTINGS.out, SETTINGS.workers, SETTINGS.worker_index
JPEG_HEADER = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
PACER = Pacer(RUN.times, SETTINGS.drop_after)


def _recorder() -> Recorder:
    return Recorder(SCENARIO.name, SCENARIO.request_types, [s.name for s in SCENARIO.journey], SCENARIO.run.interval, DURATION)


class Side:
    """One target of the run and what it saw: its recorder and its arrivals' lateness.

    A plain run has one side, the ``--host``.  An A/B run (``SURGECAP_AGAINST``)
    has a second, the build compared with: every arrival walks its journey on
    both, as two journeys started together (which one is handed out first
    alternates with the arrival's index), so a drift in the machine's speed
    meets both alike.
    """

    def __init__(self, index: int, label: str, recorder: Recorder, lateness: Lateness):
        self.index, self.label, self.recorder, self.lateness = index, label, recorder, lateness


RECORDER = _recorder()
AGAINST = SETTINGS.against
SIDES = [Side(0, "", RECORDER, PACER.lateness)] + ([Side(1, " (against)", _recorder(), Lateness())] if AGAINST else [])
CLOCK: dict[str, Any] = {}
QUEUE: Queue[tuple[int, float, Side]] = Queue()
# the journey as the registrant walks it: each step, its request type and its think time (compressed; None: no thinking)
STEPS = [(s, s.request_type, s.think.scaled(1 / SCENARIO.run.compress) if s.think.mean > 0 else None) for s in SCENARIO.journey]


RUN_SALT = int.from_bytes(os.urandom(4), "big")  # runs against one long-lived server must not collide


MISMATCH = SCENARIO.system.registry.mismatch if SCENARIO.system.registry is not None else 0.0
DECISION_SEED = decision_seed(SEED)  # as the model's replication 0


def reference_registry_mismatch(nik: str) -> bool:
    """Whether the reference registry answers "does not match" for this NIK (it decides by the NIK's hash)."""
    return registry_mismatch(nik, MISMATCH)


def person(n: int) -> dict[str, str]:
    """A registrant with a unique email and a well-formed NIK that agrees with the birth date.

    ``n`` is the arrival's index in the whole trace (unique across workers).  The
    details come from the registrant's own counter-based word
    (:func:`~models.arrivals.word`), salted by the run so that two runs against
    the same server stay apart.  The NIK's serial is chosen so that the reference
    registry's verdict on it is the one the model draws for this registrant
    (:data:`~models.arrivals.MISMATCH_SLOT`).
    """
    bits = word(DECISION_SEED, n, PERSON_SLOT) ^ (RUN_SALT << 17)  # one 64-bit draw, sliced: this runs once per arrival
    year, month, day = 1960 + bits % 45, 1 + (bits >> 8) % 12, 1 + (bits >> 12) % 28
    region = f"{11 + (bits >> 17) % 84:02d}{1 + (bits >> 24) % 99:02d}{1 + (bits >> 31) % 99:02d}"
    stem = f"{region}{day:02d}{month:02d}{year % 100:02d}"
    nik = f"{stem}{n % 9999 + 1:04d}"
    if 0 < MISMATCH < 1:
        wanted = decision(DECISION_SEED, n, MISMATCH_SLOT) < MISMATCH
        for j in range(1, 200):
            if reference_registry_mismatch(nik) == wanted:
                break
            nik = f"{stem}{(n + j * 7919) % 9999 + 1:04d}"
    return {
        "name": "Load Test",
        "email": f"r{n}.{RUN_SALT}.{bits >> 38}@example.org",
        "nik": nik,
        "birth_date": f"{year:04d}-{month:02d}-{day:02d}",
        "phone": f"+628{1_000_000_000 + (bits >> 20) % 9_000_000_000}",
    }


def _reason(status: int, body: dict[str, Any]) -> str | None:
    """The model's failure reason for an HTTP answer (None: success)."""
    if status in (200, 201):
        return None
    if status == 0:
        return "timeout"
    if status == 503:
        return {"rate_limited": "rate_limited", "quota": "quota", "timeout": "timeout"}.get(str(body.get("reason")), "full")
    if status == 429:
        return "rate_limited"
    if status == 422 and body.get("status") == "mismatch":
        return "mismatch"
    if status == 409 and body.get("status") == "quota_full":
        return "quota"
    return "error"


CONNECTIONS = 5000  # at most this many connections to the target: a cap, opened only as needed
CLIENTS: dict[str, Client] = {}  # target URL -> the pool all users share
EXPECTED_KEY = {"register": "id", "verify_email": "status", "upload_photo": "status", "verify_nik": "status", "join_batch": "status"}


class Registrant(User):
    """Takes the next due arrival and walks its journey; idle users wait for arrivals.

    All users share one connection pool per target (:mod:`locustfiles.client`):
    in an open model most users are idle most of the time, and with a pool each
    their connections would go cold and be reopened (a new connection per journey
    costs more than the request).
    """

    network_timeout = 30.0  # requests outside the journey (the test mailbox); a step's request has the step's timeout
    connection_timeout = 10.0

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        if not self.host:
            raise LocustError("locustfile: no target; pass --host (or set it in the web UI)")
        for key in (self.host, AGAINST):
            if key and key not in CLIENTS:
                CLIENTS[key] = Client(key, environment.events.request.fire, CONNECTIONS, self.connection_timeout, self.network_timeout)
        self.clients = [CLIENTS[self.host]] + ([CLIENTS[AGAINST]] if AGAINST else [])
        self.http = self.clients[0]
        self.side = SIDES[0]
        self.draw = ""  # the current request's draw key: arrival, step, attempt
        self.timeout: float | None = self.network_timeout  # the current request's client timeout (its step's)

    def now(self) -> float:
        return time.monotonic() - CLOCK.get("start", time.monotonic())

    @task
    def journeys(self) -> None:
        """Take arrivals one after another; Locust ends this loop when the run stops.

        One task that never returns saves Locust's scheduling and wait between
        tasks on every arrival.
        """
        get = QUEUE.get
        accept = PACER.accept
        while self._state != LOCUST_STATE_STOPPING:  # asked to stop during a journey: leave after it
            # Idle, the user is "waiting" as Locust means it between tasks, so a stopping run ends it at once
            # (killed inside get(), which then takes no arrival) instead of waiting out the stop timeout.
            self._state = LOCUST_STATE_WAITING
            index, intended, side = get()
            self._state = LOCUST_STATE_RUNNING
            if accept(self.now(), intended, side.lateness):
                self.side, self.http = side, self.clients[side.index]
                side.recorder.arrival(intended)
                self.walk(index, intended)
        raise StopUser

    def call(
        self, rt: str, step_name: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[str | None, dict[str, Any]]:
        """Send one request of type ``rt``, validate and record it: (why it failed or None, JSON body)."""
        if AGAINST:  # common random numbers: both reference servers draw this request's service times from its key
            headers = {**(headers or {}), DRAW_HEADER: self.draw}
        sent = self.now()
        IN_FLIGHT[0] += 1
        try:
            answer = self.http.request(method, path, body, headers, self.timeout)
        finally:
            IN_FLIGHT[0] -= 1
        body_json = answer.json()
        if not isinstance(body_json, dict):
            body_json = {}
        status = answer.status
        reason = _reason(status, body_json)
        failure = None
        if reason is None and EXPECTED_KEY[rt] not in body_json:
            reason = "error"
            failure = f"{status} without {EXPECTED_KEY[rt]!r} in the body"
        elif reason is None and rt == "register" and not _usable_id(body_json["id"]):
            reason = "error"  # the id goes into later paths (the mailbox): one that is not a plain token would break them
            failure = f"{status} with an unusable 'id' (expected letters, digits, '-' or '_')"
        elif reason is not None:
            failure = f"{status} {reason}"
        self.http.report(method, step_name + self.side.label, path, answer, failure)
        self.side.recorder.request(rt, sent, answer.seconds, reason)
        return reason, body_json

    def walk(self, index: int, intended: float) -> None:
        index = WORKER_INDEX + WORKERS * index  # the arrival's index in the whole trace
        rng: random.Random | None = None  # the registrant's think times and backoff jitter, made when first needed
        recorder = self.side.recorder
        me = person(index)
        rid: str | None = None
        for i, (step, rt, think_time) in enumerate(STEPS):
            if i > 0:
                went_on = decision(DECISION_SEED, index, proceed_slot(i)) < step.proceed
                if self.now() < DURATION:  # counted within the window, like everything recorded
                    recorder.decisions[step.name][0 if went_on else 1] += 1
                if not went_on:
                    recorder.step(step.name, "dropped", self.now())
                    return
            token = None
            if rt == "verify_email" and rid is not None:
                token = self.read_mailbox(rid)
                if token is None:
                    recorder.step(step.name, "failed", self.now())
                    return
            if think_time is not None:
                rng = rng or random.Random(decision_seed(SEED, index))
                think = think_time.draw(rng)
                if think > 0:
                    gevent.sleep(think)
            recorder.step(step.name, "reached", self.now())
            began = self.now()
            attempt = 1
            while True:
                self.draw = f"{index}.{i}.{attempt}"
                self.timeout = step.timeout  # the client's timeout for this step's request (the model's too)
                reason, body = self.send(rt, step.name, me, rid, token, step.payload)
                if i == 0 and attempt == 1:
                    recorder.from_arrival.record(max(0.0, self.now() - intended))
                if reason is None and rt == "register":
                    rid = body.get("id")
                if reason is None:
                    break
                retry = step.retry
                if (
                    reason not in retry.retry_on
                    or attempt >= retry.max_attempts
                    or decision(DECISION_SEED, index, give_up_slot(i, attempt)) < retry.give_up
                ):
                    recorder.step(step.name, "failed", self.now())
                    return
                rng = rng or random.Random(decision_seed(SEED, index))
                wait = min(retry.max_backoff, retry.backoff * retry.multiplier ** (attempt - 1))
                wait *= 1.0 + retry.jitter * (2.0 * rng.random() - 1.0)
                attempt += 1
                gevent.sleep(max(0.0, wait / SCENARIO.run.compress))
            recorder.step(step.name, "completed", self.now(), self.now() - began)

    def read_mailbox(self, rid: str, wait: float = 60.0) -> str | None:
        """The registrant reads their email: poll the test mailbox until the token is there."""
        deadline = self.now() + wait
        while self.now() < deadline:
            path = f"/test/mailbox/{rid}"
            IN_FLIGHT[0] += 1
            try:
                answer = self.http.request("GET", path)
            finally:
                IN_FLIGHT[0] -= 1
            self.http.report("GET", "mailbox" + self.side.label, path, answer, None)  # "not delivered yet" is an expected answer
            if answer.status == 200:
                found = answer.json()
                if isinstance(found, dict) and "token" in found:
                    return str(found["token"])
            gevent.sleep(0.1)
        return None

    def send(
        self, rt: str, name: str, me: dict[str, str], rid: str | None, token: str | None, payload: float | None
    ) -> tuple[str | None, dict[str, Any]]:
        if rt == "register":
            return self.call(rt, name, "POST", "/api/register", _json(me), JSON_HEADERS)
        if rt == "verify_email":
            return self.call(rt, name, "POST", "/api/verify-email", _json({"token": token or ""}), JSON_HEADERS)
        if rt == "upload_photo":
            size = int(payload or 20_000)
            photo = JPEG_HEADER + b"\x00" * max(0, size - len(JPEG_HEADER))
            boundary = "surgecapboundary"
            body = (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="registrant_id"\r\n\r\n{rid}\r\n'
                    f'--{boundary}\r\nContent-Disposition: form-data; name="photo"; filename="me.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
                ).encode()
                + photo
                + f"\r\n--{boundary}--\r\n".encode()
            )
            return self.call(rt, name, "POST", "/api/photo", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if rt == "verify_nik":
            return self.call(rt, name, "POST", "/api/verify-nik", _json({"registrant_id": rid or "", "nik": me["nik"]}), JSON_HEADERS)
        return self.call(rt, name, "POST", "/api/join-batch", _json({"registrant_id": rid or "", "batch_id": "wave-1"}), JSON_HEADERS)


def _usable_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 128 and value.isascii() and value.replace("-", "").replace("_", "").isalnum()


def _json(payload: dict[str, str]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


TICK = 0.002  # seconds: the dispatcher wakes at most this often and releases all that fell due


def _dispatch() -> None:
    """Release arrivals into the queue at their intended times (to within TICK)."""
    while not PACER.done:
        now = time.monotonic() - CLOCK["start"]
        for index, intended in PACER.release(now):
            if AGAINST:  # both sides, the first alternating
                first = index % 2
                QUEUE.put((index, intended, SIDES[first]))
                QUEUE.put((index, intended, SIDES[1 - first]))
            else:
                QUEUE.put((index, intended, SIDES[0]))
        due = PACER.next_due()
        if due is not None:
            gevent.sleep(max(TICK, due - (time.monotonic() - CLOCK["start"])))


def _scrape_once(host: str) -> None:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{host.rstrip('/')}/metrics", timeout=SCRAPE_TIMEOUT) as reply:  # noqa: S310 - the run's own target
            text = reply.read().decode("utf-8", "replace")
    except OSError:
        return  # a missed scrape widens the next one; nothing is lost
    snap = snapshot(text, time.monotonic())
    if snap.has_stations:
        SNAPS.append(snap)


# seconds a scrape may take: an overloaded server answers late, and its metrics then matter most (at 2 s a saturated
# server's scrapes all failed after its first 12 s; the next scrape waits for this one)
SCRAPE_TIMEOUT = 10.0
SCRAPE_EVERY = 1.0  # seconds: the shortest time between scrapes (the machine's speed swings within a recording interval)
MAX_SCRAPES = 600  # per run, at most about this many (a day-long run scrapes less often than SCRAPE_EVERY)


def _scrape(host: str) -> None:
    """Scrape station metrics at the start, at every interval boundary of the run and evenly between (about every second)."""
    per = max(1, min(int(RECORDER.interval // SCRAPE_EVERY), MAX_SCRAPES // RECORDER.n))
    k = 0
    while True:
        _scrape_once(host)
        if k >= RECORDER.n * per:
            CLOCK["scraped"] = time.monotonic()  # the window's last boundary is in
        k += 1
        gevent.sleep(max(0.0, CLOCK["start"] + k * RECORDER.interval / per - time.monotonic()))


SNAPS: list[Snapshot] = []
IN_FLIGHT = [0]  # requests sent and not yet answered


def _finish_early(environment: Environment) -> None:
    """End a run once the window is over, every arrival was taken and no request is in flight.

    Without this a run always lasts its window plus the grace.  What a journey
    would do after the window (its next step after a think time) is not
    counted, so only the requests already sent are waited for.
    """
    gevent.sleep(max(0.0, CLOCK["start"] + DURATION - time.monotonic()))
    while True:
        idle = PACER.done and QUEUE.empty() and IN_FLIGHT[0] == 0
        if idle and ("scraper" not in CLOCK or "scraped" in CLOCK):
            environment.stop_timeout = 0  # nothing is in flight: journeys between requests are stopped at once
            if environment.runner is not None:
                gevent.spawn(environment.runner.quit)  # not from this greenlet: stopping kills it
            return
        gevent.sleep(0.1)


def _progress() -> None:
    """A line every 2 s on stdout: elapsed/total, arrivals, requests/s, p95, errors, late arrivals."""

    last_n, last_t = 0, time.monotonic()
    while True:
        gevent.sleep(2.0)
        now = time.monotonic()
        series = RECORDER.result.requests.values()
        n = sum(sum(s.started) for s in series)
        errors = sum(sum(sum(c) for c in s.failed.values()) for s in series)
        k = min(RECORDER.n - 1, int((now - CLOCK["start"]) // RECORDER.interval))
        # the slowest request type's p95 over this interval and the last: a fresh interval alone may hold nothing yet
        recent = [Histogram().merge(s.latency[k]).merge(s.latency[k - 1]) if k > 0 else s.latency[k] for s in series]
        p95 = max((h.percentile(95) for h in recent if h.count), default=None)
        lat = PACER.lateness
        sys.stdout.write(
            f"loadtest {now - CLOCK['start']:5.0f}s/{DURATION:.0f}s  arrivals {lat.started}/{PACER.total} "
            f"(dropped {lat.dropped}, late>100ms {lat.late_100ms})  {(n - last_n) / (now - last_t):6.1f} req/s  "
            f"p95 {'     -' if p95 is None else f'{p95 * 1000:6.0f}'} ms  errors {errors}\n"
        )
        sys.stdout.flush()
        last_n, last_t = n, now


@events.test_start.add_listener
def _start(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        return  # the workers pace and run the arrivals
    # Everything loaded so far (Locust, the scenario, the arrival trace) lives for
    # the whole run: out of the collector's sight, so that its full collections
    # scan only what the run makes.  Without this they took a fifth of the
    # registrant's CPU (py-spy, 1,000 arrivals/s).
    gc.freeze()
    CLOCK["start"] = time.monotonic()
    CLOCK["dispatcher"] = gevent.spawn(_dispatch)
    if SETTINGS.progress:
        CLOCK["progress"] = gevent.spawn(_progress)  # type: ignore[assignment]
    if SETTINGS.metrics and WORKER_INDEX == 0 and environment.host:
        CLOCK["scraper"] = gevent.spawn(_scrape, environment.host)  # type: ignore[assignment]
    if isinstance(environment.runner, LocalRunner):
        CLOCK["finisher"] = gevent.spawn(_finish_early, environment)  # type: ignore[assignment]


RESULTS = Results(WORKERS, OUT)  # on the master: the workers' results, merged when the run stops


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, (MasterRunner, WorkerRunner)):
        RESULTS.listen(environment.runner)


@events.test_stopping.add_listener
def _stopping(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        environment.runner.send_message(STOP_MESSAGE)


def _meta(side: Side, host: str | None) -> dict[str, Any]:
    """What a side's result records about the run: seed, target, window, and how its arrivals fared."""
    lat = side.lateness
    queued = sum(1 for item in QUEUE.queue if item[2] is side)
    return {
        "seed": SEED,
        "scenario_file": SCENARIO.path,
        "host": host,
        "duration": DURATION,
        "arrivals_planned": PACER.total,
        "worker": WORKER_INDEX,
        "workers": WORKERS,
        "arrivals_started": lat.started,
        "arrivals_dropped": lat.dropped,
        "arrivals_not_reached": PACER.not_started(queued),
        "late_over_100ms": lat.late_100ms,
        "share_on_time_100ms": lat.share_on_time,
        "max_lateness": lat.max_late,
        "wall_seconds": round(time.monotonic() - CLOCK.get("start", time.monotonic()), 3),
        **({"ab_side": "current" if side.index == 0 else "against"} if AGAINST else {}),
    }


def _stations() -> dict[str, StationSeries] | None:
    """The station series scraped from the target's /metrics, when scraped."""
    if not SNAPS or "start" not in CLOCK:
        return None
    return station_series(SNAPS, CLOCK["start"], RECORDER.interval, RECORDER.n)


@events.test_stop.add_listener
def _stop(environment: Environment, **_: Any) -> None:
    if CLOCK.get("stopped"):
        return  # a worker is stopped by our message and again by Locust's quit
    CLOCK["stopped"] = True
    if isinstance(environment.runner, MasterRunner):
        RESULTS.collect()
        return
    for name in ("progress", "dispatcher", "scraper", "finisher"):
        if name in CLOCK:
            CLOCK.pop(name).kill()
    result = RECORDER.finish(_meta(SIDES[0], environment.host), _stations())
    if OUT:
        save(result, OUT)
        Path(OUT, "lateness.json").write_text(json.dumps(result.meta, indent=1, default=str))
        if SNAPS and "start" in CLOCK:
            Path(OUT, "scrapes.json").write_text(json.dumps([snap.to_dict(CLOCK["start"]) for snap in SNAPS]))
        if AGAINST:
            other = SIDES[1].recorder.finish(_meta(SIDES[1], AGAINST))
            save(other, Path(OUT, "against"))
    if isinstance(environment.runner, WorkerRunner):
        send_result(environment.runner, WORKER_INDEX, result)


@events.quitting.add_listener
def _final_csv(environment: Environment, **_: Any) -> None:
    """Write Locust's CSV files once more, complete.

    Locust rewrites them once a second while a run goes; a run that ends right
    after its last answer (see :func:`_finish_early`) would leave that last
    second out of ``*_stats.csv``.
    """
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if not prefix or isinstance(environment.runner, WorkerRunner):
        return
    writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
    for suffix, rows in (
        ("_stats.csv", writer.requests_csv),
        ("_failures.csv", writer.failures_csv),
        ("_exceptions.csv", writer.exceptions_csv),
    ):
        with open(f"{prefix}{suffix}", "w", newline="") as f:
            rows(csv.writer(f))


if __name__ == "__main__":
    from locust import run_single_user

    run_single_user(Registrant)

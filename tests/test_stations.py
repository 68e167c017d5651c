"""Stations: the event-driven FCFS station and the closed-form email sender agree."""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import Any

import numpy as np
import pytest
import simpy

from models.stations import INF, Registry, Sender, Station


def test_sender_matches_a_single_server_station() -> None:
    # Same arrivals into a one-server FCFS Station with a fixed service time and into the
    # closed-form Sender: identical delivery times, waits, queue lengths and busy time.
    rate = 5.0
    env = simpy.Environment()
    station = Station(env, "s", 1, None)
    sender = Sender(env, "email", [(-INF, rate)])
    arrivals = np.cumsum(np.random.default_rng(3).exponential(1 / 4.5, 4000))
    delivered_station: list[float] = []
    delivered_sender: list[float] = []
    flushed = {"station": [], "sender": []}

    def source():
        for t in arrivals:
            yield env.timeout(t - env.now)
            ev = station.request(1 / rate)
            ev.callbacks.append(lambda e: delivered_station.append(env.now))
            delivered_sender.append(sender.send())

    def monitor():
        while env.now < arrivals[-1] + 1000:
            yield env.timeout(60)
            flushed["station"].append(station.flush())
            flushed["sender"].append(sender.flush())

    env.process(source())
    env.process(monitor())
    env.run()
    assert delivered_sender == pytest.approx(delivered_station, abs=1e-9)
    tot = {k: [sum(x) for x in zip(*[row[:7] for row in v], strict=False)] for k, v in flushed.items()}
    arrivals_st, _, _, waited_st, busy_st, cap_st, queue_st = tot["station"]
    arrivals_se, _, _, waited_se, busy_se, cap_se, queue_se = tot["sender"]
    assert arrivals_st == arrivals_se == len(arrivals)
    assert waited_st == waited_se
    assert busy_se == pytest.approx(busy_st) == pytest.approx(len(arrivals) / rate)
    assert queue_se == pytest.approx(queue_st)
    assert max(r[7] for r in flushed["sender"]) == max(r[7] for r in flushed["station"])
    # per interval the sender's busy time is exact: never more than the interval
    assert all(r[4] <= 60 + 1e-9 for r in flushed["sender"])


def test_sender_follows_rate_changes() -> None:
    env = simpy.Environment()
    sender = Sender(env, "email", [(-INF, 1.0), (10.0, 4.0)])
    times = [sender.send() for _ in range(12)]  # all queued at t = 0
    # ten at 1/s (done at 10 s), then two at 4/s
    assert times[:10] == pytest.approx([float(i) for i in range(1, 11)])
    assert times[10:] == pytest.approx([10.25, 10.5])


def test_station_sheds_when_full_and_abandons_at_deadline() -> None:
    env = simpy.Environment()
    st = Station(env, "s", servers=1, limit=1)
    answers: dict[str, object] = {}

    def client(name: str, deadline: float):
        answers[name] = yield st.request(10.0, deadline)

    env.process(client("first", INF))  # served 0..10
    env.process(client("second", 3.0))  # waits, gives up at 3
    env.process(client("third", INF))  # the one waiting place is taken: shed at once
    env.run(until=5)
    assert answers == {"third": "full", "second": "abandoned"}
    env.run(until=11)
    assert answers["first"] is None


def test_registry_rate_limit_quota_and_timeout() -> None:
    env = simpy.Environment()
    reg = Registry(env, servers=1, limit=None, rate_limit=2.0, burst=2.0, daily_quota=3, mismatch=0.0, uniform=lambda: 0.5)
    answers: list[object] = []

    def caller(latency: float, timeout: float):
        answers.append((yield reg.call(latency, timeout)))

    for _ in range(3):  # burst of 2 passes, the third is refused with 429
        env.process(caller(0.1, 10.0))
    env.run(until=1)
    assert sorted(map(str, answers)) == ["None", "None", "rate_limited"]
    answers.clear()
    env.process(caller(5.0, 1.0))  # third of the day's quota: served, but slower than the timeout
    env.run(until=3)
    assert answers == ["timeout"]
    assert reg.busy == 1, "the registry still works on a timed-out call"
    env.process(caller(0.1, 10.0))  # quota of 3 a day is used up
    env.run(until=4)
    assert answers[-1] == "quota"


def test_a_held_server_is_busy_until_released_and_the_next_waits() -> None:
    # one server: A holds it from t=0 to its release at t=3; B asks at t=1 and is given it at t=3
    env = simpy.Environment()
    station = Station(env, "db", 1, None)
    log: list[tuple[str, float]] = []

    def a():
        got = yield station.hold()
        assert got is None
        log.append(("a", env.now))
        yield env.timeout(3)
        station.release(0.0)

    def b():
        yield env.timeout(1)
        yield station.hold()
        log.append(("b", env.now))
        yield env.timeout(2)
        station.release(3.0)

    env.process(a())
    env.process(b())
    env.run()
    assert log == [("a", 0.0), ("b", 3.0)]
    arrivals, _, _, waited, busy, _, _, _, waits = station.flush()
    assert (arrivals, waited, busy) == (2, 1, pytest.approx(5.0))
    assert waits == [pytest.approx(2.0)]


def test_processor_steps_sit_inside_the_station_visits() -> None:
    # a register request over [web, db] with 5 steps, db threaded: web held through its resumption step, db through the
    # thread's step (served ahead of the loop's steps: it holds the lock), the step that resumes the request once the
    # thread is done, and its resumption after the service; the 1 step left goes to the gap before web
    from models.routes import DELAY, HOLD, RELEASE, RESUME, THREAD, VISIT, cpu_legs

    env = simpy.Environment()
    cpu, web, db = Station(env, "cpu", 1, None), Station(env, "web", 8, None), Station(env, "db", 2, None)
    legs = cpu_legs([(web, lambda: 0.025), (db, lambda: 0.004)], cpu, 5, lambda: 0.0002, frozenset({"db"}))
    kinds = [(k, st.name if st is not None else None) for k, st, _ in legs]
    assert kinds == [
        (VISIT, "cpu"),
        (HOLD, "web"),
        (RESUME, "cpu"),
        (DELAY, None),
        (VISIT, "cpu"),
        (RELEASE, "web"),
        (HOLD, "db"),
        (RESUME, "cpu"),
        (THREAD, "cpu"),
        (VISIT, "cpu"),
        (DELAY, None),
        (VISIT, "cpu"),
        (RELEASE, "db"),
    ]


def test_a_requests_own_computation_joins_its_resumption_inside_the_first_station() -> None:
    # system.cpu.work (e.g. a key stretch): the same legs, but the step that resumes it inside web carries the work too
    # (a WORK leg: step and computation, each timed by its own law)
    from models.routes import THREAD, VISIT, WORK, cpu_legs

    env = simpy.Environment()
    cpu, web, db = Station(env, "cpu", 1, None), Station(env, "web", 8, None), Station(env, "db", 2, None)
    plain = cpu_legs([(web, lambda: 0.025), (db, lambda: 0.004)], cpu, 5, lambda: 0.0002, frozenset({"db"}))
    legs = cpu_legs([(web, lambda: 0.025), (db, lambda: 0.004)], cpu, 5, lambda: 0.0002, frozenset({"db"}), work=lambda: 0.010)
    assert [st for _, st, _ in legs] == [st for _, st, _ in plain]
    assert [k for k, _, _ in legs] == [WORK if j == 4 else k for j, (k, _, _) in enumerate(plain)]  # web's resumption

    def cost(k: int, f: Any) -> float:
        return round(f[0]() + f[1](), 6) if k == WORK else round(f(), 6)

    costs = [cost(k, f) for k, _, f in legs if k in (VISIT, THREAD, WORK) and f is not None]
    assert costs == [0.0002, 0.0102, 0.0002, 0.0002, 0.0002]  # before web, web's resumption (+ work), db's thread, db's resumption
    # with no steps at all the work still runs inside web
    alone = cpu_legs([(web, lambda: 0.025)], cpu, 0, None, frozenset(), work=lambda: 0.010)
    assert [(f[0], f[1]()) for k, _, f in alone if k == WORK] == [(None, 0.010)]
    assert [k for k, _, _ in alone].count(VISIT) == 0


def test_a_processor_law_times_steps_and_own_computation_each_by_its_own_points() -> None:
    # system.cpu.law: loop steps 1.5x at U = 0.2, 1x at 0.6, 0.8x at 0.9; own computation 1.2x, 1x, 1x; linear between
    # points, the nearest one's outside
    from models.routes import WORK, CpuRoute, cpu_legs
    from models.scenario import Cpu
    from models.stations import Processor, Station

    law = [{"at": 0.2, "steps": 1.5, "work": 1.2}, {"at": 0.6, "steps": 1.0, "work": 1.0}, {"at": 0.9, "steps": 0.8, "work": 1.0}]
    cpu = Cpu(cores=1, work={"default": {"steps": 2, "step": "1ms", "work": "10ms"}}, measured_at=0.6, law=law)
    assert cpu.factor(0.4) == pytest.approx(1.25) and cpu.work_factor(0.4) == pytest.approx(1.1)
    assert cpu.factor(0.75) == pytest.approx(0.9) and cpu.work_factor(0.75) == pytest.approx(1.0)
    assert cpu.factor(0.0) == pytest.approx(1.5) and cpu.factor(1.0) == pytest.approx(0.8) and cpu.work_factor(0.1) == pytest.approx(1.2)
    # the model at that utilization: a step resuming the request in its station (1 ms) and its 10 ms computation, each by its law
    env = simpy.Environment()
    proc = Processor(env, "cpu", 1, cpu.factor, start_u=0.4, work_factor=cpu.work_factor)
    web = Station(env, "web", 4, None)
    legs = cpu_legs([(web, lambda: 0.005)], proc, 2, lambda: 0.001, frozenset(), work=lambda: 0.010)
    assert [k for k, _, _ in legs].count(WORK) == 1
    model = type("M", (), {"env": env})()
    done = env.event()
    route = CpuRoute(model, legs, math.inf, done)  # type: ignore[arg-type]
    route.next(None)
    env.run(done)
    # two steps: 1 ms x 1.25 each; the computation 10 ms x 1.1; the station's 5 ms
    assert env.now == pytest.approx(2 * 0.00125 + 0.011 + 0.005)


def test_the_first_stations_busy_time_holds_the_requests_own_computation_but_not_the_rest_of_its_step() -> None:
    # the server lets its first station go after the key stretch, in the step that resumed the request there, and goes
    # on in that step: web (5 ms service) is busy for the service and the 10 ms computation, not the 1 ms of loop work
    # in the same step (nor the step before it, outside the station)
    from types import SimpleNamespace

    from models.routes import CpuRoute, cpu_legs
    from models.stations import Processor

    env = simpy.Environment()
    proc = Processor(env, "cpu", 1, lambda u: 1.0, 0.5)
    web = Station(env, "web", 4, None)
    reply = env.event()
    legs = cpu_legs([(web, lambda: 0.005)], proc, 2, lambda: 0.001, frozenset(), work=lambda: 0.010)
    CpuRoute(SimpleNamespace(env=env), legs, math.inf, reply).next(None)  # type: ignore[arg-type]
    env.run(reply)
    assert env.now == pytest.approx(0.001 + 0.005 + 0.011)
    busy = web.flush()[4]
    assert busy == pytest.approx(0.005 + 0.010)


def test_a_visit_that_waited_for_its_station_is_resumed_by_the_processor_before_it_goes_on() -> None:
    # web has one slot; A takes it at 0 (free: no resume step), B waits.  A's resumption runs 10-11 ms and lets the slot
    # go; the slot is B's, but a 5 ms step that came at 10.5 ms runs first (11-16 ms), so B's 1 ms resume step runs
    # 16-17 ms, and only then its 10 ms service and its 1 ms resumption: B is answered at 28 ms.  The slot counts busy
    # from 17 ms (the server's own accounting starts once the waiter runs): 10 ms each
    from types import SimpleNamespace

    from models.routes import CpuRoute, cpu_legs
    from models.stations import Processor

    env = simpy.Environment()
    proc = Processor(env, "cpu", 1, lambda u: 1.0, 0.5)
    web = Station(env, "web", 1, None)
    model = SimpleNamespace(env=env)
    done = {}

    def route(name: str) -> None:
        reply = env.event()
        reply.callbacks.append(lambda _e: done.__setitem__(name, env.now))
        CpuRoute(model, cpu_legs([(web, lambda: 0.010)], proc, 1, lambda: 0.001, frozenset()), math.inf, reply).next(None)  # type: ignore[arg-type]

    def blocker():  # type: ignore[no-untyped-def]
        yield env.timeout(0.0105)
        yield proc.request(0.005)

    route("A")
    route("B")
    env.process(blocker())
    env.run()
    assert done["A"] == pytest.approx(0.011) and done["B"] == pytest.approx(0.028)
    assert web.busy_area == pytest.approx(0.020)
    assert proc.n_arrivals == 4  # A's resumption, the blocker, B's resume step and B's resumption


def test_a_processor_law_must_rise_in_utilization() -> None:
    from pydantic import ValidationError

    from models.scenario import Cpu

    with pytest.raises(ValidationError, match="must increase"):
        Cpu(work={"default": {"steps": 1, "step": "1ms"}}, law=[{"at": 0.6, "steps": 1.0}, {"at": 0.2, "steps": 1.4}])
    with pytest.raises(ValidationError):
        Cpu(work={"default": {"steps": 1, "step": "1ms"}}, law=[{"at": 0.6, "steps": 1.0}])  # one point is no law


def test_processor_steps_get_cheaper_as_it_gets_busier() -> None:
    # system.cpu.speedup: step times scale by 1 - speedup x (U - measured_at), U over the last window (1 s)
    from models.scenario import Cpu
    from models.stations import Processor

    # between the two measured utilizations (here 0 and 0.8), never beyond them
    cpu = Cpu(cores=1, work={"default": {"steps": 1, "step": "1ms"}}, low_at=0.0, measured_at=0.8, speedup=1.0)
    assert cpu.factor(0.8) == pytest.approx(1.0) and cpu.factor(0.4) == pytest.approx(1.4) and cpu.factor(0.95) == pytest.approx(1.0)
    cpu = Cpu(cores=1, work={"default": {"steps": 1, "step": "1ms"}}, low_at=0.1, measured_at=0.2, speedup=1.0)
    assert cpu.factor(0.2) == pytest.approx(1.0) and cpu.factor(0.0) == pytest.approx(1.1)
    env = simpy.Environment()
    cpu = Cpu(cores=1, work={"default": {"steps": 1, "step": "1ms"}}, low_at=0.0, measured_at=0.8, speedup=1.0)
    proc = Processor(env, "cpu", 1, cpu.factor, start_u=0.8)
    seen: list[float] = []

    def work():
        for _ in range(6):  # 0.1 s of work every 0.1 s for 0.6 s: busy 100 %, then idle
            seen.append(proc.factor())
            yield proc.request(0.1)
        yield env.timeout(1.0)
        seen.append(proc.factor())

    env.process(work())
    env.run()
    assert seen[0] == pytest.approx(1.0)  # no window complete yet: the measured point
    assert seen[-1] == pytest.approx(cpu.factor(0.6 / 1.6))  # 0.6 s of work in the 1.6 s since the start


def test_processor_runs_batches_a_lock_take_waits_for_the_batch_and_a_thread_goes_first() -> None:
    # A takes the idle processor at 0 (1 ms); B and C come during A, so they form the next batch (1-2 ms, 2-3 ms).
    # A lock take asked for at 1.5 ms, during B, waits for that batch to end at 3 ms, not for B's end at 2 ms.
    # One asked for during a 20 ms step is let go after the switch interval (5 ms).  A worker thread's work asked for
    # at 1.6 ms (0.5 ms; it holds the lock) runs as soon as B ends, ahead of C, and inside the batch: C ends at 3.5 ms.
    from models.stations import SWITCH_INTERVAL, Processor

    env = simpy.Environment()
    cpu = Processor(env, "cpu", 1, lambda u: 1.0, 0.0)
    got: dict[str, float] = {}

    def step(name: str, at: float, service: float) -> Generator[simpy.Event, None, None]:
        yield env.timeout(at)
        yield cpu.request(service)
        got[name] = env.now

    def lock(name: str, at: float) -> Generator[simpy.Event, None, None]:
        yield env.timeout(at)
        yield cpu.boundary()
        got[name] = env.now

    def thread(name: str, at: float, service: float) -> Generator[simpy.Event, None, None]:
        yield env.timeout(at)
        yield cpu.urgent(service)
        got[name] = env.now

    for name, at, service in (("A", 0.0, 0.001), ("B", 0.0002, 0.001), ("C", 0.0004, 0.001), ("D", 0.010, 0.020)):
        env.process(step(name, at, service))
    env.process(lock("lock in batch", 0.0015))
    env.process(thread("thread", 0.0016, 0.0005))
    env.process(lock("lock in long step", 0.011))
    env.process(lock("lock when idle", 0.005))
    env.run()
    assert got["B"] == pytest.approx(0.002) and got["thread"] == pytest.approx(0.0025) and got["C"] == pytest.approx(0.0035)
    assert got["lock in batch"] == pytest.approx(0.0035)
    assert got["lock in long step"] == pytest.approx(0.011 + SWITCH_INTERVAL)
    assert got["lock when idle"] == pytest.approx(0.005)


def test_in_the_next_batch_steps_woken_by_io_go_before_those_woken_by_a_timer_whenever_it_came_due() -> None:
    # As both event loops run a turn (libuv: its ready callbacks, the poll's I/O callbacks, then the timers that came
    # due; asyncio: the I/O events' callbacks, then the due timers' handles, each waking its task for the next turn).
    # A takes the idle processor at 0 (1 ms).  During A: T (woken by a timer, 0.3 ms) at 0.2 ms, then I (woken by I/O:
    # a new request or a reply, 0.5 ms) at 0.6 ms.  The next batch is I then T: I ends at 1.5 ms, T at 1.8 ms (woken
    # by I/O, T would have run first and ended at 1.3 ms).  A second timer's step (U, 0.1 ms, at 0.9 ms) runs after T:
    # timers keep their own order.
    from models.stations import Processor

    env = simpy.Environment()
    cpu = Processor(env, "cpu", 1, lambda u: 1.0, 0.0)
    got: dict[str, float] = {}

    def step(name: str, at: float, service: float, timer: bool) -> Generator[simpy.Event, None, None]:
        yield env.timeout(at)
        yield cpu.woken(service, timer=timer)
        got[name] = env.now

    steps = (("A", 0.0, 0.001, False), ("T", 0.0002, 0.0003, True), ("I", 0.0006, 0.0005, False), ("U", 0.0009, 0.0001, True))
    for name, at, service, timer in steps:
        env.process(step(name, at, service, timer))
    env.run()
    assert got["A"] == pytest.approx(0.001) and got["I"] == pytest.approx(0.0015)
    assert got["T"] == pytest.approx(0.0018) and got["U"] == pytest.approx(0.0019)


def test_in_the_next_batch_steps_made_ready_by_steps_go_before_those_woken_by_a_timer_or_io() -> None:
    # A takes the idle processor at 0 (1 ms).  During A: W (woken by a timer, 0.2 ms) at 0.2 ms, then R (made ready by a
    # step: a slot handed on, 1 ms) at 0.4 ms.  The loop finds W only when it polls and runs its timers after A's batch,
    # so the next batch is R then W: R ends at 2 ms, W at 2.2 ms (in arrival order W would end at 1.2 ms, R at 2.2 ms).
    # A step woken while the processor is idle starts at once (X at 5 ms); one server is one loop, several are not
    # batched, so there woken is plain FIFO.
    from models.stations import Processor

    env = simpy.Environment()
    cpu = Processor(env, "cpu", 1, lambda u: 1.0, 0.0)
    got: dict[str, float] = {}

    def step(name: str, at: float, service: float, woken: bool) -> Generator[simpy.Event, None, None]:
        yield env.timeout(at)
        yield cpu.woken(service) if woken else cpu.request(service)
        got[name] = env.now

    for name, at, service, woken in (
        ("A", 0.0, 0.001, True),
        ("W", 0.0002, 0.0002, True),
        ("R", 0.0004, 0.001, False),
        ("X", 0.005, 0.001, True),
    ):
        env.process(step(name, at, service, woken))
    env.run()
    assert got["A"] == pytest.approx(0.001) and got["R"] == pytest.approx(0.002) and got["W"] == pytest.approx(0.0022)
    assert got["X"] == pytest.approx(0.006)

    env2 = simpy.Environment()
    multi = Processor(env2, "cpu", 2, lambda u: 1.0, 0.0)
    done: list[str] = []

    def job(name: str, at: float, woken: bool) -> Generator[simpy.Event, None, None]:
        yield env2.timeout(at)
        yield multi.woken(0.001) if woken else multi.request(0.001)
        done.append(name)

    for name, at, woken in (("a", 0.0, True), ("b", 0.0, True), ("w", 0.0001, True), ("r", 0.0002, False)):
        env2.process(job(name, at, woken))
    env2.run()
    assert done == ["a", "b", "w", "r"]


def test_a_processor_follows_its_measured_speed_trace() -> None:
    # trace (every 1 s: 1.0, 2.0, 0.5): a step's factor is the trace's in the interval the step starts in, on top of
    # the speedup law (flat here), counted from the processor's start; past the end the last factor holds
    from models.stations import Processor

    env = simpy.Environment(initial_time=100.0)
    proc = Processor(env, "cpu", 1, lambda u: 1.5, 0.0, trace=(1.0, (1.0, 2.0, 0.5)))
    seen: list[float] = []

    def probe() -> Generator[simpy.Event, None, None]:
        for _ in range(5):
            seen.append(proc.factor())
            yield env.timeout(0.9)

    env.process(probe())
    env.run()
    assert seen == pytest.approx([1.5, 1.5, 3.0, 0.75, 0.75])  # t = 0, 0.9, 1.8, 2.7, 3.6 s from the start

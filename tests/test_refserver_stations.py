"""The reference server's stations (refserver/stations.py): slots, a bounded queue, and shedding past it."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from refserver.config import ServerConfig, StationConfig
from refserver.cpu import WORKED
from refserver.service import Service
from refserver.stations import Overloaded, Station

from .refserver_helpers import config


def door_config(admission: str = "door", web_servers: int = 4, web_service: float = 0.0) -> ServerConfig:
    """A registration's route of web (with a key stretch) then a db of one slot and no queue."""
    stations = {
        "web": StationConfig(servers=web_servers, queue=10, service={"default": web_service}),
        "db": StationConfig(servers=1, queue=0, service={"default": 0.0}),
    }
    return config(stations=stations, work={"register": 1000}, admission=admission)


def stretched(svc: Service) -> float:
    """Registrations that did their key stretch."""
    return svc.clock.by_type["register"][WORKED] if "register" in svc.clock.by_type else 0


def test_a_full_queue_sheds_while_a_let_go_slot_waits_for_the_waiter_it_woke() -> None:
    # one slot, a queue of one: A holds the slot, B waits.  A lets go: the slot is B's, though B has not run yet (busy
    # reads 0 until it does).  C, arriving in that moment, finds the queue full and is shed at once; before, it joined
    # the queue past its limit (on a saturated server the db queue grew to three times its limit)
    async def scenario() -> tuple[list[str], int]:
        station = Station("db", servers=1, queue=1)
        seen: list[str] = []
        let_go = asyncio.Event()

        async def holder(name: str, wait_for: asyncio.Event | None = None) -> None:
            try:
                async with station.slot():
                    seen.append(f"{name} in")
                    if wait_for is not None:
                        await wait_for.wait()
            except Overloaded:
                seen.append(f"{name} shed")

        a = asyncio.create_task(holder("A", let_go))
        await asyncio.sleep(0)
        b = asyncio.create_task(holder("B"))
        await asyncio.sleep(0)
        assert station.waiting == 1
        let_go.set()
        await asyncio.sleep(0)  # A leaves its slot; B is woken but has not run
        most = station.waiting
        await holder("C")  # in this task, before B runs
        await asyncio.gather(a, b)
        return seen, most

    seen, waiting = asyncio.run(scenario())
    assert waiting == 1
    assert "C shed" in seen and seen.index("C shed") < seen.index("B in")
    assert seen.count("A in") == 1 and seen.count("B in") == 1


def test_with_no_queue_a_request_is_shed_only_when_every_slot_is_taken() -> None:
    async def scenario() -> list[str]:
        station = Station("web", servers=2, queue=0)
        seen: list[str] = []
        hold = asyncio.Event()

        async def one(name: str) -> None:
            try:
                async with station.slot():
                    seen.append(f"{name} in")
                    await hold.wait()
            except Overloaded:
                seen.append(f"{name} shed")

        tasks = [asyncio.create_task(one(n)) for n in "ABC"]
        await asyncio.sleep(0)
        hold.set()
        await asyncio.gather(*tasks)
        return seen

    assert sorted(asyncio.run(scenario())) == ["A in", "B in", "C shed"]


@pytest.mark.parametrize("queue", [None, 5])
def test_waiting_requests_get_the_slots_in_order(queue: int | None) -> None:
    async def scenario() -> list[str]:
        station = Station("db", servers=1, queue=queue)
        order: list[str] = []

        async def one(name: str) -> None:
            async with station.slot():
                order.append(name)
                await asyncio.sleep(0)

        await asyncio.gather(*(one(n) for n in "ABCD"))
        return order

    assert asyncio.run(scenario()) == ["A", "B", "C", "D"]


def test_a_request_that_waits_for_a_slot_is_told_to_the_clock_as_a_resume_step() -> None:
    # one slot: A takes it at once, B and C wait for it.  Each wait is one more step of the event loop's (the woken
    # request resumed), which calibration keeps out of a request's step count, as the model adds it itself
    from refserver.cpu import RESUMES, CpuClock

    async def scenario() -> CpuClock:
        clock = CpuClock()
        station = Station("db", servers=1, queue=None, on_wait=clock.resumed)

        async def one(rt: str) -> None:
            async with station.slot(rt):
                await asyncio.sleep(0)

        await asyncio.gather(one("register"), one("register"), one("verify_email"))
        async with station.slot("register"):  # free again: no wait
            pass
        return clock

    clock = asyncio.run(scenario())
    assert clock.by_type["register"][RESUMES] == 1 and clock.by_type["verify_email"][RESUMES] == 1
    assert 'surgecap_cpu_resumes_total{request="register"} 1' in clock.lines()


def test_the_step_that_resumes_a_request_after_its_wait_is_timed_apart() -> None:
    # one slot: verify_email takes it at once, register waits for it.  Each spends 20 ms of CPU in the step in which it
    # enters the slot: for register that step is the one that resumes it after its wait, and only its time counts as
    # resume time (part of the loop time); verify_email's entry is an ordinary step
    import time

    from refserver.cpu import RESUME_SUM, RESUMES, SUM, CpuClock

    def spin(seconds: float) -> None:
        until = time.thread_time() + seconds
        while time.thread_time() < until:
            pass

    async def scenario() -> CpuClock:
        clock = CpuClock()
        station = Station("db", servers=1, queue=None, on_wait=clock.resumed)

        async def one(rt: str) -> None:
            async with station.slot(rt):
                spin(0.02)
                await asyncio.sleep(0)

        async def timed(rt: str) -> None:  # in a task of its own, as the server runs each request
            await clock.timed(rt, one(rt))

        await asyncio.gather(timed("verify_email"), timed("register"))
        return clock

    clock = asyncio.run(scenario())
    reg, ver = clock.by_type["register"], clock.by_type["verify_email"]
    assert reg[RESUMES] == 1 and 0.02 <= reg[RESUME_SUM] < 0.02 + 0.01 and reg[RESUME_SUM] <= reg[SUM]
    assert ver[RESUMES] == 0 and ver[RESUME_SUM] == 0 and ver[SUM] >= 0.02
    assert any(line.startswith('surgecap_cpu_resume_seconds_total{request="register"} 0.02') for line in clock.lines())


def test_a_request_turned_away_by_admission_control_is_counted_apart_with_its_steps() -> None:
    # the clock times every request's steps; one that a full station turns away (its 503) is marked shed, and its steps
    # and their time are counted apart as well, so that calibration at an overload level can tell a served request's
    # work from a shed one's few steps
    from refserver.cpu import REQUESTS, SHED, SHED_STEPS, SHED_SUM, STEPS, SUM, CpuClock

    async def scenario() -> CpuClock:
        clock = CpuClock()
        station = Station("web", servers=1, queue=0)
        gate = asyncio.Event()

        async def handler(hold: bool) -> None:
            await asyncio.sleep(0)
            try:
                async with station.slot("register"):
                    if hold:
                        await gate.wait()
                    await asyncio.sleep(0)
            except Overloaded:
                clock.shed()  # as the server's handler does when it answers 503

        async def timed(hold: bool) -> None:
            await clock.timed("register", handler(hold))

        first = asyncio.create_task(timed(True))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        await asyncio.gather(*(asyncio.create_task(timed(False)) for _ in range(3)))  # the slot is taken: all three shed
        gate.set()
        await first
        return clock

    clock = asyncio.run(scenario())
    acc = clock.by_type["register"]
    assert acc[REQUESTS] == 4 and acc[SHED] == 3
    assert acc[SHED_STEPS] == 3 * 2  # each: its first step, then the one in which it is turned away
    assert acc[STEPS] == acc[SHED_STEPS] + 4  # the served one: first step, into the slot, woken by the gate, and out
    assert 0 < acc[SHED_SUM] <= acc[SUM]
    assert 'surgecap_cpu_shed_requests_total{request="register"} 3' in clock.lines()


def test_a_request_shed_at_its_second_station_takes_its_wait_at_the_first_with_it() -> None:
    # the web station's one slot is taken, so B waits for it (a resume step); once in, it finds the db station full and
    # is turned away.  Its resume is counted among the shed requests' too: calibration takes the served requests' resumes
    # as the total less the shed ones'
    from refserver.cpu import RESUMES, SHED, SHED_RESUMES, CpuClock

    async def scenario() -> CpuClock:
        clock = CpuClock()
        web = Station("web", servers=1, queue=None, on_wait=clock.resumed)
        db = Station("db", servers=1, queue=0, on_wait=clock.resumed)
        leave_web, gate = asyncio.Event(), asyncio.Event()

        async def holder() -> None:  # A: holds web, then moves on to db and stays
            async with web.slot("register"):
                await leave_web.wait()
            async with db.slot("register"):
                await gate.wait()

        async def late() -> None:  # B: waits for web, then finds db full
            try:
                async with web.slot("register"):
                    async with db.slot("register"):
                        pass
            except Overloaded:
                clock.shed()

        async def timed(coro: Coroutine[Any, Any, None]) -> None:
            await clock.timed("register", coro)

        first = asyncio.create_task(timed(holder()))
        await asyncio.sleep(0)
        second = asyncio.create_task(timed(late()))
        await asyncio.sleep(0)
        leave_web.set()
        await second
        gate.set()
        await first
        return clock

    acc = asyncio.run(scenario()).by_type["register"]
    assert acc[SHED] == 1 and acc[RESUMES] == acc[SHED_RESUMES] == 1


@pytest.mark.parametrize("admission", ["station", "door"])
def test_admission_at_the_door_turns_a_request_away_before_its_work_when_a_later_station_is_full(admission: str) -> None:
    # the db station's one slot is taken and it has no queue.  A registration (web, then db, with a key stretch in web)
    # admitted per station enters web, pays for its key stretch and is shed at db; admitted at the door it is turned away
    # before web, with no key stretch, and the shed counts at db either way
    cfg = door_config(admission)

    async def scenario() -> Service:
        svc = Service(cfg, b"k" * 32)
        async with svc.stations["db"].slot("join_batch"):
            with pytest.raises(Overloaded, match="db"):
                await svc.through("register")
        return svc

    svc = asyncio.run(scenario())
    assert svc.stations["db"].shed == 1 and svc.stations["web"].shed == 0
    worked = stretched(svc)
    if admission == "door":
        assert svc.stations["web"].served == 0 and worked == 0
    else:
        assert svc.stations["web"].served == 1 and worked == 1


def test_the_servers_admission_is_station_or_door() -> None:
    from refserver.config import ConfigError

    assert ServerConfig.from_dict({**config().to_dict(), "admission": "door"}).admission == "door"
    with pytest.raises(ConfigError, match="admission 'gate'"):
        ServerConfig.from_dict({**config().to_dict(), "admission": "gate"})


def test_at_the_door_a_request_that_waited_for_its_first_slot_is_checked_again_before_its_work() -> None:
    # web's one slot is taken, db is free: a registration passes the door and waits for web.  Meanwhile db fills; when the
    # registration gets web's slot it is turned away before its key stretch (its wait let db fill), counted at db
    cfg = door_config(web_servers=1)

    async def scenario() -> tuple[Service, BaseException | None]:
        svc = Service(cfg, b"k" * 32)
        web, db = svc.stations["web"], svc.stations["db"]
        leave_web, leave_db, in_db = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def hold(station: Station, entered: asyncio.Event | None, leave: asyncio.Event) -> None:
            async with station.slot("join_batch"):
                if entered is not None:
                    entered.set()
                await leave.wait()

        first = asyncio.create_task(hold(web, None, leave_web))
        await asyncio.sleep(0)
        registration = asyncio.create_task(svc.through("register"))
        await asyncio.sleep(0)
        assert web.waiting == 1  # it passed the door (db was free) and waits for web
        other = asyncio.create_task(hold(db, in_db, leave_db))
        await in_db.wait()
        leave_web.set()
        outcome = (await asyncio.gather(registration, return_exceptions=True))[0]
        leave_db.set()
        await asyncio.gather(first, other)
        return svc, outcome if isinstance(outcome, BaseException) else None

    svc, outcome = asyncio.run(scenario())
    assert isinstance(outcome, Overloaded) and outcome.station == "db"
    assert svc.stations["db"].shed == 1
    assert stretched(svc) == 0


def test_at_the_door_the_key_stretch_waits_for_the_last_check() -> None:
    # a registration passes the door and gets web's slot while db is free; during its 50 ms in web db fills.  The step that
    # would do its key stretch checks once more (the later stations take it in that same step) and turns it away first
    cfg = door_config(web_servers=1, web_service=0.05)

    async def scenario() -> tuple[Service, BaseException | None]:
        svc = Service(cfg, b"k" * 32)
        web, db = svc.stations["web"], svc.stations["db"]
        leave_db, in_db = asyncio.Event(), asyncio.Event()

        async def hold_db() -> None:
            async with db.slot("join_batch"):
                in_db.set()
                await leave_db.wait()

        registration = asyncio.create_task(svc.through("register"))
        while web.busy == 0:  # it is in web, in its service delay
            await asyncio.sleep(0)
        other = asyncio.create_task(hold_db())
        await in_db.wait()
        outcome = (await asyncio.gather(registration, return_exceptions=True))[0]
        leave_db.set()
        await other
        return svc, outcome if isinstance(outcome, BaseException) else None

    svc, outcome = asyncio.run(scenario())
    assert isinstance(outcome, Overloaded) and outcome.station == "db"
    assert svc.stations["web"].served == 1 and svc.stations["db"].shed == 1
    assert stretched(svc) == 0

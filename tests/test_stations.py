"""Stations: the event-driven FCFS station and the closed-form email sender agree."""

from __future__ import annotations

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
    tot = {k: [sum(x) for x in zip(*[row[:7] for row in v])] for k, v in flushed.items()}
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

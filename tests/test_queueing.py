"""The formulas against each other and against known closed forms."""

from __future__ import annotations

import math

import pytest

from models import queueing as q


def test_erlang_b_and_c_known_values() -> None:
    # B(1, a) = a / (1 + a); C(1, a) = a for a < 1
    assert q.erlang_b(1, 0.5) == pytest.approx(0.5 / 1.5)
    assert q.erlang_c(1, 0.7) == pytest.approx(0.7)
    # B(c, a) = (a^c / c!) / sum_k a^k / k!
    a, c = 7.0, 10
    direct = (a**c / math.factorial(c)) / sum(a**k / math.factorial(k) for k in range(c + 1))
    assert q.erlang_b(c, a) == pytest.approx(direct)


def test_mmc_reduces_to_mm1() -> None:
    m = q.mmc(lam=9, mu=10, c=1)
    assert m.wq == pytest.approx(0.9 / 1.0)
    assert m.w == pytest.approx(1 / (10 - 9))
    assert math.isinf(q.mmc(lam=10, mu=10, c=1).wq)


def test_mmck_tends_to_mmc_and_mmcc_is_erlang_b() -> None:
    assert q.mmck(lam=8, mu=1, c=10, k=10).p_block == pytest.approx(q.erlang_b(10, 8))
    big = q.mmck(lam=9, mu=1, c=10, k=2000)
    assert big.wq == pytest.approx(q.mmc(9, 1, 10).wq, rel=1e-6)


def test_erlang_a_limits() -> None:
    # very patient customers: Erlang C; theta = mu: M/M/inf, nobody is worse off for waiting
    patient = q.erlang_a(lam=9, mu=1, c=10, theta=1e-7)
    assert patient.p_wait == pytest.approx(q.erlang_c(10, 9), rel=1e-3)
    same = q.erlang_a(lam=5, mu=1, c=5, theta=1.0)
    # with theta = mu the number present is Poisson(a); P(abandon) = E[(N - c)+] / a
    a = 5.0
    pn = [math.exp(-a) * a**n / math.factorial(n) for n in range(80)]
    assert same.p_abandon == pytest.approx(sum(max(n - 5, 0) * p for n, p in enumerate(pn)) / a, rel=1e-6)


def test_jackson_tandem_without_feedback_is_sum_of_mm1() -> None:
    r = q.jackson(gamma=[2, 0], routing=[[0, 1], [0, 0]], mu=[5, 4], c=[1, 1])
    assert r.sojourn == pytest.approx(1 / (5 - 2) + 1 / (4 - 2))


def test_mva_and_operational_laws() -> None:
    x, r = q.mva([0.1], n_users=1, think=0.9)
    assert x == pytest.approx(1.0) and r[0] == pytest.approx(0.1)
    x_many, _ = q.mva([0.1, 0.05], n_users=200, think=1.0)
    assert x_many == pytest.approx(q.saturation_throughput([0.1, 0.05]), rel=1e-3)
    assert q.service_demand(0.6, 30) == pytest.approx(0.02)
    assert q.utilization_law(30, 0.02) == pytest.approx(0.6)
    assert q.littles_law(30, 0.5) == pytest.approx(15)
    assert q.response_time_law(100, 50, think=1.0) == pytest.approx(1.0)
    assert q.forced_flow(10, 3) == 30


def test_psa_follows_the_rate_and_servers_for_wait() -> None:
    out = q.psa([1.0, 5.0, 9.0, 12.0], mu=1.0, c=10)
    assert list(out["rho"]) == pytest.approx([0.1, 0.5, 0.9, 1.2])
    assert out["wq"][2] == pytest.approx(q.mmc(9, 1, 10).wq)
    assert math.isinf(out["wq"][3])
    c = q.servers_for_wait(lam=100, mu=1, max_wait=0.5, p_exceed=0.05)
    tail = lambda n: q.erlang_c(n, 100) * math.exp(-(n - 100) * 0.5)  # noqa: E731
    assert tail(c) <= 0.05 < tail(c - 1)

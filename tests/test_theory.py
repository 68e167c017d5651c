"""The simulator against exact queueing results.

Each case is a scenario file in tests/scenarios (so the scenario format is shown
able to express it), run for 10 independent replications.  The check, for a
figure with exact value x and replication mean m with 95 % confidence
half-width h (Student t, 9 degrees of freedom):

    |m - x| <= h          (the exact value lies inside the 95 % CI), and
    |m - x| <= 0.05 * x   (within 5 % relative).

Seeds are fixed in the files, so the suite is repeatable; the lengths are
chosen so that h is a few per cent of x.
"""

from __future__ import annotations

import pytest

from models import queueing
from models.loader import load_scenario
from models.simulate import Estimate, simulate, summarize

from .conftest import TEST_SCENARIOS

REPLICATIONS = 10


def run(name: str) -> dict[str, Estimate]:
    scenario = load_scenario(TEST_SCENARIOS / f"{name}.yaml")
    return summarize(simulate(scenario, replications=REPLICATIONS))


def check(est: Estimate, exact: float, rel: float = 0.05) -> None:
    assert est.n == REPLICATIONS
    assert abs(est.mean - exact) <= est.half_width, f"exact {exact:.5g} outside CI {est.mean:.5g} ± {est.half_width:.3g}"
    assert abs(est.mean - exact) <= rel * exact, f"mean {est.mean:.5g} not within {rel:.0%} of exact {exact:.5g}"


@pytest.mark.parametrize("name, lam, mu", [("mm1-rho05", 5.0, 10.0), ("mm1-rho09", 9.0, 10.0)])
def test_mm1_mean_wait(name: str, lam: float, mu: float) -> None:
    # M/M/1: Wq = rho / (mu - lam)
    est = run(name)
    exact = (lam / mu) / (mu - lam)
    check(est["station.q.mean_wait"], exact)


@pytest.mark.slow
def test_mmc_erlang_c() -> None:
    # M/M/c, c = 10, rho = 0.9: P(wait) = C(c, a); Wq = C(c, a) / (c mu - lam)
    est = run("mmc-10")
    exact = queueing.mmc(lam=9.0, mu=1.0, c=10)
    check(est["station.q.p_wait"], exact.p_wait)
    check(est["station.q.mean_wait"], exact.wq)


def test_mmck_blocking() -> None:
    # M/M/c/K: P(block) = pi_K of the birth-death chain with deaths mu * min(n, c)
    est = run("mmck")
    exact = queueing.mmck(lam=2.0, mu=1.0, c=2, k=5)
    check(est["station.q.p_shed"], exact.p_block)


def test_erlang_a_abandonment() -> None:
    # M/M/c+M: P(abandon) = theta * E[Lq] / lam (birth-death with deaths mu min(n,c) + theta (n-c)+)
    est = run("erlang-a")
    exact = queueing.erlang_a(lam=5.0, mu=1.0, c=5, theta=0.5)
    check(est["station.q.p_abandon"], exact.p_abandon)


def test_jackson_network_with_feedback() -> None:
    # Open Jackson network: lam = gamma (I - P)^-1, each node M/M/c, sojourn = sum(lam_i W_i) / gamma
    est = run("jackson")
    exact = queueing.jackson(
        gamma=[3.0, 0.0, 0.0],
        routing=[[0, 1, 0], [0, 0, 1], [0.25, 0, 0]],
        mu=[10.0, 8.0, 3.0],
        c=[1, 1, 2],
    )
    check(est["step.route.duration_mean"], exact.sojourn)
    # the visits per customer follow from the routing: 1 / (1 - 0.25)
    visits = est["station.a.arrivals"].mean / est["arrivals"].mean
    assert visits == pytest.approx(exact.visits[0], rel=0.02)


@pytest.mark.slow
def test_mg1_processor_pollaczek_khinchine() -> None:
    # M/G/1 (the server's processor, system.cpu): Wq = lam E[S^2] / (2 (1 - rho)), E[S^2] = (1 + cv^2) m^2
    est = run("mg1-cpu")
    lam, m, cv = 100.0, 0.006, 1.5
    exact = lam * (1 + cv**2) * m * m / (2 * (1 - lam * m))
    check(est["station.cpu.mean_wait"], exact)
    check(est["station.cpu.utilization"], lam * m)


@pytest.mark.slow
def test_processor_with_two_speeds_is_a_mixture_of_mg1_queues() -> None:
    # The mg1-cpu queue on a processor that is 1.5 x slower half of the time (system.cpu.modes).  Step
    # times are scaled by f_fast = 1 / (1 - share + share x slow) = 0.8 and f_slow = 1.2, so the mean
    # step stays 6 ms and the utilization stays lam x m = 0.6 (Poisson arrivals see time averages).
    # Spells of 5 s are long against the queue's relaxation, so the mean wait is the time-weighted mix
    # of two M/G/1 queues: W = sum_i share_i lam (1 + cv^2) (f_i m)^2 / (2 (1 - lam f_i m)).
    # Tolerance 8 %: each switch costs a short transient, and the slow share itself varies by replication.
    est = run("mg1-cpu-modes")
    lam, m, cv = 100.0, 0.006, 1.5
    mix = sum(0.5 * lam * (1 + cv**2) * (f * m) ** 2 / (2 * (1 - lam * f * m)) for f in (0.8, 1.2))
    check(est["station.cpu.utilization"], lam * m)
    check(est["station.cpu.mean_wait"], mix, rel=0.08)
    steady = lam * (1 + cv**2) * m * m / (2 * (1 - lam * m))
    assert est["station.cpu.mean_wait"].mean > 1.15 * steady  # the steady processor's wait is 22 % below the mix

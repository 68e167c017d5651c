"""Exact and approximate queueing formulas: fast estimates and test oracles.

Notation: arrival rate ``lam`` (per second), service rate per server ``mu``,
``c`` servers, offered load ``a = lam / mu`` (Erlangs), utilization
``rho = a / c``.  Times are in seconds.

- Erlang B (M/M/c/c loss) and Erlang C (M/M/c delay)
- M/M/c/K (finite waiting room: blocking)
- Erlang A (M/M/c+M: exponential patience, abandonment)
- open Jackson networks (traffic equations, then M/M/c per station)
- exact MVA for closed networks
- the operational laws (utilization, Little, service demand, forced flow,
  response time, bottleneck bounds)
- the pointwise-stationary approximation (PSA) for a time-varying rate
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "erlang_b",
    "erlang_c",
    "MMc",
    "mmc",
    "MMcK",
    "mmck",
    "ErlangA",
    "erlang_a",
    "JacksonResult",
    "jackson",
    "mva",
    "utilization_law",
    "service_demand",
    "littles_law",
    "forced_flow",
    "response_time_law",
    "saturation_throughput",
    "psa",
    "servers_for_wait",
]


def erlang_b(c: int, a: float) -> float:
    """Blocking probability of M/M/c/c with offered load ``a`` Erlangs (stable recursion)."""
    if c < 0 or a < 0:
        raise ValueError("c and a must be non-negative")
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return b


def erlang_c(c: int, a: float) -> float:
    """Probability that an arrival waits in M/M/c (requires a < c)."""
    if a >= c:
        return 1.0
    b = erlang_b(c, a)
    return c * b / (c - a * (1 - b))


@dataclass(frozen=True)
class MMc:
    """Steady-state M/M/c figures."""

    rho: float
    p_wait: float
    wq: float  # mean wait in queue
    w: float  # mean time in system
    lq: float
    l: float  # noqa: E741


def mmc(lam: float, mu: float, c: int) -> MMc:
    """M/M/c (Erlang C).  Infinite waits when ``lam >= c * mu``."""
    a = lam / mu
    rho = a / c
    if rho >= 1:
        return MMc(rho, 1.0, math.inf, math.inf, math.inf, math.inf)
    pw = erlang_c(c, a)
    wq = pw / (c * mu - lam)
    return MMc(rho, pw, wq, wq + 1 / mu, lam * wq, lam * (wq + 1 / mu))


@dataclass(frozen=True)
class MMcK:
    """Steady-state M/M/c/K figures (K = servers + waiting places)."""

    p_block: float
    p_wait: float  # an admitted arrival waits
    wq: float  # mean wait of admitted arrivals
    w: float
    throughput: float
    utilization: float


def _log_birth_death(lam: float, death: Sequence[float] | np.ndarray) -> np.ndarray:
    """Stationary distribution of a birth-death chain with constant birth rate (log-space)."""
    logp = np.concatenate(([0.0], np.cumsum(math.log(lam) - np.log(np.asarray(death, dtype=float)))))
    logp -= logp.max()
    p = np.exp(logp)
    return p / p.sum()


def mmck(lam: float, mu: float, c: int, k: int) -> MMcK:
    """M/M/c/K with ``k >= c`` places in all."""
    if k < c:
        raise ValueError("K must be at least c")
    p = _log_birth_death(lam, mu * np.minimum(np.arange(1, k + 1), c))
    n = np.arange(k + 1)
    p_block = float(p[k])
    x = lam * (1 - p_block)
    lq = float(np.sum(np.maximum(n - c, 0) * p))
    wq = lq / x if x > 0 else 0.0
    p_wait = float(p[c:k].sum() / (1 - p_block)) if p_block < 1 else 1.0
    return MMcK(p_block, p_wait, wq, wq + 1 / mu, x, x / (c * mu))


@dataclass(frozen=True)
class ErlangA:
    """Steady-state M/M/c+M figures."""

    p_abandon: float
    p_wait: float
    wq: float  # mean time in queue, over all arrivals (abandoning ones included)
    throughput: float
    utilization: float


def erlang_a(lam: float, mu: float, c: int, theta: float, tol: float = 1e-13) -> ErlangA:
    """M/M/c+M: exponential patience with rate ``theta`` (mean patience 1/theta)."""
    if theta <= 0:
        raise ValueError("theta must be positive (use mmc for infinite patience)")
    deaths: list[float] = []
    n = 1
    logp = 0.0
    # extend the chain until the remaining probability mass is negligible
    while True:
        d = mu * min(n, c) + theta * max(n - c, 0)
        deaths.append(d)
        logp += math.log(lam) - math.log(d)
        if n > c and d > lam and logp < math.log(tol) - 5:
            break
        n += 1
    p = _log_birth_death(lam, deaths)
    states = np.arange(len(p))
    lq = float(np.sum(np.maximum(states - c, 0) * p))
    p_abandon = theta * lq / lam
    busy = float(np.sum(np.minimum(states, c) * p))
    return ErlangA(p_abandon, float(p[c:].sum()), lq / lam, busy * mu, busy / c)


@dataclass(frozen=True)
class JacksonResult:
    """Per-station arrival rates and figures, and the network's mean sojourn time."""

    lam: np.ndarray
    stations: list[MMc]
    sojourn: float  # mean time from entering to leaving the network
    visits: np.ndarray  # mean visits per customer to each station


def jackson(gamma: Sequence[float], routing: Sequence[Sequence[float]], mu: Sequence[float], c: Sequence[int]) -> JacksonResult:
    """Open Jackson network: external rates ``gamma``, routing matrix ``routing[i][j]``.

    Traffic equations λ = γ + λP; each station is then M/M/c at λᵢ, and by Little's
    law the mean sojourn is Σ λᵢ Wᵢ / Σ γ.
    """
    g = np.asarray(gamma, dtype=float)
    p = np.asarray(routing, dtype=float)
    lam = np.linalg.solve(np.eye(len(g)) - p.T, g)
    st = [mmc(float(lam_i), float(mu_i), int(c_i)) for lam_i, mu_i, c_i in zip(lam, mu, c, strict=True)]
    sojourn = float(sum(li * s.w for li, s in zip(lam, st, strict=True)) / g.sum())
    return JacksonResult(lam, st, sojourn, lam / g.sum())


def mva(demands: Sequence[float], n_users: int, think: float = 0.0) -> tuple[float, list[float]]:
    """Exact mean-value analysis of a closed network of single-server queues.

    Returns the throughput and the per-station mean residence times at ``n_users``.
    """
    q = [0.0] * len(demands)
    x = 0.0
    r = list(demands)
    for n in range(1, n_users + 1):
        r = [d * (1 + qk) for d, qk in zip(demands, q, strict=True)]
        x = n / (think + sum(r))
        q = [x * rk for rk in r]
    return x, r


def utilization_law(throughput: float, service_time: float, servers: int = 1) -> float:
    """U = X·S / c."""
    return throughput * service_time / servers


def service_demand(utilization: float, throughput: float, servers: int = 1) -> float:
    """Service demand law: D = U / X (U per server times c for a multi-server station)."""
    return utilization * servers / throughput


def littles_law(throughput: float, response_time: float) -> float:
    """N = X·R."""
    return throughput * response_time


def forced_flow(system_throughput: float, visits: float) -> float:
    """Xₖ = Vₖ·X."""
    return visits * system_throughput


def response_time_law(users: int, throughput: float, think: float = 0.0) -> float:
    """Interactive response time law: R = N / X − Z."""
    return users / throughput - think


def saturation_throughput(demands: Sequence[float], servers: Sequence[int] | None = None) -> float:
    """Bottleneck bound: X ≤ min over stations of cₖ / Dₖ."""
    cs = servers or [1] * len(demands)
    return min(c / d for d, c in zip(demands, cs, strict=True) if d > 0)


def psa(rates: Sequence[float] | np.ndarray, mu: float, c: int) -> dict[str, np.ndarray]:
    """Pointwise-stationary approximation: M/M/c at each instant's rate.

    Good when the rate changes slowly against the queue's relaxation time;
    where ρ ≥ 1 the stationary figures are infinite and the queue is growing.
    """
    lam = np.asarray(rates, dtype=float)
    out = [mmc(float(x), mu, c) if x > 0 else MMc(0.0, 0.0, 0.0, 1 / mu, 0.0, 0.0) for x in lam]
    return {
        "rho": np.array([m.rho for m in out]),
        "p_wait": np.array([m.p_wait for m in out]),
        "wq": np.array([m.wq for m in out]),
        "w": np.array([m.w for m in out]),
    }


def servers_for_wait(lam: float, mu: float, max_wait: float, p_exceed: float = 0.05) -> int:
    """Fewest servers with P(wait > max_wait) ≤ p_exceed in M/M/c.

    P(Wq > t) = C(c, a) · exp(−(cμ − λ) t).
    """
    c = max(1, math.floor(lam / mu) + 1)
    while True:
        pw = erlang_c(c, lam / mu)
        if pw * math.exp(-(c * mu - lam) * max_wait) <= p_exceed:
            return c
        c += 1

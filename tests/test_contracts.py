"""The contracts the planner and the reference server share (contracts.py), tested once here.

The sampler's draws are checked against models.distributions' analytic mean and
variance: 20,000 draws, the mean within 4 standard errors (sd / sqrt(n)) and the
variance within 10 % (5 % for the constant).
"""

from __future__ import annotations

import math
import random

import pytest
from pydantic import TypeAdapter

from contracts import decision_seed, draw_key, drawer, is_loopback_host, is_loopback_url, keyed_rng, registry_mismatch, sampler
from models.distributions import Distribution


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("localhost", True),
        ("10.0.0.1", False),
        ("example.org", False),
        ("", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) == loopback


def test_loopback_urls() -> None:
    assert is_loopback_url("http://127.0.0.1:8000") and is_loopback_url("http://[::1]:80/x") and is_loopback_url("http://localhost")
    assert not is_loopback_url("http://10.1.2.3:8000") and not is_loopback_url("http://[::1") and not is_loopback_url("not a url")


def test_the_registry_mismatches_its_share_of_niks_and_always_the_same_ones() -> None:
    niks = [f"3273012104900{k:03d}" for k in range(1000)] + [f"32730121049{k:05d}" for k in range(9000)]
    share = sum(registry_mismatch(n, 0.1) for n in niks) / len(niks)
    assert share == pytest.approx(0.1, abs=4 * math.sqrt(0.1 * 0.9 / len(niks)))
    assert [registry_mismatch(n, 0.1) for n in niks[:50]] == [registry_mismatch(n, 0.1) for n in niks[:50]]
    assert not any(registry_mismatch(n, 0.0) for n in niks[:100]) and all(registry_mismatch(n, 1.0) for n in niks[:100])


def test_the_decision_seed_of_a_replication() -> None:
    assert decision_seed(42) == 42 * 1_000_003 and decision_seed(42, 3) == 42 * 1_000_003 + 3


@pytest.mark.parametrize(
    "spec",
    [
        {"dist": "constant", "value": 0.25},
        {"dist": "exponential", "mean": 0.2},
        {"dist": "erlang", "k": 3, "mean": 0.3},
        {"dist": "gamma", "mean": 0.04, "cv": 0.6},
        {"dist": "lognormal", "mean": 0.15, "cv": 1.0},
        {"dist": "uniform", "low": 0.1, "high": 0.5},
    ],
)
def test_the_plain_sampler_draws_what_the_model_describes(spec: dict[str, object]) -> None:
    dist = TypeAdapter(Distribution).validate_python(spec)
    draw = sampler(spec, random.Random(5))
    xs = [draw() for _ in range(20_000)]
    mean = sum(xs) / len(xs)
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    assert mean == pytest.approx(dist.mean, abs=4 * math.sqrt(dist.variance / len(xs)) + 1e-12)
    assert var == pytest.approx(dist.variance, rel=0.10, abs=1e-12)


def test_an_unknown_distribution_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown distribution"):
        sampler({"dist": "pareto", "mean": 1.0}, random.Random(1))


def test_a_draw_key_gives_the_same_service_time_on_every_server_and_others_differ() -> None:
    # common random numbers for A/B runs: the time depends on (seed, key, station, request) alone
    draw = drawer({"dist": "lognormal", "mean": 0.1, "cv": 1.0})
    same = {draw(keyed_rng(42, "17.0.1", "web", "register")) for _ in range(5)}
    assert len(same) == 1
    others = {draw(keyed_rng(42, f"{n}.0.1", "web", "register")) for n in range(200)}
    assert len(others) == 200
    assert abs(sum(others) / 200 - 0.1) < 4 * 0.1 / 200**0.5  # still the distribution: mean within 4 standard errors
    assert draw(keyed_rng(43, "17.0.1", "web", "register")) not in same  # another server seed, other draws


@pytest.mark.parametrize(
    "value, key", [("12.3.1", "12.3.1"), ("", None), ("x" * 65, None), ("١٢.3", None), ("a\nb", None), (17, None), (None, None)]
)
def test_only_short_printable_ascii_draw_keys_are_honoured(value: object, key: str | None) -> None:
    assert draw_key(value) == key

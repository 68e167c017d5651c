"""Distributions: samples against their analytic mean and variance, for both ways of drawing."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from pydantic import TypeAdapter

from models.distributions import Distribution

SPECS = [
    {"dist": "exponential", "mean": "200ms"},
    {"dist": "erlang", "k": 3, "mean": "1s"},
    {"dist": "gamma", "mean": "50ms", "cv": 0.6},
    {"dist": "lognormal", "mean": "10m", "cv": 1.5},
    {"dist": "uniform", "low": "1s", "high": "3s"},
    "250ms",
]
N = 40_000


@pytest.mark.parametrize("spec", SPECS, ids=[str(s) for s in SPECS])
def test_sample_mean_matches_analytic_mean(spec: object) -> None:
    # |sample mean - mean| <= 4 sd / sqrt(N), with sd = sqrt(variance) from the distribution itself
    d = TypeAdapter(Distribution).validate_python(spec)
    bound = 4 * math.sqrt(d.variance / N) + 1e-12
    block = d.sampler(np.random.default_rng(1))
    one_by_one = random.Random(1)
    for values in ([block() for _ in range(N)], [d.draw(one_by_one) for _ in range(N)]):
        assert abs(sum(values) / N - d.mean) <= bound
    assert d.scaled(2.0).mean == pytest.approx(2 * d.mean)
    assert d.scaled(2.0).cv == pytest.approx(d.cv)

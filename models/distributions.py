"""Probability distributions for service times, think times and patience.

Each distribution knows its analytic ``mean`` and ``variance`` (so tests can
compare theory with samples) and makes a fast sampler from a seeded
``numpy.random.Generator``.  Samplers draw in blocks and hand values out one at a
time: a simulation asks for millions of single values and a per-call numpy draw
would dominate its run time.

In a scenario a distribution is written as a mapping with a ``dist`` key::

    {dist: exponential, mean: 30ms}
    {dist: lognormal, mean: 10m, cv: 1.5}
    {dist: gamma, mean: 200ms, cv: 0.5}
    {dist: uniform, low: 1s, high: 3s}
    {dist: erlang, k: 4, mean: 1s}
    {dist: constant, value: 250ms}

or as a plain duration (``250ms``), which means a constant.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Annotated, Literal, Union

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from models.units import parse_duration

__all__ = [
    "Distribution",
    "Constant",
    "Exponential",
    "Erlang",
    "Gamma",
    "LogNormal",
    "Uniform",
    "Sampler",
    "as_distribution",
]

Sampler = Callable[[], float]
BLOCK = 4096

Duration = Annotated[float, BeforeValidator(parse_duration)]


def _block_sampler(draw: Callable[[int], np.ndarray]) -> Sampler:
    """Turn a block-drawing function into a one-value-at-a-time sampler."""
    buffer: list[float] = []
    pop = buffer.pop

    def sample() -> float:
        if not buffer:
            buffer.extend(draw(BLOCK)[::-1].tolist())
        return pop()

    return sample


class _Dist(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @property
    def mean(self) -> float:
        raise NotImplementedError

    @property
    def variance(self) -> float:
        raise NotImplementedError

    @property
    def cv(self) -> float:
        """Coefficient of variation (standard deviation / mean)."""
        return math.sqrt(self.variance) / self.mean if self.mean > 0 else 0.0

    def sampler(self, rng: np.random.Generator) -> Sampler:
        """A fast sampler for many values (block draws from numpy)."""
        raise NotImplementedError

    def draw(self, rng: random.Random) -> float:
        """One value from a standard-library generator (for one-off draws, e.g. per load-test journey)."""
        raise NotImplementedError

    def scaled(self, factor: float) -> Distribution:
        """The same shape with every value multiplied by ``factor`` (> 0)."""
        raise NotImplementedError


class Constant(_Dist):
    """Always ``value``."""

    dist: Literal["constant", "deterministic"] = "constant"
    value: Duration = Field(ge=0)

    @property
    def mean(self) -> float:
        return self.value

    @property
    def variance(self) -> float:
        return 0.0

    def sampler(self, rng: np.random.Generator) -> Sampler:
        value = self.value
        return lambda: value

    def draw(self, rng: random.Random) -> float:
        return self.value

    def scaled(self, factor: float) -> Distribution:
        return Constant(value=self.value * factor)


class Exponential(_Dist):
    """Exponential with the given mean (memoryless: the M of M/M/c)."""

    dist: Literal["exponential", "exp"]
    mean_: Duration = Field(alias="mean", gt=0)

    @property
    def mean(self) -> float:
        return self.mean_

    @property
    def variance(self) -> float:
        return self.mean_**2

    def sampler(self, rng: np.random.Generator) -> Sampler:
        mean = self.mean_
        return _block_sampler(lambda n: rng.exponential(mean, n))

    def draw(self, rng: random.Random) -> float:
        return rng.expovariate(1.0 / self.mean_)

    def scaled(self, factor: float) -> Distribution:
        return Exponential(dist="exponential", mean=self.mean_ * factor)


class Erlang(_Dist):
    """Sum of ``k`` exponential phases with total mean ``mean``."""

    dist: Literal["erlang"]
    k: int = Field(ge=1)
    mean_: Duration = Field(alias="mean", gt=0)

    @property
    def mean(self) -> float:
        return self.mean_

    @property
    def variance(self) -> float:
        return self.mean_**2 / self.k

    def sampler(self, rng: np.random.Generator) -> Sampler:
        k, scale = self.k, self.mean_ / self.k
        return _block_sampler(lambda n: rng.gamma(k, scale, n))

    def draw(self, rng: random.Random) -> float:
        return rng.gammavariate(self.k, self.mean_ / self.k)

    def scaled(self, factor: float) -> Distribution:
        return Erlang(dist="erlang", k=self.k, mean=self.mean_ * factor)


class _MeanCv(_Dist):
    """A distribution given by its mean and coefficient of variation."""

    mean_: Duration = Field(alias="mean", gt=0)
    cv_: float = Field(alias="cv", gt=0)

    @property
    def mean(self) -> float:
        return self.mean_

    @property
    def variance(self) -> float:
        return (self.mean_ * self.cv_) ** 2

    def scaled(self, factor: float) -> Distribution:
        return type(self)(dist=self.dist, mean=self.mean_ * factor, cv=self.cv_)  # type: ignore[attr-defined, call-arg, return-value]


class Gamma(_MeanCv):
    """Gamma with the given mean and coefficient of variation."""

    dist: Literal["gamma"]

    def sampler(self, rng: np.random.Generator) -> Sampler:
        shape = 1.0 / self.cv_**2
        scale = self.mean_ / shape
        return _block_sampler(lambda n: rng.gamma(shape, scale, n))

    def draw(self, rng: random.Random) -> float:
        shape = 1.0 / self.cv_**2
        return rng.gammavariate(shape, self.mean_ / shape)


class LogNormal(_MeanCv):
    """Log-normal with the given mean and coefficient of variation (long right tail)."""

    dist: Literal["lognormal"]

    def sampler(self, rng: np.random.Generator) -> Sampler:
        sigma2 = math.log1p(self.cv_**2)
        mu = math.log(self.mean_) - sigma2 / 2
        sigma = math.sqrt(sigma2)
        return _block_sampler(lambda n: rng.lognormal(mu, sigma, n))

    def draw(self, rng: random.Random) -> float:
        sigma2 = math.log1p(self.cv_**2)
        return rng.lognormvariate(math.log(self.mean_) - sigma2 / 2, math.sqrt(sigma2))


class Uniform(_Dist):
    """Uniform on [low, high]."""

    dist: Literal["uniform"]
    low: Duration = Field(ge=0)
    high: Duration

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if self.high < self.low:
            raise ValueError(f"high ({self.high:g}s) must be at least low ({self.low:g}s)")
        return self

    @property
    def mean(self) -> float:
        return (self.low + self.high) / 2

    @property
    def variance(self) -> float:
        return (self.high - self.low) ** 2 / 12

    def sampler(self, rng: np.random.Generator) -> Sampler:
        low, high = self.low, self.high
        return _block_sampler(lambda n: rng.uniform(low, high, n))

    def draw(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)

    def scaled(self, factor: float) -> Distribution:
        return Uniform(dist="uniform", low=self.low * factor, high=self.high * factor)


def as_distribution(value: object) -> object:
    """Before-validator: a plain duration means a constant."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return {"dist": "constant", "value": value}
    if isinstance(value, dict) and value.get("dist") == "deterministic":
        return {**value, "dist": "constant"}
    if isinstance(value, dict) and value.get("dist") == "exp":
        return {**value, "dist": "exponential"}
    return value


_Tagged = Annotated[Union[Constant, Exponential, Erlang, Gamma, LogNormal, Uniform], Field(discriminator="dist")]
Distribution = Annotated[_Tagged, BeforeValidator(as_distribution)]

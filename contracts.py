"""The contracts that the planner (``models``, ``locustfiles``, the CLI) and the reference server share.

Dependency-free (the standard library only), so that :mod:`refserver` can
import it without SimPy, Locust or matplotlib.  Each rule is written once here
and tested once (``tests/test_contracts.py``):

- which addresses count as this machine's loopback;
- the reference registry's verdict on a NIK (the load generator picks NIKs so
  that the registry's verdict agrees with the model's draw);
- the seed of the registrants' own decisions (the model's replication 0 is what
  the load generator replays);
- drawing from a plain distribution mapping ``{"dist": ..., "mean": ..., "cv": ...}``
  (the server's configured service times).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import random
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "LOOPBACK_NAMES",
    "is_loopback_host",
    "is_loopback_url",
    "registry_mismatch",
    "decision_seed",
    "sampler",
    "drawer",
    "keyed_rng",
    "draw_key",
    "DRAW_HEADER",
]

#: Host names that are this machine's loopback whatever the resolver says.
LOOPBACK_NAMES = frozenset({"127.0.0.1", "::1", "localhost"})


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 without brackets) is a loopback address."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str) -> bool:
    """Whether a target URL's host is loopback."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    return is_loopback_host(host)


def registry_mismatch(nik: str, share: float) -> bool:
    """The reference registry's verdict: does this NIK "not match"?  Decided by the NIK's hash, so a typo fails every time.

    The first 32 bits of SHA-256 of the NIK, as a fraction of 2**32, below
    ``share``: a ``share`` of all NIKs mismatch.
    """
    return int.from_bytes(hashlib.sha256(nik.encode()).digest()[:4], "big") / 2**32 < share


def decision_seed(seed: int, replication: int = 0) -> int:
    """The seed of the registrants' own decisions (proceed, give up, mismatch) in one replication of ``seed``."""
    return seed * 1_000_003 + replication


def drawer(spec: dict[str, Any] | float | None) -> Callable[[random.Random], float]:
    """A function drawing seconds from a plain distribution mapping (or a constant) with a given generator; None draws 0.

    Kinds and parameters as in a scenario (``models.distributions``, whose
    analytic means and variances these draws are tested against): constant
    (``value``), exponential (``mean``), erlang (``k``, ``mean``), gamma and
    lognormal (``mean``, ``cv``), uniform (``low``, ``high``).  Values are
    seconds as numbers.
    """
    if spec is None:
        return lambda rng: 0.0
    if isinstance(spec, (int, float)):
        value = float(spec)
        return lambda rng: value
    kind = spec.get("dist", "constant")
    if kind in ("constant", "deterministic"):
        value = float(spec.get("value", spec.get("mean", 0.0)))
        return lambda rng: value
    if kind in ("exponential", "exp"):
        rate = 1.0 / float(spec["mean"])
        return lambda rng: rng.expovariate(rate)
    if kind == "erlang":
        k, mean = int(spec["k"]), float(spec["mean"])
        return lambda rng: rng.gammavariate(k, mean / k)
    if kind == "gamma":
        mean, cv = float(spec["mean"]), float(spec["cv"])
        shape = 1 / cv**2
        return lambda rng: rng.gammavariate(shape, mean / shape)
    if kind == "lognormal":
        mean, cv = float(spec["mean"]), float(spec["cv"])
        s2 = math.log1p(cv**2)
        mu, sigma = math.log(mean) - s2 / 2, math.sqrt(s2)
        return lambda rng: rng.lognormvariate(mu, sigma)
    if kind == "uniform":
        lo, hi = float(spec["low"]), float(spec["high"])
        return lambda rng: rng.uniform(lo, hi)
    raise ValueError(f"unknown distribution {kind!r}")


def sampler(spec: dict[str, Any] | float | None, rng: random.Random) -> Callable[[], float]:
    """A function drawing seconds from a plain distribution mapping (see :func:`drawer`) with ``rng``."""
    draw = drawer(spec)
    return lambda: draw(rng)


def keyed_rng(seed: int, *parts: str) -> random.Random:
    """A generator that depends only on ``seed`` and ``parts``: common random numbers.

    Two servers given the same request key draw the same service times for it,
    so in an A/B run the builds' difference is not buried under their own draws.
    """
    digest = hashlib.blake2b("|".join((str(seed), *parts)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


#: The request header that carries a draw key (:func:`draw_key`): sent by the load generator in A/B runs, honoured by
#: the reference server in test mode.  HTTP header names are case-insensitive; Starlette reads them lower-cased.
DRAW_HEADER = "x-surgecap-draw"


def draw_key(value: object) -> str | None:
    """A usable draw key (for :func:`keyed_rng`): a string of at most 64 printable ASCII characters, else None (ignored)."""
    if not isinstance(value, str) or not 0 < len(value) <= 64 or not value.isascii() or not value.isprintable():
        return None
    return value

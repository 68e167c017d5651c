"""The processor's speed over time: a fixed piece of work, timed back to back on one CPU.

On a virtual machine a CPU's speed need not be constant: the host's other
tenants (a busy sibling hyperthread, frequency changes) can make the same work
take much longer for a while.  On the machine this toolkit was validated on, a
fixed pure-Python loop took either about 1.5 ms or about 2.5 ms, switching
between the two at every time scale, idle or loaded.  The server's CPU time
per request moves with it.  ``capacity calibrate`` runs :func:`probe` before
the server starts and reports what it found; a scenario can give the model such
a processor as two speed *modes* (see :class:`models.scenario.CpuModes`):
``slow`` times the fast mode's step time for a ``share`` of the time, each
spell lasting an exponential time with mean ``slow_for`` (``fast_for`` for the
fast ones).

:func:`probe` times the work (run it pinned to the server's CPU);
:func:`estimate` reads the modes from the timings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass

__all__ = ["SpeedModes", "probe", "estimate"]

CHUNK = 5000  # loop turns per timed piece: about 0.3 ms on a fast CPU
MIN_CONTRAST = 1.15  # two modes closer than this are one: the speed is steady
WINDOW = 1.0  # seconds: the time scale whose speed swings the modes are fitted to


@dataclass(frozen=True)
class SpeedModes:
    """Two speeds of a processor: the slow mode's time per unit of work over the fast one's, and how they alternate."""

    slow: float  # >= 1
    share: float  # fraction of the time in the slow mode
    slow_for: float  # mean seconds of a slow spell
    fast_for: float  # mean seconds of a fast spell
    samples: int = 0  # timed pieces it was read from

    @property
    def steady(self) -> bool:
        return self.slow < MIN_CONTRAST or self.share <= 0.0 or self.share >= 1.0

    def to_overlay(self) -> dict[str, object]:
        return {
            "slow": round(self.slow, 3),
            "share": round(self.share, 3),
            "slow_for": f"{self.slow_for * 1000:.0f}ms",
            "fast_for": f"{self.fast_for * 1000:.0f}ms",
        }


def _work(n: int = CHUNK) -> int:
    x = 0
    for i in range(n):
        x += i * i % 7
    return x


def probe(seconds: float) -> list[tuple[float, float]]:
    """Time :data:`CHUNK` loop turns back to back for ``seconds``: (start on the monotonic clock, CPU seconds) each."""
    out: list[tuple[float, float]] = []
    clock, wall = time.thread_time, time.perf_counter
    end = wall() + seconds
    while (start := wall()) < end:
        t = clock()
        _work()
        out.append((start, clock() - t))
    return out


def _markov_variance(window: float, tau: float) -> float:
    """Variance of a two-state Markov process's time-average over ``window``, over the state's own variance.

    With correlation time ``tau`` (the autocorrelation is exp(-t / tau)):
    2 tau / W (1 - tau / W (1 - exp(-W / tau))).
    """
    r = tau / window
    return 2 * r * (1 - r * (1 - math.exp(-1 / r))) if r > 0 else 0.0


def estimate(timings: list[tuple[float, float]], window: float = WINDOW) -> SpeedModes:
    """The two modes in a probe's timings.

    The timings are split in two by 1-D k-means (started at the 10th and 90th
    percentiles): ``slow`` is the ratio of the two groups' median times and
    ``share`` the slow pieces' share of the time.  How long the spells last is
    read from how much the slow share varies from one ``window`` to the next:
    the speed changes at every time scale (on the validation machine, spells
    of a few milliseconds inside swings of a second or more), and a busy
    processor's queue builds and drains over about a second, so the two-state
    process is given the correlation time whose ``window`` averages vary as
    much as the measured ones (:func:`_markov_variance`).  A steady processor
    comes back with ``slow`` 1.
    """
    n = len(timings)
    if n < 20:
        raise ValueError(f"a speed probe needs at least 20 timed pieces, got {n}")
    times = [c for _, c in timings]
    ordered = sorted(times)
    lo, hi = ordered[n // 10], ordered[(9 * n) // 10]
    cut = (lo + hi) / 2
    for _ in range(50):
        fast = [c for c in times if c <= cut]
        slow = [c for c in times if c > cut]
        if not fast or not slow:
            break
        new = (sum(fast) / len(fast) + sum(slow) / len(slow)) / 2
        if abs(new - cut) < 1e-9:
            break
        cut = new
    fast_t = sorted(c for c in times if c <= cut)
    slow_t = sorted(c for c in times if c > cut)
    if not fast_t or not slow_t:
        return SpeedModes(1.0, 0.0, 0.0, 0.0, n)
    ratio = slow_t[len(slow_t) // 2] / fast_t[len(fast_t) // 2]
    if ratio < MIN_CONTRAST:
        return SpeedModes(1.0, 0.0, 0.0, 0.0, n)
    # wall time per piece: to the next piece's start (the last one: its own CPU time)
    span = [timings[i + 1][0] - timings[i][0] for i in range(n - 1)] + [times[-1]]
    t0 = timings[0][0]
    slow_in: dict[int, float] = {}
    all_in: dict[int, float] = {}
    for (start, c), s in zip(timings, span, strict=True):
        k = int((start - t0) / window)
        all_in[k] = all_in.get(k, 0.0) + s
        if c > cut:
            slow_in[k] = slow_in.get(k, 0.0) + s
    share = sum(slow_in.values()) / sum(all_in.values())
    full = [k for k, v in all_in.items() if v >= 0.5 * window]
    if share <= 0.0 or share >= 1.0 or len(full) < 2:
        return SpeedModes(1.0, 0.0, 0.0, 0.0, n)
    shares = [slow_in.get(k, 0.0) / all_in[k] for k in full]
    mean = sum(shares) / len(shares)
    ratio_var = (sum((x - mean) ** 2 for x in shares) / (len(shares) - 1)) / (share * (1 - share))
    lo_tau, hi_tau = 1e-4, 100.0 * window  # _markov_variance grows with tau: bisect on a log scale
    for _ in range(60):
        mid = math.sqrt(lo_tau * hi_tau)
        lo_tau, hi_tau = (mid, hi_tau) if _markov_variance(window, mid) < ratio_var else (lo_tau, mid)
    tau = math.sqrt(lo_tau * hi_tau)
    return SpeedModes(ratio, share, tau / (1 - share), tau / share, n)


def main(argv: list[str] | None = None) -> int:
    """``python -m models.speed --seconds S [--cpu N]``: probe (pinned to CPU N) and print the modes as JSON."""
    ap = argparse.ArgumentParser(prog="python -m models.speed", description=main.__doc__)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--cpu", type=int, default=None, help="pin the probe to this CPU (Linux)")
    args = ap.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if not math.isfinite(args.seconds) or args.seconds <= 0:
        print("models.speed: --seconds must be a positive number", file=sys.stderr)
        return 2
    modes = estimate(probe(args.seconds))
    print(json.dumps(asdict(modes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

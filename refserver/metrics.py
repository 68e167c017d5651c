"""Prometheus text metrics of the reference server."""

from __future__ import annotations

import bisect
import time
from collections import defaultdict

from refserver.protocol import REFUSED
from refserver.stations import Station

__all__ = ["Metrics", "station_lines"]

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.hist: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self.sums: dict[str, float] = defaultdict(float)
        self.in_flight = 0
        self.lag_seconds = 0.0  # the loop's lag probes (refserver.app.loop_lag): summed waits and their number
        self.lag_samples = 0

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests[(endpoint, status)] += 1
        self.hist[endpoint][bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sums[endpoint] += seconds

    def render(
        self, stations: dict[str, Station], extra: dict[str, float], more: list[str] | None = None, tail: list[str] | None = None
    ) -> str:
        """The text exposition; ``more`` are station lines from elsewhere (the registry), put in their
        families; ``tail`` are complete families of other lines (the CPU accounting)."""
        out = [
            "# HELP surgecap_requests_total Requests by endpoint and status.",
            "# TYPE surgecap_requests_total counter",
        ]
        for (ep, status), n in sorted(self.requests.items()):
            out.append(f'surgecap_requests_total{{endpoint="{ep}",status="{status}"}} {n}')
        out += ["# HELP surgecap_request_seconds Request latency.", "# TYPE surgecap_request_seconds histogram"]
        for ep, counts in sorted(self.hist.items()):
            cum = 0
            for le, c in zip(BUCKETS, counts[: len(BUCKETS)], strict=True):  # counts ends with the overflow (+Inf) bucket
                cum += c
                out.append(f'surgecap_request_seconds_bucket{{endpoint="{ep}",le="{le}"}} {cum}')
            cum += counts[-1]
            out.append(f'surgecap_request_seconds_bucket{{endpoint="{ep}",le="+Inf"}} {cum}')
            out.append(f'surgecap_request_seconds_sum{{endpoint="{ep}"}} {self.sums[ep]:.6f}')
            out.append(f'surgecap_request_seconds_count{{endpoint="{ep}"}} {cum}')
        out += ["# TYPE surgecap_in_flight gauge", f"surgecap_in_flight {self.in_flight}"]
        out += [
            "# HELP surgecap_loop_lag_seconds_total Summed waits of the loop-lag probe: a ready step's wait for the event loop.",
            "# TYPE surgecap_loop_lag_seconds_total counter",
            f"surgecap_loop_lag_seconds_total {self.lag_seconds:.6f}",
            "# TYPE surgecap_loop_lag_samples_total counter",
            f"surgecap_loop_lag_samples_total {self.lag_samples}",
            "# HELP surgecap_connections_refused_total Connections refused (503) past the connection limit, none idle to close.",
            "# TYPE surgecap_connections_refused_total counter",
            f"surgecap_connections_refused_total {REFUSED[0]}",
        ]
        out += ["# TYPE process_cpu_seconds_total counter", f"process_cpu_seconds_total {time.process_time():.6f}"]
        out += station_lines(stations, more=more)
        out += tail or []
        for name, value in extra.items():
            out.append(f"# TYPE surgecap_{name} gauge")
            out.append(f"surgecap_{name} {value}")
        return "\n".join(out) + "\n"


def station_lines(stations: dict[str, Station], typed: bool = True, more: list[str] | None = None) -> list[str]:
    """Prometheus lines for stations: servers, busy, queue, and per request type served and busy time.

    ``surgecap_station_busy_seconds_total{station, request}`` over
    ``surgecap_station_served_total{station, request}`` is the mean service time
    (the service demand per visit); the sum of squares gives its spread, the
    sums of ln t and (ln t)^2 the maximum-likelihood fits of lognormal and gamma.
    """
    out: list[str] = []
    others: dict[str, list[str]] = {}
    for line in more or []:
        others.setdefault(line.split("{", 1)[0], []).append(line)
    for metric, kind, attr in (
        ("surgecap_station_servers", "gauge", "servers"),
        ("surgecap_station_busy", "gauge", "busy"),
        ("surgecap_station_queue_length", "gauge", "waiting"),
        ("surgecap_station_shed_total", "counter", "shed"),
        ("surgecap_station_threaded", "gauge", "threaded"),
    ):
        if typed:
            out.append(f"# TYPE {metric} {kind}")
        for name, st in stations.items():
            out.append(f'{metric}{{station="{name}"}} {int(getattr(st, attr))}')
        out += others.get(metric, [])
    for metric, i, fmt in (
        ("surgecap_station_served_total", 0, "{:.0f}"),
        ("surgecap_station_busy_seconds_total", 1, "{:.6f}"),
        ("surgecap_station_busy_seconds_squared_total", 2, "{:.9f}"),
        ("surgecap_station_busy_log_seconds_total", 3, "{:.6f}"),
        ("surgecap_station_busy_log_seconds_squared_total", 4, "{:.6f}"),
    ):
        if typed:
            out.append(f"# TYPE {metric} counter")
        for name, st in stations.items():
            for rt, acc in sorted(st.by_type.items()):
                out.append(f'{metric}{{station="{name}",request="{rt}"}} {fmt.format(acc[i])}')
        out += others.get(metric, [])
    return out

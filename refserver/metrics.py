"""Prometheus text metrics of the reference server."""

from __future__ import annotations

import bisect
from collections import defaultdict

from refserver.stations import Station

__all__ = ["Metrics"]

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.hist: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self.sums: dict[str, float] = defaultdict(float)
        self.in_flight = 0

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests[(endpoint, status)] += 1
        self.hist[endpoint][bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sums[endpoint] += seconds

    def render(self, stations: dict[str, Station], extra: dict[str, float]) -> str:
        out = [
            "# HELP surgecap_requests_total Requests by endpoint and status.",
            "# TYPE surgecap_requests_total counter",
        ]
        for (ep, status), n in sorted(self.requests.items()):
            out.append(f'surgecap_requests_total{{endpoint="{ep}",status="{status}"}} {n}')
        out += ["# HELP surgecap_request_seconds Request latency.", "# TYPE surgecap_request_seconds histogram"]
        for ep, counts in sorted(self.hist.items()):
            cum = 0
            for le, c in zip(BUCKETS, counts):
                cum += c
                out.append(f'surgecap_request_seconds_bucket{{endpoint="{ep}",le="{le}"}} {cum}')
            cum += counts[-1]
            out.append(f'surgecap_request_seconds_bucket{{endpoint="{ep}",le="+Inf"}} {cum}')
            out.append(f'surgecap_request_seconds_sum{{endpoint="{ep}"}} {self.sums[ep]:.6f}')
            out.append(f'surgecap_request_seconds_count{{endpoint="{ep}"}} {cum}')
        out += ["# TYPE surgecap_in_flight gauge", f"surgecap_in_flight {self.in_flight}"]
        for metric, kind, attr in (
            ("surgecap_station_servers", "gauge", "servers"),
            ("surgecap_station_busy", "gauge", "busy"),
            ("surgecap_station_queue_length", "gauge", "waiting"),
            ("surgecap_station_busy_seconds_total", "counter", "busy_seconds"),
            ("surgecap_station_served_total", "counter", "served"),
            ("surgecap_station_shed_total", "counter", "shed"),
        ):
            out.append(f"# TYPE {metric} {kind}")
            for name, st in stations.items():
                out.append(f'{metric}{{station="{name}"}} {getattr(st, attr)}')
        for name, value in extra.items():
            out.append(f"# TYPE surgecap_{name} gauge")
            out.append(f"surgecap_{name} {value}")
        return "\n".join(out) + "\n"

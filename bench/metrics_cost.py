#!/usr/bin/env python3
"""What counting one HTTP request costs: wsrelay's plain counters (``wsrelay.metrics``) against
``prometheus_client``'s own Counter/Histogram children, looked up per request and bound once.

    .venv/bin/python bench/metrics_cost.py
"""

from __future__ import annotations

import timeit

from prometheus_client import CollectorRegistry, Counter, Histogram

from wsrelay.metrics import Metrics

N = 200_000


def per_call_us(call: object) -> float:
    return timeit.timeit(call, number=N) / N * 1e6  # type: ignore[arg-type]


def main() -> None:
    metrics = Metrics()
    registry = CollectorRegistry()
    requests = Counter("requests", "", ["route", "method", "code"], registry=registry)
    duration = Histogram("duration_seconds", "", ["route"], registry=registry)
    octets = Counter("body_bytes", "", ["route", "direction"], registry=registry)

    def prometheus_labels() -> None:
        requests.labels("/api/", "GET", "2xx").inc()
        duration.labels("/api/").observe(0.003)
        octets.labels("/api/", "in").inc(0)
        octets.labels("/api/", "out").inc(100)

    bound = (requests.labels("/api/", "GET", "2xx"), duration.labels("/api/"),
             octets.labels("/api/", "in"), octets.labels("/api/", "out"))

    def prometheus_bound() -> None:
        bound[0].inc()
        bound[1].observe(0.003)
        bound[2].inc(0)
        bound[3].inc(100)

    print(f"wsrelay HTTPMetrics.done:                 {per_call_us(lambda: metrics.http.done('/api/', b'GET', 200, 0.003, 0, 100)):.2f} us")
    print(f"prometheus_client, labels() per request:  {per_call_us(prometheus_labels):.2f} us")
    print(f"prometheus_client, children bound once:   {per_call_us(prometheus_bound):.2f} us")
    hop = metrics.websocket.hop("/ws/", "client")
    print(f"wsrelay ping round trip (Histogram):      {per_call_us(lambda: hop.rtt.observe(0.003)):.2f} us")


if __name__ == "__main__":
    main()

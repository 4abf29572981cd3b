"""The counters of ``wsrelay.metrics`` as Prometheus metric families, built at scrape time.

Nothing here runs on the proxy's paths: the admin collector (``admin.py``) calls these functions
when ``/metrics`` is asked for, and they read the plain counters as they stand.  Names and labels
follow the Prometheus conventions (``_total`` on counters, added by ``prometheus_client``; base
units: seconds, bytes) and are listed in README, Operations.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from wsrelay.metrics import HTTPMetrics, Histogram, TLSMetrics, WebSocketMetrics


def add_histogram(family: HistogramMetricFamily, labels: list[str], histogram: Histogram) -> None:
    """One labelled histogram: cumulative buckets, ``le`` as Prometheus writes it."""
    buckets = [(floatToGoString(bound), count) for bound, count in histogram.cumulative()]
    family.add_metric(labels, buckets, histogram.sum)


def http(metrics: HTTPMetrics) -> Iterator[Any]:
    requests = CounterMetricFamily("wsrelay_http_requests", "HTTP requests answered, by route, method and status "
                                   "class (route '-': refused before a route was found)",
                                   labels=["route", "method", "code"])
    duration = HistogramMetricFamily("wsrelay_http_request_duration_seconds", "Time from a request's first "
                                     "byte to the end of its response, by route", labels=["route"])
    octets = CounterMetricFamily("wsrelay_http_body_bytes", "HTTP body bytes from clients (in) and to clients "
                                 "(out), by route", labels=["route", "direction"])
    for route, c in metrics.routes.items():
        for (method, status), count in c.by_label().items():
            requests.add_metric([route, method, status], count)
        add_histogram(duration, [route], c.duration)
        octets.add_metric([route, "in"], c.octets_in)
        octets.add_metric([route, "out"], c.octets_out)
    yield from (requests, duration, octets)


def websocket(metrics: WebSocketMetrics) -> Iterator[Any]:
    open_ = GaugeMetricFamily("wsrelay_websocket_pairs_open", "WebSocket pairs open", labels=["route", "mode"])
    opened = CounterMetricFamily("wsrelay_websocket_pairs_opened", "WebSocket pairs opened (both handshakes "
                                 "done)", labels=["route", "mode"])
    refusals = CounterMetricFamily("wsrelay_websocket_handshake_refusals", "WebSocket handshakes answered over "
                                   "HTTP instead, by status", labels=["route", "code"])
    hop_labels = ["route", "hop", "direction"]
    messages = CounterMetricFamily("wsrelay_websocket_messages", "WebSocket messages per hop and direction",
                                   labels=hop_labels)
    octets = CounterMetricFamily("wsrelay_websocket_payload_bytes", "WebSocket payload bytes (tunnels: all "
                                 "bytes) per hop and direction", labels=hop_labels)
    closes = CounterMetricFamily("wsrelay_websocket_closes", "Close frames per hop, direction and code",
                                 labels=[*hop_labels, "code"])
    pings = CounterMetricFamily("wsrelay_websocket_pings", "wsrelay's own pings sent per hop",
                                labels=["route", "hop"])
    missed = CounterMetricFamily("wsrelay_websocket_pings_missed", "wsrelay's pings not answered within "
                                 "ws_ping_timeout (the connection was dropped)", labels=["route", "hop"])
    rtt = HistogramMetricFamily("wsrelay_websocket_ping_rtt_seconds", "Round-trip time of wsrelay's pings "
                                "per hop", labels=["route", "hop"])
    for route, c in metrics.routes.items():
        for mode, (now, total) in c.modes.items():
            open_.add_metric([route, mode], now)
            opened.add_metric([route, mode], total)
        for status, count in sorted(c.refusals.items()):
            refusals.add_metric([route, str(status)], count)
        for hop, h in c.hops.items():
            for direction in ("in", "out"):
                messages.add_metric([route, hop, direction], getattr(h, f"messages_{direction}"))
                octets.add_metric([route, hop, direction], getattr(h, f"octets_{direction}"))
                for code, count in getattr(h, f"closes_{direction}").items():
                    closes.add_metric([route, hop, direction, "none" if code is None else str(code)], count)
            pings.add_metric([route, hop], h.pings)
            missed.add_metric([route, hop], h.pings_missed)
            add_histogram(rtt, [route, hop], h.rtt)
    yield from (open_, opened, refusals, messages, octets, closes, pings, missed, rtt)


def tls(metrics: TLSMetrics) -> Iterator[Any]:
    done = CounterMetricFamily("wsrelay_tls_handshakes", "TLS handshakes completed, by listener",
                               labels=["listener"])
    failed = CounterMetricFamily("wsrelay_tls_handshake_failures", "TLS handshakes that failed (an alert, "
                                 "no shared version or cipher, no certificate for the name...), by listener",
                                 labels=["listener"])
    for name, c in metrics.listeners.items():
        done.add_metric([name], c.handshakes)
        failed.add_metric([name], c.failures)
    yield from (done, failed)


def protection(limits: Any, connections: Any, rate_closes: int) -> Iterator[Any]:
    """What the caps refused: limit_conn and limit_req (``limits.Limits``), max_connections and
    descriptor exhaustion (``capacity.ConnectionCap``), ws_max_message_rate."""
    refused = CounterMetricFamily("wsrelay_limit_refusals", "Requests and WebSocket handshakes answered 429, "
                                  "by limit (limit_conn, limit_req)", labels=["limit"])
    refused.add_metric(["limit_conn"], limits.refused_conn)
    refused.add_metric(["limit_req"], limits.refused_req)
    yield refused
    yield CounterMetricFamily("wsrelay_limit_req_buckets_evicted", "Clients' limit_req buckets dropped at "
                              "limit_req_clients before they had refilled", value=limits.evicted)
    yield GaugeMetricFamily("wsrelay_client_connections", "Client connections open (what max_connections "
                            "caps)", value=connections.open)
    yield GaugeMetricFamily("wsrelay_client_connections_limit", "max_connections in force (0: no cap)",
                            value=connections.limit)
    paused = CounterMetricFamily("wsrelay_accept_pauses", "Times accepting paused, by reason (max_connections "
                                 "reached, descriptors exhausted)", labels=["reason"])
    paused.add_metric(["max_connections"], connections.cap_reached)
    paused.add_metric(["descriptors"], connections.exhausted)
    yield paused
    yield CounterMetricFamily("wsrelay_websocket_rate_closes", "Clients closed with 1008 for going over "
                              "ws_max_message_rate", value=rate_closes)

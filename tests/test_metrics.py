"""The counters behind /metrics, in memory: histograms, HTTP requests by route, method and status
class, upstream failures by cause and retries, wsrelay's pings per hop, and the Prometheus text
they become (tests/test_metrics_process.py scrapes the real process)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from tests.test_balancing import balancer
from tests.test_websocket import Harness, frame, handshake
from wsrelay import families
from wsrelay.metrics import DURATION_BUCKETS, Histogram, Metrics


class _Families:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Any:
        yield from families.http(self.metrics.http)
        yield from families.websocket(self.metrics.websocket)
        yield from families.tls(self.metrics.tls)


def page(metrics: Metrics) -> bytes:
    """The text /metrics would show for ``metrics`` (its wsrelay_http/websocket/tls families)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(metrics))  # type: ignore[arg-type]
    return generate_latest(registry)


def exposition(metrics: Metrics) -> list[str]:
    """The sample lines of :func:`page` (comments left out)."""
    return [line for line in page(metrics).decode().splitlines() if not line.startswith("#")]


def test_histogram_buckets_are_cumulative_and_a_bound_belongs_to_its_own_bucket() -> None:
    """le is "less than or equal": 0.1 lands in le=0.1; above every bound lands in +Inf only."""
    h = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 7.0):
        h.observe(value)
    assert h.cumulative() == [(0.1, 2), (1.0, 3), (float("inf"), 4)]
    assert h.count == 4 and h.sum == 7.65


def test_http_requests_by_route_method_class_and_status_class() -> None:
    """Known methods by name, any other as "other"; statuses by class; "-" for no route; the
    duration histogram and body bytes per route; exactly these samples in the text format."""
    m = Metrics()
    m.http.done("/api/", b"GET", 200, 0.003, 0, 100)
    m.http.done("/api/", b"GET", 204, 0.02, 0, 0)
    m.http.done("/api/", b"PROPFIND", 503, 2.0, 10, 5)
    m.http.done(None, b"GET", 404, 0.0, 0, 9)
    m.http.done(None, None, 400, 0.0, 0, 11)  # refused before a method was read
    lines = exposition(m)
    assert [line for line in lines if line.startswith("wsrelay_http_requests_total")] == [
        'wsrelay_http_requests_total{code="2xx",method="GET",route="/api/"} 2.0',
        'wsrelay_http_requests_total{code="5xx",method="other",route="/api/"} 1.0',
        'wsrelay_http_requests_total{code="4xx",method="GET",route="-"} 1.0',
        'wsrelay_http_requests_total{code="4xx",method="other",route="-"} 1.0',
    ]
    api = [line for line in lines if line.startswith("wsrelay_http_request_duration_seconds") and '"/api/"' in line]
    assert 'wsrelay_http_request_duration_seconds_bucket{le="0.005",route="/api/"} 1.0' in api
    assert 'wsrelay_http_request_duration_seconds_bucket{le="0.025",route="/api/"} 2.0' in api
    assert 'wsrelay_http_request_duration_seconds_bucket{le="1.0",route="/api/"} 2.0' in api
    assert 'wsrelay_http_request_duration_seconds_bucket{le="2.5",route="/api/"} 3.0' in api
    assert 'wsrelay_http_request_duration_seconds_bucket{le="+Inf",route="/api/"} 3.0' in api
    assert 'wsrelay_http_request_duration_seconds_count{route="/api/"} 3.0' in api
    assert 'wsrelay_http_request_duration_seconds_sum{route="/api/"} 2.023' in api
    assert len([line for line in api if "_bucket" in line]) == len(DURATION_BUCKETS) + 1
    assert 'wsrelay_http_body_bytes_total{direction="in",route="/api/"} 10.0' in lines
    assert 'wsrelay_http_body_bytes_total{direction="out",route="/api/"} 105.0' in lines
    assert 'wsrelay_http_body_bytes_total{direction="out",route="-"} 20.0' in lines


def test_upstream_failures_by_cause_and_retries_per_server() -> None:
    """Every failure a lease reports is counted by cause ("status 503" as "status"); a retry is
    counted against the server that failed."""
    b, _ = balancer("127.0.0.1:1, 127.0.0.1:2", "max_fails = 0")
    lease = b.acquire("g", client_ip="10.0.0.1")
    for reason in ("connect error", "connect timeout", "read timeout", "status 503", "status 502"):
        lease.failure(reason)
    lease.retried()
    lease.release()
    s = b.snapshot()["g"][lease.server.key]
    assert s["failed_by_cause"] == {"connect_error": 1, "connect_timeout": 1, "read_timeout": 1, "status": 2}
    assert s["failed"] == 5 and s["retries"] == 1
    other = next(v for k, v in b.snapshot()["g"].items() if k != lease.server.key)
    assert other["failed_by_cause"] == {} and other["retries"] == 0


def test_pings_round_trip_times_and_missed_pings_per_hop() -> None:
    """wsrelay pings both hops every ws_ping_interval: the upstream answers at once (a round trip
    of 0 on the fake clock), the client once 0.3 s late, then not at all: it is dropped, one missed
    ping on the client hop."""
    h = Harness("ws_ping_interval = 5s\nws_ping_timeout = 2s")
    client = h.raw_client(handshake())
    h.accept_upstream()  # an Autobahn upstream answers pings itself
    assert client.received.startswith(b"HTTP/1.1 101")
    h.clock.advance(5)
    h.settle()
    pings = [payload for _, op, payload in client.frames if op == 9]
    assert len(pings) == 1
    h.clock.advance(0.3)
    client.transport.write(frame(10, pings[0]))
    h.settle()
    h.clock.advance(5)  # the client's second ping (at 10.3), and the upstream's (at 10)
    h.settle()
    h.advance(2.5)  # the client does not answer: dropped at 12.3
    assert not h.gateway.live
    hops = h.gateway.metrics.websocket.routes["/"].hops
    client_hop, upstream_hop = hops["client"], hops["upstream"]
    assert (client_hop.pings, client_hop.pings_missed, client_hop.rtt.count) == (2, 1, 1)
    assert 0.29 < client_hop.rtt.sum < 0.31
    assert (upstream_hop.pings, upstream_hop.pings_missed, upstream_hop.rtt.count) == (2, 0, 2)
    lines = exposition(h.gateway.metrics)
    assert 'wsrelay_websocket_ping_rtt_seconds_bucket{hop="client",le="0.25",route="/"} 0.0' in lines
    assert 'wsrelay_websocket_ping_rtt_seconds_bucket{hop="client",le="0.5",route="/"} 1.0' in lines
    assert 'wsrelay_websocket_ping_rtt_seconds_bucket{hop="upstream",le="0.0005",route="/"} 2.0' in lines
    assert 'wsrelay_websocket_pings_missed_total{hop="client",route="/"} 1.0' in lines
    assert 'wsrelay_websocket_pings_missed_total{hop="upstream",route="/"} 0.0' in lines
    assert 'wsrelay_websocket_pings_total{hop="client",route="/"} 2.0' in lines
    assert 'wsrelay_websocket_pairs_opened_total{mode="relay",route="/"} 1.0' in lines
    assert 'wsrelay_websocket_pairs_open{mode="relay",route="/"} 0.0' in lines


def test_handshake_refusals_by_status() -> None:
    """A handshake wsrelay refuses itself (426: wrong version) and one the upstream refuses (403
    passed on) are counted by status on their route; neither opens a pair."""
    h = Harness()
    h.raw_client(handshake(version=b"8"))
    client = h.raw_client(handshake())
    h.accept_upstream(deny=403)
    assert client.received.startswith(b"HTTP/1.1 403")
    route = h.gateway.metrics.websocket.routes["/"]
    assert dict(route.refusals) == {426: 1, 403: 1}
    assert route.opened == 0
    lines = exposition(h.gateway.metrics)
    assert 'wsrelay_websocket_handshake_refusals_total{code="403",route="/"} 1.0' in lines
    assert 'wsrelay_websocket_handshake_refusals_total{code="426",route="/"} 1.0' in lines


def test_websocket_retry_counted_against_the_server_that_failed() -> None:
    """Two servers, retries = 1, both refuse: each has one connect error, the first one retry
    (the second failure is not retried: the client gets 502, a refusal)."""
    h = Harness()
    client = h.raw_client(handshake())
    h.refuse_upstream(0)
    h.refuse_upstream(1)
    assert client.received.startswith(b"HTTP/1.1 502")
    first, second = (h.clock.tcpClients[i][1] for i in (0, 1))
    servers = {int(key.rsplit(":", 1)[1]): s for key, s in h.gateway.balancer.snapshot()["up"].items()}
    assert (servers[first]["failed_by_cause"], servers[first]["retries"]) == ({"connect_error": 1}, 1)
    assert (servers[second]["failed_by_cause"], servers[second]["retries"]) == ({"connect_error": 1}, 0)
    assert dict(h.gateway.metrics.websocket.routes["/"].refusals) == {502: 1}


def test_worker_pages_merge_into_one_with_a_worker_label() -> None:
    """Families of the same name from several workers become one family, each sample labelled
    with its worker; a worker without a page is only wsrelay_worker_up 0."""
    from wsrelay.adminworkers import merge_metrics

    one = Metrics()
    one.http.done("/", b"GET", 200, 0.001, 0, 5)
    two = Metrics()
    two.http.done("/", b"GET", 200, 0.001, 0, 7)
    two.http.done("/", b"POST", 500, 0.001, 3, 0)
    merged = merge_metrics({0: page(one), 1: page(two), 2: None}).decode().splitlines()
    assert [line for line in merged if line.startswith(("wsrelay_http_requests_total", "wsrelay_worker_up"))] == [
        'wsrelay_worker_up{worker="0"} 1.0',
        'wsrelay_worker_up{worker="1"} 1.0',
        'wsrelay_worker_up{worker="2"} 0.0',
        'wsrelay_http_requests_total{code="2xx",method="GET",route="/",worker="0"} 1.0',
        'wsrelay_http_requests_total{code="2xx",method="GET",route="/",worker="1"} 1.0',
        'wsrelay_http_requests_total{code="5xx",method="POST",route="/",worker="1"} 1.0',
    ]
    assert merged.count("# TYPE wsrelay_http_requests_total counter") == 1
    assert 'wsrelay_http_body_bytes_total{direction="out",route="/",worker="1"} 7.0' in merged


def test_what_the_caps_refused() -> None:
    """limit_conn and limit_req refusals, limit_req buckets evicted at the cap, client connections
    against max_connections, accept pauses by reason and ws_max_message_rate closes, as counted
    by the objects that enforce them."""
    from twisted.internet.testing import MemoryReactorClock

    from wsrelay.capacity import ConnectionCap
    from wsrelay.limits import Limits

    limits = Limits(clients=1)
    limits.opened("192.0.2.1")
    assert limits.check("192.0.2.1", "/", 1, 0.0, 0, 0.0) == ("limit_conn", 1)
    assert limits.check("192.0.2.2", "/", 0, 1.0, 1, 0.0) is None
    assert limits.check("192.0.2.2", "/", 0, 1.0, 1, 0.0) == ("limit_req", 1)
    assert limits.check("192.0.2.3", "/", 0, 1.0, 1, 0.0) is None  # the table's cap: 192.0.2.2 goes
    cap = ConnectionCap(MemoryReactorClock(), limit=500)
    cap.open, cap.cap_reached, cap.exhausted = 7, 2, 1

    registry = CollectorRegistry(auto_describe=False)

    class Protection:
        def collect(self) -> Any:
            yield from families.protection(limits, cap, 4)

    registry.register(Protection())  # type: ignore[arg-type]
    lines = [line for line in generate_latest(registry).decode().splitlines() if not line.startswith("#")]
    assert [line for line in lines if "_created" not in line] == [
        'wsrelay_limit_refusals_total{limit="limit_conn"} 1.0',
        'wsrelay_limit_refusals_total{limit="limit_req"} 1.0',
        "wsrelay_limit_req_buckets_evicted_total 1.0",
        "wsrelay_client_connections 7.0",
        "wsrelay_client_connections_limit 500.0",
        'wsrelay_accept_pauses_total{reason="max_connections"} 2.0',
        'wsrelay_accept_pauses_total{reason="descriptors"} 1.0',
        "wsrelay_websocket_rate_closes_total 4.0",
    ]

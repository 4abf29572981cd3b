"""The admin listener: liveness, readiness, status and Prometheus metrics, never through a route.

Invariants:

- It is its own twisted.web site on the ``[admin] endpoint`` only, never a proxied listener's, so
  no request through a route can reach it; with ``allow``, clients from other networks get 403.
- Nothing here runs per request or per message of the proxy: every figure is read from the
  running state (the balancer, the gateway, the WebSocket counters, the service) when it is asked
  for.
- ``/metrics`` is rendered with ``prometheus_client`` (its text format, its process collector) on
  the reactor.  Its own Twisted resource is not used: it imports the global reactor and renders
  in a thread pool through WSGI, for a page that takes well under a millisecond to build here.

Pages:

- ``/healthz``: 200 while the process serves (draining included);
- ``/readyz``: 200 once every listener is bound and every upstream group has a server up; 503
  with a JSON body naming what is not, and while draining (a load balancer stops sending);
- ``/status``: JSON: the configuration's path and load time, each upstream server's state, open
  exchanges and WebSocket pairs per route, reloads;
- ``/metrics``: the Prometheus text format (names and labels in README, Operations).

With ``workers = N`` each worker serves these pages on a unix socket of its own and the master's
``/metrics`` and ``/status`` include every worker's (``adminworkers.py``).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.web.resource import ForbiddenResource, Resource
from twisted.internet.defer import Deferred
from twisted.web.server import NOT_DONE_YET, Request, Site

from wsrelay import families
from wsrelay.adminworkers import fetch_all, merge_metrics, merge_status


class State(Protocol):
    """What the admin pages read from the running service (``RelayService`` provides it)."""

    ready: bool
    draining: bool
    loaded_at: float
    reloads: dict[str, int]
    last_reload: float | None
    gateway: Any
    connections: Any  # capacity.ConnectionCap
    heap: Any  # memory.HeapTrimmer

    reactor: Any

    @property
    def config(self) -> Any: ...

    def certificate_expiry(self) -> dict[str, float]: ...

    def worker_sockets(self) -> dict[int, str]:
        """The other workers' admin sockets by index (none: one process, or a worker itself)."""


def readiness(state: State) -> tuple[bool, dict[str, Any]]:
    """Whether the process should get traffic, and why not."""
    snapshot = state.gateway.balancer.snapshot()
    down = sorted(group for group, servers in snapshot.items()
                  if not any(s["healthy"] and not s["down"] and not s["retired"] for s in servers.values()))
    ready = state.ready and not state.draining and not down
    return ready, {"ready": ready, "listening": state.ready, "draining": state.draining, "groups_down": down}


def status(state: State) -> dict[str, Any]:
    """The /status document."""
    config = state.config
    return {
        "config": {"path": config.path, "loaded_at": state.loaded_at},
        "reloads": dict(state.reloads, last_success=state.last_reload),
        "open_exchanges": len(state.gateway.live),
        "upstreams": state.gateway.balancer.snapshot(),
        "http": state.gateway.metrics.http.snapshot(),
        "websocket": state.gateway.metrics.websocket.snapshot(),
        "tls": state.gateway.metrics.tls.snapshot(),
        "certificates": state.certificate_expiry(),
    }


class _Collector:
    """Prometheus families built from the running state at scrape time."""

    def __init__(self, state: State) -> None:
        self.state = state

    def collect(self) -> Iterator[Any]:
        state = self.state
        labels = ["upstream", "server"]
        up = GaugeMetricFamily("wsrelay_upstream_server_up", "1 if the server takes traffic (healthy, not "
                               "passively down), else 0", labels=labels)
        active = GaugeMetricFamily("wsrelay_upstream_server_active", "Requests and WebSocket pairs open on the "
                                   "server", labels=labels)
        served = CounterMetricFamily("wsrelay_upstream_server_responses", "Answers the server gave (its status not "
                                     "in fail_statuses)", labels=labels)
        failed = CounterMetricFamily("wsrelay_upstream_server_failures", "Failures counted against the server, "
                                     "by cause (connect_error, connect_timeout, read_timeout, status...)",
                                     labels=[*labels, "cause"])
        retries = CounterMetricFamily("wsrelay_upstream_server_retries", "Failed attempts on the server tried "
                                      "again on another one", labels=labels)
        for group, members in state.gateway.balancer.snapshot().items():
            for key, s in members.items():
                values = [group, key]
                up.add_metric(values, float(s["healthy"] and not s["down"]))
                active.add_metric(values, s["active"])
                served.add_metric(values, s["served"])
                for cause, count in sorted(s["failed_by_cause"].items()):
                    failed.add_metric([*values, cause], count)
                retries.add_metric(values, s["retries"])
        yield from (up, active, served, failed, retries)
        yield GaugeMetricFamily("wsrelay_open_exchanges", "HTTP requests and WebSocket connections in progress",
                                value=len(state.gateway.live))
        metrics = state.gateway.metrics
        yield from families.http(metrics.http)
        yield from families.websocket(metrics.websocket)
        yield from families.tls(metrics.tls)
        yield from families.protection(state.gateway.limits, state.connections, state.gateway.websocket.rate_closes)
        heap = state.heap
        if heap.available:
            yield CounterMetricFamily("wsrelay_memory_trims", "Free C heap pages handed back to the system "
                                      "(malloc_trim, every memory_trim_interval)", value=heap.trims)
            yield CounterMetricFamily("wsrelay_memory_trim_seconds", "Time spent handing free C heap pages back",
                                      value=heap.seconds)
        reloads = CounterMetricFamily("wsrelay_reloads", "Configuration reloads by result", labels=["result"])
        for result, count in state.reloads.items():
            reloads.add_metric([result], count)
        yield reloads
        if state.last_reload is not None:
            yield GaugeMetricFamily("wsrelay_last_reload_success_timestamp_seconds",
                                    "When a reload last put a configuration in service", value=state.last_reload)
        expiry = GaugeMetricFamily("wsrelay_tls_certificate_expiry_timestamp_seconds",
                                   "When each certificate in service expires", labels=["certificate"])
        for name, when in state.certificate_expiry().items():
            expiry.add_metric([name], when)
        yield expiry


class _Page(Resource):
    isLeaf = True

    def __init__(self, render: Any) -> None:
        super().__init__()
        self._render = render

    def render_GET(self, request: Request) -> bytes | int:
        result = self._render()
        if not isinstance(result, Deferred):
            return self._answer(request, result)
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(page: tuple[int, bytes, bytes]) -> None:
            if not gone:
                request.write(self._answer(request, page))
                request.finish()

        result.addCallback(answer)
        return NOT_DONE_YET

    @staticmethod
    def _answer(request: Request, page: tuple[int, bytes, bytes]) -> bytes:
        status_code, content_type, body = page
        request.setResponseCode(status_code)
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"cache-control", b"no-store")
        return body


def _json(document: Any, status_code: int = 200) -> tuple[int, bytes, bytes]:
    return status_code, b"application/json", json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"


class _Root(Resource):
    """Pages by name, for allowed clients only."""

    def __init__(self, allow: tuple[Any, ...]) -> None:
        super().__init__()
        self.allow = allow

    def allowed(self, request: Request) -> bool:
        if not self.allow:
            return True
        host = getattr(request.getClientAddress(), "host", None)
        try:
            address = ipaddress.ip_address(host) if host is not None else None
        except ValueError:
            return False
        return address is not None and any(address in network for network in self.allow)

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        if not self.allowed(request):
            return ForbiddenResource("not from an allowed network")
        return super().getChildWithDefault(path, request)

    def render_GET(self, request: Request) -> bytes:
        if not self.allowed(request):
            return ForbiddenResource("not from an allowed network").render(request)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"wsrelay admin: /healthz /readyz /status /metrics\n"


def admin_site(state: State, allow: tuple[Any, ...] = ()) -> Site:
    """The admin listener's site."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    registry.register(_Collector(state))  # type: ignore[arg-type]

    def ready() -> tuple[int, bytes, bytes]:
        ok, why = readiness(state)
        return _json(why, 200 if ok else 503)

    root = _Root(allow)
    root.putChild(b"healthz", _Page(lambda: (200, b"text/plain; charset=utf-8", b"ok\n")))
    root.putChild(b"readyz", _Page(ready))
    def status_page() -> Any:
        own = status(state)
        sockets = state.worker_sockets()
        if not sockets:
            return _json(own)
        return fetch_all(state.reactor, sockets, b"/status").addCallback(lambda texts: _json(merge_status(own, texts)))

    def metrics_page() -> Any:
        own = generate_latest(registry)
        sockets = state.worker_sockets()
        if not sockets:
            return 200, CONTENT_TYPE_LATEST.encode(), own
        return fetch_all(state.reactor, sockets, b"/metrics").addCallback(
            lambda texts: (200, CONTENT_TYPE_LATEST.encode(), merge_metrics({0: own, **texts})))

    root.putChild(b"status", _Page(status_page))
    root.putChild(b"metrics", _Page(metrics_page))
    site = Site(root)
    site.noisy = False
    site.displayTracebacks = False
    return site

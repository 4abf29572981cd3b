"""Counters for HTTP, WebSocket and TLS traffic, ready for the admin listener's ``/metrics``.

Pure bookkeeping: increments only, no I/O, no ``prometheus_client`` (the admin collector turns
these into metric families at scrape time, see ``admin.py``).  What runs on the hot paths is an
integer increment on an object bound once (a WebSocket leg holds its hop's :class:`HopCounters`
from the pair's start; an HTTP request's route counters are found once, when it ends) and, for
durations and round trips, one ``bisect`` into a fixed bucket list (:class:`Histogram`).

HTTP: per route (``-`` for requests answered before a route was found), requests by method (the
common ones by name, the rest as ``other``) and status class, a duration histogram, body bytes in
(from the client) and out (to the client).

WebSocket: a *hop* is one side of a relayed pair: ``client`` (wsrelay <-> the client) and
``upstream`` (wsrelay <-> the upstream server).  On each hop ``in`` is what its peer sent wsrelay
and ``out`` what wsrelay sent its peer, so a message from the client counts as ``client`` in and
``upstream`` out.  Close codes are counted per hop and direction (``None``: a close frame without
a code).  Tunnel-mode pairs count octets only (they see no messages).  Pairs are counted per route
and mode, handshake refusals per route and status, wsrelay's own pings per hop (sent, missed, and
the round-trip time of each answered one).

TLS: per listener, handshakes completed and handshakes that failed with a TLS error.

``snapshot()`` methods return plain dicts (JSON-ready; close codes as strings).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from typing import Any

HOPS = ("client", "upstream")

#: Upper bounds (seconds) of the HTTP request duration buckets.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Upper bounds (seconds) of the WebSocket ping round-trip buckets.
RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Methods counted by name; any other is ``other`` (a label value per method a client invents
#: would let clients grow the metrics without bound).
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other")
_METHOD_INDEX = {m.encode(): i for i, m in enumerate(METHODS[:-1])}
_OTHER = len(METHODS) - 1
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
#: The route label of a request refused before a route was found (400, 404, ...).
NO_ROUTE = "-"


def _child(table: dict[str, Any], key: str, factory: Any) -> Any:
    """``table[key]``, made with ``factory()`` the first time (once per route or listener)."""
    counters = table.get(key)
    if counters is None:
        counters = table[key] = factory()
    return counters


class Histogram:
    """Observations in fixed buckets: ``counts[i]`` holds those <= ``bounds[i]`` and above the
    bound before (the last one: above every bound), so an observation is one bisect and two adds."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= it)`` for every bucket, the last one ``inf``."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            total += n
            out.append((bound, total))
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"count": self.count, "sum": self.sum,
                "buckets": {("+Inf" if b == float("inf") else repr(b)): n for b, n in self.cumulative()}}


# -- HTTP --------------------------------------------------------------------------------------


class HTTPRouteCounters:
    """Requests of one route: ``requests[method index * 5 + status class index]``."""

    __slots__ = ("requests", "duration", "octets_in", "octets_out")

    def __init__(self) -> None:
        self.requests = [0] * (len(METHODS) * len(STATUS_CLASSES))
        self.duration = Histogram(DURATION_BUCKETS)
        self.octets_in = 0
        self.octets_out = 0

    def by_label(self) -> dict[tuple[str, str], int]:
        """``(method, status class) -> requests``, those with at least one request."""
        n = len(STATUS_CLASSES)
        return {(METHODS[i // n], STATUS_CLASSES[i % n]): count for i, count in enumerate(self.requests) if count}


class HTTPMetrics:
    """Per-route HTTP request counters."""

    def __init__(self) -> None:
        self.routes: dict[str, HTTPRouteCounters] = {}

    def route(self, name: str | None) -> HTTPRouteCounters:
        return _child(self.routes, NO_ROUTE if name is None else name, HTTPRouteCounters)  # type: ignore[no-any-return]

    def done(self, route: str | None, method: bytes | None, status: int, seconds: float, octets_in: int,
             octets_out: int) -> None:
        """A request was answered (or given up: its status as the access log has it)."""
        c = self.route(route)
        klass = status // 100 - 1
        if not 0 <= klass < 5:
            klass = 4
        c.requests[_METHOD_INDEX.get(method, _OTHER) * 5 + klass] += 1  # type: ignore[arg-type]
        c.duration.observe(seconds)
        c.octets_in += octets_in
        c.octets_out += octets_out

    def snapshot(self) -> dict[str, Any]:
        return {name: {"requests": {f"{m} {s}": n for (m, s), n in c.by_label().items()},
                       "duration_seconds": c.duration.snapshot(), "octets_in": c.octets_in,
                       "octets_out": c.octets_out}
                for name, c in self.routes.items()}


# -- TLS ---------------------------------------------------------------------------------------


class TLSCounters:
    """TLS handshakes of one listener."""

    __slots__ = ("handshakes", "failures")

    def __init__(self) -> None:
        self.handshakes = 0
        self.failures = 0


class TLSMetrics:
    def __init__(self) -> None:
        self.listeners: dict[str, TLSCounters] = {}

    def listener(self, name: str) -> TLSCounters:
        return _child(self.listeners, name, TLSCounters)  # type: ignore[no-any-return]

    def snapshot(self) -> dict[str, Any]:
        return {name: {"handshakes": c.handshakes, "failures": c.failures} for name, c in self.listeners.items()}


# -- WebSocket ---------------------------------------------------------------------------------


class HopCounters:
    """Traffic on one hop of one route."""

    __slots__ = ("messages_in", "messages_out", "octets_in", "octets_out", "closes_in", "closes_out",
                 "pings", "pings_missed", "rtt")

    def __init__(self) -> None:
        self.messages_in = 0
        self.messages_out = 0
        self.octets_in = 0
        self.octets_out = 0
        self.closes_in: Counter[int | None] = Counter()
        self.closes_out: Counter[int | None] = Counter()
        self.pings = 0  # wsrelay's own pings sent on this hop
        self.pings_missed = 0  # of which no pong came within ws_ping_timeout (the hop was dropped)
        self.rtt = Histogram(RTT_BUCKETS)  # seconds from wsrelay's ping to its pong

    def snapshot(self) -> dict[str, Any]:
        return {
            "messages_in": self.messages_in, "messages_out": self.messages_out,
            "octets_in": self.octets_in, "octets_out": self.octets_out,
            "closes_in": {str(k): v for k, v in self.closes_in.items()},
            "closes_out": {str(k): v for k, v in self.closes_out.items()},
            "pings": self.pings, "pings_missed": self.pings_missed, "ping_rtt_seconds": self.rtt.snapshot(),
        }


class RouteCounters:
    """Pairs and per-hop traffic of one route."""

    __slots__ = ("open", "opened", "modes", "refusals", "hops", "paths")

    def __init__(self) -> None:
        self.open = 0
        self.opened = 0
        self.modes: dict[str, list[int]] = {}  # mode -> [open, opened]
        self.refusals: Counter[int] = Counter()  # handshakes answered over HTTP, by status
        self.hops = {hop: HopCounters() for hop in HOPS}
        self.paths: Counter[str] = Counter()  # relayed pairs per frame path ("lean", "autobahn")


class WebSocketMetrics:
    """Per-route, per-hop WebSocket counters."""

    def __init__(self) -> None:
        self.routes: dict[str, RouteCounters] = {}

    def route(self, name: str) -> RouteCounters:
        return _child(self.routes, name, RouteCounters)  # type: ignore[no-any-return]

    def hop(self, route: str, hop: str) -> HopCounters:
        return self.route(route).hops[hop]

    def opened(self, route: str, mode: str) -> None:
        """A pair completed both handshakes."""
        c = self.route(route)
        c.open += 1
        c.opened += 1
        counts = c.modes.get(mode)
        if counts is None:
            counts = c.modes[mode] = [0, 0]
        counts[0] += 1
        counts[1] += 1

    def took_path(self, route: str, path: str) -> bool:
        """A relayed pair opened on ``path``; True if it is the route's first on that path."""
        paths = self.route(route).paths
        paths[path] += 1
        return paths[path] == 1

    def ended(self, route: str, mode: str) -> None:
        """A pair that had opened is over."""
        c = self.route(route)
        c.open -= 1
        c.modes[mode][0] -= 1

    def refused(self, route: str, status: int) -> None:
        """A handshake was answered over HTTP with ``status`` (no WebSocket)."""
        self.route(route).refusals[status] += 1

    def received(self, route: str, hop: str, octets: int, *, message: bool = True) -> None:
        """``hop``'s peer sent a message of ``octets`` (or, tunnels, ``octets`` bytes)."""
        h = self.hop(route, hop)
        h.messages_in += message
        h.octets_in += octets

    def sent(self, route: str, hop: str, octets: int, *, message: bool = False) -> None:
        """wsrelay sent ``octets`` of payload to ``hop``'s peer; ``message``: a message ended."""
        h = self.hop(route, hop)
        h.messages_out += message
        h.octets_out += octets

    def close_in(self, route: str, hop: str, code: int | None) -> None:
        self.hop(route, hop).closes_in[code] += 1

    def close_out(self, route: str, hop: str, code: int | None) -> None:
        self.hop(route, hop).closes_out[code] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            name: {"open": c.open, "opened": c.opened, "paths": dict(c.paths),
                   "modes": {mode: {"open": o, "opened": n} for mode, (o, n) in c.modes.items()},
                   "refusals": {str(k): v for k, v in c.refusals.items()},
                   "hops": {hop: h.snapshot() for hop, h in c.hops.items()}}
            for name, c in self.routes.items()
        }


class Metrics:
    """Every counter of one wsrelay process (the gateway holds it; it outlives reloads)."""

    def __init__(self) -> None:
        self.http = HTTPMetrics()
        self.tls = TLSMetrics()
        self.websocket = WebSocketMetrics()

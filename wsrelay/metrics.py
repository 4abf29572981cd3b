"""Counters for WebSocket traffic, per route and per hop, ready for a metrics endpoint.

Pure bookkeeping: increments only, no I/O.  A *hop* is one side of a relayed pair: ``client``
(wsrelay <-> the client) and ``upstream`` (wsrelay <-> the upstream server).  On each hop ``in``
is what its peer sent wsrelay and ``out`` what wsrelay sent its peer, so a message from the client
counts as ``client`` in and ``upstream`` out.  Close codes are counted per hop and direction
(``None``: a close frame without a code).  Tunnel-mode pairs count octets only (they see no
messages).  ``snapshot()`` returns plain dicts (JSON-ready; close codes as strings).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

HOPS = ("client", "upstream")


class HopCounters:
    """Traffic on one hop of one route."""

    __slots__ = ("messages_in", "messages_out", "octets_in", "octets_out", "closes_in", "closes_out")

    def __init__(self) -> None:
        self.messages_in = 0
        self.messages_out = 0
        self.octets_in = 0
        self.octets_out = 0
        self.closes_in: Counter[int | None] = Counter()
        self.closes_out: Counter[int | None] = Counter()

    def snapshot(self) -> dict[str, Any]:
        return {
            "messages_in": self.messages_in, "messages_out": self.messages_out,
            "octets_in": self.octets_in, "octets_out": self.octets_out,
            "closes_in": {str(k): v for k, v in self.closes_in.items()},
            "closes_out": {str(k): v for k, v in self.closes_out.items()},
        }


class RouteCounters:
    """Pairs and per-hop traffic of one route."""

    __slots__ = ("open", "opened", "hops", "paths")

    def __init__(self) -> None:
        self.open = 0
        self.opened = 0
        self.hops = {hop: HopCounters() for hop in HOPS}
        self.paths: Counter[str] = Counter()  # relayed pairs per frame path ("lean", "autobahn")


class WebSocketMetrics:
    """Per-route, per-hop WebSocket counters."""

    def __init__(self) -> None:
        self.routes: dict[str, RouteCounters] = {}

    def route(self, name: str) -> RouteCounters:
        counters = self.routes.get(name)
        if counters is None:
            counters = self.routes[name] = RouteCounters()
        return counters

    def hop(self, route: str, hop: str) -> HopCounters:
        return self.route(route).hops[hop]

    def opened(self, route: str) -> None:
        """A pair completed both handshakes."""
        c = self.route(route)
        c.open += 1
        c.opened += 1

    def took_path(self, route: str, path: str) -> bool:
        """A relayed pair opened on ``path``; True if it is the route's first on that path."""
        paths = self.route(route).paths
        paths[path] += 1
        return paths[path] == 1

    def ended(self, route: str) -> None:
        """A pair that had opened is over."""
        self.route(route).open -= 1

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
                   "hops": {hop: h.snapshot() for hop, h in c.hops.items()}}
            for name, c in self.routes.items()
        }

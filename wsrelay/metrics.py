"""Counters for WebSocket traffic, per route and per hop, ready for a metrics endpoint.

Pure bookkeeping: increments only, no I/O.  ``snapshot()`` returns plain dicts.  Hops are named by
the side messages come *from*: ``client`` (client to upstream) and ``upstream`` (upstream to
client); close codes are counted per side that sent them (``None``: closed without a code or lost).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any


class _RouteCounters:
    __slots__ = ("open", "opened", "messages", "octets", "close_codes")

    def __init__(self) -> None:
        self.open = 0
        self.opened = 0
        self.messages: Counter[str] = Counter()
        self.octets: Counter[str] = Counter()
        self.close_codes: dict[str, Counter[int | None]] = defaultdict(Counter)


class WebSocketMetrics:
    """Per-route WebSocket counters."""

    def __init__(self) -> None:
        self.routes: dict[str, _RouteCounters] = defaultdict(_RouteCounters)

    def opened(self, route: str) -> None:
        c = self.routes[route]
        c.open += 1
        c.opened += 1

    def ended(self, route: str) -> None:
        self.routes[route].open -= 1

    def message(self, route: str, source: str, size: int) -> None:
        c = self.routes[route]
        c.messages[source] += 1
        c.octets[source] += size

    def closed(self, route: str, side: str, code: int | None) -> None:
        self.routes[route].close_codes[side][code] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            route: {
                "open": c.open, "opened": c.opened,
                "messages": dict(c.messages), "octets": dict(c.octets),
                "close_codes": {side: dict(codes) for side, codes in c.close_codes.items()},
            }
            for route, c in self.routes.items()
        }

"""The streaming HTTP reverse proxy: a route's plain HTTP requests to its upstream group.

Invariants:

- HTTP/1.1 to upstreams over wsrelay's own client (``wsrelay.http.upstream``) and a persistent
  pool per server (``wsrelay.http.pool``, ``keepalive`` idle connections); the method, the request
  target (byte for byte) and every header line are passed on, with hop-by-hop fields removed and
  X-Forwarded-* added (``headers.request_to_upstream``).
- Bodies stream: the request body from twisted.web's spool file as the upstream takes it, the
  response body as it arrives, with the upstream read paused while the client's socket is full.
  Nothing is cached.
- Each request is one :class:`wsrelay.http.exchange.Exchange`, which handles every way it can end.
"""

from __future__ import annotations

from typing import Any

from twisted.web.server import NOT_DONE_YET

from wsrelay.config import Route
from wsrelay.http.exchange import IDEMPOTENT, Exchange, log
from wsrelay.http.pool import Pool

__all__ = ["HTTPProxy", "IDEMPOTENT", "log"]


class HTTPProxy:
    """Proxies plain HTTP requests of a route to its upstream group."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.pool = Pool(gateway.reactor)

    def render(self, request: Any, route: Route, runtime: Any, scheme: str) -> bytes | int:
        upstream = runtime.config.upstreams[route.upstream]
        Exchange(self, request, route, upstream, scheme).start()
        return NOT_DONE_YET

    def close(self) -> None:
        """Close every idle upstream connection (stopping)."""
        self.pool.close()

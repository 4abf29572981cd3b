"""What every request handler shares: the reactor, the current runtime, the balancer and logs.

Invariants:

- ``Gateway.runtime`` is replaced whole on reload, never mutated; a handler reads it once when a
  request arrives and keeps that object, so a reload never changes a request already under way.
- The balancer and the access log outlive reloads (connection counts and health carry over).
- Every open HTTP exchange and WebSocket pair is registered in ``live`` so that stopping can
  drain them: ``live`` holds objects with a ``shutdown()`` method that ends them politely (a close
  frame with 1001 for WebSockets, an abort for requests still running at the drain deadline).
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from wsrelay.accesslog import AccessLog
from wsrelay.balancing import Balancer
from wsrelay.config import Config
from wsrelay.healthcheck import HealthChecker
from wsrelay.routing import Router


class Live(Protocol):
    """An exchange in progress that a shutdown can end."""

    def shutdown(self) -> None: ...


@attrs.frozen
class Runtime:
    """One configuration and what is derived from it; swapped whole on reload."""

    config: Config
    router: Router

    @classmethod
    def build(cls, config: Config) -> Runtime:
        return cls(config=config, router=Router(config.routes))


class Gateway:
    """Long-lived shared state of one wsrelay process."""

    log = Logger()

    def __init__(self, reactor: Any, config: Config) -> None:
        from wsrelay.httpproxy import HTTPProxy
        from wsrelay.websocket import WebSocketGateway

        self.reactor = reactor
        self.runtime = Runtime.build(config)
        self.balancer = Balancer(reactor)
        self.balancer.configure(config.upstreams)
        self.health = HealthChecker(reactor, self.balancer)
        self.health.configure(config.upstreams)
        self.access_log = AccessLog(config.access_log)
        self.live: set[Live] = set()
        self._idle: list[Deferred[None]] = []
        self.http = HTTPProxy(self)
        self.websocket = WebSocketGateway(self)

    def apply(self, config: Config) -> None:
        """Put a new, already validated configuration in service for new requests."""
        self.balancer.configure(config.upstreams)
        self.health.configure(config.upstreams)
        if config.access_log != self.access_log.path:
            old, self.access_log = self.access_log, AccessLog(config.access_log)
            old.close()
        self.runtime = Runtime.build(config)

    def opened(self, exchange: Live) -> None:
        self.live.add(exchange)

    def closed(self, exchange: Live) -> None:
        self.live.discard(exchange)
        if not self.live:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def when_idle(self) -> Deferred[None]:
        """A Deferred that fires once no exchange is live."""
        d: Deferred[None] = Deferred()
        if not self.live:
            d.callback(None)
        else:
            self._idle.append(d)
        return d

    def shutdown_all(self) -> None:
        for exchange in list(self.live):
            exchange.shutdown()

    def close(self) -> None:
        self.health.stop()
        self.http.close()
        self.access_log.close()

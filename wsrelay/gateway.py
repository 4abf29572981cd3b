"""What every request handler shares: the reactor, the current runtime, the balancer and logs.

Invariants:

- ``Gateway.runtime`` is replaced whole on reload, never mutated; a handler reads it once when a
  request arrives and keeps that object, so a reload never changes a request already under way.
- The balancer and the access log outlive reloads (connection counts and health carry over); a
  new access log file is opened (:func:`open_access_log`) before a reload changes anything.
- Every open HTTP exchange and WebSocket pair is registered in ``live`` so that stopping can
  drain them: ``live`` holds objects with a ``shutdown()`` method that ends them politely (a close
  frame with 1001 for WebSockets, an abort for requests still running at the drain deadline).
  The same registration counts them per client address for ``limit_conn`` (``limits``): a pair
  stays counted from its handshake until it closes, and whatever ends an exchange or a pair
  (``closed``) uncounts it once.
  An open pair says so with a true ``open_pair`` attribute: a drain closes those itself (they
  never end on their own) and lets the others finish.  While ``draining``, a client connection
  with no request served yet is live too (its first request is answered, then it is closed);
  it is no client's exchange (its ``client_ip`` is None), so ``limit_conn`` does not count it.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from wsrelay.accesslog import AccessLog, open_problem
from wsrelay.balancing import Balancer
from wsrelay.config import Config, ConfigError
from wsrelay.healthcheck import HealthChecker
from wsrelay.http.pool import made_with
from wsrelay.limits import Limits
from wsrelay.metrics import Metrics
from wsrelay.routing import Router
from wsrelay.sticky import StickyKey, load_key


class Live(Protocol):
    """An exchange in progress that a shutdown can end."""

    #: the client address it is counted under for limit_conn (None: none, a unix: listener)
    client_ip: str | None

    def shutdown(self) -> None: ...


def is_open_pair(exchange: object) -> bool:
    """An open WebSocket pair (relayed or tunnelled), as opposed to an exchange that ends by itself."""
    return bool(getattr(exchange, "open_pair", False))


@attrs.frozen
class Runtime:
    """One configuration and what is derived from it; swapped whole on reload."""

    config: Config
    router: Router

    @classmethod
    def build(cls, config: Config) -> Runtime:
        return cls(config=config, router=Router(config.routes))


def _access_log_error(config: Config, reason: str) -> ConfigError:
    return ConfigError(config.path, "wsrelay", "access_log", f"{config.access_log}: cannot be opened ({reason})")


def open_access_log(config: Config) -> AccessLog:
    """The access log of ``config``, opened; ConfigError naming the key if it cannot be."""
    try:
        return AccessLog(config.access_log, config.access_log_format)
    except OSError as e:
        raise _access_log_error(config, e.strerror or str(e)) from None


def check_access_log(config: Config) -> None:
    """ConfigError if the access log of ``config`` could not be opened (creates nothing)."""
    reason = open_problem(config.access_log)
    if reason is not None:
        raise _access_log_error(config, reason)


class Gateway:
    """Long-lived shared state of one wsrelay process."""

    log = Logger()

    def __init__(self, reactor: Any, config: Config) -> None:
        from wsrelay.httpproxy import HTTPProxy
        from wsrelay.websocket import WebSocketGateway

        self.access_log = open_access_log(config)  # first: it can fail
        self.reactor = reactor
        self.runtime = Runtime.build(config)
        sticky = load_key(config)  # ConfigError for an unusable sticky_secret_file
        self._warn(sticky)
        self.balancer = Balancer(reactor, sticky.key)
        self.balancer.configure(config.upstreams)
        self.health = HealthChecker(reactor, self.balancer)
        self.health.configure(config.upstreams)
        self.live: set[Live] = set()
        self.limits = Limits()
        self.limits.configure(config.limit_req_clients, {r.name for r in config.routes})
        self.draining = False  # a stop is under way: new pairs are closed as soon as they open
        self.metrics = Metrics()
        self._idle: list[Deferred[None]] = []
        self.http = HTTPProxy(self)
        self.websocket = WebSocketGateway(self)

    def access_log_for(self, config: Config) -> AccessLog | None:
        """The access log ``config`` needs opened (None: keep the current one).  A file is opened
        anew on every reload, the same path too, so that SIGHUP after logrotate moved it starts a
        new file (as nginx's USR1).  ConfigError if it cannot be opened; nothing changes either way."""
        log = self.access_log
        if config.access_log == log.path and config.access_log in (None, "-") and config.access_log_format == log.format:
            return None
        return open_access_log(config)

    def _warn(self, sticky: StickyKey) -> None:
        for warning in sticky.warnings:
            self.log.warn("{warning}", warning=warning)

    def apply(self, config: Config, access_log: AccessLog | None = None, sticky: StickyKey | None = None) -> None:
        """Put a new, already validated configuration in service for new requests, with the
        access log :meth:`access_log_for` opened for it and its sticky key (``sticky.load_key``,
        loaded before anything changed)."""
        if access_log is None:
            access_log = self.access_log_for(config)
        if sticky is None:
            sticky = load_key(config)
        self._warn(sticky)
        self.balancer.configure(config.upstreams, sticky.key)
        self.health.configure(config.upstreams)
        if access_log is not None:
            old, self.access_log = self.access_log, access_log
            old.close()
        was, now = made_with(self.runtime.config.upstreams), made_with(config.upstreams)
        self.http.pool.retire([key for key, made in was.items() if now.get(key) != made])
        self.limits.configure(config.limit_req_clients, {r.name for r in config.routes})
        self.runtime = Runtime.build(config)

    def opened(self, exchange: Live) -> None:
        self.live.add(exchange)
        self.limits.opened(exchange.client_ip)

    def closed(self, exchange: Live) -> None:
        live = self.live
        if exchange in live:
            live.remove(exchange)
            self.limits.closed(exchange.client_ip)
        if not live:
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

    def open_pairs(self) -> list[Live]:
        return [x for x in self.live if is_open_pair(x)]

    def shutdown_all(self, pairs: bool = True) -> None:
        """End every live exchange now (``pairs=False``: all but open WebSocket pairs)."""
        for exchange in list(self.live):
            if pairs or not is_open_pair(exchange):
                exchange.shutdown()

    def close(self) -> None:
        self.health.stop()
        self.http.close()
        self.access_log.close()

"""Persistent upstream connections: per server, up to its group's ``keepalive`` idle ones.

Invariants:

- A connection is taken by one request at a time and comes back only through
  :meth:`Pool.put`, which ``UpstreamProtocol`` calls when a response ended cleanly and both sides
  allow reuse; anything else closes it.
- An idle connection that the server closes (or that sends a byte unasked) leaves the pool at
  once; one idle for :data:`IDLE_TIMEOUT` seconds is closed by wsrelay.
- New connections go through ``connect.upstream_endpoint``, so TLS upstreams, host names and
  connect timeouts are as for every other connection wsrelay makes.
- A reload that removes a server (or its group) or changes what its connections were made with
  (address, TLS settings) closes that server's idle connections at once (:meth:`Pool.retire`):
  none is reused under the new configuration, and none lingers until its idle timeout.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from twisted.internet.defer import Deferred

from wsrelay.config import Upstream
from wsrelay.http.upstream import UpstreamFactory, UpstreamProtocol

#: Seconds an idle pooled connection is kept (below the common 60-75 s of upstream servers, so
#: wsrelay rather than the server usually ends it, and a request seldom meets a closing one).
IDLE_TIMEOUT = 50.0


def made_with(upstreams: Mapping[str, Upstream]) -> dict[tuple[str, str], tuple[Any, ...]]:
    """What the pooled connections of each server (by pool key) were made with, beyond the
    address in the key: the group's upstream TLS settings and its response head limit."""
    return {(u.name, s.key): (u.max_response_header_size,) + ((u.tls_verify, u.tls_ca, u.tls_server_name)
                                                            if s.tls else ())
            for u in upstreams.values() for s in u.servers}


class Pool:
    """Idle connections by key ``(group name, server key)``."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.idle: dict[Any, list[UpstreamProtocol]] = {}
        self.limits: dict[Any, int] = {}
        self.timers: dict[UpstreamProtocol, Any] = {}

    def take(self, key: Any, keepalive: int) -> UpstreamProtocol | None:
        """An idle connection to reuse, or None."""
        self.limits[key] = keepalive
        idle = self.idle.get(key)
        while idle:
            protocol = idle.pop()
            timer = self.timers.pop(protocol, None)
            if timer is not None and timer.active():
                timer.cancel()
            if protocol.connected:
                return protocol
        return None

    def connect(self, key: Any, endpoint: Any, max_head: int) -> Deferred[UpstreamProtocol]:
        """A new connection (its Deferred fails with the endpoint's error)."""
        return endpoint.connect(UpstreamFactory(self, key, max_head))

    def put(self, protocol: UpstreamProtocol) -> None:
        """A connection whose response ended cleanly: keep it idle, or close it if the pool is full."""
        idle = self.idle.setdefault(protocol.key, [])
        if len(idle) >= self.limits.get(protocol.key, 0):
            protocol.close()
            return
        idle.append(protocol)
        self.timers[protocol] = self.reactor.callLater(IDLE_TIMEOUT, protocol.close)

    def lost(self, protocol: UpstreamProtocol) -> None:
        """A connection ended: forget it if it was idle."""
        timer = self.timers.pop(protocol, None)
        if timer is None:
            return
        if timer.active():
            timer.cancel()
        idle = self.idle.get(protocol.key)
        if idle and protocol in idle:
            idle.remove(protocol)

    def retire(self, keys: Iterable[Any]) -> None:
        """Close the idle connections of ``keys`` (servers a reload removed or changed)."""
        for key in keys:
            for protocol in list(self.idle.pop(key, ())):
                timer = self.timers.pop(protocol, None)
                if timer is not None and timer.active():
                    timer.cancel()
                protocol.close()
            self.limits.pop(key, None)

    def idle_count(self, key: Any) -> int:
        return len(self.idle.get(key, ()))

    def close(self) -> None:
        """Close every idle connection (stopping)."""
        for idle in list(self.idle.values()):
            for protocol in list(idle):
                protocol.close()
        self.idle.clear()
        for timer in self.timers.values():
            if timer.active():
                timer.cancel()
        self.timers.clear()

"""Client endpoints toward upstream servers.

An IP literal connects directly (no resolver round trip, no thread); a host name goes through
``HostnameEndpoint`` (happy eyeballs over every address).  ``https://`` servers are wrapped in TLS
with the group's verification settings (``wsrelay.tls.upstream.client_creator``).  The connect timeout
is judged after the reactor has read what arrived (``wsrelay.timers.connect_within``), so a
server that answered while wsrelay was held up is not taken for one that did not.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from zope.interface import implementer

from wsrelay.config import Server, Upstream
from wsrelay.timers import BACKSTOP, connect_within


@functools.lru_cache(maxsize=1024)
def _ip_version(host: str) -> int | None:
    """4 or 6 for an IP literal, None for a host name (asked once per server, not per request)."""
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def upstream_endpoint(reactor: Any, upstream: Upstream, server: Server, timeout: float) -> IStreamClientEndpoint:
    """An endpoint that connects to ``server`` of ``upstream`` within ``timeout`` seconds."""
    endpoint: IStreamClientEndpoint
    version = _ip_version(server.host)
    backstop = timeout + BACKSTOP
    if version is None:
        endpoint = HostnameEndpoint(reactor, server.host, server.port, timeout=backstop)
    else:
        kind = TCP6ClientEndpoint if version == 6 else TCP4ClientEndpoint
        endpoint = kind(reactor, server.host, server.port, timeout=backstop)
    if server.tls:
        from wsrelay.tls.upstream import client_creator

        endpoint = wrapClientTLS(client_creator(upstream, server), endpoint)
    return _Within(reactor, endpoint, timeout)


@implementer(IStreamClientEndpoint)
class _Within:
    """``endpoint``, its connections failed with TimeoutError after ``timeout`` seconds."""

    def __init__(self, reactor: Any, endpoint: IStreamClientEndpoint, timeout: float) -> None:
        self.reactor, self.endpoint, self.timeout = reactor, endpoint, timeout

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        return connect_within(self.reactor, self.endpoint.connect(factory), self.timeout)

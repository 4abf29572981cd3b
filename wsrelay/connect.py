"""Client endpoints toward upstream servers.

An IP literal connects directly (no resolver round trip, no thread); a host name goes through
``HostnameEndpoint`` (happy eyeballs over every address).  ``https://`` servers are wrapped in TLS
with the group's verification settings (``wsrelay.tls.client_creator``).
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint

from wsrelay.config import Server, Upstream


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
    if version is None:
        endpoint = HostnameEndpoint(reactor, server.host, server.port, timeout=timeout)
    else:
        kind = TCP6ClientEndpoint if version == 6 else TCP4ClientEndpoint
        endpoint = kind(reactor, server.host, server.port, timeout=timeout)
    if server.tls:
        from wsrelay import tls

        endpoint = wrapClientTLS(tls.client_creator(upstream, server), endpoint)
    return endpoint

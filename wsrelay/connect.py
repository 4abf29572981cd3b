"""Client endpoints toward upstream servers.

An IP literal connects directly (no resolver round trip, no thread); a host name goes through
``HostnameEndpoint`` (happy eyeballs over every address).  ``https://`` servers are wrapped in TLS
with the group's verification settings (``wsrelay.tls.client_creator``).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint

from wsrelay.config import Server, Upstream


def upstream_endpoint(reactor: Any, upstream: Upstream, server: Server, timeout: float) -> IStreamClientEndpoint:
    """An endpoint that connects to ``server`` of ``upstream`` within ``timeout`` seconds."""
    endpoint: IStreamClientEndpoint
    try:
        address = ipaddress.ip_address(server.host)
    except ValueError:
        endpoint = HostnameEndpoint(reactor, server.host, server.port, timeout=timeout)
    else:
        kind = TCP6ClientEndpoint if address.version == 6 else TCP4ClientEndpoint
        endpoint = kind(reactor, server.host, server.port, timeout=timeout)
    if server.tls:
        from wsrelay import tls

        endpoint = wrapClientTLS(tls.client_creator(upstream, server), endpoint)
    return endpoint

"""Opening a listener's socket.

``tcp:`` and ``tcp6:`` endpoints are opened here with our own socket (``SO_REUSEADDR``, and
``SO_REUSEPORT`` when several workers share the port, so the kernel spreads connections over
them) and adopted by the reactor; other endpoint kinds (``unix:``, ``systemd:``) go through
Twisted's ``serverFromString``.  TLS wraps the site's factory with ``TLSMemoryBIOFactory`` either
way, and a listener with ``proxy_protocol`` reads a PROXY protocol header before anything else
(:class:`ProxyHeaderFactory`).  Failures raise :class:`OSError` or :class:`ValueError` with a readable message; the caller
turns them into a ConfigError naming the section and key.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.internet.interfaces import IAddress, IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import directlyProvides, providedBy

from wsrelay.proxyheader import InvalidHeader, parse

log = Logger()

_UNESCAPED_COLON = re.compile(r"(?<!\\):")


def parse_tcp(description: str) -> tuple[int, int, str, int]:
    """``tcp:PORT[:interface=ADDR][:backlog=N]`` -> (family, port, interface, backlog)."""
    kind, *parts = [p.replace("\\:", ":") for p in _UNESCAPED_COLON.split(description)]
    family = socket.AF_INET6 if kind.lower() == "tcp6" else socket.AF_INET
    interface = "::" if family == socket.AF_INET6 else "0.0.0.0"
    backlog = 511
    port: int | None = None
    for part in parts:
        name, eq, value = part.partition("=")
        if not eq:
            if port is not None:
                raise ValueError(f"unexpected {part!r}")
            port = int(name)
        elif name == "port":
            port = int(value)
        elif name == "interface":
            interface = value
        elif name == "backlog":
            backlog = int(value)
        else:
            raise ValueError(f"unknown option {name!r} (port, interface, backlog)")
    if port is None:
        raise ValueError("no port")
    if ":" in interface and family == socket.AF_INET:
        family = socket.AF_INET6
    return family, port, interface, backlog


def is_tcp(description: str) -> bool:
    return description.split(":", 1)[0].lower() in {"tcp", "tcp6"}


def open_listener(reactor: Any, description: str, factory: Factory, *, tls_creator: Any = None,
                  reuse_port: bool = False, port: int | None = None, proxy_protocol: bool = False,
                  header_timeout: Callable[[], float] = lambda: 60.0) -> IListeningPort:
    """Listen on ``description`` with ``factory`` (wrapped in TLS if ``tls_creator``).

    ``port`` overrides the endpoint's port (workers join the port their master bound).
    ``proxy_protocol``: every connection starts with a PROXY protocol header (v1 or v2, from an L4
    load balancer), read before anything else (TLS included), within ``header_timeout()``
    seconds (asked as each connection is made, so a reload's new value applies to the next
    ones); the address it gives is the connection's peer from the start.  A connection without
    a valid header is closed, with a log line.
    """
    if tls_creator is not None:
        factory = TLSMemoryBIOFactory(tls_creator, False, factory)
    endpoint: IStreamServerEndpoint
    if is_tcp(description):
        family, configured_port, interface, backlog = parse_tcp(description)
        fd = _bound_socket(family, interface, configured_port if port is None else port, backlog, reuse_port)
        endpoint = AdoptedStreamServerEndpoint(reactor, fd, family)  # it closes fd once adopted
    else:
        endpoint = serverFromString(reactor, description)
    if proxy_protocol:
        factory = ProxyHeaderFactory(reactor, factory, header_timeout)
    result: list[Any] = []
    endpoint.listen(factory).addBoth(result.append)  # these endpoints listen at once
    if not result:
        raise ValueError("the endpoint did not start listening")
    if not IListeningPort.providedBy(result[0]):
        result[0].raiseException()
    return result[0]


def _bound_socket(family: int, interface: str, port: int, backlog: int, reuse_port: bool) -> int:
    """A listening, non-blocking socket's descriptor (the caller owns it)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((interface, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock.detach()


class ProxyHeaderProtocol(ProtocolWrapper):
    """Reads the PROXY header, then makes the wrapped protocol's connection, whose peer and host
    are the header's addresses (the connection's own for a header that names none)."""

    factory: ProxyHeaderFactory

    def __init__(self, factory: ProxyHeaderFactory, wrapped: Protocol) -> None:
        super().__init__(factory, wrapped)
        self.received = b""
        self.header_read = False
        self.refused = False
        self.peer: IAddress | None = None
        self.host: IAddress | None = None
        self.timer: Any = None

    def makeConnection(self, transport: Any) -> None:
        # ProtocolWrapper.makeConnection, but the wrapped protocol's connection is made only once
        # the header is read, so nothing in it ever sees the balancer's address as the client's.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        timeout = self.factory.timeout()
        self.timer = self.factory.reactor.callLater(timeout, self._refuse,
                                                    f"no complete PROXY header within {timeout:g}s")

    def dataReceived(self, data: bytes) -> None:
        if self.header_read:
            self.wrappedProtocol.dataReceived(data)
            return
        if self.refused:
            return
        received = self.received + data
        try:
            header = parse(received)
        except InvalidHeader as e:
            self._refuse(str(e))
            return
        if header is None:
            self.received = received
            return
        self.received, self.header_read = b"", True
        self.timer.cancel()
        if header.source is not None and header.destination is not None:
            self.peer, self.host = _address(header.source), _address(header.destination)
        self.wrappedProtocol.makeConnection(self)
        rest = received[header.length:]
        if rest and not self.disconnecting:
            self.wrappedProtocol.dataReceived(rest)

    def _refuse(self, reason: str) -> None:
        self.refused = True
        if self.timer.active():
            self.timer.cancel()
        log.warn("PROXY protocol: connection from {peer} closed: {reason}",
                 peer=_text(self.transport.getPeer()), reason=reason)
        self.transport.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if self.header_read:
            super().connectionLost(reason)
        else:
            self.factory.unregisterProtocol(self)

    def getPeer(self) -> IAddress:
        return self.peer or self.transport.getPeer()

    def getHost(self) -> IAddress:
        return self.host or self.transport.getHost()


class ProxyHeaderFactory(WrappingFactory):
    """Wraps a listener's factory so that each connection starts with a PROXY header, whole
    within ``timeout()`` seconds (the value in force when the connection is made)."""

    protocol = ProxyHeaderProtocol

    def __init__(self, reactor: Any, wrapped: Factory, timeout: Callable[[], float]) -> None:
        super().__init__(wrapped)
        self.reactor = reactor
        self.timeout = timeout


def _address(pair: tuple[str, int]) -> IAddress:
    kind = IPv6Address if ":" in pair[0] else IPv4Address
    return kind("TCP", *pair)


def _text(address: Any) -> str:
    host = getattr(address, "host", None)
    return f"{host}:{address.port}" if host is not None else str(address)

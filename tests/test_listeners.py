"""Listener sockets: endpoint parsing, SO_REUSEPORT sharing, clear bind errors."""

from __future__ import annotations

import socket

import pytest
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor

from wsrelay.listeners import open_listener, parse_tcp


def test_parse_tcp_forms() -> None:
    """tcp and tcp6 strings with interface (escaped colons) and backlog parse to socket arguments."""
    assert parse_tcp("tcp:8080") == (socket.AF_INET, 8080, "0.0.0.0", 511)
    assert parse_tcp("tcp:0:interface=127.0.0.1:backlog=7") == (socket.AF_INET, 0, "127.0.0.1", 7)
    assert parse_tcp(r"tcp6:443:interface=\:\:1") == (socket.AF_INET6, 443, "::1", 511)
    assert parse_tcp("tcp:port=81") == (socket.AF_INET, 81, "0.0.0.0", 511)
    with pytest.raises(ValueError, match="unknown option"):
        parse_tcp("tcp:80:colour=red")


def test_adopts_a_bound_socket() -> None:
    """A tcp listener is a real bound, listening socket handed to the reactor."""
    reactor = MemoryReactor()
    factory = Factory.forProtocol(Protocol)
    open_listener(reactor, "tcp:0:interface=127.0.0.1", factory)
    (fd, family, adopted), = reactor.adoptedPorts
    assert family == socket.AF_INET and adopted is factory


def test_reuse_port_lets_workers_share_a_port() -> None:
    """With reuse_port two listeners bind the same port; without it the second fails clearly."""
    first = socket.socket()
    first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    first.bind(("127.0.0.1", 0))
    first.listen(1)
    port = first.getsockname()[1]
    try:
        reactor = MemoryReactor()
        open_listener(reactor, "tcp:0:interface=127.0.0.1", Factory(), reuse_port=True, port=port)
        assert len(reactor.adoptedPorts) == 1
        with pytest.raises(OSError) as info:
            open_listener(MemoryReactor(), f"tcp:{port}:interface=127.0.0.1", Factory())
        assert "Address already in use" in str(info.value)
    finally:
        first.close()

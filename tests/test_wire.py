"""wsrelay.http.wire.Writer: direct socket writes while nothing is queued, Twisted's queue after."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.test import iosim

from twisted.internet import tcp
from twisted.internet.interfaces import ISSLTransport
from zope.interface import directlyProvides

from wsrelay.http.wire import Writer, no_delay


class FakeSocket:
    """Takes at most ``room`` bytes in all, then raises BlockingIOError (a full send buffer)."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.sent = b""

    def send(self, data: bytes) -> int:
        if not self.room:
            raise BlockingIOError()
        taken = data[:self.room]
        self.room -= len(taken)
        self.sent += taken
        return len(taken)


def connection(room: int) -> Any:
    """A tcp.Connection (without a real socket) whose queued writes are recorded."""
    conn = tcp.Connection.__new__(tcp.Connection)
    conn.connected = 1
    conn.disconnecting = False
    sock = FakeSocket(room)
    conn.getHandle = lambda: sock  # type: ignore[method-assign]
    conn.queued = []  # type: ignore[attr-defined]
    conn.write = conn.queued.append  # type: ignore[method-assign]
    return conn


def test_direct_until_the_socket_is_full_then_queued_in_order() -> None:
    """Writes go to the socket while it takes them whole; the first partial write queues its rest
    in the transport, and every later write follows it there (order kept)."""
    conn = connection(room=10)
    writer = Writer(conn)
    writer.write(b"abcd")
    assert conn.getHandle().sent == b"abcd" and conn.queued == []
    writer.write(b"efghijklmn")
    assert conn.getHandle().sent == b"abcdefghij" and conn.queued == [b"klmn"]
    conn.getHandle().room = 100  # room again: still queued, behind what the transport holds
    writer.write(b"op")
    assert conn.queued == [b"klmn", b"op"] and conn.getHandle().sent == b"abcdefghij"


def test_a_closing_connection_gets_writes_through_the_transport() -> None:
    """After loseConnection the transport's own rules apply (it sends what it holds, then closes)."""
    conn = connection(room=100)
    writer = Writer(conn)
    conn.disconnecting = True
    writer.write(b"late")
    assert conn.queued == [b"late"] and conn.getHandle().sent == b""


def test_tls_and_other_transports_are_never_written_directly() -> None:
    """A TLS connection (or anything that is not a plain tcp.Connection) always goes through its
    transport: writing to its socket would bypass the encryption."""
    conn = connection(room=100)
    directlyProvides(conn, ISSLTransport)
    writer = Writer(conn)
    writer.write(b"secret")
    assert conn.queued == [b"secret"] and conn.getHandle().sent == b""

    class Other:
        queued: list[bytes] = []
        write = queued.append

    other = Other()
    Writer(other).write(b"x")
    assert other.queued == [b"x"]


class NoDelayTransport(iosim.FakeTransport):
    """An in-memory TCP transport that records ``setTcpNoDelay`` (as tcp.Connection takes it)."""

    made: list[NoDelayTransport] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.no_delay: list[bool] = []
        self.made.append(self)

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay.append(enabled)


@pytest.mark.parametrize("mode", ["http", "tunnel"])
def test_nagle_is_off_on_both_connections_of_an_exchange(mode: str) -> None:
    """TCP_NODELAY on the client's connection and on the upstream connection (HTTP, and a
    tunnel's upstream; relayed WebSocket legs get it from Autobahn). With Nagle on, a streamed
    response's second write waited 40 ms for the client's delayed acknowledgement."""
    from tests.test_security import get, serve
    from tests.test_tunnel import TUNNEL, open_tunnel
    from tests.test_websocket import Harness, status

    h = Harness(TUNNEL if mode == "tunnel" else "")
    h.transport_type = NoDelayTransport
    NoDelayTransport.made = []
    client, _ = open_tunnel(h) if mode == "tunnel" else serve(h, get(b"/x"))
    assert status(client) == (101 if mode == "tunnel" else 200)
    # wsrelay's side of the client's connection, then of the upstream connection
    assert [t.no_delay for t in NoDelayTransport.made] == [[True], [True]]


def test_no_delay_leaves_a_connection_that_is_not_tcp_alone() -> None:
    """A unix socket's transport refuses the option (OSError), another has no such method."""

    class Unix:
        def setTcpNoDelay(self, enabled: bool) -> None:
            raise OSError(95, "Operation not supported")

    no_delay(Unix())
    no_delay(object())

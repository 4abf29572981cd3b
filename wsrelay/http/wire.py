"""Writes that reach a plain TCP socket at once instead of at the reactor's next turn, and
Nagle's algorithm off on every connection wsrelay relays.

Twisted's ``FileDescriptor.write`` only queues: every write registers the socket for writability
(``epoll_ctl``), the next turn of the reactor sends and unregisters it (``epoll_ctl`` again).  For
a small request and its response that is four system calls and a reactor turn per connection
per request, the top entries of the HTTP profile.  :class:`Writer` sends at once while nothing is
queued in Twisted for that socket, and gives up for good the first time the socket does not take
everything (or fails): from then on every byte goes through the transport, behind what it holds,
so order is kept and Twisted's back-pressure (pausing a producer when its buffer is full) works as
before.

:func:`no_delay` sets ``TCP_NODELAY`` (as nginx's ``tcp_nodelay``, and as Autobahn does for the
WebSocket legs): a proxy writes what it has as soon as it has it, so with Nagle's algorithm on, a
write that follows one the peer has not acknowledged yet (a response head, then a streamed body
chunk; a message, then the next) waits for the peer's delayed acknowledgement, 40 ms on Linux.

Invariants: only a plain TCP connection (``twisted.internet.tcp.Connection``, its socket from the
public ``ISystemHandle.getHandle``) is written to directly, never a TLS one; once a connection is
closing, writes go through the transport; a writer is used for every write to its transport, or
for none.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import ISSLTransport


class Writer:
    """Every write to one transport: directly to its socket while that is possible."""

    __slots__ = ("transport", "sock")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        direct = (isinstance(transport, tcp.Connection) and not transport.TLS
                  and not ISSLTransport.providedBy(transport))
        self.sock = transport.getHandle() if direct else None

    def write(self, data: bytes) -> None:
        sock = self.sock
        if sock is not None:
            transport = self.transport
            if not transport.connected or transport.disconnecting:
                self.sock = None  # Twisted's own rules for a closing connection from now on
                transport.write(data)
                return
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:  # the transport meets the same error and closes the connection
                sent = 0
            self.sock = None if sent < len(data) else sock
            if sent == len(data):
                return
            data = data[sent:]
        self.transport.write(data)

    def queue(self) -> Any:
        """Give direct writes up (the caller hands the transport to a producer from now on)."""
        self.sock = None
        return self.transport


def no_delay(transport: Any) -> None:
    """Turn Nagle's algorithm off on ``transport``'s TCP connection (TLS and PROXY protocol
    wrappers pass the call on to it); a connection that is not TCP (a unix socket) is left as it is."""
    try:
        transport.setTcpNoDelay(True)
    except (AttributeError, OSError):
        pass

"""WebSocket upgrades: the handshake, upstream first, then a message relay (or a byte tunnel).

Order of events for one client (``relay`` mode):

1. The client's handshake is checked before anything goes upstream (:func:`check_handshake`):
   WebSocket enabled on the route (else 403, chosen over 400 because the request is well formed
   but not allowed there), ``GET`` over HTTP/1.1 and no URI fragment (else 400),
   ``Sec-WebSocket-Version`` 13 (else 426 with ``Sec-WebSocket-Version: 13``), one
   ``Sec-WebSocket-Key`` of 16 base64 bytes (else 400), at most one valid ``Origin`` (else 400)
   that the route allows (else 403), distinct valid subprotocol tokens (else 400).
2. wsrelay opens the upstream WebSocket (server chosen by the balancer; connect failures retry on
   the next server, ``retries`` times within ``retry_timeout``) with the client's request target
   byte for byte, its subprotocols, and its header lines from twisted.web (``Cookie``,
   ``Authorization``, ``Origin``, ``User-Agent``... repeated lines intact; one ``Host`` as the
   route says; X-Forwarded-*).  Extensions are negotiated per hop, never forwarded.
3. The upstream answers: a final status (2xx to 5xx) goes to the client as that status with the
   upstream's end-to-end fields (``Location``, ``WWW-Authenticate``, ``Retry-After``,
   ``Set-Cookie``...; see :func:`wsrelay.handshake.refusal`); a 1xx, and a 101 that fails
   Autobahn's checks, are a 502; no connection is a 502 (504 for a connect timeout), no answer
   within ``ws_handshake_timeout`` a 504.  A 101 makes wsrelay take the
   client's connection over from twisted.web (with any bytes the client pipelined) and complete
   the client's handshake with the subprotocol the upstream chose, the upstream's other 101
   headers and the balancer's ``Set-Cookie``.
4. Both sides open, the pair leaves Autobahn for the lean path (``lean.py``, ``reader.py``,
   ``frames.py``, ``deflate.py`` for permessage-deflate with each hop's own parameters).
   Messages flow through :class:`wsrelay.relay.Relay` frame by frame; the closing handshake is end
   to end (a peer's close is answered with the other peer's answer).  A side whose socket
   buffer is full stops wsrelay reading from the other side (back-pressure) and from that side
   itself (a peer that pings and never reads gets no unbounded queue of pongs), see
   :mod:`wsrelay.flow`.
5. A side lost without a close frame: the other gets 1001 (toward the upstream) or 1011 (toward
   the client; 1014 "bad gateway" would be more precise, but Autobahn-based clients refuse it as
   a protocol error).  Ping timeouts (``ws_ping_interval``/``ws_ping_timeout``, per hop) count as
   lost, except while wsrelay itself stopped reading that side for back-pressure.  Protocol
   errors get 1002/1007/1009 on their own hop and end only their own pair.
6. The pair ends when both legs are closed: one access-log line (status 101, payload bytes sent
   to the client), the balancer lease released, :meth:`Gateway.closed`.

A client that leaves while step 2 is pending leaves no upstream connection behind.
"""

from wsrelay.websocket.gateway import WebSocketGateway

__all__ = ["WebSocketGateway"]

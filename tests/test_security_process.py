"""The security rules through the real ``twistd -n wsrelay`` process and real sockets.

(The full tables run in memory in test_security.py; these show that the running process behaves
the same: a bad target does not take the only server out, and a form body does not stall it.)
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest

from tests.scripted_upstream import ScriptedUpstream
from tests.support import RelayProcess, poll_until, tcp_queues
from tests.test_integration_http import config, raw_exchange, request, upstream  # noqa: F401 (fixture)

MiB = 1024 * 1024


@pytest.mark.parametrize("byte", [0x01, 0x7F, 0x80, 0xB0, 0xFF])
def test_a_target_wsrelay_cannot_forward_does_not_take_the_only_server_out(
        byte: int, upstream: ScriptedUpstream, start_relay: Callable[..., RelayProcess]) -> None:
    """``GET /\\x7f`` (and other bytes twisted.web's client refuses) gets 400 from wsrelay, never
    reaches the upstream, and with the default max_fails = 1 the next request is still served."""
    relay = start_relay(config(upstream.port))
    for _ in range(3):
        answer = raw_exchange(relay.port, b"GET /a" + bytes([byte]) + b" HTTP/1.1\r\nHost: app.example\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
    assert upstream.connections == 0 and upstream.requests == []
    response = request(relay.port, "GET", "/echo")
    assert response.status == 200 and response.read() == b"ok"
    relay.output.wait_for(r'"GET /echo HTTP/1.1" 200 ')


def test_a_large_form_body_does_not_stall_other_requests(
        upstream: ScriptedUpstream, start_relay: Callable[..., RelayProcess]) -> None:
    """While a 16 MiB urlencoded body of '&' (which twisted.web's form parser took 10 s over, on
    the reactor) is proxied, another client's request is answered at once; the body reaches the
    upstream byte for byte.  The bound on the second request (4 s) is under half the stall measured here (8.9 s)."""
    relay = start_relay(config(upstream.port).replace("max_body_size = 4M", "max_body_size = 64M"))
    body = b"&" * (16 * MiB)
    post = socket.create_connection(("127.0.0.1", relay.port), timeout=30)
    sender = threading.Thread(target=post.sendall, args=(
        b"POST /form HTTP/1.1\r\nHost: app.example\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body,))
    try:
        sender.start()
        sender.join(30)
        assert not sender.is_alive()
        # wsrelay has read the whole body (so twisted.web, as it was, would be parsing it now):
        # nothing of it left in flight on the POST's connection, neither in the client's send
        # queue nor in wsrelay's receive queue.  (The other two queues are the response's: the
        # upstream may have answered already, and nobody reads that answer yet.)
        ours = post.getsockname()[1]

        def body_read() -> tuple[object, object]:
            client, relay_side = tcp_queues(ours, relay.port), tcp_queues(relay.port, ours)
            return client and client[0], relay_side and relay_side[1]
        assert poll_until(lambda: body_read() == (0, 0), timeout=30), (body_read(), len(upstream.requests))
        started = time.monotonic()
        response = request(relay.port, "GET", "/echo")
        assert response.status == 200 and response.read() == b"ok"
        assert time.monotonic() - started < 4.0
        answer = b""
        while b"\r\n\r\nok" not in answer:
            chunk = post.recv(65536)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ")
    finally:
        post.close()
    form = next(seen for seen in upstream.requests if seen.head.startswith(b"POST /form "))
    assert form.body == body

"""Issue 16, point 1 and point 3, through the real ``twistd -n wsrelay`` process and raw sockets.

Every malformed request gets its answer at once (400, 413, 414, 431, 501 or 505, a short
plain-text body, ``Connection: close``) and then a close, and nothing of it reaches the upstream;
a client that drips its head is answered 408 at ``client_header_timeout`` while others are served.
"""

from __future__ import annotations

import resource
import selectors
import socket
import time
from collections.abc import Callable

import pytest

from tests.scripted_upstream import ScriptedUpstream
from tests.support import RelayProcess
from tests.test_integration_http import config, raw_exchange, request, upstream  # noqa: F401 (fixture)

H = b"Host: app.example\r\n"
POST_CHUNKED = b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
TLS_CLIENT_HELLO = bytes.fromhex("160301020001000200fc03035a5b")  # the first bytes of one

#: (request bytes, accepted statuses, why).  Each is sent on its own connection.
CASES: list[tuple[bytes, set[int], str]] = [
    # request line
    (b"GET / HTTP/2.0\r\n" + H + b"\r\n", {505}, "HTTP/2.0 on an HTTP/1.1 listener"),
    (b"GET / HTTP/0.9\r\n" + H + b"\r\n", {505}, "HTTP/0.9"),
    (b"GET / HTTP/1.10\r\n" + H + b"\r\n", {400}, "version with three digits"),
    (b"GET / http/1.1\r\n" + H + b"\r\n", {400}, "lowercase version"),
    (b"GET /\r\n" + H + b"\r\n", {400}, "no version"),
    (b"GET  / HTTP/1.1\r\n" + H + b"\r\n", {400}, "doubled space"),
    (b"GET / HTTP/1.1 \r\n" + H + b"\r\n", {400}, "trailing space"),
    (b"GET\t/ HTTP/1.1\r\n" + H + b"\r\n", {400}, "tab for a space"),
    (b" GET / HTTP/1.1\r\n" + H + b"\r\n", {400}, "leading space"),
    (b"GET /a\x01b HTTP/1.1\r\n" + H + b"\r\n", {400}, "control byte in the target"),
    (b"GET /\x7f HTTP/1.1\r\n" + H + b"\r\n", {400}, "DEL in the target"),
    (b"G(T / HTTP/1.1\r\n" + H + b"\r\n", {400}, "method not a token"),
    (b"GET http://app.example/ HTTP/1.1\r\n" + H + b"\r\n", {400}, "absolute-form target"),
    (b"CONNECT app.example:443 HTTP/1.1\r\n" + H + b"\r\n", {400}, "authority-form target"),
    (b"GET * HTTP/1.1\r\n" + H + b"\r\n", {400}, "asterisk-form on GET"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + H + b"\r\n", {414}, "request line over max_request_line"),
    # not HTTP at all
    (TLS_CLIENT_HELLO, {400}, "a TLS ClientHello on a plain listener"),
    (b"\x00\xff\x13\x37garbage", {400}, "random bytes"),
    (b"SSH-2.0-OpenSSH_9.6\r\n", {400}, "an SSH banner"),
    # line ends
    (b"GET / HTTP/1.1\n" + H + b"\n", {400}, "bare LF after the request line"),
    (b"GET / HTTP/1.1\r\nHost: app.example\nX-A: b\r\n\r\n", {400}, "bare LF after a field"),
    (b"GET / HTTP/1.1\r\nHost: app.example\rX-A: b\r\n\r\n", {400}, "bare CR in a field"),
    # fields
    (b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n", {400}, "obs-fold"),
    (b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", {400}, "NUL in a value"),
    (b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x01b\r\n\r\n", {400}, "control byte in a value"),
    (b"GET / HTTP/1.1\r\n" + H + b"X\x00A: b\r\n\r\n", {400}, "NUL in a name"),
    (b"GET / HTTP/1.1\r\n" + H + b"X A: b\r\n\r\n", {400}, "space in a name"),
    (b"GET / HTTP/1.1\r\n" + H + b"X-A : b\r\n\r\n", {400}, "space before the colon"),
    (b"GET / HTTP/1.1\r\n" + H + b"X@A: b\r\n\r\n", {400}, "name not a token"),
    (b"GET / HTTP/1.1\r\n" + H + b": b\r\n\r\n", {400}, "empty name"),
    (b"GET / HTTP/1.1\r\n" + H + b"no colon\r\n\r\n", {400}, "line without a colon"),
    (b"GET / HTTP/1.1\r\n" + H + b"X-A: " + b"b" * 20000 + b"\r\n\r\n", {431}, "head over max_header_size"),
    # Host
    (b"GET / HTTP/1.1\r\n\r\n", {400}, "HTTP/1.1 without Host"),
    (b"GET / HTTP/1.1\r\n" + H + H + b"\r\n", {400}, "two Host fields"),
    (b"GET / HTTP/1.1\r\nHost: a..b\r\n\r\n", {400}, "Host with an empty label"),
    (b"GET / HTTP/1.1\r\nHost: .a\r\n\r\n", {400}, "Host with a leading dot"),
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", {400}, "Host with a space"),
    (b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", {400}, "Host with userinfo"),
    (b"GET / HTTP/1.1\r\nHost: a:123456\r\n\r\n", {400}, "Host with a port of six digits"),
    (b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", {400}, "Host with an open bracket"),
    # framing: smuggling attempts
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     {400}, "CL.TE"),
    (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
     {400}, "TE.CL"),
    (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n",
     {400, 501}, "TE.TE: a second coding"),
    (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", {400}, "TE.TE: space before colon"),
    (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", {400, 501}, "TE.TE: xchunked"),
    (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", {400, 501},
     "TE.TE: chunked twice"),
    (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity\r\n\r\n", {501}, "obsolete identity coding"),
    (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", {501}, "unknown coding"),
    (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n", {400, 501}, "chunked not last"),
    (b"POST / HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", {400}, "TE on HTTP/1.0"),
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", {400}, "duplicate CL"),
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", {400}, "differing CL"),
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3, 3\r\n\r\nabc", {400}, "CL list"),
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +3\r\n\r\nabc", {400}, "CL with a sign"),
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x3\r\n\r\nabc", {400}, "CL in hex"),
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999999\r\n\r\n", {400, 413}, "CL too large"),
    (POST_CHUNKED + b"ffffffffffffffffffff\r\n", {400}, "chunk size too large to represent"),
    (POST_CHUNKED + b"-1\r\n", {400}, "negative chunk size"),
    (POST_CHUNKED + b"0x3\r\nabc\r\n0\r\n\r\n", {400}, "chunk size with 0x"),
    (POST_CHUNKED + b"3 abc\r\nabc\r\n0\r\n\r\n", {400}, "junk after the chunk size"),
    (POST_CHUNKED + b'3;a="open\r\nabc\r\n0\r\n\r\n', {400}, "unterminated quoted chunk extension"),
    (POST_CHUNKED + b"3;a\x01=b\r\nabc\r\n0\r\n\r\n", {400}, "control byte in a chunk extension"),
    (POST_CHUNKED + b"3;" + b"a" * 5000 + b"\r\n", {400}, "chunk extension over 4K"),
    (POST_CHUNKED + b"3\r\nabcX\r\n0\r\n\r\n", {400}, "chunk data longer than its size"),
    (POST_CHUNKED + b"3\nabc\n0\n\n", {400}, "bare LF in chunked framing"),
    (POST_CHUNKED + b"0\r\nX A: b\r\n\r\n", {400}, "invalid trailer field"),
    # limits
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5000000\r\n\r\n", {413}, "CL over max_body_size"),
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5000000\r\nExpect: 100-continue\r\n\r\n", {413},
     "CL over max_body_size with Expect: no 100 first"),
]


def test_every_malformed_request_is_answered_at_once_and_never_forwarded(
        upstream: ScriptedUpstream, start_relay: Callable[[str], RelayProcess]) -> None:
    """Each case of the table: its status as the first bytes on the wire (no 100 Continue before
    it), a short text/plain body, Connection: close, then the close; an access-log line for each;
    the upstream never sees a connection.  (raw_exchange waits up to 5 s for the close: the
    listener's timeouts are the defaults, 60 s and more, so an answer there is not a timer's.)"""
    relay = start_relay(config(upstream.port))
    wrong = []
    for data, statuses, why in CASES:
        answer = raw_exchange(relay.port, data, timeout=5.0)
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        if (status not in statuses or b"Connection: close" not in lines
                or b"Content-Type: text/plain; charset=utf-8" not in lines or not body.startswith(b"%d " % status)):
            wrong.append((why, answer[:120]))
    assert not wrong, "\n".join(f"{why}: {answer!r}" for why, answer in wrong)
    for status in (400, 413, 414, 431, 501, 505):
        relay.output.wait_for(rf'"[^"]*" {status} ')
    assert upstream.connections == 0 and upstream.requests == []
    response = request(relay.port, "GET", "/echo")  # and the process still serves
    assert response.status == 200 and response.read() == b"ok"


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def test_a_thousand_dripping_clients_are_each_closed_at_their_deadline(
        upstream: ScriptedUpstream, start_relay: Callable[[str], RelayProcess]) -> None:
    """1,000 connections each send a byte a second of a head that never ends: every one gets 408
    and a close from client_header_timeout (1 s here; the drip would keep an idle timer alive
    forever), while a normal client is served throughout.  The waits are bounded; no duration
    is asserted."""
    count = 1000
    _raise_fd_limit(2 * count + 200)  # the relay process inherits it
    relay = start_relay(config(upstream.port).replace(
        "[upstream app]", "client_header_timeout = 1s\nkeepalive_timeout = 1s\n[upstream app]"))
    selector = selectors.DefaultSelector()
    sockets: list[socket.socket] = []
    answers: dict[int, bytes] = {}
    try:
        for i in range(count):
            s = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
            s.setblocking(False)
            sockets.append(s)
            selector.register(s, selectors.EVENT_READ, i)
        drip = b"GET /drip HTTP/1.1\r\nHost: app.example\r\nX-Drip: " + b"x" * 200
        position = 0
        served = 0
        deadline = time.monotonic() + 60  # a safety net only
        open_ = set(range(count))
        while open_ and time.monotonic() < deadline:
            for i in list(open_):
                try:
                    sockets[i].send(drip[position:position + 1])
                except OSError:
                    pass  # closed by the relay: its answer is read below
            position = min(position + 1, len(drip) - 1)
            until = time.monotonic() + 1.0
            while time.monotonic() < until:
                for key, _ in selector.select(timeout=max(0.0, until - time.monotonic())):
                    i = key.data
                    try:
                        chunk = sockets[i].recv(65536)
                    except (ConnectionResetError, BlockingIOError):
                        chunk = b"" if i in open_ else None  # type: ignore[assignment]
                    if chunk:
                        answers[i] = answers.get(i, b"") + chunk
                    elif chunk == b"":
                        open_.discard(i)
                        selector.unregister(sockets[i])
            response = request(relay.port, "GET", "/echo")  # a normal client, throughout
            assert response.status == 200 and response.read() == b"ok"
            served += 1
        assert not open_, f"{len(open_)} dripping connections still open"
        assert all(answers.get(i, b"").startswith(b"HTTP/1.1 408 ") for i in range(count))
        assert served >= 1
        assert upstream.requests and all(seen.head.startswith(b"GET /echo ") for seen in upstream.requests)
    finally:
        selector.close()
        for s in sockets:
            s.close()

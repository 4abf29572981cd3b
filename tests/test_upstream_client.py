"""wsrelay's upstream HTTP client, in memory: strict on every malformed response byte, the
keep-alive pool, stale connections, and the close of idle ones on stop.

Every malformed response gets the client a 502 (or an aborted connection once the head was sent),
counts once against the server that sent it, releases the lease, and none of its bad bytes reach
the client.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_security import HTTPUpstream, get, health, serve
from tests.test_websocket import Harness, header_lines, status

OK_TAIL = b"Content-Length: 2\r\n\r\nok"

#: (what the upstream sends, why it is invalid); each holds "evil", which must never reach the client.
INVALID_HEADS = [
    (b"HTTP/1.1 200 OK\r\nX-A: evil\x00x\r\n", "NUL in a value"),
    (b"HTTP/1.1 200 OK\r\nX-A: evil\rx\r\n", "CR in a value"),
    (b"HTTP/1.1 200 OK\r\nX-A: evil\nX-B: x\r\n", "bare LF in a value"),
    (b"HTTP/1.1 200 OK\r\nX-A: evil\x01x\r\n", "control byte in a value"),
    (b"HTTP/1.1 200 OK\r\nX-A: evil\x1bx\r\n", "ESC in a value"),
    (b"HTTP/1.1 200 OK\r\nX-A: evil\x7fx\r\n", "DEL in a value"),
    (b"HTTP/1.1 200 OK\r\nX-\x00A: evil\r\n", "NUL in a name"),
    (b"HTTP/1.1 200 OK\r\nX\rA: evil\r\n", "CR in a name"),
    (b"HTTP/1.1 200 OK\r\nX A: evil\r\n", "space in a name"),
    (b"HTTP/1.1 200 OK\r\nX-A : evil\r\n", "space before the colon"),
    (b"HTTP/1.1 200 OK\r\nX-A\x01: evil\r\n", "control byte in a name"),
    (b"HTTP/1.1 200 OK\r\nevil\r\n", "a line without a colon"),
    (b"HTTP/1.1 200 OK\r\n: evil\r\n", "an empty name"),
    (b"HTTP/1.1 200 OK\r\nX-A: a\r\n evil\r\n", "obs-fold (space)"),
    (b"HTTP/1.1 200 OK\r\nX-A: a\r\n\tevil\r\n", "obs-fold (tab)"),
    (b"HTTP/1.1 200 OK\nX-A: evil\n", "bare LF line ends"),
    (b"HTTP/1.1 20 OK\r\nX-A: evil\r\n", "two-digit status"),
    (b"HTTP/1.1 2000 OK\r\nX-A: evil\r\n", "four-digit status"),
    (b"HTTP/1.1 600 Odd\r\nX-A: evil\r\n", "status over 599"),
    (b"HTTP/1.1 099 Odd\r\nX-A: evil\r\n", "status under 100"),
    (b"HTTP/2.0 200 OK\r\nX-A: evil\r\n", "HTTP/2.0"),
    (b"HTTP/1.2 200 OK\r\nX-A: evil\r\n", "HTTP/1.2"),
    (b"ICY 200 OK\r\nX-A: evil\r\n", "ICY"),
    (b"http/1.1 200 OK\r\nX-A: evil\r\n", "lower-case protocol"),
    (b"HTTP/1.1  200 OK\r\nX-A: evil\r\n", "two spaces"),
    (b"HTTP/1.1 200 O\x00K\r\nX-A: evil\r\n", "NUL in the reason"),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\n", "101 to a plain request"),
    (b"HTTP/1.1 200 OK\r\nX-A: evil\r\nContent-Length: abc\r\n", "Content-Length not a number"),
    (b"HTTP/1.1 200 OK\r\nX-A: evil\r\nContent-Length: -2\r\n", "negative Content-Length"),
    (b"HTTP/1.1 200 OK\r\nX-A: evil\r\nContent-Length: 2\r\nContent-Length: 3\r\n", "differing lengths"),
    (b"HTTP/1.1 200 OK\r\nX-A: evil\r\nTransfer-Encoding: gzip\r\n", "coding not ending in chunked"),
    (b"HTTP/1.1 200 OK\r\nX-A: evil\r\nTransfer-Encoding: identity\r\n", "identity (no longer a coding)"),
    (b"HTTP/1.1 200 OK\r\nX-A: evil\r\nTransfer-Encoding: chunked, chunked\r\n", "chunked twice"),
    (b"HTTP/1.1 200 OK\r\nX-A: evil\r\nTransfer-Encoding: chunked, gzip\r\n", "chunked not last"),
    (b"HTTP/1.1 200 OK\r\nX-A: evil\r\nTransfer-Encoding: evil, chunked\r\n", "unknown coding"),
    (b"HTTP/1.0 200 OK\r\nX-A: evil\r\nTransfer-Encoding: chunked\r\n", "Transfer-Encoding in HTTP/1.0"),
    (b"HTTP/1.1 200 OK\r\nX-A: evil\r\nX-Big: " + b"b" * 70000 + b"\r\n", "head over 64K"),
]


def served_by(h: Harness, answer: bytes, request: bytes | None = None,
              close: bool = False) -> tuple[Any, HTTPUpstream]:
    upstream = HTTPUpstream(answer)
    if close:
        write = upstream.dataReceived

        def answer_and_close(data: bytes) -> None:
            write(data)
            upstream.transport.loseConnection()

        upstream.dataReceived = answer_and_close  # type: ignore[method-assign]
    client, _ = serve(h, request or get(b"/x"), upstream)
    return client, upstream


def assert_counted_once(h: Harness) -> None:
    assert sorted(failed for _, failed, _ in health(h)) == [0, 1]
    assert all(active == 0 for active, _, _ in health(h))
    assert not h.gateway.live


@pytest.mark.parametrize("head, why", INVALID_HEADS, ids=[why for _, why in INVALID_HEADS])
def test_an_invalid_response_head_is_a_502_counted_against_its_server(head: bytes, why: str) -> None:
    """Each malformed response head (bad bytes in a field, obs-fold, a bad status line, a framing
    wsrelay cannot pass on, a head over max_response_header_size): 502, counted once, and none of
    its bytes reach the client."""
    h = Harness()
    client, upstream = served_by(h, head + b"\r\nok")
    assert status(client) == 502, why
    assert b"evil" not in client.received, why
    assert upstream.lost, why  # the connection is not pooled
    assert_counted_once(h)


def test_max_response_header_size_is_configurable() -> None:
    """max_response_header_size = 1K: a 2K head is a 502, a 900-byte one passes."""
    big = b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * 2000 + b"\r\n" + OK_TAIL
    h = Harness(upstream_extra="max_response_header_size = 1K")
    client, _ = served_by(h, big)
    assert status(client) == 502 and b"bbbb" not in client.received
    assert_counted_once(h)
    h = Harness(upstream_extra="max_response_header_size = 1K")
    client, _ = served_by(h, b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * 900 + b"\r\n" + OK_TAIL)
    assert status(client) == 200


@pytest.mark.parametrize("answer, why", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", "shorter than its Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", "chunked without its last chunk"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n", "chunk data overrun"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n", "bad chunk size"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", "a head cut short"),
])
def test_a_short_or_broken_body_aborts_the_client(answer: bytes, why: str) -> None:
    """A body cut short by the upstream's close (or broken mid-way): the client's connection is
    closed without the end of the response (never passed off as whole), counted once."""
    h = Harness()
    client, _ = served_by(h, answer, close=True)
    assert client.lost or status(client) == 502, why
    if client.received:
        head, _, data = client.received.partition(b"\r\n\r\n")
        assert status(client) in (200, 502), why
        if status(client) == 200:
            assert not data.endswith(b"0\r\n\r\n") and data.count(b"hello") <= 1, why
            lengths = header_lines(head, b"content-length")
            assert not lengths or int(lengths[0]) > len(data), why
            assert client.lost, why
    assert_counted_once(h)


@pytest.mark.parametrize("line, kept", [
    (b"HTTP/1.1 200\r\n", b"HTTP/1.1 200 "),
    (b"HTTP/1.1 200 \r\n", b"HTTP/1.1 200 "),
    (b"HTTP/1.0 200 Fine\r\n", b"HTTP/1.1 200 Fine"),
    (b"HTTP/1.1 299 \xe9t\xe9\r\n", b"HTTP/1.1 299 \xe9t\xe9"),
])
def test_status_lines_without_or_with_odd_reasons_pass(line: bytes, kept: bytes) -> None:
    """No reason phrase (or an empty one, or obs-text in it) is a valid status line."""
    h = Harness()
    client, _ = served_by(h, line + b"X-A: 1\r\n" + OK_TAIL)
    assert client.received.startswith(kept)
    assert client.received.endswith(b"\r\n\r\nok")
    assert health(h) == [(0, 0, False), (0, 0, False)]


def test_a_coded_chunked_body_reaches_the_client_as_coded() -> None:
    """``Transfer-Encoding: gzip, chunked``: the chunks are decoded and framed anew, the gzip coding
    is passed on as it came (the client gets the coded body and is told so)."""
    h = Harness()
    client, _ = served_by(h, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                             b"4\r\n\x1f\x8b\x08\x00\r\n0\r\n\r\n")
    assert status(client) == 200
    assert header_lines(client.head, b"transfer-encoding") == [b"gzip, chunked"]
    assert client.received.partition(b"\r\n\r\n")[2] == b"4\r\n\x1f\x8b\x08\x00\r\n0\r\n\r\n"


def test_bytes_after_a_response_close_its_connection() -> None:
    """An upstream that sends more than its framing says: the client gets the response as framed,
    and the connection is closed, never pooled."""
    h = Harness()
    client, upstream = served_by(h, b"HTTP/1.1 200 OK\r\n" + OK_TAIL + b"HTTP/1.1 200 OK\r\nX-Evil: 1\r\n\r\n")
    assert status(client) == 200 and client.received.endswith(b"\r\n\r\nok")
    assert upstream.lost
    assert h.gateway.http.pool.idle_count(("up", "127.0.0.1:9001")) == 0


# -- the pool ---------------------------------------------------------------------------------------


def test_a_connection_is_reused_and_closed_on_stop() -> None:
    """Two requests in a row use one upstream connection; stopping closes the idle one at once."""
    h = Harness("", upstream_extra="balance = ip_hash")
    client, upstream = serve(h, get(b"/x"))
    assert status(client) == 200 and upstream is not None
    second = h.raw_client(get(b"/y"))
    h.advance(0.1)
    assert status(second) == 200 and h.attempts() == 1 and len(upstream.requests) == 2
    assert not upstream.lost
    h.gateway.close()
    h.settle()
    assert upstream.lost


class ClosesOnSecond(HTTPUpstream):
    """Answers its first request, then closes (as a server that timed the idle connection out)."""

    def dataReceived(self, data: bytes) -> None:
        if self.requests:
            self.transport.loseConnection()
            return
        super().dataReceived(data)


@pytest.mark.parametrize("method, resent", [(b"GET", True), (b"PUT", True), (b"POST", False)])
def test_a_stale_pooled_connection_is_retried_for_idempotent_requests(method: bytes, resent: bool) -> None:
    """A reused connection that ends before any response byte: an idempotent request is sent again
    on a new connection to the same server (not counted against it); a POST gets 502."""
    h = Harness("", upstream_extra="balance = ip_hash")
    client, upstream = serve(h, get(b"/x"), ClosesOnSecond())
    assert status(client) == 200
    second = h.raw_client(get(b"/y", [b"Content-Length: 3"], method) + b"abc")
    h.advance(0.1)
    if resent:
        assert h.attempts() == 2
        fresh = HTTPUpstream()
        h.accept_raw(fresh)
        h.advance(0.1)
        assert status(second) == 200
        assert fresh.requests[0].endswith(b"\r\n\r\nabc")
        assert health(h) == [(0, 0, False), (0, 0, False)]
    else:
        assert h.attempts() == 1 and status(second) == 502
        assert sorted(failed for _, failed, _ in health(h)) == [0, 1]
    assert not h.gateway.live


# -- deadlines --------------------------------------------------------------------------------------


class Silent(HTTPUpstream):
    """Takes requests and never answers."""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


def test_no_response_within_read_timeout_is_a_504_counted_once() -> None:
    """An upstream that never answers: 504 at read_timeout (not before), counted against it."""
    h = Harness("read_timeout = 2s")
    client, _ = serve(h, get(b"/x"), Silent())
    h.advance(1.5)
    assert client.received == b""
    h.advance(0.6)
    assert status(client) == 504
    assert_counted_once(h)


def test_a_body_that_keeps_coming_is_never_timed_out_and_one_that_stops_is() -> None:
    """read_timeout is between two reads of the body: bytes every 1.5 s for 6 s under a 2 s
    read_timeout are all relayed; then silence aborts the client after 2 s."""
    h = Harness("read_timeout = 2s")
    upstream = Silent()
    client, _ = serve(h, get(b"/x"), upstream)
    upstream.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    for _ in range(4):
        h.advance(1.5)
        upstream.transport.write(b"x" * 10)
    h.settle()
    assert status(client) == 200 and client.received.endswith(b"x" * 40) and not client.lost
    h.advance(1.9)
    assert not client.lost
    h.advance(0.2)
    assert client.lost
    assert_counted_once(h)


def test_client_deadlines_between_and_within_requests() -> None:
    """On a keep-alive client connection: idle for keepalive_timeout after a response, it is closed
    quietly (not before); a head begun meanwhile has client_header_timeout from its first byte (408)."""
    import attrs

    h = Harness()
    config = attrs.evolve(h.gateway.runtime.config, keepalive_timeout=5.0, client_header_timeout=3.0)
    h.gateway.runtime = attrs.evolve(h.gateway.runtime, config=config)
    client, _ = serve(h, get(b"/x"))
    assert status(client) == 200
    h.advance(4.8)
    assert not client.lost
    h.advance(0.4)
    assert client.lost and client.received.count(b"HTTP/1.1") == 1

    client, _ = serve(h, get(b"/x"))
    h.advance(1.0)
    client.transport.write(b"GET /y HTTP/1.1\r\nHost: rel")
    h.advance(2.8)
    assert client.received.count(b"HTTP/1.1 ") == 1 and not client.lost
    h.advance(0.4)
    assert b"HTTP/1.1 408 " in client.received


def test_stopping_closes_idle_client_connections_at_once_and_busy_ones_after_their_response() -> None:
    """When the listener stops: a keep-alive connection idle between requests is closed at once;
    one whose request is under way gets its response (with Connection: close), then is closed."""
    h = Harness()
    idle, _ = serve(h, get(b"/x"))
    assert status(idle) == 200 and not idle.lost
    busy = h.raw_client(get(b"/y"))
    h.clock.advance(0)
    assert h.attempts() == 2  # the other server: a new connection this test holds unanswered
    upstream = Silent()
    h.accept_raw(upstream)
    h.site.stopFactory()
    h.settle()
    assert idle.lost and not busy.lost
    upstream.transport.write(b"HTTP/1.1 200 OK\r\n" + OK_TAIL)
    h.settle()
    assert status(busy) == 200 and header_lines(busy.head, b"connection") == [b"close"]
    assert busy.lost
    assert not h.site.channels


def test_request_fields_reach_the_upstream_in_wire_order() -> None:
    """Interleaved repeated fields keep the client's order (not grouped by name), and an
    underscored name is still dropped."""
    h = Harness()
    _, upstream = serve(h, get(b"/x", [b"X-A: 1", b"X-B: 2", b"X_C: 9", b"X-A: 3"]))
    assert upstream is not None
    lines = upstream.requests[0].split(b"\r\n")
    assert [line for line in lines if line[:2] in (b"X-", b"X_")][:3] == [b"X-A: 1", b"X-B: 2", b"X-A: 3"]
    assert not any(line.startswith(b"X_C") for line in lines)


def test_a_client_that_leaves_ends_its_exchange_and_upstream_connection() -> None:
    """The client closes while the upstream has not answered: the upstream connection is closed
    (never pooled half-used), the lease released, and the server's health untouched."""
    h = Harness()
    client, upstream = serve(h, get(b"/x"), Silent())
    assert upstream is not None and not upstream.lost and h.gateway.live
    client.transport.loseConnection()
    h.settle()
    assert upstream.lost
    assert not h.gateway.live
    assert health(h) == [(0, 0, False), (0, 0, False)]


@pytest.mark.parametrize("field", [b"Connection: close", b"connection: Keep-Alive, CLOSE", b"CONNECTION: close"])
def test_an_upstream_that_says_close_is_not_pooled(field: bytes) -> None:
    """``Connection: close`` from the upstream (any case, in a token list): the response is
    relayed, the field is not, and the connection is closed rather than pooled."""
    h = Harness()
    client, upstream = served_by(h, b"HTTP/1.1 200 OK\r\n" + field + b"\r\n" + OK_TAIL)
    assert status(client) == 200 and client.received.endswith(b"\r\n\r\nok")
    assert header_lines(client.head, b"connection") == []
    assert upstream.lost



@pytest.mark.parametrize(("upstream_lines", "closed"), [
    ("servers = 127.0.0.1:9001 127.0.0.1:9002", False),  # the same servers
    ("servers = 127.0.0.1:9001 127.0.0.1:9002\nkeepalive = 8", False),  # pooling settings only
    ("servers = 127.0.0.1:9003", True),  # the server that served is gone
    ("servers = 127.0.0.1:9001 127.0.0.1:9002\nmax_response_header_size = 4096", True),  # made otherwise
])
def test_a_reload_closes_the_idle_connections_of_servers_it_removed_or_changed(
        upstream_lines: str, closed: bool) -> None:
    """Idle pooled connections of a server the reload removed, or whose connections it would now
    make otherwise, are closed at once (not reused, not left for the idle timeout); the others
    stay pooled."""
    from tests.test_websocket import CONFIG, route_settings
    from wsrelay import config

    h = Harness()
    _, first = serve(h, get(b"/x"))
    assert first is not None and not first.lost and sum(map(len, h.gateway.http.pool.idle.values())) == 1
    text = CONFIG.format(extra=route_settings(""), upstream_extra="").replace(
        "servers = 127.0.0.1:9001 127.0.0.1:9002", upstream_lines)
    h.gateway.apply(config.parse(text))
    h.settle()
    assert first.lost is closed
    assert sum(map(len, h.gateway.http.pool.idle.values())) == (0 if closed else 1)

"""The edge rules of the security issue, in memory: wsrelay's real site and gateway on a fake clock.

- a request wsrelay would not (or could not) forward is refused before a server is chosen, and
  only what an upstream did counts against it: an exception inside wsrelay is a 500 that releases
  its lease and touches neither health nor the pool;
- the route and the upstream see the same path: targets that common parsers read differently are
  refused, for HTTP and WebSocket alike;
- framing the upstream sent ambiguously is never passed on; spoofable forwarding fields never
  reach the upstream; a request refused while its body streams is never dispatched.

(The same rules through the real ``twistd`` process are in test_security_process.py.)
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from twisted.internet.address import UNIXAddress
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.test import iosim

from tests.test_websocket import Harness, RawClient, header_lines, status
from wsrelay import headers as H
from wsrelay import httpproxy

UPSTREAM_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class HTTPUpstream(Protocol):
    """An HTTP/1.1 upstream that answers each complete request with ``answer`` and keeps what it got."""

    def __init__(self, answer: bytes = UPSTREAM_OK) -> None:
        self.answer = answer
        self.received = b""
        self.requests: list[bytes] = []
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        while b"\r\n\r\n" in self.received:
            head, _, rest = self.received.partition(b"\r\n\r\n")
            lengths = header_lines(head, b"content-length")
            size = int(lengths[0]) if lengths else 0
            if len(rest) < size:
                return
            self.requests.append(head + b"\r\n\r\n" + rest[:size])
            self.received = rest[size:]
            self.transport.write(self.answer)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = True


def get(target: bytes, extra: list[bytes] | None = None, method: bytes = b"GET") -> bytes:
    return b"\r\n".join([method + b" " + target + b" HTTP/1.1", b"Host: relay.example", *(extra or [])]) + b"\r\n\r\n"


def health(h: Harness) -> list[tuple[int, int, bool]]:
    """Per server of the test group: (active leases, failures counted, down)."""
    return [(s["active"], s["failed"], s["down"]) for s in h.gateway.balancer.snapshot()["up"].values()]


HEALTHY = [(0, 0, False), (0, 0, False)]


def serve(h: Harness, request: bytes, upstream: HTTPUpstream | None = None) -> tuple[RawClient, HTTPUpstream | None]:
    """Send ``request``; if wsrelay connects upstream, answer with ``upstream`` (a default one)."""
    client = h.raw_client(request)
    h.clock.advance(0)
    if h.attempts():
        upstream = upstream or HTTPUpstream()
        h.accept_raw(upstream)
        h.advance(0.1)
    return client, upstream if h.attempts() else None


# -- 1. what wsrelay would not send never reaches a server, nor its health --------------------------


def _allowed_in_target(byte: int) -> bool:
    return 0x21 <= byte <= 0x7E and byte not in b"#\\%"


@pytest.mark.parametrize("mode", ["http", "websocket"])
def test_every_byte_in_a_target_leaves_health_alone(mode: str) -> None:
    """Each byte 0x00 to 0xFF inside a target: a byte that is not visible ASCII (or is '#' or '\\',
    or a '%' that starts no escape) is a 400 before any server is chosen; the others are served.
    No byte ever counts against a server or leaves a lease behind."""
    extra = [b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Version: 13",
             b"Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg=="] if mode == "websocket" else []
    for byte in range(256):
        h = Harness()
        target = b"/a" + bytes([byte]) + b"b"
        client, upstream = serve(h, get(target, extra))
        if _allowed_in_target(byte):
            assert upstream is not None and upstream.requests[0].startswith(b"GET " + target + b" HTTP/1.1\r\n")
            assert status(client) == 200, hex(byte)
        else:
            assert h.attempts() == 0, hex(byte)
            if client.received:  # a space or CR/LF breaks the request line itself: twisted.web's 400
                assert status(client) == 400, hex(byte)
            assert client.lost or b"Connection: close" in client.head, hex(byte)
        assert health(h) == HEALTHY, hex(byte)
        assert not h.gateway.live


@pytest.mark.parametrize("request_bytes, why", [
    (b"GE(T / HTTP/1.1\r\nHost: relay.example\r\n\r\n", "method not a token"),
    (b"GET / HTTP/1.1\r\nHost: relay.example\r\nX Y: 1\r\n\r\n", "field name not a token"),
    (b"GET / HTTP/1.1\r\nHost: relay.example\r\nX-A: a\x01b\r\n\r\n", "control byte in a value"),
    (b"GET / HTTP/1.1\r\nHost: relay.example\r\nX-A: a\x7fb\r\n\r\n", "DEL in a value"),
])
def test_requests_that_could_not_be_forwarded_are_400_before_a_server(request_bytes: bytes, why: str) -> None:
    """A method or field wsrelay could not send upstream is refused with 400 before a server is chosen."""
    h = Harness()
    client = h.raw_client(request_bytes)
    h.clock.advance(0)
    assert status(client) == 400, why
    assert h.attempts() == 0 and health(h) == HEALTHY


@pytest.mark.parametrize("where", ["building the request", "handling the response"])
def test_an_exception_inside_wsrelay_is_a_500_that_releases_everything(where: str, monkeypatch: Any) -> None:
    """An exception in wsrelay's own code: a 500 with one log line, the lease released (active back to
    0), health untouched, the exchange no longer live (nor counted for limit_conn) and the upstream
    connection closed."""
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug")

    target = "request_to_upstream" if where == "building the request" else "response_to_client"
    monkeypatch.setattr(H, target, boom)
    errors: list[str] = []
    monkeypatch.setattr(httpproxy.log, "error", lambda fmt, **kw: errors.append(fmt.format(**kw)))
    h = Harness()
    client, upstream = serve(h, get(b"/x"))
    assert status(client) == 500
    assert health(h) == HEALTHY
    assert not h.gateway.live and not h.gateway.limits.conns  # nor counted for limit_conn
    assert len(errors) == 1 and "RuntimeError: bug" in errors[0]
    if upstream is not None:  # the response had come: its connection is not left in the pool half-read
        assert upstream.lost
    # The next request is served normally (the group was not taken out).
    monkeypatch.undo()
    client, _ = serve(h, get(b"/y"))
    assert status(client) == 200


def test_a_retry_after_a_reload_removed_the_group_fails_cleanly() -> None:
    """A retry whose upstream group a reload removed gets the original failure (502), no KeyError,
    no hang, and the exchange ends."""
    h = Harness()
    client = h.raw_client(get(b"/x"))
    h.clock.advance(0)
    from twisted.internet.error import ConnectionRefusedError

    from tests.test_websocket import CONFIG, route_settings
    from wsrelay import config
    text = CONFIG.format(extra=route_settings(""), upstream_extra="")
    replacement = config.parse(text.replace("[upstream up]", "[upstream other]").replace("upstream = up", "upstream = other"))
    h.gateway.apply(replacement)
    _, _, factory, _, _ = h.clock.tcpClients[-1]
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    h.advance(0.1)
    assert status(client) == 502
    assert not h.gateway.live


# -- 2. bodies are never parsed --------------------------------------------------------------


def test_form_and_multipart_bodies_reach_the_upstream_byte_for_byte() -> None:
    """wsrelay parses no body: a form body and a multipart body the email parser would reject (no
    closing boundary) reach the upstream byte for byte, and request.args holds no body field."""
    for ctype, payload in [(b"application/x-www-form-urlencoded", b"a=1&" * 1000 + b"&&&b=%zz"),
                           (b"multipart/form-data; boundary=XX", b"--XX\r\nbroken\r\n\r\n\x00\xff"),
                           # no boundary parameter: Python's email parser gives up on it
                           (b"multipart/form-data", b"--XX\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--XX--")]:
        h = Harness()
        request = get(b"/form", [b"Content-Type: " + ctype, b"Content-Length: %d" % len(payload)], b"POST")
        client, upstream = serve(h, request + payload)
        assert status(client) == 200
        assert upstream is not None and upstream.requests[0].endswith(b"\r\n\r\n" + payload)


# -- 3. the route and the upstream see the same path ------------------------------------------------

AMBIGUOUS = [
    b"/api/..;/admin",                      # Tomcat, Jetty, Spring: /admin
    b"/api/.;x/..;/admin",
    b"/api/..%3B/admin",                     # the same, encoded
    b"/api/..%5cadmin",                     # a backslash separator: /admin
    b"/api/..\\admin",
    b"/admin/x%2F..%2F..%2Fpublic/feed",    # routed as /public/feed, /admin/... without %2F decoding
    b"/admin//../public/x",                 # /public/x merged, /admin/public/x to WHATWG and RFC 3986
    b"/api/%2e%2e/admin",                   # encoded dots
    b"/api/.%2E/admin",
    b"/api/%2e/x",
]


@pytest.mark.parametrize("target", AMBIGUOUS)
@pytest.mark.parametrize("mode", ["http", "websocket"])
def test_targets_that_parsers_read_differently_are_refused(target: bytes, mode: str) -> None:
    """Each form whose meaning differs between common parsers gets 400 before any server is chosen,
    over HTTP and as a WebSocket handshake."""
    extra = [b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Version: 13",
             b"Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg=="] if mode == "websocket" else []
    h = Harness()
    client = h.raw_client(get(target, extra))
    h.clock.advance(0)
    assert status(client) == 400
    assert h.attempts() == 0 and health(h) == HEALTHY


@pytest.mark.parametrize("target", [b"/chat/../admin", b"/a//b/./c/", b"/%61dmin/x", b"/files/a%2Etxt"])
def test_unambiguous_forms_are_forwarded_as_sent(target: bytes) -> None:
    """Dot segments, doubled slashes and escapes every parser reads alike are forwarded byte for byte."""
    h = Harness()
    client, upstream = serve(h, get(target))
    assert status(client) == 200
    assert upstream is not None and upstream.requests[0].startswith(b"GET " + target + b" HTTP/1.1\r\n")


# -- 5. ambiguous framing from the upstream --------------------------------------------------------


def test_differing_lengths_are_an_invalid_response() -> None:
    """``Content-Length: 5, 6`` is an invalid response: 502, counted against the server."""
    h = Harness()
    client, _ = serve(h, get(b"/x"), HTTPUpstream(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello"))
    assert status(client) == 502
    assert sorted(failed for _, failed, _ in health(h)) == [0, 1]


@pytest.mark.parametrize("method, answer, length", [
    (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", b"1234"),
    (b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 77, 77\r\n\r\n", b"77"),
])
def test_a_length_that_speaks_of_a_body_not_sent_is_kept(method: bytes, answer: bytes, length: bytes) -> None:
    """A HEAD answer's (or a 304's) Content-Length describes the body a GET would get: passed on, once."""
    h = Harness()
    client, _ = serve(h, get(b"/x", method=method), HTTPUpstream(answer))
    assert header_lines(client.head, b"content-length") == [length]


@pytest.mark.parametrize("answer, framing", [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 42\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
     "chunked"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello", b"5"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", b"5"),
])
def test_response_framing_is_one_unambiguous_field(answer: bytes, framing: Any) -> None:
    """RFC 9112 section 6.3: with Transfer-Encoding the upstream's Content-Length is dropped (the
    client gets the body chunked anew); repeated equal lengths become one Content-Length."""
    h = Harness()
    client, _ = serve(h, get(b"/x"), HTTPUpstream(answer))
    assert status(client) == 200
    lengths = header_lines(client.head, b"content-length")
    if framing == "chunked":
        assert lengths == [] and header_lines(client.head, b"transfer-encoding") == [b"chunked"]
        assert client.received.partition(b"\r\n\r\n")[2] == b"5\r\nhello\r\n0\r\n\r\n"
    else:
        assert lengths == [framing]
        assert client.received.partition(b"\r\n\r\n")[2] == b"hello"


# -- 7. a refused body is never dispatched ----------------------------------------------------------


def test_chunked_body_over_the_limit_with_its_end_in_one_segment_is_never_dispatched() -> None:
    """A chunked body over max_body_size whose last chunk and terminating 0 chunk come in one read:
    413, and nothing is dispatched to an upstream."""
    h = Harness("max_body_size = 1K")
    client = h.raw_client(get(b"/up", [b"Transfer-Encoding: chunked"], b"POST")
                          + b"400\r\n" + b"a" * 1024 + b"\r\n1\r\nb\r\n0\r\n\r\n")
    h.clock.advance(0)
    assert status(client) == 413
    assert h.attempts() == 0 and not h.gateway.live


# -- 8. spoofable forwarding fields --------------------------------------------------------------

SPOOFED = [b"Forwarded: for=127.0.0.1;proto=https", b"X-Forwarded-Port: 443", b"X-Forwarded-Prefix: /admin",
           b"X-Original-URL: /admin", b"X-Rewrite-URL: /admin", b"Proxy: http://evil.example:3128",
           b"Proxy-Authorization: Basic Zm9vOmJhcg==", b"X-Forwarded-Ssl: on"]


def test_spoofable_forwarding_fields_never_reach_the_upstream() -> None:
    """A client's Forwarded is replaced by wsrelay's own (RFC 7239); X-Forwarded-Port/-Prefix/-Ssl,
    X-Original-URL, X-Rewrite-URL, Proxy (httpoxy) and Proxy-Authorization are dropped."""
    h = Harness()
    client, upstream = serve(h, get(b"/x", SPOOFED))
    assert status(client) == 200 and upstream is not None
    head = upstream.requests[0]
    assert header_lines(head, b"forwarded") == [b'for=10.1.2.3;host=relay.example;proto=http']
    for line in SPOOFED[1:]:
        assert header_lines(head, line.split(b":")[0]) == [], line


def test_a_route_may_pass_named_fields_and_turn_forwarded_off() -> None:
    """``pass_headers`` lets the named fields through; ``forwarded = off`` sends no Forwarded at all."""
    h = Harness("pass_headers = X-Forwarded-Prefix\nforwarded = off")
    _, upstream = serve(h, get(b"/x", SPOOFED))
    assert upstream is not None
    head = upstream.requests[0]
    assert header_lines(head, b"x-forwarded-prefix") == [b"/admin"]
    assert header_lines(head, b"forwarded") == [] and header_lines(head, b"x-original-url") == []


@pytest.mark.parametrize("mode", ["ws_mode = relay", "ws_mode = tunnel"])
def test_websocket_handshakes_drop_spoofable_fields_too(mode: str) -> None:
    """The upstream WebSocket handshake follows the same rules, in both modes."""
    from tests.test_websocket import RawUpstream, handshake

    h = Harness(mode)
    h.raw_client(handshake(extra=SPOOFED))
    upstream = RawUpstream()
    h.accept_raw(upstream)
    assert header_lines(upstream.request, b"forwarded") == [b'for=10.1.2.3;host=relay.example;proto=http']
    for line in SPOOFED[1:]:
        assert header_lines(upstream.request, line.split(b":")[0]) == [], line


# -- 9. no invented client address ---------------------------------------------------------------


def test_a_unix_listener_invents_no_client_address() -> None:
    """Over a unix socket there is no client IP: no X-Real-IP, no for= in Forwarded, and the
    X-Forwarded-For received passes on unextended."""
    h = Harness()
    server = h.site.buildProtocol(UNIXAddress(None))
    client = RawClient()
    s_io = iosim.FakeTransport(server, True, UNIXAddress("/run/wsrelay.sock"), UNIXAddress(None))
    c_io = iosim.FakeTransport(client, False, UNIXAddress(None), UNIXAddress("/run/wsrelay.sock"))
    h.pumps.append(iosim.connect(server, s_io, client, c_io, greet=False, clock=h.clock))
    client.transport.write(get(b"/x", [b"X-Forwarded-For: 192.0.2.7"]))
    h.settle()
    h.clock.advance(0)
    upstream = HTTPUpstream()
    h.accept_raw(upstream)
    h.advance(0.1)
    assert status(client) == 200
    head = upstream.requests[0]
    assert header_lines(head, b"x-real-ip") == []
    assert header_lines(head, b"x-forwarded-for") == [b"192.0.2.7"]
    assert header_lines(head, b"forwarded") == [b"host=relay.example;proto=http"]


# -- 11. redirects and logs --------------------------------------------------------------------


def test_a_redirect_is_built_from_an_origin_form_target_only() -> None:
    """``GET .evil.com/`` cannot turn a listener's https redirect into another host: 400."""
    h = Harness()
    h.site.use(attrs.evolve(h.site.listener, redirect=301))  # a listener that redirects every request
    client = h.raw_client(get(b".evil.com/"))
    assert status(client) == 400
    assert header_lines(client.head, b"location") == []
    client = h.raw_client(get(b"/ok?x=1"))
    assert status(client) == 301
    assert header_lines(client.head, b"location") == [b"https://relay.example/ok?x=1"]


def test_logged_fields_are_escaped_as_nginx_does() -> None:
    """Quotes, backslashes, control bytes and bytes above 0x7E in User-Agent, Referer and the
    target are written as \\xHH in the access log: no forged field or line, no terminal escape
    (a control byte in a field is also a 400, logged the same way)."""
    h = Harness()
    serve(h, get(b"/x?a=%22", [b"User-Agent: ua\"\\\xe9", b"Referer: r\"x\""]))
    line = h.log[-1]
    assert '"GET /x?a=%22 HTTP/1.1" 200 ' in line
    assert '"r\\x22x\\x22" "ua\\x22\\x5C\\xE9"' in line
    h.raw_client(get(b"/y", [b"User-Agent: \x1b[31mred\x1b[0m"]))
    line = h.log[-1]
    assert '"GET /y HTTP/1.1" 400 ' in line and '"\\x1B[31mred\\x1B[0m"' in line
    assert "\x1b" not in "".join(h.log) and "\n" not in "".join(h.log)


# -- 4. header names with an underscore ------------------------------------------------------------

UNDERSCORED = [b"X_Forwarded_For: 6.6.6.6", b"x_real_ip: 6.6.6.6", b"X-Ok: yes"]


@pytest.mark.parametrize("underscores", [False, True])
def test_underscored_header_names_are_dropped_unless_the_listener_passes_them(underscores: bool) -> None:
    """X_Forwarded_For (read as X-Forwarded-For by CGI/WSGI upstreams) never reaches the upstream
    by default; with the listener's underscores_in_headers = on it passes as sent."""
    h = Harness()
    h.site.use(attrs.evolve(h.site.listener, underscores_in_headers=underscores))
    client, upstream = serve(h, get(b"/x", UNDERSCORED))
    assert status(client) == 200 and upstream is not None
    head = upstream.requests[0].partition(b"\r\n\r\n")[0]
    assert header_lines(head, b"x-ok") == [b"yes"]
    assert header_lines(head, b"x-forwarded-for") == [b"10.1.2.3"]
    assert (header_lines(head, b"x_forwarded_for") == [b"6.6.6.6"]) is underscores
    assert (header_lines(head, b"x_real_ip") == [b"6.6.6.6"]) is underscores


def test_underscored_header_names_never_reach_a_websocket_upstream() -> None:
    """The same rule for a WebSocket handshake: the upstream's handshake has no underscored field."""
    from tests.test_websocket import handshake

    h = Harness()
    client = h.raw_client(handshake(extra=UNDERSCORED))
    h.accept_upstream()
    assert status(client) == 101
    sent = h.relay_handshake().lower()
    assert b"x-ok: yes" in sent and b"x_forwarded_for" not in sent and b"x_real_ip" not in sent


def test_empty_lines_before_a_request_cost_linear_time() -> None:
    """RFC 9112 section 2.2 lets empty lines precede a request; skipping 524,288 of them (1 MiB
    in one read) is one slice, not one copy of the rest per line (about 275 GB of copying, 4 s
    of CPU), so a client cannot make wsrelay's work grow with the square of what it sends.  The
    bound is on this process's CPU time, with a wide margin both ways."""
    import time as clock

    h = Harness()
    started = clock.process_time()
    client, upstream = serve(h, b"\r\n" * 524288 + get(b"/x"))
    assert clock.process_time() - started < 1.0
    assert status(client) == 200 and upstream is not None


@pytest.mark.parametrize("mode", ["ws_mode = relay", "ws_mode = tunnel"])
@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 403 Forbidden\r\nX-Bad: a\x00b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 403 Forbidden\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 302 Found\r\nLocation: /login\r\nContent-Length: 5, 6\r\n\r\nhello",
])
def test_a_malformed_handshake_refusal_is_judged_as_any_upstream_response(mode: str, answer: bytes) -> None:
    """A WebSocket upstream that refuses with a head the HTTP engine would refuse (a NUL in a
    value, obs-fold, differing lengths) gets the client a 502, counted against the server, and
    none of its bytes: both kinds of upstream answer go through one parser."""
    from tests.test_websocket import RawUpstream, handshake

    h = Harness(mode)
    client = h.raw_client(handshake())
    h.accept_raw(RawUpstream(answer=answer))
    assert status(client) == 502
    assert b"X-Bad" not in client.received and b"X-Folded" not in client.received
    assert sorted(failed for _, failed, _ in health(h)) == [0, 1]

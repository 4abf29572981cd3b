"""The HTTP reverse proxy through the real ``twistd -n wsrelay``, against a scripted upstream that
records the exact bytes it receives."""

from __future__ import annotations

import hashlib
import http.client
import re
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.scripted_upstream import EARLY_GIVE_UP, PATTERN, ScriptedUpstream, pattern_bytes
from tests.support import RelayProcess, digest_of_repeats, held_back, poll_until

MiB = 1024 * 1024


@pytest.fixture
def upstream() -> Iterator[ScriptedUpstream]:
    up = ScriptedUpstream()
    try:
        yield up
    finally:
        up.stop()


def config(port: int, route_extra: str = "", upstream_extra: str = "") -> str:
    return f"""
[wsrelay]
listen = tcp:0:interface=127.0.0.1
access_log = -
[upstream app]
servers = 127.0.0.1:{port}
{upstream_extra}
[route /]
upstream = app
max_body_size = 4M
read_timeout = 2s
{route_extra}
"""


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read until the proxy closes (bounded)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: list[tuple[str, str]] | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    names = [h[0].lower() for h in headers or []]
    if "host" not in names:
        conn.putheader("Host", "app.example")
    for name, value in headers or []:
        conn.putheader(name, value)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    return conn.getresponse()


@pytest.fixture
def relay(upstream: ScriptedUpstream, start_relay: Callable[..., RelayProcess]) -> RelayProcess:
    return start_relay(config(upstream.port))


def test_keepalive_pool_reuses_one_upstream_connection(relay: RelayProcess, upstream: ScriptedUpstream) -> None:
    """Two sequential requests travel over one persistent HTTP/1.1 upstream connection."""
    for _ in range(2):
        response = request(relay.port, "GET", "/echo")
        assert response.status == 200 and response.read() == b"ok"
    assert upstream.connections == 1
    assert [r.head.split(b"\r\n")[0] for r in upstream.requests] == [b"GET /echo HTTP/1.1"] * 2


def test_method_target_and_repeated_headers_pass_byte_for_byte(relay: RelayProcess, upstream: ScriptedUpstream) -> None:
    """Any method, the raw target with its query, and repeated header lines reach the upstream as sent."""
    target = "/a/b%2Fc//d?x=1&&y=%20z&empty="
    response = request(relay.port, "PURGE", target, headers=[("X-Dup", "one"), ("X-Dup", "two"),
                                                              ("Cookie", "a=1"), ("Cookie", "b=2")])
    assert response.status == 200
    head = upstream.requests[-1].head
    lines = head.split(b"\r\n")
    assert lines[0] == f"PURGE {target} HTTP/1.1".encode()
    assert [l for l in lines if l.lower().startswith(b"x-dup:")] == [b"X-Dup: one", b"X-Dup: two"]
    assert [l for l in lines if l.lower().startswith(b"cookie:")] == [b"Cookie: a=1", b"Cookie: b=2"]


def test_hop_by_hop_removed_and_forwarded_headers_added(relay: RelayProcess, upstream: ScriptedUpstream) -> None:
    """Hop-by-hop fields go neither way; X-Forwarded-* are set; the client's Host is passed on."""
    response = request(relay.port, "GET", "/cookies", headers=[
        ("Host", "app.example:8080"), ("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"), ("Keep-Alive", "300"),
        ("TE", "trailers"), ("Upgrade", "h2c"), ("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "https"),
        ("X-Real-IP", "6.6.6.6")])
    body = response.read()
    assert body == b"ok"
    head = upstream.requests[-1].head.lower()
    for name in (b"x-hop:", b"keep-alive:", b"te:", b"upgrade:", b"connection:"):
        assert b"\r\n" + name not in head, name
    lines = upstream.requests[-1].head.split(b"\r\n")
    assert b"Host: app.example:8080" in lines
    assert b"X-Forwarded-For: 203.0.113.9, 127.0.0.1" in lines
    assert b"X-Forwarded-Proto: http" in lines and b"X-Forwarded-Host: app.example:8080" in lines
    assert b"x-real-ip: 127.0.0.1" in [l.lower() for l in lines]  # names are case-insensitive
    cookies = response.headers.get_all("Set-Cookie")
    assert cookies == ["a=1; Path=/", "b=2; Expires=Wed, 21 Oct 2037 07:28:00 GMT"]
    assert response.headers.get("X-Resp-Hop") is None and response.headers.get("Keep-Alive") is None


@pytest.mark.parametrize("policy, expected", [("upstream", "127.0.0.1:{port}"), ("backend.internal", "backend.internal")])
def test_host_header_policy(policy: str, expected: str, upstream: ScriptedUpstream,
                            start_relay: Callable[..., RelayProcess]) -> None:
    """host_header = upstream sends the server's host:port; a fixed value is sent as is."""
    relay = start_relay(config(upstream.port, f"host_header = {policy}"))
    request(relay.port, "GET", "/echo").read()
    assert f"Host: {expected.format(port=upstream.port)}".encode() in upstream.requests[-1].head.split(b"\r\n")


def test_response_framing_and_bodiless_statuses(relay: RelayProcess) -> None:
    """Chunked, Content-Length, HEAD, 204 and 304 responses reach the client correctly."""
    chunked = request(relay.port, "GET", "/chunked")
    assert chunked.status == 200 and chunked.read() == b"hello world"
    head = request(relay.port, "HEAD", "/cookies")
    assert head.status == 200 and head.headers["Content-Length"] == "2" and head.read() == b""
    for path, status in (("/204", 204), ("/304", 304)):
        raw = raw_exchange(relay.port, f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
        head_bytes, _, body = raw.partition(b"\r\n\r\n")
        assert head_bytes.startswith(f"HTTP/1.1 {status}".encode())
        assert body == b""
        assert b"transfer-encoding" not in head_bytes.lower()


def test_request_body_streams_and_limit_answers_413(relay: RelayProcess, upstream: ScriptedUpstream) -> None:
    """A 1 MiB body reaches the upstream intact; a body over max_body_size gets 413 and never reaches it."""
    body = pattern_bytes(7, MiB)
    response = request(relay.port, "POST", "/echo", body=body)
    assert response.status == 200 and response.read() == b"ok"
    assert upstream.requests[-1].body == body
    seen = len(upstream.requests)
    raw = raw_exchange(relay.port, b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n"
                       b"Expect: 100-continue\r\n\r\n" % (5 * MiB))
    assert raw.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in raw
    chunked = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + \
        b"".join(b"100000\r\n" + b"z" * 0x100000 + b"\r\n" for _ in range(5)) + b"0\r\n\r\n"
    assert raw_exchange(relay.port, chunked).startswith(b"HTTP/1.1 413 ")
    assert len(upstream.requests) == seen


def test_upstream_answers_early_before_reading_the_body(relay: RelayProcess, upstream: ScriptedUpstream) -> None:
    """An upstream that answers a POST before it has read the body (a 403, say): the client gets that
    answer, wsrelay stops sending the body and closes that upstream connection (RFC 9112 section
    9.3), logs no error, and the next request is served normally."""
    start = len(relay.output.lines)
    for _ in range(3):
        response = request(relay.port, "POST", "/early", body=pattern_bytes(0, 4 * MiB - 1))
        assert (response.status, response.read()) == (403, b"no way")
    # Each /early connection ends one of two ways, decided by the upstream alone: wsrelay closes it,
    # or the upstream gives up after EARLY_GIVE_UP seconds.  Wait for the three outcomes.
    assert upstream.wait_until(lambda: len(upstream.early_outcomes) == 3, timeout=EARLY_GIVE_UP + 30)
    assert upstream.early_outcomes == ["closed by proxy"] * 3
    assert upstream.early_closed_by_proxy == 3
    response = request(relay.port, "POST", "/echo", body=b"after")
    assert (response.status, response.read()) == (200, b"ok")
    assert upstream.requests[-1].body == b"after"
    relay.output.wait_for(r'"POST /echo HTTP/1\.1" 200 ', start=start)
    problems = [line for line in relay.output.lines[start:]
                if re.search(r"#(critical|error)\]|Traceback|Error writing request", line)]
    assert problems == [], "\n".join(relay.output.lines[start:])


def test_slow_client_pauses_upstream_and_memory_stays_bounded(relay: RelayProcess, upstream: ScriptedUpstream) -> None:
    """A 64 MiB response to a client that stops reading: wsrelay stops reading the upstream, RSS
    grows < 16 MiB, and every byte arrives intact once the client reads again (a digest of all
    64 MiB is compared)."""
    size = 64 * MiB
    baseline = relay.rss_kib()
    with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(b"GET /big?%d HTTP/1.1\r\nHost: a\r\n\r\n" % size)
        assert upstream.blocked.wait(30), "the upstream was never paused"
        assert upstream.big_peer is not None
        assert held_back(relay.port, upstream.port, upstream.big_peer, lambda: upstream.big_sent), \
            f"wsrelay kept reading the upstream ({upstream.big_sent} bytes sent)"
        assert upstream.big_sent < size // 2
        grown = relay.rss_kib() - baseline
        assert grown < 16 * 1024, f"wsrelay grew by {grown} KiB"
        received = bytearray()
        while b"\r\n\r\n" not in received:
            received += s.recv(65536)
        head, _, rest = bytes(received).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: %d" % size in head
        got = len(rest)
        check = rest
        digest = hashlib.sha256(rest)
        while got < size:
            chunk = s.recv(1 << 20)
            assert chunk, "connection ended early"
            if len(check) < MiB:
                check += chunk
            got += len(chunk)
            digest.update(chunk)
        assert got == size
        assert check[:MiB] == pattern_bytes(0, MiB)
        assert digest.hexdigest() == digest_of_repeats(PATTERN, size // len(PATTERN)), "the body differs"
    assert relay.rss_kib() - baseline < 16 * 1024


def test_upstream_refused_gives_502_and_silent_gives_504(start_relay: Callable[..., RelayProcess],
                                                         upstream: ScriptedUpstream) -> None:
    """Refused connect: 502; no answer within read_timeout: 504; each with a short body and a log line."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    relay = start_relay(config(dead_port, "retries = 0") + f"""
[upstream slow]
servers = 127.0.0.1:{upstream.port}
[route /slow]
upstream = slow
read_timeout = 500ms
""")
    refused = request(relay.port, "GET", "/x")
    assert refused.status == 502 and refused.read() == b"502 Bad Gateway\n"
    relay.output.wait_for(r"route / upstream app server http://127\.0\.0\.1:%d: connect failed" % dead_port)
    silent = request(relay.port, "GET", "/slow/silent")
    assert silent.status == 504 and silent.read() == b"504 Gateway Timeout\n"
    relay.output.wait_for(r"route /slow upstream slow server .*no response within read_timeout 0.5s")
    relay.output.wait_for(r'"GET /slow/silent HTTP/1.1" 504 .* upstream=127\.0\.0\.1:%d rt=' % upstream.port)


def test_reset_before_the_response_gives_502(upstream: ScriptedUpstream,
                                             start_relay: Callable[..., RelayProcess]) -> None:
    """An upstream that resets the connection without answering: 502, for a POST (never resent)
    and for a GET (retried once, then the failure itself: there is no other server).  Passive
    health is off here, so the server stays in after the first failure."""
    relay = start_relay(config(upstream.port, upstream_extra="max_fails = 0"))
    response = request(relay.port, "POST", "/reset-early", body=b"once")
    assert (response.status, response.read()) == (502, b"502 Bad Gateway\n")
    assert [r.body for r in upstream.requests] == [b"once"]  # not resent: not idempotent
    response = request(relay.port, "GET", "/reset-early")
    assert (response.status, response.read()) == (502, b"502 Bad Gateway\n")
    relay.output.wait_for(r"server http://127\.0\.0\.1:%d: no response: .*\(GET /reset-early\)" % upstream.port)


def test_access_log_to_a_file(upstream: ScriptedUpstream, start_relay: Callable[..., RelayProcess],
                              tmp_path: Path) -> None:
    """access_log = PATH appends one combined-format line per request to that file."""
    log_file = tmp_path / "logs" / "access.log"
    log_file.parent.mkdir()
    relay = start_relay(config(upstream.port).replace("access_log = -", f"access_log = {log_file}"))
    assert request(relay.port, "GET", "/echo?to=file").status == 200
    assert poll_until(lambda: log_file.exists() and "GET /echo?to=file" in log_file.read_text())
    line, = log_file.read_text().splitlines()
    assert re.fullmatch(r'127\.0\.0\.1 - - \[[^]]+\] "GET /echo\?to=file HTTP/1\.1" 200 2 "-" "-" '
                        r"upstream=127\.0\.0\.1:%d rt=\d+\.\d{3} request_id=[0-9a-f]{32}" % upstream.port, line)
    assert not any("GET /echo" in out for out in relay.output.lines)


def test_sighup_reopens_the_access_log_after_logrotate(upstream: ScriptedUpstream,
                                                      start_relay: Callable[..., RelayProcess],
                                                      tmp_path: Path) -> None:
    """logrotate moves the file away, then sends SIGHUP: wsrelay writes to a new file of that name."""
    log_file = tmp_path / "access.log"
    relay = start_relay(config(upstream.port).replace("access_log = -", f"access_log = {log_file}"))
    request(relay.port, "GET", "/echo?before").read()
    assert poll_until(lambda: "GET /echo?before" in log_file.read_text())
    log_file.rename(tmp_path / "access.log.1")
    mark = len(relay.output.lines)
    relay.signal(signal.SIGHUP)
    relay.output.wait_for("configuration reloaded", start=mark)
    request(relay.port, "GET", "/echo?after").read()
    assert poll_until(lambda: log_file.exists() and "GET /echo?after" in log_file.read_text())
    assert "after" not in (tmp_path / "access.log.1").read_text()


@pytest.mark.parametrize("script", ["/reset", "/reset-unframed"])
def test_reset_mid_response_aborts_the_client(script: str, relay: RelayProcess) -> None:
    """An upstream that resets mid-body, whether the body has a length or ends with the connection:
    the client's response is aborted, never cut short as complete."""
    response = request(relay.port, "GET", script)
    assert response.status == 200
    with pytest.raises(http.client.IncompleteRead):
        response.read()
    relay.output.wait_for(r"server http://127\.0\.0\.1:\d+: upstream broke off the response body: .*\(GET %s\)" % script)


def test_body_ended_by_a_clean_close_is_complete(relay: RelayProcess) -> None:
    """A body without length or chunking that the upstream ends with a clean close is whole."""
    response = request(relay.port, "GET", "/close-unframed")
    assert (response.status, response.read()) == (200, b"y" * 500)


def test_client_leaving_cancels_the_upstream_request(upstream: ScriptedUpstream,
                                                    start_relay: Callable[..., RelayProcess]) -> None:
    """A client that disconnects while the upstream is still working makes wsrelay drop that request.

    read_timeout is a minute here and the wait for the upstream connection to end half of that: a
    close seen at all cannot be the timeout's, however slow the machine."""
    relay = start_relay(config(upstream.port).replace("read_timeout = 2s", "read_timeout = 60s"))
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
        s.sendall(b"GET /silent HTTP/1.1\r\nHost: a\r\n\r\n")
        assert upstream.request_seen.wait(10)
    assert upstream.connection_closed.wait(30)  # well before the 60 s read_timeout
    assert not any("no response within read_timeout" in line for line in relay.output.lines)


def test_retry_on_next_server_when_connect_fails(upstream: ScriptedUpstream,
                                                 start_relay: Callable[..., RelayProcess]) -> None:
    """A connect failure is retried on the next server; the client never sees it."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = closed.getsockname()[1]
    closed.close()
    relay = start_relay(config(dead, "retries = 1", "balance = round_robin").replace(
        f"servers = 127.0.0.1:{dead}", f"servers = 127.0.0.1:{dead} 127.0.0.1:{upstream.port}"))
    for _ in range(3):
        assert request(relay.port, "POST", "/echo", body=b"data").status == 200
    assert [r.body for r in upstream.requests] == [b"data"] * 3


def test_cookie_stickiness_through_the_proxy(upstream: ScriptedUpstream,
                                             start_relay: Callable[..., RelayProcess]) -> None:
    """balance = cookie: the first answer carries wsrelay's Set-Cookie next to the upstream's own;
    requests with that cookie all reach the same server; without it they are spread."""
    other = ScriptedUpstream()
    try:
        text = config(upstream.port, upstream_extra="balance = cookie\nsticky = srv")
        relay = start_relay(text.replace(f"servers = 127.0.0.1:{upstream.port}",
                                         f"servers = 127.0.0.1:{upstream.port} 127.0.0.1:{other.port}"))
        first = request(relay.port, "GET", "/cookies")
        first.read()
        cookies = first.headers.get_all("Set-Cookie")
        assert cookies[:2] == ["a=1; Path=/", "b=2; Expires=Wed, 21 Oct 2037 07:28:00 GMT"]  # the upstream's
        sticky = next(c for c in cookies if c.startswith("srv="))
        value = sticky.split(";", 1)[0]
        chosen = upstream if upstream.requests else other
        for _ in range(6):
            response = request(relay.port, "GET", "/echo", headers=[("Cookie", value)])
            assert response.status == 200 and response.read() == b"ok"
        assert len(chosen.requests) == 7
        for _ in range(6):
            request(relay.port, "GET", "/echo").read()
        assert upstream.requests and other.requests  # without the cookie: both servers
    finally:
        other.stop()


def test_connect_timeout_is_retried_and_never_taken_for_a_read_timeout(
        upstream: ScriptedUpstream, start_relay: Callable[..., RelayProcess]) -> None:
    """A server that never completes the TCP handshake: after connect_timeout the request goes to the
    next server, even with a read_timeout shorter than connect_timeout (the read timer starts once
    connected); with no other server the answer is 504 naming the connect timeout."""
    with socket.socket() as hole, socket.socket() as filler:
        hole.bind(("127.0.0.1", 0))
        hole.listen(0)  # never accepted: the one queued connection fills it, later SYNs are dropped
        filler.connect(hole.getsockname())
        port = hole.getsockname()[1]
        text = config(port, "retries = 1\nconnect_timeout = 0.5s", "balance = round_robin")
        relay = start_relay(text.replace("read_timeout = 2s", "read_timeout = 0.2s").replace(
            f"servers = 127.0.0.1:{port}", f"servers = 127.0.0.1:{port} 127.0.0.1:{upstream.port}"))
        response = request(relay.port, "GET", "/first")
        assert (response.status, response.read()) == (200, b"ok")
        relay.output.wait_for(r"127\.0\.0\.1:%d failed \(connect timeout\); retrying on http://127\.0\.0\.1:%d"
                              % (port, upstream.port))
        lone = start_relay(config(port, "connect_timeout = 0.5s").replace("read_timeout = 2s", "read_timeout = 0.2s"))
        response = request(lone.port, "GET", "/lone")
        assert (response.status, response.read()) == (504, b"504 Gateway Timeout\n"), "\n".join(lone.output.lines)
        lone.output.wait_for(r"server http://127\.0\.0\.1:%d: connect timeout after 0\.5s \(GET /lone\)" % port)


@pytest.mark.parametrize("raw, status", [
    (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", 400),
    (b"GET /echo HTTP/1.1\r\n\r\n", 400),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    (b"GET /echo HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 1000) for i in range(20)) + b"\r\n", 431),
    (b"GET /echo HTTP/1.1\r\nHost: a\r\nX-Bad: a\x00b\r\n\r\n", 400),
    (b"GET /echo HTTP/1.1\r\nHost: a\r\nX-Bad: a\rb\r\n\r\n", 400),
    (b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET /../../etc/passwd HTTP/1.1\r\nHost: a\r\n\r\n", 400),
])
def test_malformed_requests_get_4xx_close_and_never_reach_upstream(raw: bytes, status: int, relay: RelayProcess,
                                                                   upstream: ScriptedUpstream) -> None:
    """Each malformed request gets its 4xx, an access-log line and a closed connection, and the
    upstream receives nothing."""
    mark = len(relay.output.lines)
    answer = raw_exchange(relay.port, raw)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert answer.endswith(b"\n")  # a body, then the close (raw_exchange read to EOF)
    assert upstream.requests == []
    relay.output.wait_for(r'^127\.0\.0\.1 - - \[[^]]+\] "[^"]*" %d \d+ ' % status, start=mark)


def test_access_log_line_per_request(relay: RelayProcess, upstream: ScriptedUpstream) -> None:
    """Each request gets one combined-format line with the upstream used and the time taken."""
    request(relay.port, "GET", "/echo?q=1", headers=[("Referer", "http://ref/"), ("User-Agent", "t/1")]).read()
    relay.output.wait_for(r'^127\.0\.0\.1 - - \[[^]]+\] "GET /echo\?q=1 HTTP/1\.1" 200 2 "http://ref/" "t/1" '
                          r"upstream=127\.0\.0\.1:%d rt=\d+\.\d{3} request_id=[0-9a-f]{32}$" % upstream.port)

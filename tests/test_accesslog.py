"""Access-log formats and request ids, in memory: the formatters, the id rules, and wsrelay's real
site and gateway on a fake clock (what the upstream gets, what each line says, what it never says).

(The same through the real ``twistd`` process: test_accesslog_process.py.)
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any

import attrs
import pytest
from twisted.logger import globalLogPublisher

from tests.test_security import HTTPUpstream, serve
from tests.test_websocket import MODES, Harness, RawUpstream, frame, handshake, header_lines, open_pair, status
from wsrelay import requestid
from wsrelay.accesslog import Entry, WebSocketFigures, format_json, format_line

HEX32 = re.compile(r"[0-9a-f]{32}")

#: what every line of the formatters' tests shares
FIELDS: dict[str, Any] = dict(client="192.0.2.7", when=1764571501.25, method=b"GET", target=b"/chat/?a=1",
                              protocol=b"HTTP/1.1", status=200, sent=512, referer=None, user_agent=b"curl/8",
                              upstream="127.0.0.1:9001", duration=0.0042, request_id=b"abc-1", route="/chat/",
                              received=7)


def harness(*, fmt: str = "json", trust: bool = False, extra: str = "") -> Harness:
    """The in-memory harness with ``access_log_format`` and ``trust_request_id`` set by a reload."""
    h = Harness(extra)
    new = attrs.evolve(h.config, access_log_format=fmt, trust_request_id=trust)
    h.gateway.apply(new, h.gateway.access_log_for(new))
    assert h.gateway.access_log.format == fmt
    h.gateway.access_log.write = h.log.append  # type: ignore[method-assign]
    h.config = new
    return h


def get(target: bytes = b"/x", extra: list[bytes] | None = None) -> bytes:
    return b"\r\n".join([b"GET " + target + b" HTTP/1.1", b"Host: relay.example", *(extra or [])]) + b"\r\n\r\n"


def upstream_ids(request: bytes) -> list[bytes]:
    return header_lines(request.partition(b"\r\n\r\n")[0], b"x-request-id")


# -- the formatters ---------------------------------------------------------------------------


def test_json_line_has_every_key_in_a_stable_order() -> None:
    """An HTTP request's JSON line: the documented keys, in order, with their types; null where
    wsrelay does not know (no referer)."""
    line = format_json(Entry(**FIELDS))
    assert line.startswith('{"time":"2025-12-01T06:45:01.250Z",')
    record = json.loads(line)
    assert record == {
        "time": "2025-12-01T06:45:01.250Z", "client": "192.0.2.7", "method": "GET", "target": "/chat/?a=1",
        "protocol": "HTTP/1.1", "status": 200, "bytes_sent": 512, "bytes_received": 7, "duration": 0.0042,
        "route": "/chat/", "upstream": "127.0.0.1:9001", "request_id": "abc-1", "referer": None,
        "user_agent": "curl/8",
    }
    assert list(record) == ["time", "client", "method", "target", "protocol", "status", "bytes_sent",
                            "bytes_received", "duration", "route", "upstream", "request_id", "referer",
                            "user_agent"]


def test_json_line_of_a_websocket_pair() -> None:
    """A pair's line adds the ws_* keys; tunnel mode's unknown message counts are null."""
    figures = WebSocketFigures("relay", 1.5, 2, 10, 3, 30, 4001, "client")
    record = json.loads(format_json(Entry(**dict(FIELDS, status=101, websocket=figures))))
    assert {k: v for k, v in record.items() if k.startswith("ws_")} == {
        "ws_mode": "relay", "ws_duration": 1.5, "ws_messages_from_client": 2, "ws_bytes_from_client": 10,
        "ws_messages_from_upstream": 3, "ws_bytes_from_upstream": 30, "ws_close_code": 4001,
        "ws_close_by": "client"}
    tunnel = WebSocketFigures("tunnel", 0.25, None, 12, None, 40, None, "wsrelay")
    record = json.loads(format_json(Entry(**dict(FIELDS, status=101, websocket=tunnel))))
    assert (record["ws_messages_from_client"], record["ws_messages_from_upstream"], record["ws_close_code"]) == (
        None, None, None)


HOSTILE = [
    b'/a"b\\c',  # quote and backslash
    b"/\x00\x01\x1b[31m\x7f\n\r\t",  # control bytes, a terminal escape, a forged line
    b"/\xff\xfe\xc3(\xed\xa0\x80",  # invalid UTF-8 (a bad lead byte, a broken pair, a surrogate)
    "/caf\u00e9\u2028\u2029\U0001f600".encode(),  # valid UTF-8, JavaScript's line separators, astral
    b'","status":999,"x":"',  # an attempt to add a key
]


@pytest.mark.parametrize("value", HOSTILE)
def test_json_escaping_of_hostile_bytes(value: bytes) -> None:
    """Any bytes in the target, User-Agent or Referer: the line is one line of pure ASCII, valid
    JSON, with the same keys, and each string is the bytes as UTF-8 with every invalid byte as
    the text \\xHH."""
    line = format_json(Entry(**dict(FIELDS, target=value, user_agent=value, referer=value)))
    assert line.isascii() and "\n" not in line and "\r" not in line
    record = json.loads(line)
    assert record["status"] == 200 and len(record) == 14
    expected = value.decode("utf-8", "backslashreplace")
    assert record["target"] == record["user_agent"] == record["referer"] == expected


def test_json_escaping_keeps_invalid_utf8_visible() -> None:
    """Invalid UTF-8 is never dropped or replaced by U+FFFD: each such byte is \\xHH; valid UTF-8
    is the character itself."""
    record = json.loads(format_json(Entry(**dict(FIELDS, target=b"/\xff\xc3\xa9"))))
    assert record["target"] == "/\\xff\u00e9"


def test_combined_line_appends_the_request_id() -> None:
    """combined: nginx's line, upstream=, rt=, then request_id= (escaped as the other fields)."""
    line = format_line(Entry(**FIELDS))
    assert line == ('192.0.2.7 - - [01/Dec/2025:06:45:01 +0000] "GET /chat/?a=1 HTTP/1.1" 200 512 "-" "curl/8" '
                    "upstream=127.0.0.1:9001 rt=0.004 request_id=abc-1")
    assert format_line(Entry(**dict(FIELDS, request_id=b'a"\n'))).endswith('request_id=a\\x22\\x0A')


def test_timestamps_follow_each_lines_time() -> None:
    """The timestamp (made once per second) is each line's own, in both formats, back and forth."""
    for when, day, iso in [(FIELDS["when"], "01/Dec/2025:06:45:01", "2025-12-01T06:45:01.250Z"),
                           (FIELDS["when"] + 86400.5, "02/Dec/2025:06:45:01", "2025-12-02T06:45:01.750Z"),
                           (FIELDS["when"] + 1, "01/Dec/2025:06:45:02", "2025-12-01T06:45:02.250Z"),
                           (FIELDS["when"], "01/Dec/2025:06:45:01", "2025-12-01T06:45:01.250Z")]:
        assert f"[{day} +0000]" in format_line(Entry(**dict(FIELDS, when=when)))
        assert json.loads(format_json(Entry(**dict(FIELDS, when=when))))["time"] == iso


# -- request ids ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [b"a", b"0123456789abcdef" * 8, b"f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
                                   b"YWJj+/9=", b"host:123@x", b"!#$%&'*+-.^_`|~"])
def test_client_request_ids_kept(value: bytes) -> None:
    """1 to 128 visible ASCII characters of the allowed set: kept when trusted."""
    assert requestid.valid(value)
    assert requestid.choose([value], trust=True) == value


@pytest.mark.parametrize("value", [b"", b"x" * 129, b"a b", b'a"b', b"a\\b", b"a,b", b"a;b", b"a\tb",
                                   b"a\x00", b"a\x7f", b"caf\xc3\xa9", b"\xff", b"<script>"])
def test_client_request_ids_refused(value: bytes) -> None:
    """Empty, too long, a space, quote, backslash, comma, semicolon, control or non-ASCII byte:
    replaced by a new id, even when trusted."""
    assert not requestid.valid(value)
    chosen = requestid.choose([value], trust=True)
    assert chosen != value and HEX32.fullmatch(chosen.decode())


def test_request_ids_untrusted_repeated_or_absent_are_new() -> None:
    """Not trusted, sent twice, or not sent: a new id, 32 hex digits, different each time."""
    assert requestid.choose([b"abc"], trust=False) != b"abc"
    assert requestid.choose([b"abc", b"abc"], trust=True) != b"abc"
    ids = {requestid.choose(None, trust=True) for _ in range(1000)}
    assert len(ids) == 1000 and all(HEX32.fullmatch(i.decode()) for i in ids)


# -- through the site: HTTP ---------------------------------------------------------------------


@pytest.mark.parametrize(("trust", "sent", "kept"), [
    (True, [b"X-Request-ID: req-42"], True),
    (False, [b"X-Request-ID: req-42"], False),
    (True, [b"X-Request-ID: req 42"], False),
    (True, [b"X-Request-ID: " + b"r" * 129], False),
    (True, [b"X-Request-ID: req-42", b"x-request-id: req-43"], False),
    (True, [], False),
])
def test_http_request_id_goes_upstream_and_into_the_log(trust: bool, sent: list[bytes], kept: bool) -> None:
    """The upstream gets exactly one X-Request-ID: the client's when trusted and valid, else a new
    one (the client's never passed on); the access log says the same id."""
    h = harness(trust=trust)
    client, upstream = serve(h, get(b"/x", sent))
    assert status(client) == 200 and upstream is not None
    ids = upstream_ids(upstream.requests[0])
    assert len(ids) == 1
    if kept:
        assert ids == [b"req-42"]
    else:
        assert HEX32.fullmatch(ids[0].decode()) and b"req" not in upstream.requests[0]
    record = json.loads(h.log[-1])
    assert record["request_id"] == ids[0].decode()


def test_http_json_line_through_the_site() -> None:
    """A proxied request's JSON line: route, upstream server, bytes both ways, status."""
    h = harness()
    client, upstream = serve(h, get(b"/x?q=1", [b"Content-Length: 5", b"User-Agent: t/1"]) + b"hello")
    assert status(client) == 200
    record = json.loads(h.log[-1])
    assert {k: record[k] for k in ("client", "method", "target", "protocol", "status", "bytes_sent",
                                   "bytes_received", "route", "upstream", "referer", "user_agent")} == {
        "client": "10.1.2.3", "method": "GET", "target": "/x?q=1", "protocol": "HTTP/1.1", "status": 200,
        "bytes_sent": 2, "bytes_received": 5, "route": "/", "upstream": "127.0.0.1:9001", "referer": None,
        "user_agent": "t/1"}
    assert "ws_mode" not in record


def test_refused_requests_get_a_line_with_an_id() -> None:
    """A 404 (no route) and a 400 on the request line: a line each, with a new id, no route."""
    h = harness()
    h.raw_client(b"GET /x HTTP/1.1\r\nHost: relay.example\r\nX-Request-ID: \x01\r\n\r\n")
    h.raw_client(b"GET\x00 / HTTP/1.1\r\n\r\n")
    records = [json.loads(line) for line in h.log]
    assert [r["status"] for r in records] == [400, 400]
    assert all(HEX32.fullmatch(r["request_id"]) and r["route"] is None for r in records)


# -- through the site: WebSocket ------------------------------------------------------------------


@MODES
def test_websocket_handshake_carries_the_request_id(mode: str) -> None:
    """Relay and tunnel: the upstream's handshake has one X-Request-ID (the client's when trusted)."""
    for trust in (True, False):
        h = harness(trust=trust, extra=mode)
        client = h.raw_client(handshake(extra=[b"X-Request-ID: ws-7"]))
        if mode.endswith("relay"):
            h.accept_upstream()
            head = h.relay_handshake()
        else:
            upstream = RawUpstream()
            h.accept_raw(upstream)
            head = upstream.request
        assert status(client) == 101
        ids = header_lines(head, b"x-request-id")
        assert len(ids) == 1
        assert ids == [b"ws-7"] if trust else HEX32.fullmatch(ids[0].decode())


def ws_record(h: Harness) -> dict[str, Any]:
    line, = h.log
    return json.loads(line)


def test_relay_pair_line_client_closes() -> None:
    """One line when the pair ends: 101, relay mode, messages and payload bytes each way, the
    client's close code, closed by the client."""
    h = harness()
    client, upstream = open_pair(h)
    client.sendMessage(b"12345")
    client.sendMessage(b"ab")
    h.settle()
    assert h.log == []  # nothing while the pair is open
    client.sendCloseFrame(4000)
    h.settle()
    record = ws_record(h)
    assert (record["status"], record["route"], record["upstream"], record["bytes_sent"],
            record["bytes_received"]) == (101, "/", "127.0.0.1:9001", 7, 7)
    assert {k: v for k, v in record.items() if k.startswith("ws_") and k != "ws_duration"} == {
        "ws_mode": "relay", "ws_messages_from_client": 2, "ws_bytes_from_client": 7,
        "ws_messages_from_upstream": 2, "ws_bytes_from_upstream": 7, "ws_close_code": 4000,
        "ws_close_by": "client"}
    assert 0 < record["ws_duration"] <= record["duration"]  # open to end; the handshake to end


def test_relay_pair_line_upstream_closes() -> None:
    """The upstream's close: its code, closed by the upstream."""
    h = harness()
    client, upstream = open_pair(h)
    upstream.sendCloseFrame(4001, b"bye")
    h.settle()
    record = ws_record(h)
    assert (record["ws_close_code"], record["ws_close_by"]) == (4001, "upstream")


def test_relay_pair_line_wsrelay_closes_on_idle() -> None:
    """wsrelay's own close (the idle timeout): 1001, closed by wsrelay."""
    h = harness(extra="ws_idle_timeout = 2s")
    open_pair(h)
    h.advance(3)
    record = ws_record(h)
    assert (record["ws_close_code"], record["ws_close_by"]) == (1001, "wsrelay")


def test_relay_pair_line_client_lost() -> None:
    """A client gone without a close frame: 1006, closed by the client."""
    h = harness()
    client, upstream = open_pair(h)
    client.transport.loseConnection()
    h.settle()
    h.advance(6)
    record = ws_record(h)
    assert (record["ws_close_code"], record["ws_close_by"]) == (1006, "client")


def test_tunnel_pair_line() -> None:
    """Tunnel mode: bytes each way on the wire, no message counts, the close code read from the
    client's (masked) close frame."""
    h = harness(extra="ws_mode = tunnel")
    client = h.raw_client(handshake())
    upstream = RawUpstream()
    r_io = h.accept_raw(upstream)
    assert status(client) == 101
    client.transport.write(frame(1, b"hello"))  # masked: 2 + 4 + 5 bytes
    h.settle()
    r_io.protocol.dataReceived(frame(1, b"hi", mask=False))  # the upstream's answer: 4 bytes
    h.settle()
    client.transport.write(frame(8, struct.pack("!H", 4002) + b"done"))  # 2 + 4 + 6 bytes
    h.settle()
    client.transport.loseConnection()
    upstream.transport.loseConnection()
    h.settle()
    h.advance(6)
    record = ws_record(h)
    assert {k: v for k, v in record.items() if k.startswith("ws_") and k != "ws_duration"} == {
        "ws_mode": "tunnel", "ws_messages_from_client": None, "ws_bytes_from_client": 23,
        "ws_messages_from_upstream": None, "ws_bytes_from_upstream": 4, "ws_close_code": 4002,
        "ws_close_by": "client"}
    assert record["bytes_received"] == 23


def test_refused_handshake_is_an_ordinary_line() -> None:
    """An upstream that refuses the handshake: the client's line has that status, no ws_ keys."""
    h = harness()
    h.raw_client(handshake())
    h.accept_raw(RawUpstream(answer=b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno"))
    record = ws_record(h)
    assert record["status"] == 403 and "ws_mode" not in record and HEX32.fullmatch(record["request_id"])


# -- what is never logged ---------------------------------------------------------------------

SECRETS = [b"sekrit-cookie", b"sekrit-bearer", b"sekrit-body", b"sekrit-message", b"sekrit-proxy"]


@pytest.mark.parametrize("fmt", ["combined", "json"])
def test_payloads_cookies_and_authorization_are_never_logged(fmt: str) -> None:
    """A request and a WebSocket pair carrying a cookie, Authorization, Proxy-Authorization, a body
    and messages: none of it in the access log or wsrelay's own log events."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        h = harness(fmt=fmt)
        extra = [b"Cookie: session=sekrit-cookie", b"Authorization: Bearer sekrit-bearer",
                 b"Proxy-Authorization: Basic sekrit-proxy"]
        client, upstream = serve(h, get(b"/x", [*extra, b"Content-Length: 11"]) + b"sekrit-body")
        assert status(client) == 200 and upstream is not None and b"sekrit-body" in upstream.requests[0]
        serve(h, get(b"/x", extra), HTTPUpstream(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"))
        ws = h.raw_client(handshake(extra=extra))
        h.accept_upstream()
        assert status(ws) == 101
        ws.transport.write(frame(1, b"sekrit-message"))
        h.settle()
        ws.transport.write(frame(8, struct.pack("!H", 1000)))
        h.settle()
        h.advance(6)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert len(h.log) == 3
    own = repr(events)
    for secret in SECRETS:
        assert secret.decode() not in "".join(h.log)
        assert secret.decode() not in own

"""A fleet: two wsrelay processes with the same configuration (as on two machines behind an L4
balancer) choose the same upstream server for the same client with ip_hash, header and cookie
stickiness.  PROXY protocol headers stand in for many client addresses."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest

from tests.scripted_upstream import ScriptedUpstream
from tests.support import RelayProcess


@pytest.fixture
def servers() -> Iterator[list[ScriptedUpstream]]:
    ups = [ScriptedUpstream() for _ in range(3)]
    try:
        yield ups
    finally:
        for up in ups:
            up.stop()


def config(servers: list[ScriptedUpstream], balance: str) -> str:
    addresses = " ".join(f"127.0.0.1:{s.port}" for s in servers)
    return f"""
[wsrelay]
access_log = off
sticky_secret = the-same-secret-on-every-node
[listener lb]
endpoint = tcp:0:interface=127.0.0.1
proxy_protocol = on
[upstream app]
servers = {addresses}
balance = {balance}
{"sticky = X-User" if balance == "header" else "sticky = srv" if balance == "cookie" else ""}
[route /]
upstream = app
"""


def get(port: int, client: str, headers: bytes = b"") -> bytes:
    """A GET from ``client`` (through a PROXY v1 header); the response head."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"PROXY TCP4 {client} 127.0.0.1 40000 80\r\n".encode()
                     + b"GET /echo HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n" + headers + b"\r\n")
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    return answer.partition(b"\r\n\r\n")[0]


def chosen(servers: list[ScriptedUpstream], before: list[int]) -> int:
    """Which server took the one request sent since ``before`` (request counts)."""
    now = [len(s.requests) for s in servers]
    changed = [i for i, (a, b) in enumerate(zip(before, now)) if b != a]
    assert len(changed) == 1, (before, now)
    return changed[0]


def counts(servers: list[ScriptedUpstream]) -> list[int]:
    return [len(s.requests) for s in servers]


@pytest.mark.parametrize("balance", ["ip_hash", "header"])
def test_every_node_chooses_the_same_server(balance: str, servers: list[ScriptedUpstream],
                                            start_relay: Callable[..., RelayProcess]) -> None:
    """For 24 clients (addresses, or X-User values), node A and node B send each to the same
    server; and the clients are spread over more than one server (the test can tell)."""
    a = start_relay(config(servers, balance), name="a.ini")
    b = start_relay(config(servers, balance), name="b.ini")
    picks = []
    for i in range(24):
        client = f"198.51.{i}.{i + 1}"
        extra = f"X-User: user-{i}\r\n".encode() if balance == "header" else b""
        before = counts(servers)
        get(a.port, client, extra)
        on_a = chosen(servers, before)
        before = counts(servers)
        get(b.port, client, extra)
        assert chosen(servers, before) == on_a, client
        picks.append(on_a)
    assert len(set(picks)) > 1


def test_a_cookie_from_one_node_is_honoured_by_another(servers: list[ScriptedUpstream],
                                                       start_relay: Callable[..., RelayProcess]) -> None:
    """balance = cookie with the same sticky_secret: the cookie node A sets sends the client to
    the same server through node B; with another secret on B it is not recognised (B sets its
    own cookie)."""
    a = start_relay(config(servers, "cookie"), name="a.ini")
    b = start_relay(config(servers, "cookie"), name="b.ini")
    other = start_relay(config(servers, "cookie").replace("the-same-secret-on-every-node",
                                                           "another-secret-somewhere"), name="c.ini")
    for i in range(6):
        before = counts(servers)
        head = get(a.port, "192.0.2.1")
        server = chosen(servers, before)
        cookie = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                      if line.lower().startswith(b"set-cookie:"))
        value = cookie.split(b";", 1)[0]
        for _ in range(3):
            before = counts(servers)
            again = get(b.port, "192.0.2.2", b"Cookie: " + value + b"\r\n")
            assert chosen(servers, before) == server
            assert b"set-cookie" not in again.lower()  # B recognised it: nothing to set
        assert b"set-cookie" in get(other.port, "192.0.2.3", b"Cookie: " + value + b"\r\n").lower()

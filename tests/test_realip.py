"""The client address behind trusted proxies, in memory: which peer is believed, the walk from the
right through X-Forwarded-For or Forwarded, IPv6, malformed entries; and the header list the
upstream gets from it."""

from __future__ import annotations

import ipaddress

import pytest

from wsrelay import headers as H
from wsrelay.config import ConfigError, parse
from wsrelay.realip import TrustedProxies, parse_address

TRUSTED = TrustedProxies([ipaddress.ip_network(n) for n in ("10.0.0.0/8", "192.168.1.1/32", "2001:db8:f::/48")])


def xff(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"X-Forwarded-For", v.encode()) for v in values]


def fwd(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"Forwarded", v.encode()) for v in values]


@pytest.mark.parametrize("peer, headers, client", [
    # an untrusted peer: its headers name nobody
    ("203.0.113.5", xff("198.51.100.1"), "203.0.113.5"),
    ("203.0.113.5", fwd("for=198.51.100.1"), "203.0.113.5"),
    ("2001:db8:e::1", xff("198.51.100.1"), "2001:db8:e::1"),
    # a trusted peer without the headers: the peer
    ("10.1.2.3", [], "10.1.2.3"),
    ("10.1.2.3", [(b"X-Real-IP", b"198.51.100.1")], "10.1.2.3"),  # never read
    # one hop
    ("10.1.2.3", xff("198.51.100.1"), "198.51.100.1"),
    ("192.168.1.1", xff("198.51.100.1"), "198.51.100.1"),
    ("192.168.1.2", xff("198.51.100.1"), "192.168.1.2"),  # /32: its neighbour is not trusted
    # recursive: trusted entries skipped from the right, the rightmost untrusted one wins
    ("10.1.2.3", xff("6.6.6.6, 198.51.100.1, 10.9.9.9"), "198.51.100.1"),
    ("10.1.2.3", xff("6.6.6.6", "198.51.100.1, 10.9.9.9"), "198.51.100.1"),  # two lines are one list
    ("10.1.2.3", xff("10.0.0.7, 10.0.0.8"), "10.0.0.7"),  # all trusted: the leftmost
    ("10.1.2.3", xff(" 198.51.100.1 ,, ", ""), "198.51.100.1"),  # blanks and empty entries skipped
    # ports and brackets
    ("10.1.2.3", xff("198.51.100.1:4711"), "198.51.100.1"),
    ("10.1.2.3", xff("[2001:db8::1]:4711"), "2001:db8::1"),
    ("10.1.2.3", xff("2001:DB8:0::1"), "2001:db8::1"),
    ("10.1.2.3", xff("::ffff:198.51.100.1"), "198.51.100.1"),
    # IPv6 peers and trusted IPv6 entries
    ("2001:db8:f::9", xff("2001:db8:1::5, 2001:db8:f::1"), "2001:db8:1::5"),
    ("2001:db8:f::9", xff("198.51.100.1"), "198.51.100.1"),
    # malformed entries stop the walk: the last good address, or the peer
    ("10.1.2.3", xff("garbage"), "10.1.2.3"),
    ("10.1.2.3", xff("198.51.100.1, unknown"), "10.1.2.3"),
    ("10.1.2.3", xff("198.51.100.1, garbage, 10.0.0.5"), "10.0.0.5"),
    ("10.1.2.3", xff("garbage, 198.51.100.1, 10.0.0.5"), "198.51.100.1"),  # left of the client: unread
    ("10.1.2.3", xff("[198.51.100.1]"), "10.1.2.3"),  # IPv4 in brackets is not an address
    ("10.1.2.3", xff("198.51.100.1/24"), "10.1.2.3"),
    ("10.1.2.3", xff("1.2.3.4.5"), "10.1.2.3"),
    ("10.1.2.3", [(b"X-Forwarded-For", "198.51.100.\u0661".encode())], "10.1.2.3"),  # not ASCII
    # Forwarded (RFC 7239), read only without X-Forwarded-For
    ("10.1.2.3", fwd("for=198.51.100.1;proto=https"), "198.51.100.1"),
    ("10.1.2.3", fwd('For="[2001:db8::1]:4711", for=10.0.0.2'), "2001:db8::1"),
    ("10.1.2.3", fwd("for=6.6.6.6", "proto=http;for=198.51.100.1"), "198.51.100.1"),
    ("10.1.2.3", fwd("for=198.51.100.1, for=unknown"), "10.1.2.3"),
    ("10.1.2.3", fwd("for=198.51.100.1, for=_hidden, for=10.0.0.4"), "10.0.0.4"),
    ("10.1.2.3", fwd("for=198.51.100.1, proto=http"), "10.1.2.3"),  # an element without for=
    ("10.1.2.3", fwd("for=6.6.6.6") + xff("198.51.100.1"), "198.51.100.1"),  # XFF wins, whatever the order
    # no peer address (unix:)
    (None, xff("198.51.100.1"), None),
])
def test_the_client_address(peer: str | None, headers: list[tuple[bytes, bytes]], client: str | None) -> None:
    """The rightmost untrusted entry, from a trusted peer only; a malformed entry ends the walk."""
    assert TRUSTED.client(peer, headers) == client


def test_no_networks_trusts_no_one() -> None:
    """An empty list is falsy (the site skips it) and trusts no peer, not even loopback."""
    nobody = TrustedProxies([])
    assert not nobody
    assert nobody.client("127.0.0.1", xff("198.51.100.1")) == "127.0.0.1"


def test_peer_verdicts_are_cached_and_bounded() -> None:
    """The peer's verdict is remembered, and the memo never grows past its bound."""
    trusted = TrustedProxies([ipaddress.ip_network("10.0.0.0/8")])
    for i in range(3000):
        trusted.trusts(f"203.0.{i // 256}.{i % 256}")
    assert len(trusted._verdicts) <= 1024
    assert trusted.trusts("10.0.0.1") and trusted.trusts("10.0.0.1")


@pytest.mark.parametrize("entry, address", [
    (b"1.2.3.4", "1.2.3.4"), (b'"1.2.3.4"', "1.2.3.4"), (b"1.2.3.4:80", "1.2.3.4"), (b"[::1]", "::1"),
    (b"[::1]:80", "::1"), (b"::1", "::1"), (b"", None), (b"[::1", None), (b"1.2.3.4:", None),
    (b"host.example", None), (b"1.2.3.4:80:90", None),
])
def test_entries(entry: bytes, address: str | None) -> None:
    """What counts as an address in a list entry."""
    parsed = parse_address(entry)
    assert (str(parsed) if parsed is not None else None) == address


def test_upstream_headers_with_a_derived_client() -> None:
    """Toward the upstream: X-Forwarded-For is the list received plus the immediate peer,
    X-Real-IP and Forwarded's for= name the derived client."""
    out = H.request_to_upstream(
        [(b"Host", b"app.example"), (b"X-Forwarded-For", b"198.51.100.1, 10.0.0.9"),
         (b"Forwarded", b"for=6.6.6.6")],
        client_ip="198.51.100.1", peer_ip="10.1.2.3", scheme="http", host_header=None,
        upstream_hostport="10.0.0.1:9000")
    assert H.get(out, b"x-forwarded-for") == [b"198.51.100.1, 10.0.0.9, 10.1.2.3"]
    assert H.get(out, b"x-real-ip") == [b"198.51.100.1"]
    assert H.get(out, b"forwarded") == [b"for=198.51.100.1;host=app.example;proto=http"]


def config(listener: str = "", glob: str = "") -> str:
    return f"""
[wsrelay]
listen = tcp:8080
{glob}
[listener other]
endpoint = tcp:8081
{listener}
[upstream app]
servers = 127.0.0.1:9000
[route /]
upstream = app
"""


def test_config_where_the_key_lives() -> None:
    """[wsrelay] trusted_proxies applies to every listener; a [listener] may replace it or say off."""
    nets = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))
    cfg = parse(config(glob="trusted_proxies = 10.0.0.0/8 2001:db8::/32"))
    assert [l.trusted_proxies for l in cfg.listeners] == [nets, nets]
    cfg = parse(config(glob="trusted_proxies = 10.0.0.0/8 2001:db8::/32", listener="trusted_proxies = off"))
    assert [l.trusted_proxies for l in cfg.listeners] == [nets, ()]
    cfg = parse(config(listener="trusted_proxies = 192.0.2.1"))
    assert [l.trusted_proxies for l in cfg.listeners] == [(), (ipaddress.ip_network("192.0.2.1/32"),)]
    assert all(l.trusted_proxies == () for l in parse(config()).listeners)


@pytest.mark.parametrize("listener, glob, section", [
    ("trusted_proxies = 10.0.0.0/33", "", "[listener other] trusted_proxies"),
    ("", "trusted_proxies = 10.0.0.0/8 proxy.example", "[wsrelay] trusted_proxies"),
])
def test_config_errors_name_file_section_and_key(listener: str, glob: str, section: str) -> None:
    """A bad network stops the load with the file, the section and the key."""
    with pytest.raises(ConfigError) as caught:
        parse(config(listener=listener, glob=glob), "relay.ini")
    assert str(caught.value).startswith(f"relay.ini: {section}: ")
    assert "is not an IP address or network" in str(caught.value)

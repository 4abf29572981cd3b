"""The client's address behind trusted proxies (nginx's ``realip`` with ``real_ip_recursive on``).

Pure: no I/O.  Only when the connection's peer (the address a PROXY protocol header gave, where
the listener reads one) is in ``trusted_proxies`` is the client address taken from the request's
headers; from any other peer the headers say nothing about the client.

Rules (README, "Behind a load balancer"):

- the list read is ``X-Forwarded-For`` (every line, in order, as one comma-separated list) when
  the request has one, else the ``for=`` parameters of ``Forwarded`` (RFC 7239), one per element;
- it is walked from the right: an entry that is a trusted address is skipped, and the first
  untrusted one is the client; when every entry is trusted, the leftmost is;
- an entry that is not an IP address (``unknown``, ``_hidden``, a host name, garbage, an element
  of ``Forwarded`` without ``for=``) stops the walk: the client is the last good address seen, a
  trusted one, or the peer itself when the rightmost entry is already bad.  A proxy we trust
  appended everything to the right of it, so nothing left of a bad entry can be trusted.
- addresses come out in canonical form (IPv6 compressed, no brackets or port); an entry may carry
  a port (``192.0.2.1:4711``, ``"[2001:db8::1]:4711"``), which is dropped.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_IPV4_PORT = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}$")
_BRACKETED = re.compile(r"^\[([0-9A-Fa-f:.]+)\](?::\d{1,5})?$")
_FOR = re.compile(rb"(?:^|;)\s*for\s*=\s*(\"[^\"]*\"|[^;,\s]*)", re.IGNORECASE)

#: At most this many peer addresses keep their verdict (the peers are the few load balancers).
_CACHE_MAX = 1024


def parse_address(entry: bytes) -> Address | None:
    """One list entry as an address (``1.2.3.4``, ``1.2.3.4:80``, ``2001:db8::1``,
    ``[2001:db8::1]``, ``[2001:db8::1]:80``, optionally quoted), or None if it is not one."""
    try:
        text = entry.strip().decode("ascii")
    except UnicodeDecodeError:
        return None
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    bracketed = _BRACKETED.match(text)
    if bracketed:
        text = bracketed.group(1)
    else:
        with_port = _IPV4_PORT.match(text)
        if with_port:
            text = with_port.group(1)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if bracketed and address.version != 6:
        return None  # [1.2.3.4] is not an address
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def forwarded_for_entries(values: Iterable[bytes]) -> list[bytes]:
    """The ``for=`` value of each element of ``Forwarded`` lines, left to right; an element
    without one gives ``b""`` (not an address: it stops the walk)."""
    entries: list[bytes] = []
    for value in values:
        for element in value.split(b","):
            if not element.strip():
                continue
            m = _FOR.search(element)
            entries.append(m.group(1) if m else b"")
    return entries


def xff_entries(values: Iterable[bytes]) -> list[bytes]:
    """The entries of ``X-Forwarded-For`` lines, left to right (empty ones left out)."""
    return [e for value in values for e in value.split(b",") if e.strip()]


class TrustedProxies:
    """The networks a listener trusts to say who the client is."""

    def __init__(self, networks: Sequence[Network]) -> None:
        self.networks = tuple(networks)
        self._verdicts: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts_address(self, address: Address) -> bool:
        return any(address in network for network in self.networks if network.version == address.version)

    def trusts(self, peer: str) -> bool:
        """Whether the peer address ``peer`` (as the transport gives it) is trusted; cached."""
        verdict = self._verdicts.get(peer)
        if verdict is None:
            address = parse_address(peer.encode("ascii", "replace"))
            verdict = address is not None and self.trusts_address(address)
            if len(self._verdicts) >= _CACHE_MAX:
                self._verdicts.clear()
            self._verdicts[peer] = verdict
        return verdict

    def client(self, peer: str | None, headers: Sequence[tuple[bytes, bytes]]) -> str | None:
        """The client's address for a request from ``peer`` with ``headers`` (wire order).

        ``peer`` itself unless it is trusted and the headers name someone (module docstring).
        """
        if peer is None or not self.trusts(peer):
            return peer
        xff: list[bytes] = []
        forwarded: list[bytes] = []
        for name, value in headers:
            lower = name.lower()
            if lower == b"x-forwarded-for":
                xff.append(value)
            elif lower == b"forwarded":
                forwarded.append(value)
        if xff:
            entries = xff_entries(xff)
        elif forwarded:
            entries = forwarded_for_entries(forwarded)
        else:
            return peer
        found = peer
        for entry in reversed(entries):
            address = parse_address(entry)
            if address is None:
                break  # nothing left of a bad entry can be trusted: the last good one stands
            found = str(address)
            if not self.trusts_address(address):
                break
        return found

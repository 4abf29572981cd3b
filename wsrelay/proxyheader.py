"""The PROXY protocol header (v1 text, v2 binary) an L4 load balancer puts before a connection's
first byte: parsing only, no I/O.

:func:`parse` is given what a connection has sent so far and answers ``None`` while the header is
incomplete, a :class:`Header` once it is whole (with the number of bytes it took), or raises
:class:`InvalidHeader` with the reason as soon as the bytes cannot begin a valid header: wrong
signature, a v1 line over 107 bytes or with malformed addresses or ports, an address of the other
family than the one declared, a v2 version other than 2, an unknown command, a datagram (UDP)
family, or a v2 address block shorter than its family needs.  It accepts a header however the
network splits it.

``Header.source`` and ``Header.destination`` are ``None`` when the header names no TCP
addresses (v1 ``UNKNOWN``, v2 ``LOCAL`` such as a balancer's own health check, v2 ``UNSPEC`` or
unix-socket families): the connection's own addresses stand.  v2 TLVs are skipped.
"""

from __future__ import annotations

import ipaddress
import struct

import attrs

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included (the specification's bound)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

_V2_TCP = {0x11: (4, 12), 0x21: (16, 36)}  # family/transport byte: (address bytes, block length)
_V2_NO_ADDRESSES = {0x00, 0x31}  # UNSPEC, unix stream: the connection's own addresses stand
_V1_FAMILIES = {b"TCP4": 4, b"TCP6": 6}


class InvalidHeader(ValueError):
    """The bytes a connection started with are not a PROXY header; the message says why."""


@attrs.frozen
class Header:
    source: tuple[str, int] | None  # the client's (address, port), None: use the connection's own
    destination: tuple[str, int] | None
    length: int  # bytes the header took at the start of the stream


def parse(data: bytes) -> Header | None:
    """The PROXY header at the start of ``data``; None while it is incomplete."""
    if data[:12] == V2_SIGNATURE[:len(data)]:
        return _v2(data)
    if data[:6] == V1_PREFIX[:len(data)]:
        return _v1(data)
    raise InvalidHeader("no PROXY protocol header (neither v1 nor v2)")


def _v1(data: bytes) -> Header | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise InvalidHeader(f"v1 header longer than {V1_MAX} bytes")
        return None
    fields = data[:end].split(b" ")
    if fields[1:2] == [b"UNKNOWN"]:
        return Header(None, None, end + 2)
    version = _V1_FAMILIES.get(fields[1]) if len(fields) > 1 else None
    if version is None or len(fields) != 6:
        raise InvalidHeader("v1 header is not 'PROXY TCP4|TCP6 source destination sport dport'")
    source = (_v1_address(fields[2], version), _v1_port(fields[4]))
    destination = (_v1_address(fields[3], version), _v1_port(fields[5]))
    return Header(source, destination, end + 2)


def _v1_address(text: bytes, version: int) -> str:
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidHeader(f"v1 header: {text[:64]!r} is not an IP address") from None
    if address.version != version:
        raise InvalidHeader(f"v1 header: {address} is not an IPv{version} address")
    return str(address)


def _v1_port(text: bytes) -> int:
    if not (text.isdigit() and len(text) <= 5 and (text == b"0" or text[:1] != b"0")) or int(text) > 65535:
        raise InvalidHeader(f"v1 header: {text[:16]!r} is not a port")
    return int(text)


def _v2(data: bytes) -> Header | None:
    if len(data) < 16:
        return None
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        raise InvalidHeader(f"v2 header of version {version}")
    if command > 1:
        raise InvalidHeader(f"v2 header with unknown command {command}")
    family = data[13]
    (size,) = struct.unpack_from("!H", data, 14)
    total = 16 + size
    if family not in _V2_TCP and family not in _V2_NO_ADDRESSES:
        raise InvalidHeader(f"v2 header: family/transport {family:#04x} is not TCP (or unspecified, or unix stream)")
    if family in _V2_TCP and command == 1 and size < _V2_TCP[family][1]:
        raise InvalidHeader(f"v2 header: {size} address bytes where its family needs {_V2_TCP[family][1]}")
    if len(data) < total:
        return None
    if command == 0 or family in _V2_NO_ADDRESSES:  # LOCAL: the balancer speaking for itself
        return Header(None, None, total)
    width = _V2_TCP[family][0]
    src = ipaddress.ip_address(data[16:16 + width])
    dst = ipaddress.ip_address(data[16 + width:16 + 2 * width])
    sport, dport = struct.unpack_from("!HH", data, 16 + 2 * width)
    return Header((str(src), sport), (str(dst), dport), total)

"""What a request head must look like before wsrelay acts on it.  Pure: bytes in, values or a
:class:`wsrelay.errors.ProxyError` (with its status) out.

llhttp (through httptools) checks the header section and the body framing strictly; these rules
add what it lets through or answers too late:

- the request line is exactly ``method SP target SP HTTP/d.d CRLF`` (RFC 9112 section 3): one
  space each, a token method, a visible-ASCII target, the version in capitals; anything else is
  400, and a well-formed version other than 1.0/1.1 is 505;
- a partial head is judged as it arrives: a first line that can no longer become a request line
  (a TLS ClientHello, random bytes) or a bare LF gets its 400 at once, not at a timer;
- the target is origin-form (``/...``): absolute-, authority- and asterisk-form are 400;
- ``Transfer-Encoding`` must be exactly ``chunked`` (501 for any other coding, ``identity``
  included; 400 on HTTP/1.0, RFC 9112 section 6.1).
"""

from __future__ import annotations

import re

from wsrelay.errors import BadRequest, NotImplementedCoding, ProxyError, VersionNotSupported

_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_REQUEST_LINE = re.compile(rb"([%s]+) ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])\r\n" % _TCHAR)
#: What a request line may look like before its end has arrived.
_PARTIAL_LINE = re.compile(
    rb"[%s]*(?: [\x21-\x7e]*(?: (?:H(?:T(?:T(?:P(?:/(?:[0-9](?:\.[0-9]?)?)?)?)?)?)?)?\r?)?)?" % _TCHAR)

SUPPORTED_VERSIONS = {b"1.0": b"HTTP/1.0", b"1.1": b"HTTP/1.1"}


def request_line(line: bytes) -> tuple[bytes, bytes, bytes]:
    """``(method, target, version)`` of a request line (with its CRLF); BadRequest or
    VersionNotSupported."""
    m = _REQUEST_LINE.fullmatch(line)
    if m is None:
        raise BadRequest(f"malformed request line {line[:100]!r}")
    method, target, major, minor = m.groups()
    if target[:1] != b"/":
        # Absolute-form is for proxies, authority-form for CONNECT, asterisk-form for a server-wide
        # OPTIONS: wsrelay routes by path, so it forwards origin-form only (RFC 9112 section 3.2).
        raise BadRequest(f"request target {target[:80]!r} is not origin-form")
    version = SUPPORTED_VERSIONS.get(major + b"." + minor)
    if version is None:
        raise VersionNotSupported(f"HTTP version {major.decode()}.{minor.decode()}")
    return method, target, version


def check_partial(buffer: bytes, max_request_line: int) -> ProxyError | None:
    """Why an incomplete head can already be refused, or None to wait for more bytes."""
    from wsrelay.errors import URITooLong

    end = buffer.find(b"\n")
    if end < 0:
        if len(buffer) > max_request_line + 1:
            return URITooLong(f"request line of {len(buffer)}+ bytes")
        if _PARTIAL_LINE.fullmatch(buffer) is None:
            return BadRequest(f"not an HTTP request line: {buffer[:40]!r}")
        return None
    if end == 0 or buffer[end - 1] != 0x0D:
        return BadRequest("bare LF in the request head (RFC 9112 section 2.2)")
    if end - 1 > max_request_line:
        return URITooLong(f"request line of {end - 1} bytes")
    try:
        request_line(buffer[:end + 1])
    except ProxyError as e:
        return e
    if bare_lf(buffer):
        return BadRequest("bare LF in the request head (RFC 9112 section 2.2)")
    return None


def bare_lf(head: bytes) -> bool:
    """True if a line of ``head`` ends in LF without CR."""
    return head.count(b"\n") != head.count(b"\r\n")


def transfer_coding(values: list[bytes], version: bytes) -> None:
    """Refuse a ``Transfer-Encoding`` wsrelay cannot pass on (the only coding it frames is chunked)."""
    if version != b"HTTP/1.1":
        raise BadRequest("Transfer-Encoding in an HTTP/1.0 request (RFC 9112 section 6.1)")
    codings = [t.strip().lower() for v in values for t in v.split(b",")]
    if codings != [b"chunked"]:
        raise NotImplementedCoding(f"transfer coding {b', '.join(codings)[:80]!r}")


def parser_error(message: str) -> ProxyError:
    """The answer to an llhttp error: 501 for a transfer coding it does not know, else 400."""
    if message == "Request has invalid `Transfer-Encoding`":
        return NotImplementedCoding(message)
    return BadRequest(f"malformed request: {message}")


def loose_fields(head: bytes) -> dict[bytes, bytes]:
    """The first value of each field of a head llhttp refused, read loosely: only for the access
    log (which escapes what it writes), never acted on."""
    fields: dict[bytes, bytes] = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            fields.setdefault(name.strip().lower(), value.strip())
    return fields

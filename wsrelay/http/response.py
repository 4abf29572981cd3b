"""What an upstream's response head must look like before wsrelay passes anything of it on.
Pure: bytes in, a :class:`Response` or an :class:`InvalidResponse` (the upstream's fault, a 502)
out.

- the status line is ``HTTP/1.x SP 3DIGIT [SP reason] CRLF`` with a status of 100 to 599 (RFC 9112
  section 4; an empty or missing reason is fine, ``HTTP/2.0``, ``ICY`` and two-digit statuses are
  not);
- every field is ``token ":" OWS value OWS CRLF`` with a value of visible ASCII, SP, HTAB and
  obs-text only: NUL, CR, LF, other control bytes, obs-fold and bare LF make the head invalid;
- framing (RFC 9112 section 6.3): no body for HEAD, 1xx, 204 and 304; ``Transfer-Encoding`` must
  end in ``chunked`` with only registered codings before it (``identity`` is no longer one), and
  is refused on HTTP/1.0; ``Content-Length`` beside it is dropped; otherwise ``Content-Length``
  values must all be the same number (``42, 42`` is one value); with neither, the body runs to the
  connection's end.
"""

from __future__ import annotations

import re

Header = tuple[bytes, bytes]

_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: ([\t\x20-\x7e\x80-\xff]*))?\r\n")
#: A field line: (the whole line, name, value with its surrounding whitespace).  A value is
#: HTAB, SP, visible ASCII and obs-text only (RFC 9110 section 5.5).
_FIELD = re.compile(rb"(([%s]+):([\t\x20-\x7e\x80-\xff]*)\r\n)" % _TCHAR)
#: Codings a response may put before ``chunked`` (RFC 9110 section 8.4.1, IANA registry).
_CODINGS = frozenset({b"gzip", b"x-gzip", b"deflate", b"compress", b"x-compress", b"br", b"zstd"})

#: Body framings.
NO_BODY, LENGTH, CHUNKED, TO_CLOSE = range(4)


class InvalidResponse(Exception):
    """The upstream sent something that is not a valid HTTP/1.1 response (a 502, its fault)."""


class Response:
    """A parsed response head."""

    __slots__ = ("code", "phrase", "fields", "framing", "length", "codings", "reusable")

    def __init__(self, code: int, phrase: bytes, fields: list[Header], framing: int, length: int | None,
                 codings: bytes | None, reusable: bool) -> None:
        self.code = code
        self.phrase = phrase
        self.fields = fields  # every field but Content-Length and Transfer-Encoding, in wire order
        self.framing = framing
        self.length = length  # the body's length for LENGTH; the value to pass on for HEAD / 304
        self.codings = codings  # codings before chunked ("gzip"), passed on to the client
        self.reusable = reusable


def parse_head(head: bytes, method: bytes) -> Response:
    """A response head (status line to the empty line, CRLFs included) to a request of ``method``;
    InvalidResponse if it is malformed or its framing is ambiguous (RFC 9112 sections 4, 5, 6)."""
    status = _STATUS_LINE.match(head)
    if status is None:
        line = head.split(b"\r\n", 1)[0]
        raise InvalidResponse(f"malformed status line {line[:60]!r}")
    start = status.end()
    found = _FIELD.findall(head, start, len(head) - 2)
    # findall skips what is not a field line: the lines found cover the section only if every
    # line is one (they cannot overlap, so equal lengths mean no gap).
    if sum([len(t[0]) for t in found]) != len(head) - 2 - start:
        bad = _first_bad_line(head, start)
        raise InvalidResponse(f"malformed header field {bad[:60]!r}")
    minor, code = status.group(1), int(status.group(2))
    lengths: list[bytes] = []
    coding: list[bytes] = []
    fields: list[Header] = []
    close = minor == b"0"
    for _, name, value in found:
        value = value.strip(b" \t")
        size = len(name)
        if size == 14 or size == 17 or size == 10:  # only these lengths can name framing fields
            lower = name.lower()
            if lower == b"content-length":
                lengths.append(value)
                continue
            if lower == b"transfer-encoding":
                coding.append(value)
                continue
            if lower == b"connection" and b"close" in value.lower():
                close = close or b"close" in {t.strip().lower() for t in value.split(b",")}
        fields.append((name, value))
    length: int | None = None
    if lengths:
        values = {v.strip() for line in lengths for v in line.split(b",")}
        if len(values) == 1 and next(iter(values)).isdigit() and len(next(iter(values))) <= 18:
            length = int(next(iter(values)))
    bodiless = method == b"HEAD" or code in (204, 304) or code < 200
    if bodiless:
        if code == 204 or code < 200:
            length = None  # RFC 9110 section 8.6: no Content-Length in these
        return Response(code, status.group(3) or b"", fields, NO_BODY, length, None, not close)
    codings = None
    if coding:
        if minor == b"0":
            raise InvalidResponse("Transfer-Encoding in an HTTP/1.0 response (RFC 9112 section 6.1)")
        names = [t.strip().lower() for v in coding for t in v.split(b",")]
        if names[-1] != b"chunked" or any(n not in _CODINGS for n in names[:-1]):
            raise InvalidResponse(f"transfer coding {b', '.join(names)[:60]!r} (only chunked is framed)")
        codings = b", ".join(names[:-1]) or None
        # Content-Length beside Transfer-Encoding is dropped (RFC 9112 section 6.3); the sender's
        # framing is suspect, so the connection is not reused.
        return Response(code, status.group(3) or b"", fields, CHUNKED, None, codings,
                        not close and not lengths)
    if lengths:
        if length is None:
            raise InvalidResponse(f"invalid or differing Content-Length {b', '.join(lengths)[:60]!r}")
        return Response(code, status.group(3) or b"", fields, LENGTH, length, None, not close)
    return Response(code, status.group(3) or b"", fields, TO_CLOSE, None, None, False)


def _first_bad_line(head: bytes, start: int) -> bytes:
    """The first line of the field section that is not a field line (for the log)."""
    position = start
    while True:
        match = _FIELD.match(head, position)
        if match is None:
            return head[position:head.find(b"\n", position) + 1 or len(head)]
        position = match.end()

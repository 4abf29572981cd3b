"""A strict decoder of the chunked transfer coding (RFC 9112 section 7.1).  Pure: no I/O.

It finds where a chunked body ends, so the bytes after it (a pipelined request) stay the
channel's, and yields the body's data.  Refused with 400: a size that is not 1 to 15 hex digits,
a chunk extension that is not ``; token[=token|quoted-string]``, a missing CRLF after a chunk's
data, a size line or trailer section over its bound, chunk extensions over ``max_trailer`` bytes
in all (each line is capped at 4K, and the total too: extensions are overhead a peer could
otherwise send without end), a trailer line that is not a field.
Trailer fields are dropped (never forwarded).
"""

from __future__ import annotations

import re

from wsrelay.errors import BadRequest

_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_SIZE_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,15})(?:[ \t]*;[ \t]*[%s]+(?:[ \t]*=[ \t]*(?:[%s]+|%s))?)*\r\n" % (_TCHAR, _TCHAR, _QUOTED))
_TRAILER_LINE = re.compile(rb"[%s]+:[\t \x21-\x7e\x80-\xff]*\r\n" % _TCHAR)
_MAX_LINE = 4096

_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class ChunkedDecoder:
    """Feed bytes with :meth:`feed`; it returns ``(data, rest)``: the body bytes found and, once
    the body has ended (``done``), the bytes after it."""

    def __init__(self, max_trailer: int = 16384) -> None:
        self.state = _SIZE
        self.remaining = 0
        self.line = b""
        self.trailer = 0
        self.extensions = 0
        self.max_trailer = max_trailer

    @property
    def done(self) -> bool:
        return self.state == _DONE

    def feed(self, data: bytes) -> tuple[list[bytes], bytes]:
        out: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end and self.state != _DONE:
            state = self.state
            if state == _DATA:
                take = min(self.remaining, end - pos)
                out.append(data[pos:pos + take])
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self.state = _DATA_END
                continue
            # _SIZE, _DATA_END and _TRAILER read lines.
            nl = data.find(b"\n", pos)
            if nl < 0:
                self.line += data[pos:]
                if len(self.line) > _MAX_LINE:
                    raise BadRequest("chunk line over 4K")
                pos = end
                continue
            line = self.line + data[pos:nl + 1]
            self.line = b""
            if len(line) > _MAX_LINE and state != _TRAILER:
                raise BadRequest("chunk line over 4K")
            pos = nl + 1
            if state == _SIZE:
                m = _SIZE_LINE.fullmatch(line)
                if m is None:
                    raise BadRequest(f"malformed chunk size line {line[:40]!r}")
                if len(line) > m.end(1) + 2:
                    self.extensions += len(line) - m.end(1) - 2
                    if self.extensions > self.max_trailer:
                        raise BadRequest(f"chunk extensions over {self.max_trailer} bytes in all")
                self.remaining = int(m.group(1), 16)
                self.state = _DATA if self.remaining else _TRAILER
            elif state == _DATA_END:
                if line != b"\r\n":
                    raise BadRequest("no CRLF after a chunk's data")
                self.state = _SIZE
            else:
                if line == b"\r\n":
                    self.state = _DONE
                    break
                self.trailer += len(line)
                if self.trailer > self.max_trailer or _TRAILER_LINE.fullmatch(line) is None:
                    raise BadRequest("malformed or oversized chunked trailer section")
        return out, data[pos:]

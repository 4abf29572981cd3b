"""Error types that carry the HTTP status (and WebSocket close code) they answer with.

Invariant: no I/O. Each protocol maps these to a response in one place (the HTTP proxy's error
page, the WebSocket handshake's refusal), so a status is chosen where the fault is found.
"""

from __future__ import annotations

# WebSocket close codes (RFC 6455 section 7.4.1, plus 1012-1014 from the IANA registry).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_NO_STATUS = 1005  # never on the wire
CLOSE_ABNORMAL = 1006  # never on the wire
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_BAD_GATEWAY = 1014
CLOSE_TLS_HANDSHAKE = 1015  # never on the wire

#: Codes that RFC 6455 section 7.4.1 forbids in a close frame.
RESERVED_CLOSE_CODES = frozenset({CLOSE_NO_STATUS, CLOSE_ABNORMAL, CLOSE_TLS_HANDSHAKE})


def close_code_sendable(code: int | None) -> bool:
    """True if ``code`` may be put in a close frame (RFC 6455 section 7.4)."""
    if code is None:
        return True
    if code in RESERVED_CLOSE_CODES:
        return False
    return code in {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014} or 3000 <= code <= 4999


class ProxyError(Exception):
    """A request that wsrelay answers itself.

    ``status`` and ``reason`` go to the client; ``detail`` goes only to the log (it may name
    upstream addresses the client has no business knowing).
    """

    status = 500
    reason = "Internal Server Error"

    def __init__(self, detail: str = "", *, headers: dict[bytes, bytes] | None = None) -> None:
        super().__init__(detail or self.reason)
        self.detail = detail or self.reason
        self.headers = headers or {}

    @property
    def body(self) -> bytes:
        """The short plain-text body sent to the client."""
        return f"{self.status} {self.reason}\n".encode("ascii")


class BadRequest(ProxyError):
    status, reason = 400, "Bad Request"


class Forbidden(ProxyError):
    status, reason = 403, "Forbidden"


class NotFound(ProxyError):
    status, reason = 404, "Not Found"


class RequestTimeout(ProxyError):
    status, reason = 408, "Request Timeout"


class PayloadTooLarge(ProxyError):
    status, reason = 413, "Content Too Large"


class URITooLong(ProxyError):
    status, reason = 414, "URI Too Long"


class UpgradeRequired(ProxyError):
    status, reason = 426, "Upgrade Required"


class TooManyRequests(ProxyError):
    """A per-client limit (``limit_conn``, ``limit_req``); carries ``Retry-After``.  Its log line is
    the limit's own, rate-limited (``wsrelay.limits.RefusalLog``)."""

    status, reason = 429, "Too Many Requests"


class HeaderFieldsTooLarge(ProxyError):
    status, reason = 431, "Request Header Fields Too Large"


class NotImplementedCoding(ProxyError):
    """A transfer coding wsrelay does not implement (RFC 9112 section 6.1: 501)."""

    status, reason = 501, "Not Implemented"


class BadGateway(ProxyError):
    status, reason = 502, "Bad Gateway"


class ServiceUnavailable(ProxyError):
    status, reason = 503, "Service Unavailable"


class GatewayTimeout(ProxyError):
    status, reason = 504, "Gateway Timeout"


class VersionNotSupported(ProxyError):
    status, reason = 505, "HTTP Version Not Supported"

"""HTTP/1.1 channel and request classes for wsrelay's sites (placeholder; see the core issue)."""

from __future__ import annotations

from twisted.web import http, server


class RelayHTTPChannel(http.HTTPChannel):
    """twisted.web's channel with wsrelay's request-size limits."""

    def configure_limits(self, max_request_line: int, max_header_size: int) -> None:
        self.max_request_line = max_request_line
        self.totalHeadersSize = max_header_size


class RelayRequest(server.Request):
    """twisted.web's request; body-size limits are enforced here."""

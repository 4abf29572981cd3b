"""Where the WebSocket layer and older code find the HTTP engine's names: the channel is
:mod:`wsrelay.http.channel`, the request :mod:`wsrelay.http.request`."""

from __future__ import annotations

from wsrelay.http.channel import RelayChannel
from wsrelay.http.request import RelayRequest, client_ip

RelayHTTPChannel = RelayChannel

__all__ = ["RelayChannel", "RelayHTTPChannel", "RelayRequest", "client_ip"]

"""WebSocket relay and tunnel (stub: being written; see the WebSocket relay issue)."""

from __future__ import annotations

from typing import Any

from twisted.web.server import Request

from wsrelay.answers import answer_error
from wsrelay.config import Route
from wsrelay.errors import BadGateway


class WebSocketGateway:
    """Takes WebSocket upgrade requests of a route and relays them to its upstream group."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway

    def render(self, request: Request, route: Route, runtime: Any, scheme: str) -> bytes | int:
        return answer_error(request, BadGateway("not implemented yet"))

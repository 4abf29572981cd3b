"""wsrelay: a WebSocket-aware reverse proxy on Twisted and Autobahn."""

__version__ = "0.1.0"

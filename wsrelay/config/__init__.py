"""INI text to frozen, validated configuration objects.

- :mod:`wsrelay.config.model`: the objects (``Config``, ``Listener``, ``Upstream``, ``Route``...)
  and ``ConfigError``;
- :mod:`wsrelay.config.keys`: which keys each section takes, their parsers and defaults;
- :mod:`wsrelay.config.values`, :mod:`~wsrelay.config.hosts`, :mod:`~wsrelay.config.paths`: the
  parsers of single values (durations, sizes, choices...; host names, addresses, networks; paths,
  endpoints, file names);
- :mod:`wsrelay.config.loader`: ``load`` and ``parse``, the cross-checks between sections.

Invariants: nothing here touches sockets, files other than the one being parsed, or the reactor;
every problem is a ``ConfigError`` naming the file, the section and the key.  The accepted shape
is documented key by key in ``etc/relay.ini`` and README.rst.
"""

from wsrelay.config.keys import describe_keys
from wsrelay.config.loader import load, parse
from wsrelay.config.model import (
    DEFAULT_PATH,
    Admin,
    Certificate,
    Config,
    ConfigError,
    HealthCheck,
    Listener,
    Route,
    Server,
    ServerTLS,
    Upstream,
    WebSocketOptions,
)

__all__ = [
    "DEFAULT_PATH", "Admin", "Certificate", "Config", "ConfigError", "HealthCheck", "Listener", "Route",
    "Server", "ServerTLS", "Upstream", "WebSocketOptions", "describe_keys", "load", "parse",
]

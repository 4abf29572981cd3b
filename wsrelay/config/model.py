"""The configuration's objects: frozen attrs classes, and the error that names file, section and key.

Invariants: no I/O, nothing mutable; a ``Config`` is swapped whole on reload.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from wsrelay.config import hosts

DEFAULT_PATH = "etc/relay.ini"


class ConfigError(Exception):
    """A configuration problem, located as precisely as we can: file, section, key."""

    def __init__(self, path: str, section: str | None, key: str | None, message: str) -> None:
        super().__init__(path, section, key, message)
        self.path = path
        self.section = section
        self.key = key
        self.message = message

    def __str__(self) -> str:
        where = self.path
        if self.section is not None:
            where += f": [{self.section}]"
        if self.key is not None:
            where += f" {self.key}"
        return f"{where}: {self.message}"


# --------------------------------------------------------------------------------------------
# The objects


@attrs.frozen
class Server:
    """One server of an upstream group (nginx ``server`` inside ``upstream``)."""

    scheme: str  # "http" (plain; ws for WebSocket) or "https" (TLS; wss for WebSocket)
    host: str  # ASCII: a host name in A-labels, or an IP address (IPv6 compressed, no brackets)
    port: int
    weight: int = 1
    max_conns: int = 0  # 0: unlimited
    backup: bool = False
    # Computed once (they are asked for on every request): not part of equality or repr.
    _key: str = attrs.field(init=False, eq=False, repr=False, default="")
    _hostport: str = attrs.field(init=False, eq=False, repr=False, default="")

    def __attrs_post_init__(self) -> None:
        hostport = f"{hosts.host_for_url(self.host)}:{self.port}"
        object.__setattr__(self, "_hostport", hostport)
        object.__setattr__(self, "_key", f"{self.scheme}://{hostport}")

    @property
    def key(self) -> str:
        """Identity of the server across reloads (health and connection counts follow it)."""
        return self._key

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def hostport(self) -> str:
        return self._hostport


@attrs.frozen
class HealthCheck:
    """Active health checks of an upstream group."""

    path: str  # request target, e.g. "/healthz"
    websocket: bool  # True: a WebSocket handshake to path; False: HTTP GET path, 2xx/3xx is healthy
    interval: float
    timeout: float
    rise: int
    fall: int


@attrs.frozen
class Upstream:
    """An upstream group: servers, balancing, passive and active health, upstream TLS."""

    name: str
    servers: tuple[Server, ...]
    balance: str  # round_robin | least_conn | ip_hash | cookie | header
    sticky: str | None  # cookie or header name, for balance = cookie | header
    max_fails: int  # 0: passive health off
    fail_timeout: float
    fail_statuses: frozenset[int]
    health: HealthCheck | None
    keepalive: int  # idle persistent connections kept per server
    tls_verify: bool
    tls_ca: str | None  # None: the system trust store
    tls_server_name: str | None  # None: the server's host
    balance_explicit: bool = False  # False: balance was defaulted (least_conn if any WS route)
    max_response_header_size: int = 65536  # a response head (status line and fields) larger: 502


@attrs.frozen
class WebSocketOptions:
    """How a route treats WebSocket upgrades."""

    enabled: bool
    mode: str  # relay | tunnel
    ping_interval: float | None  # None: wsrelay sends no pings of its own
    ping_timeout: float
    idle_timeout: float | None  # None: no idle timeout
    max_message_size: int  # 0: unlimited
    max_frame_size: int  # 0: unlimited
    allowed_origins: tuple[str, ...]  # ("*",): any Origin; requests with none pass unless require_origin
    handshake_timeout: float
    compression: bool  # permessage-deflate toward clients
    upstream_compression: bool  # permessage-deflate toward upstreams
    require_origin: bool = False  # True: with allowed_origins set, a handshake without Origin gets 403
    max_message_rate: float | None = None  # messages per second from the client (relay mode); None: no limit
    message_burst: int = 1  # messages the client may send at once beyond the rate


@attrs.frozen
class Route:
    """A location: which requests it takes (host, path) and where and how it sends them."""

    name: str  # the section's name, for logs
    path: str
    exact: bool
    hosts: tuple[str, ...]  # lower-case; "" tuple = any host; "*.example.com" wildcards
    upstream: str
    host_header: str | None  # None: pass the client's Host; "$upstream": the server's host:port
    max_body_size: int  # 0: unlimited
    connect_timeout: float
    read_timeout: float
    send_timeout: float
    retries: int  # extra attempts on other servers when connecting fails
    retry_timeout: float  # time budget for all attempts
    redirect: int | None  # 301 / 308: answer with a redirect to https instead of proxying
    websocket: WebSocketOptions
    forwarded: bool = True  # send wsrelay's own RFC 7239 Forwarded (the client's is never passed)
    pass_headers: frozenset[bytes] = frozenset()  # lower-case names of headers.SPOOFABLE let through
    limit_conn: int = 0  # exchanges + pairs in progress per client address; 0: no limit
    limit_req_rate: float = 0.0  # requests per second per client address (token bucket); 0: no limit
    limit_req_burst: int = 1  # the bucket's size: requests that may come at once
    #: whether a request on this route is checked against a per-client limit (asked per request)
    limited: bool = attrs.field(init=False, eq=False, repr=False, default=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "limited", bool(self.limit_conn or self.limit_req_rate))


@attrs.frozen
class Certificate:
    """A certificate chain and its key, served for ``hosts`` (SNI names)."""

    name: str
    cert_file: str
    key_file: str
    password: str | None
    hosts: tuple[str, ...]  # empty: the names in the certificate itself


@attrs.frozen
class ServerTLS:
    """TLS settings of a listener."""

    certificates: tuple[str, ...]  # Certificate names, in order
    default_certificate: str | None  # None: refuse handshakes with no or an unknown SNI name
    min_version: str  # "1.2" | "1.3"
    ciphers: str  # OpenSSL cipher string for TLS <= 1.2
    hsts_max_age: int | None  # None: no Strict-Transport-Security header


@attrs.frozen
class Listener:
    """A listening endpoint and how it treats connections."""

    name: str
    endpoint: str  # Twisted server endpoint string
    tls: ServerTLS | None
    redirect: int | None  # 301 / 308: every request is redirected to https
    redirect_port: int | None  # port of the https URL; None: 443 (omitted from the URL)
    underscores_in_headers: bool = False  # False: header names with '_' are dropped (nginx's default)
    proxy_protocol: bool = False  # connections start with a PROXY protocol header (v1 or v2)
    #: ipaddress networks: peers whose X-Forwarded-For / Forwarded name the client (wsrelay.realip)
    trusted_proxies: tuple[Any, ...] = ()


@attrs.frozen
class Admin:
    """The admin listener ([admin]): health, readiness, status and metrics."""

    endpoint: str
    allow: tuple[Any, ...]  # ipaddress networks; empty: any client


@attrs.frozen
class Config:
    """A whole, validated configuration. Swapped in whole on reload, never mutated."""

    path: str
    listeners: tuple[Listener, ...]
    upstreams: Mapping[str, Upstream]
    routes: tuple[Route, ...]
    certificates: Mapping[str, Certificate]
    access_log: str | None  # "-": stdout; None: off
    workers: int
    drain_timeout: float
    max_request_line: int
    max_header_size: int
    sticky_secret: str | None = attrs.field(default=None, repr=False)  # None: sticky_secret_file or derived
    sticky_secret_file: str | None = None  # read by wsrelay.sticky.load_key at load
    client_header_timeout: float = 60.0  # the whole request head, from its first byte
    client_body_timeout: float = 60.0  # between two reads of a request body
    keepalive_timeout: float = 75.0  # an idle client connection between requests
    admin: Admin | None = None  # None: no admin listener
    log_format: str = "text"  # wsrelay's own log lines: text (twistd's) or json
    limit_req_clients: int = 100_000  # the most client buckets a route keeps (least recently seen go)
    ws_drain_spread: float = 5.0  # a stop closes WebSocket pairs evenly over this long
    reuse_port: bool = True  # SO_REUSEPORT on tcp: listeners (a new process can bind beside this one)
    max_connections: int | None = None  # client connections per process; None: auto (RLIMIT_NOFILE); 0: no cap
    access_log_format: str = "combined"  # or json
    trust_request_id: bool = False  # keep a valid X-Request-ID from the client (wsrelay.requestid)
    memory_trim_interval: float | None = 10.0  # give the C heap's free pages back (wsrelay.memory); None: off

"""Configuration parsing: the accepted shape, defaults, and an error naming file/section/key for
every kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsrelay import config
from wsrelay.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent

MINIMAL = """
[wsrelay]
listen = tcp:8080:interface=127.0.0.1
[upstream chat]
servers = 127.0.0.1:9001 127.0.0.1:9002
[route /chat/]
upstream = chat
"""


def parse(text: str) -> config.Config:
    return config.parse(text, "relay.ini")


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value


def test_sample_config_loads() -> None:
    """etc/relay.ini, the documented sample, is a valid configuration (so it cannot rot)."""
    cfg = config.load(str(ROOT / "etc" / "relay.ini"))
    assert [l.endpoint for l in cfg.listeners] == ["tcp:8080:interface=127.0.0.1"]
    assert cfg.upstreams["demo"].servers[0].hostport == "127.0.0.1:9001"
    assert cfg.routes[0].path == "/" and cfg.routes[0].upstream == "demo"


def test_sample_config_documents_every_key() -> None:
    """Every key wsrelay accepts appears in etc/relay.ini (set or in a comment)."""
    text = (ROOT / "etc" / "relay.ini").read_text()
    for kind, keys in config.describe_keys().items():
        for key in keys:
            assert f"{key} =" in text, f"[{kind}] {key} is not documented in etc/relay.ini"


def test_issue_shape_parses() -> None:
    """The shape from the issue: listen, upstream servers, route with upstream and host."""
    cfg = parse(MINIMAL + "host = example.com\n")
    chat = cfg.upstreams["chat"]
    assert [s.key for s in chat.servers] == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
    route = cfg.routes[0]
    assert (route.path, route.exact, route.hosts, route.upstream) == ("/chat/", False, ("example.com",), "chat")


def test_defaults() -> None:
    """Defaults are the documented ones, and WebSocket groups default to least_conn."""
    cfg = parse(MINIMAL)
    route = cfg.routes[0]
    assert route.read_timeout == 60.0 and route.connect_timeout == 5.0
    assert route.max_body_size == 16 * 1024 * 1024
    assert route.websocket.mode == "relay" and route.websocket.ping_interval == 30.0
    assert route.websocket.idle_timeout is None
    assert route.websocket.allowed_origins == ("*",)
    assert cfg.upstreams["chat"].balance == "least_conn"
    no_ws = parse(MINIMAL + "websocket = off\n")
    assert no_ws.upstreams["chat"].balance == "round_robin"


def test_server_options_and_schemes() -> None:
    """Servers take weight, max_conns, backup and an https:// or wss:// scheme; IPv6 in brackets."""
    cfg = parse(MINIMAL.replace(
        "servers = 127.0.0.1:9001 127.0.0.1:9002",
        "servers =\n  https://a.example:8443 weight=3 max_conns=10\n  wss://[::1]:9000 backup",
    ))
    a, b = cfg.upstreams["chat"].servers
    assert (a.scheme, a.host, a.port, a.weight, a.max_conns, a.backup) == ("https", "a.example", 8443, 3, 10, False)
    assert (b.scheme, b.host, b.backup, b.key) == ("https", "::1", True, "https://[::1]:9000")


def test_exact_and_named_routes() -> None:
    """[route =/x] is exact; [route NAME] takes path = ...; durations and sizes parse."""
    cfg = parse(MINIMAL + "[route =/healthz]\nupstream = chat\n[route other]\npath = /o/\nupstream = chat\n"
                "read_timeout = 250ms\nmax_body_size = 1G\nws_idle_timeout = 1h\n")
    exact, other = cfg.routes[1], cfg.routes[2]
    assert (exact.path, exact.exact) == ("/healthz", True)
    assert (other.path, other.read_timeout, other.max_body_size) == ("/o/", 0.25, 1024**3)
    assert other.websocket.idle_timeout == 3600.0


@pytest.mark.parametrize(
    "text, section, key, words",
    [
        (MINIMAL + "[rute /x]\n", "rute /x", None, "unknown section"),
        (MINIMAL + "read_timout = 5s\n", "route /chat/", "read_timout", "did you mean 'read_timeout'"),
        (MINIMAL.replace("upstream = chat", "upstream = chta"), "route /chat/", "upstream", "no [upstream chta]"),
        (MINIMAL + "read_timeout = soon\n", "route /chat/", "read_timeout", "not a duration"),
        (MINIMAL + "max_body_size = lots\n", "route /chat/", "max_body_size", "not a size"),
        (MINIMAL.replace("tcp:8080", "tpc:8080"), "wsrelay", "listen", "not a server endpoint"),
        (MINIMAL.replace("[upstream", "access_log_format = xml\n[upstream"), "wsrelay", "access_log_format",
         "not one of: combined, json"),
        (MINIMAL.replace("[upstream", "trust_request_id = maybe\n[upstream"), "wsrelay", "trust_request_id",
         "not on or off"),
        (MINIMAL.replace("9002", "99999"), "upstream chat", "servers", "out of range"),
        (MINIMAL.replace("9002", "9002 weight=x"), "upstream chat", "servers", "not a whole number"),
        (MINIMAL.replace("9002", "9001"), "upstream chat", "servers", "listed twice"),
        (MINIMAL + "websocket = maybe\n", "route /chat/", "websocket", "not on or off"),
        (MINIMAL + "ws_allowed_origins = https://a.example/path\n", "route /chat/", "ws_allowed_origins", "not an origin"),
        (MINIMAL + "ws_ping_timeout = 40s\n", "route /chat/", "ws_ping_timeout", "shorter than"),
        (MINIMAL + "host = *\n", "route /chat/", "host", "matches every host"),
        (MINIMAL + "ws_ping_interval = 2s\nws_ping_timeout = 500ms\n", "route /chat/", "ws_ping_timeout", "at least 1s"),
        (MINIMAL + "[route /chat/]\nupstream = chat\n", "route /chat/", None, "appears twice"),
        (MINIMAL + "[route x]\nupstream = chat\n", "route x", "path", "does not name a path"),
        (MINIMAL + "[upstream u2]\nservers = 127.0.0.1:1\nbalance = cookie\n", "upstream u2", "sticky", "needs the cookie name"),
        (MINIMAL + "[listener l]\nendpoint = tcp:9\ntls = on\n", "listener l", "certificates", "at least one"),
        (MINIMAL + "[listener l]\nendpoint = tcp:9\ntls = on\ncertificates = nope\n", "listener l", "certificates", "no [certificate nope]"),
        (MINIMAL + "[certificate c]\ncert = a.pem\n", "certificate c", "key", "is required"),
        (MINIMAL + "[wsrelay x]\n", "wsrelay x", None, "takes no name"),
        ("[wsrelay]\nlisten = tcp:1\n[upstream u]\nservers = 127.0.0.1:2\n", None, None, "no [route"),
    ],
)
def test_errors_name_section_and_key(text: str, section: str | None, key: str | None, words: str) -> None:
    """Each mistake is one ConfigError naming the file, the section and the key."""
    error = error_of(text)
    assert error.path == "relay.ini"
    assert error.section == section
    assert error.key == key
    assert words in str(error), str(error)
    assert str(error).startswith("relay.ini")


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    """A missing or undecodable file is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="no such file"):
        config.load(str(tmp_path / "absent.ini"))
    binary = tmp_path / "binary.ini"
    binary.write_bytes(b"\xff\xfe[wsrelay]\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.load(str(binary))


def test_relative_file_paths_resolve_against_the_config(tmp_path: Path) -> None:
    """cert/key/tls_ca/access_log paths are relative to the config file, not the cwd."""
    path = tmp_path / "relay.ini"
    path.write_text(MINIMAL + "[certificate c]\ncert = certs/a.pem\nkey = certs/a.key\n")
    cfg = config.load(str(path))
    assert cfg.certificates["c"].cert_file == str(tmp_path / "certs" / "a.pem")


def test_config_is_frozen() -> None:
    """Configuration objects cannot be mutated (reload swaps them whole)."""
    cfg = parse(MINIMAL)
    with pytest.raises(Exception):
        cfg.routes[0].upstream = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.upstreams["x"] = cfg.upstreams["chat"]  # type: ignore[index]



def check_error(path: Path, text: str) -> ConfigError:
    from wsrelay.service import check

    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        check(config.load(str(path)))
    return info.value


def test_files_and_cipher_lists_are_checked(tmp_path: Path) -> None:
    """What parsing cannot see is checked before serving (start-up, --check, reload): the access
    log's directory, tls_ca files, and that tls_ciphers selects a cipher; each is one ConfigError
    naming the file, the section and the key, and checking creates no file."""
    from tests.certs import CA
    from wsrelay.service import check

    ca = CA(tmp_path)
    cert, key = ca.leaf("a", "a.test")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    tls = f"[listener l]\nendpoint = tcp:9\ntls = on\ncertificates = a\n[certificate a]\ncert = {cert}\nkey = {key}\n"
    path = tmp_path / "relay.ini"
    cases = [
        (MINIMAL.replace("[upstream", f"access_log = {tmp_path}/none/access.log\n[upstream"), "wsrelay", "access_log",
         f"{tmp_path}/none/access.log: cannot be opened (No such file or directory)"),
        (MINIMAL.replace("[upstream", f"access_log = {tmp_path}\n[upstream"), "wsrelay", "access_log",
         f"{tmp_path}: cannot be opened (Is a directory)"),
        (MINIMAL + tls.replace("tls = on", "tls = on\ntls_ciphers = FOO"), "listener l", "tls_ciphers",
         "'FOO' selects no cipher OpenSSL knows"),
        (MINIMAL.replace("[route", f"tls_ca = {tmp_path}/none.pem\n[route"), "upstream chat", "tls_ca",
         f"{tmp_path}/none.pem: cannot be read (No such file or directory)"),
        (MINIMAL.replace("[route", f"tls_ca = {junk}\n[route"), "upstream chat", "tls_ca",
         f"{junk}: no PEM certificate in it"),
    ]
    for text, section, key, words in cases:
        error = check_error(path, text)
        assert (error.path, error.section, error.key) == (str(path), section, key), str(error)
        assert words in str(error), str(error)
    assert not (tmp_path / "none").exists()
    path.write_text(MINIMAL.replace("[upstream", f"access_log = {tmp_path}/access.log\n[upstream")
                    + tls.replace("tls = on", "tls = on\ntls_ciphers = ECDHE+AESGCM")
                    + f"[upstream secure]\nservers = https://127.0.0.1:1\ntls_ca = {ca.pem}\n")
    check(config.load(str(path)))  # a good one passes, and creates nothing
    assert not (tmp_path / "access.log").exists()


# --------------------------------------------------------------------------------------------
# Values that reach the wire are checked (or converted) at load, never at request time.


@pytest.mark.parametrize("line, key, words", [
    ("servers = https://my_backend:8443", "servers", "'_' is not allowed in a host name"),
    ("servers = my_backend:80", "servers", "'_' is not allowed in a host name"),
    ("servers = -bad.example:80", "servers", "not a valid host name"),
    ("servers = ab--cd.example:80", "servers", "not a valid host name"),
    ("servers = xn--zz.example:80", "servers", "not a valid host name"),
    ("servers = 999.1.1.1:80", "servers", "neither an IPv4 address nor a host name"),
    ("servers = [1:2]:80", "servers", "not an IPv6 address"),
    ("servers = [127.0.0.1]:80", "servers", "not an IPv6 address"),
    ("servers = https://a.example:443\ntls_server_name = my_backend", "tls_server_name", "'_' is not allowed"),
    ("servers = https://a.example:443\ntls_server_name = *.example.com", "tls_server_name", "no wildcard"),
    ("servers = https://a.example:443\ntls_server_name = a.example:443", "tls_server_name", "no wildcard, port"),
    ("servers = 127.0.0.1:1\nhealth_check = /health#x", "health_check", "is not a path"),
    ("servers = 127.0.0.1:1\nhealth_check = /health\x7f", "health_check", "is not a path"),
    ("servers = 127.0.0.1:1\nbalance = cookie\nsticky = s\u00e9", "sticky", "not a valid cookie or header name"),
])
def test_upstream_wire_values_are_refused_at_load(line: str, key: str, words: str) -> None:
    """Host names Twisted could not resolve or TLS could not verify, bad tls_server_name values,
    health-check targets that cannot go in a request line, and non-token sticky names: one
    ConfigError naming [upstream NAME] and the key, at load (so --check and reload refuse them)."""
    error = error_of(MINIMAL + f"[upstream x]\n{line}\n")
    assert (error.section, error.key) == ("upstream x", key), str(error)
    assert words in str(error), str(error)


@pytest.mark.parametrize("line, key, words", [
    ("host_header = a:b:c", "host_header", "not 'pass', 'upstream' or a host[:port]"),
    ("host_header = a.example:99999", "host_header", "not 'pass', 'upstream' or a host[:port]"),
    ("host_header = [zz]:80", "host_header", "not an IPv6 address"),
    ("host_header = caf\u00e9 example", "host_header", "not 'pass', 'upstream' or a host[:port]"),
    ("host = -x.example", "host", "not a host name"),
    ("host = a\x01.example", "host", "not a host name"),
    ("ws_allowed_origins = https://a_b..example", "ws_allowed_origins", "not a valid host name"),
    ("path = /a/../b/", "path", "would never match"),
    ("path = /a//b/", "path", "would never match"),
    ("path = /a/%00/", "path", "encoded control character"),
])
def test_route_wire_values_are_refused_at_load(line: str, key: str, words: str) -> None:
    """A Host value, host pattern, origin or path that could never be sent or matched is one
    ConfigError naming [route ...] and the key."""
    error = error_of(MINIMAL + f"[route named]\nupstream = chat\n{line}\n" + ("path = /n/\n" if "path" not in line else ""))
    assert (error.section, error.key) == ("route named", key), str(error)
    assert words in str(error), str(error)


def test_wire_values_are_converted_once_to_ascii() -> None:
    """International names become IDNA A-labels, IPv6 literals their compressed form, a
    non-ASCII health-check path is percent-encoded as UTF-8; so every name is ASCII bytes and a
    valid TLS server name (what httpproxy, healthcheck and wsrelay.tls do with them cannot fail)."""
    from twisted.internet import ssl

    cfg = parse(MINIMAL + """
[upstream intl]
servers = B\u00fccher.Example:80 https://[0:0::1]:8443 https://stra\u00dfe.example.:443 10.0.0.1:80
health_check = /sant\u00e9?x=\u00e9
tls_server_name = B\u00fccher.example
[route /intl/]
upstream = intl
host = b\u00fccher.example *.B\u00fccher.example my_app.example
host_header = b\u00fccher.example:8080
ws_allowed_origins = https://B\u00fccher.example:8443
""")
    up = cfg.upstreams["intl"]
    assert [s.host for s in up.servers] == ["xn--bcher-kva.example", "::1", "xn--strae-oqa.example", "10.0.0.1"]
    assert [s.key for s in up.servers][:2] == ["http://xn--bcher-kva.example:80", "https://[::1]:8443"]
    assert up.health is not None and up.health.path == "/sant%C3%A9?x=%C3%A9"
    assert up.tls_server_name == "xn--bcher-kva.example"
    route = cfg.routes[-1]
    assert route.hosts == ("xn--bcher-kva.example", "*.xn--bcher-kva.example", "my_app.example")
    assert route.host_header == "xn--bcher-kva.example:8080"
    assert route.websocket.allowed_origins == ("https://xn--bcher-kva.example:8443",)
    for server in up.servers:
        server.host.encode("ascii"), server.hostport.encode("ascii"), up.health.path.encode("ascii")
        if not V_is_ip(server.host):
            ssl.optionsForClientTLS(server.host)  # raises for a name IDNA refuses
    ssl.optionsForClientTLS(up.tls_server_name)


def V_is_ip(text: str) -> bool:
    from wsrelay.config.hosts import is_ip

    return is_ip(text)


def test_route_paths_match_the_normalised_request_path() -> None:
    """A route path with non-ASCII or percent-encoded characters matches the requests it names
    (requests are matched percent-decoded, byte by byte), whichever way the client escapes them
    (raw non-ASCII bytes in a target are a 400: test_security.py)."""
    from wsrelay.routing import Router, normalize_path

    cfg = parse(MINIMAL + "[route /caf\u00e9/]\nupstream = chat\n[route /a%20b/]\nupstream = chat\n")
    router = Router(cfg.routes)
    for target in (b"/caf%C3%A9/x", b"/caf%c3%a9/"):
        route = router.match(None, normalize_path(target))
        assert route is not None and route.name == "/caf\u00e9/", target
    route = router.match(None, normalize_path(b"/a%20b/c"))
    assert route is not None and route.name == "/a%20b/"


def test_underscores_in_headers_global_and_per_listener() -> None:
    """underscores_in_headers: off by default; [wsrelay] sets it for every listener, a
    [listener NAME] may override it."""
    listeners = "[listener a]\nendpoint = tcp:1\n[listener b]\nendpoint = tcp:2\nunderscores_in_headers = on\n"
    cfg = parse(MINIMAL + listeners)
    assert [l.underscores_in_headers for l in cfg.listeners] == [False, False, True]
    text = MINIMAL.replace("[wsrelay]\n", "[wsrelay]\nunderscores_in_headers = on\n") + listeners.replace(
        "underscores_in_headers = on", "underscores_in_headers = off")
    cfg = parse(text)
    assert [l.underscores_in_headers for l in cfg.listeners] == [True, True, False]


def test_ws_require_origin() -> None:
    """ws_require_origin: off by default, on when set."""
    assert parse(MINIMAL).routes[0].websocket.require_origin is False
    assert parse(MINIMAL + "ws_require_origin = on\n").routes[0].websocket.require_origin is True

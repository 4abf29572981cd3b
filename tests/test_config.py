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

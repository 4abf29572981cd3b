"""TLS: certificate loading errors, and HTTPS/wss through the real ``twistd -n wsrelay`` with SNI,
safe protocol defaults, reload, https redirect and verified TLS upstreams."""

from __future__ import annotations

import asyncio
import http.server
import signal
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import websockets

from tests.certs import CA
from tests.support import RelayProcess, UpstreamProcess, write_config
from wsrelay import config as configmod
from wsrelay.config import ConfigError
from wsrelay.tls.server import load_certificates


@pytest.fixture
def ca(tmp_path: Path) -> CA:
    return CA(tmp_path)


def certificate_config(cert: Path, key: Path, password: str = "") -> configmod.Config:
    return configmod.parse(f"""
[wsrelay]
listen = tcp:0
[certificate site]
cert = {cert}
key = {key}
password = {password}
[route /]
redirect = 301
""", "relay.ini")


def load_error(cfg: configmod.Config) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_certificates(cfg.certificates, cfg.path)
    return info.value


def test_bad_certificate_files_are_named(ca: CA, tmp_path: Path) -> None:
    """Missing, non-PEM, mismatched, expired and wrongly protected files: one error naming the file."""
    cert, key = ca.leaf("a", "a.test")
    other_cert, other_key = ca.leaf("b", "b.test")
    old_cert, old_key = ca.leaf("old", "old.test", expired=True)
    secret_cert, secret_key = ca.leaf("secret", "s.test", password=b"pw")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    cases = [
        (certificate_config(tmp_path / "none.pem", key), "cert", "none.pem: cannot be read"),
        (certificate_config(junk, key), "cert", "junk.pem: no PEM certificate"),
        (certificate_config(cert, other_key), "key", f"{other_key} does not match the certificate in {cert}"),
        (certificate_config(old_cert, old_key), "cert", "old.pem: the certificate expired"),
        (certificate_config(secret_cert, secret_key), "password", "secret.key: the key is encrypted"),
        (certificate_config(secret_cert, secret_key, "wrong"), "password", "secret.key: wrong password"),
    ]
    for cfg, key_name, words in cases:
        error = load_error(cfg)
        assert (error.section, error.key) == ("certificate site", key_name)
        assert words in str(error), str(error)
    assert load_certificates(certificate_config(secret_cert, secret_key, "pw").certificates, "relay.ini")


def tls_relay_config(ca: CA, upstream_port: int, extra_listener: str = "", hsts: str = "1h") -> str:
    a_cert, a_key = ca.leaf("a", "a.test")
    w_cert, w_key = ca.leaf("wild", "*.b.test")
    return f"""
[wsrelay]
listen = tcp:0:interface=127.0.0.1
[listener public]
endpoint = tcp:0:interface=127.0.0.1
tls = on
certificates = a wild
default_certificate = a
hsts_max_age = {hsts}
{extra_listener}
[listener redirect]
endpoint = tcp:0:interface=127.0.0.1
redirect = 301
redirect_port = 8443
[certificate a]
cert = {a_cert}
key = {a_key}
[certificate wild]
cert = {w_cert}
key = {w_key}
[upstream app]
servers = 127.0.0.1:{upstream_port}
[route /]
upstream = app
"""


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[UpstreamProcess]:
    up = UpstreamProcess(tmp_path)
    try:
        yield up
    finally:
        up.stop()


@pytest.fixture
def tls_relay(ca: CA, demo: UpstreamProcess, start_relay: Callable[..., RelayProcess]) -> RelayProcess:
    relay = start_relay(tls_relay_config(ca, demo.port), wait=False)
    relay.wait_listening(count=3)
    return relay


def tls_port(relay: RelayProcess) -> int:
    url = next(u for u in relay.urls if u.startswith("https://"))
    return int(url.rstrip("/").rsplit(":", 1)[1])


def client_context(ca: CA, **kw: object) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.pem))
    for name, value in kw.items():
        setattr(ctx, name, value)
    return ctx


def handshake(port: int, ctx: ssl.SSLContext, server_name: str | None) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if server_name is None:
        ctx.check_hostname = False
    return ctx.wrap_socket(sock, server_hostname=server_name)


def peer_names(s: ssl.SSLSocket) -> list[str]:
    return [v for k, v in s.getpeercert().get("subjectAltName", ())]


def test_sni_chooses_the_certificate_and_default(ca: CA, tls_relay: RelayProcess) -> None:
    """Each SNI name gets its certificate (exact, then wildcard); no SNI gets the default."""
    port = tls_port(tls_relay)
    with handshake(port, client_context(ca), "a.test") as s:
        assert peer_names(s) == ["a.test"]
    with handshake(port, client_context(ca), "x.b.test") as s:
        assert peer_names(s) == ["*.b.test"]
    ctx = client_context(ca)
    ctx.check_hostname = False
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10)) as s:
        assert s.version() in ("TLSv1.2", "TLSv1.3")
        der = s.getpeercert(binary_form=True)
        assert b"a.test" in der


def test_protocol_versions_and_alpn(ca: CA, tls_relay: RelayProcess) -> None:
    """TLS 1.2 and 1.3 are served, 1.1 is refused; ALPN picks http/1.1 even when h2 is offered."""
    port = tls_port(tls_relay)
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = client_context(ca, minimum_version=version, maximum_version=version)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        with handshake(port, ctx, "a.test") as s:
            assert s.selected_alpn_protocol() == "http/1.1"
    old = client_context(ca)
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        old.set_ciphers("ALL:@SECLEVEL=0")
    except ssl.SSLError:
        pass
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        handshake(port, old, "a.test").close()


def test_https_and_wss_through_the_relay(ca: CA, tls_relay: RelayProcess) -> None:
    """HTTPS requests and a wss WebSocket are served on the TLS listener; the upstream sees
    X-Forwarded-Proto: https; HSTS is sent."""
    port = tls_port(tls_relay)
    with handshake(port, client_context(ca), "a.test") as s:
        s.sendall(b"GET /api/info HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Strict-Transport-Security: max-age=3600" in head
    assert b'["X-Forwarded-Proto", "https"]' in body

    async def wss() -> str:
        ctx = client_context(ca)
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        async with websockets.connect(f"wss://a.test:{port}/ws/echo", ssl=ctx, sock=sock,
                                      server_hostname="a.test") as ws:
            await ws.send("over tls")
            return await ws.recv()  # type: ignore[return-value]

    assert asyncio.run(asyncio.wait_for(wss(), 20)) == "over tls"


def test_plain_http_to_tls_port_is_refused_and_listener_keeps_serving(ca: CA, tls_relay: RelayProcess) -> None:
    """Plain HTTP sent to the TLS port is refused cleanly; the listener serves the next client."""
    port = tls_port(tls_relay)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        try:
            answer = s.recv(1024)
        except ConnectionResetError:
            answer = b""
        assert not answer.startswith(b"HTTP/1.1 200")
    with handshake(port, client_context(ca), "a.test") as s:
        assert peer_names(s) == ["a.test"]


def test_redirect_listener_sends_https_url(tls_relay: RelayProcess) -> None:
    """A redirect listener answers every request with 301 to the https form of host and path."""
    url = [u for u in tls_relay.urls if u.startswith("http://")][-1]
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /chat/?room=1 HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n")
        data = s.recv(65536)
    assert data.startswith(b"HTTP/1.1 301")
    assert b"Location: https://example.test:8443/chat/?room=1" in data


def test_sighup_swaps_certificates_and_refuses_bad_ones(ca: CA, demo: UpstreamProcess, tmp_path: Path,
                                                        start_relay: Callable[..., RelayProcess]) -> None:
    """A reload puts a new certificate in service for new handshakes while an open connection keeps
    working; a bad new certificate is not taken: its running version stays in service, with a
    log line naming it, and the rest of the reload applies."""
    text = tls_relay_config(ca, demo.port)
    relay = start_relay(text, wait=False)
    relay.wait_listening(count=3)
    port = tls_port(relay)
    opened = handshake(port, client_context(ca), "a.test")
    first = opened.getpeercert(binary_form=True)
    ca.leaf("a", "a.test", days=20)  # a new certificate in the same files
    relay.signal(signal.SIGHUP)
    relay.output.wait_for("configuration reloaded")
    with handshake(port, client_context(ca), "a.test") as s:
        assert s.getpeercert(binary_form=True) != first
    opened.sendall(b"GET /api/info HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
    assert opened.recv(12) == b"HTTP/1.1 200"
    opened.close()
    served = None
    with handshake(port, client_context(ca), "a.test") as s:
        served = s.getpeercert(binary_form=True)
    _, other_key = ca.leaf("stranger", "s.test")
    (tmp_path / "a.key").write_bytes(other_key.read_bytes())  # the key no longer matches
    mark = len(relay.output.lines)
    relay.signal(signal.SIGHUP)
    line = relay.output.wait_for("certificate not reloaded, its running version stays in service", start=mark)
    assert "[certificate a] key:" in line.string and "does not match the certificate" in line.string
    relay.output.wait_for("configuration reloaded", start=mark)
    with handshake(port, client_context(ca), "a.test") as s:
        assert s.getpeercert(binary_form=True) == served


class _TLSUpstream:
    """An HTTPS upstream (Python's http.server behind ssl) in a thread."""

    def __init__(self, cert: Path, key: Path) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "6")
                self.end_headers()
                self.wfile.write(b"secure")

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.server_names: list[str | None] = []
        ctx.sni_callback = lambda sock, name, context: self.server_names.append(name)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("settings, status, log", [
    ("tls_ca = {ca}\ntls_server_name = backend.test", 200, None),
    ("tls_server_name = backend.test", 502, "certificate verify failed"),
    ("tls_ca = {ca}\ntls_server_name = wrong.test", 502, "does not match its name"),
    ("tls_verify = off", 200, None),
    ("tls_verify = off\ntls_server_name = backend.test", 200, None),
])
def test_tls_upstreams_are_verified(settings: str, status: int, log: str | None, ca: CA,
                                    start_relay: Callable[..., RelayProcess]) -> None:
    """https upstreams: verified against tls_ca and by name by default (502 with a reason if not);
    tls_verify = off skips the check."""
    cert, key = ca.leaf("backend", "backend.test")
    upstream = _TLSUpstream(cert, key)
    try:
        relay = start_relay(f"""
[wsrelay]
listen = tcp:0:interface=127.0.0.1
[upstream secure]
servers = https://127.0.0.1:{upstream.port}
{settings.format(ca=ca.pem)}
[route /]
upstream = secure
retries = 0
""")
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 %d" % status), data[:100]
        if status == 200:
            assert data.endswith(b"secure")
            # SNI: the server name, never an address (RFC 6066), verified or not
            assert upstream.server_names == ["backend.test" if "backend.test" in settings else None]
        if log:
            relay.output.wait_for(log)
    finally:
        upstream.stop()


def test_bad_certificate_stops_startup(ca: CA, tmp_path: Path) -> None:
    """A TLS listener with an expired certificate: start-up ends with status 1 and a line naming the file."""
    import subprocess

    from tests.support import TWISTD

    cert, key = ca.leaf("old", "a.test", expired=True)
    path = write_config(tmp_path, f"""
[wsrelay]
listen = tcp:0:interface=127.0.0.1
[listener tls]
endpoint = tcp:0:interface=127.0.0.1
tls = on
certificates = old
[certificate old]
cert = {cert}
key = {key}
[route /]
redirect = 301
""")
    result = subprocess.run([TWISTD, "-n", "--pidfile=", "wsrelay", "--config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert f"[certificate old] cert: {cert}: the certificate expired" in result.stderr


def test_openssl_s_client_sees_a_verified_tls13_session(ca: CA, tls_relay: RelayProcess) -> None:
    """openssl s_client, an independent TLS client, completes a verified handshake with SNI."""
    import subprocess

    port = tls_port(tls_relay)
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "x.b.test",
         "-CAfile", str(ca.pem), "-verify_return_error", "-alpn", "h2,http/1.1"],
        input="", capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr[-500:]
    assert "Verify return code: 0 (ok)" in result.stdout
    assert "ALPN protocol: http/1.1" in result.stdout
    assert "TLSv1.3" in result.stdout


def test_redirect_routes_redirect_plain_http_only(ca: CA, demo: UpstreamProcess,
                                                 start_relay: Callable[..., RelayProcess]) -> None:
    """A route with ``redirect`` sends plain HTTP to https; over TLS it never redirects (that would
    loop): it serves its upstream if it has one, else 404."""
    relay = start_relay(tls_relay_config(ca, demo.port) + """
[route =/api/info]
upstream = app
redirect = 308
[route /login/]
redirect = 301
""", wait=False)
    relay.wait_listening(count=3)
    plain = int(relay.urls[0].rstrip("/").rsplit(":", 1)[1])
    for path, status in ((b"/api/info", b"308"), (b"/login/x", b"301")):
        with socket.create_connection(("127.0.0.1", plain), timeout=10) as s:
            s.sendall(b"GET %s HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n" % path)
            data = s.recv(65536)
        assert data.startswith(b"HTTP/1.1 " + status) and b"Location: https://a.test" + path in data
    assert https_get(tls_port(relay), ca).startswith(b"HTTP/1.1 200 ")
    assert https_get(tls_port(relay), ca, "/login/x").startswith(b"HTTP/1.1 404 ")


def test_listener_hsts_replaces_the_upstreams(ca: CA, start_relay: Callable[..., RelayProcess]) -> None:
    """An upstream that sends its own Strict-Transport-Security behind a listener with
    hsts_max_age: the client gets one such line, the listener's."""
    from tests.scripted_upstream import ScriptedUpstream

    upstream = ScriptedUpstream()
    try:
        relay = start_relay(tls_relay_config(ca, upstream.port), wait=False)
        relay.wait_listening(count=3)
        head = https_get(tls_port(relay), ca, "/hsts")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert [line for line in head.split(b"\r\n") if line.lower().startswith(b"strict-transport-security:")] \
            == [b"Strict-Transport-Security: max-age=3600"]
    finally:
        upstream.stop()


def https_get(port: int, ca: CA, path: str = "/api/info") -> bytes:
    """The response head of a GET over TLS (SNI a.test)."""
    with handshake(port, client_context(ca), "a.test") as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n" % path.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.partition(b"\r\n\r\n")[0]


def test_unknown_server_name_gets_the_default_certificate(ca: CA, tls_relay: RelayProcess) -> None:
    """An SNI name no certificate serves gets default_certificate when refusing is not configured."""
    ctx = client_context(ca)
    ctx.check_hostname = False
    with handshake(tls_port(tls_relay), ctx, "unknown.test") as s:
        assert peer_names(s) == ["a.test"]


def test_refused_server_name_fails_the_handshake_without_traceback(ca: CA, demo: UpstreamProcess,
                                                                   start_relay: Callable[..., RelayProcess]) -> None:
    """default_certificate = refuse: an unknown or missing SNI name fails the handshake with one
    info line and no traceback; the listener then still serves a known name."""
    relay = start_relay(tls_relay_config(ca, demo.port, "default_certificate = refuse").replace(
        "default_certificate = a\n", ""), wait=False)
    relay.wait_listening(count=3)
    port = tls_port(relay)
    ctx = client_context(ca)
    ctx.check_hostname = False
    for name in ("unknown.test", None):
        with pytest.raises(ssl.SSLError):
            handshake(port, ctx, name).close()
    relay.output.wait_for(r"TLS handshake refused on listener public: no certificate for server name 'unknown\.test'$")
    relay.output.wait_for(r"TLS handshake refused on listener public: no certificate for server name 'none'$")
    with handshake(port, client_context(ca), "a.test") as s:
        assert peer_names(s) == ["a.test"]
    assert https_get(port, ca).startswith(b"HTTP/1.1 200")
    assert not [l for l in relay.output.lines if "Traceback" in l or "unrecognized server name" in l]


@pytest.mark.parametrize("extra, where", [
    ("tls_ciphers = FOO", ("[listener public] tls_ciphers: 'FOO' selects no cipher OpenSSL knows"
                           " (see 'openssl ciphers -v STRING')")),
    ("[upstream other]\nservers = https://127.0.0.1:1\ntls_ca = {junk}",
     "[upstream other] tls_ca: {junk}: no PEM certificate in it"),
    ("[upstream other]\nservers = https://127.0.0.1:1\ntls_ca = {missing}",
     "[upstream other] tls_ca: {missing}: cannot be read (No such file or directory)"),
])
def test_bad_ciphers_and_ca_files_stop_check_and_are_refused_on_reload(
        extra: str, where: str, ca: CA, demo: UpstreamProcess, tmp_path: Path,
        start_relay: Callable[..., RelayProcess]) -> None:
    """A tls_ciphers that selects no cipher, or a tls_ca that is missing or not PEM: --check ends
    with status 1 and one line naming the key; a reload with it is refused before anything changes
    (no listener added, listener settings kept), while a good reload still applies hsts_max_age."""
    import subprocess

    from tests.support import TWISTD

    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    extra, where = (t.format(junk=junk, missing=tmp_path / "none.pem") for t in (extra, where))
    relay = start_relay(tls_relay_config(ca, demo.port), wait=False)
    relay.wait_listening(count=3)
    port = tls_port(relay)
    assert b"Strict-Transport-Security: max-age=3600" in https_get(port, ca)  # serving: SIGHUP is handled
    mark = len(relay.output.lines)
    write_config(tmp_path, tls_relay_config(ca, demo.port, hsts="2h"))
    relay.signal(signal.SIGHUP)
    relay.output.wait_for("configuration reloaded", start=mark)
    assert b"Strict-Transport-Security: max-age=7200" in https_get(port, ca)

    bad = tls_relay_config(ca, demo.port, extra if "tls_ciphers" in extra else "", hsts="3h")
    bad += (extra + "\n" if "tls_ciphers" not in extra else "") + "[listener added]\nendpoint = tcp:0:interface=127.0.0.1\n"
    path = write_config(tmp_path, bad, "bad.ini")
    result = subprocess.run([TWISTD, "wsrelay", "--config", str(path), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr == f"wsrelay: {path}: {where}\n"

    mark = len(relay.output.lines)
    write_config(tmp_path, bad)
    relay.signal(signal.SIGHUP)
    line = relay.output.wait_for("reload refused", start=mark)
    assert line.string.endswith(f"{tmp_path / 'relay.ini'}: {where}")
    assert not [l for l in relay.output.lines[mark:] if "listening on" in l or "Traceback" in l]
    head = https_get(port, ca)
    assert head.startswith(b"HTTP/1.1 200") and b"Strict-Transport-Security: max-age=7200" in head
    assert relay.popen.poll() is None


def test_tls_upstream_ca_is_read_once_at_load(ca: CA, tmp_path: Path,
                                              start_relay: Callable[..., RelayProcess]) -> None:
    """tls_ca is read when the configuration loads, not per connection: removing the file later
    changes nothing for requests (no 500, no traceback), and one creator serves every connection."""
    cert, key = ca.leaf("backend", "backend.test")
    ca_copy = tmp_path / "upstream-ca.pem"
    ca_copy.write_bytes(ca.pem.read_bytes())
    upstream = _TLSUpstream(cert, key)
    try:
        relay = start_relay(f"""
[wsrelay]
listen = tcp:0:interface=127.0.0.1
[upstream secure]
servers = https://127.0.0.1:{upstream.port}
tls_ca = {ca_copy}
tls_server_name = backend.test
keepalive = 0
[route /]
upstream = secure
retries = 0
""")
        cfg = configmod.load(str(tmp_path / "relay.ini"))
        ca_copy.unlink()
        for _ in range(2):  # two connections (keepalive = 0), after the file is gone
            with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"secure"), data[:100]
        assert not [l for l in relay.output.lines if "Traceback" in l]
    finally:
        upstream.stop()
    from wsrelay.tls.upstream import UpstreamTLS

    group, server = cfg.upstreams["secure"], cfg.upstreams["secure"].servers[0]
    # Without a configuration load, a CA file that cannot be read fails verification, not the call.
    creators = UpstreamTLS({})
    assert creators.creator(group, server) is creators.creator(group, server)


def test_sticky_cookie_is_secure_over_tls_only(ca: CA, demo: UpstreamProcess,
                                               start_relay: Callable[..., RelayProcess]) -> None:
    """balance = cookie: the Set-Cookie of an HTTP response, and of a WebSocket 101 in relay and
    tunnel mode, carries Secure over TLS and not over plain HTTP; always HttpOnly and SameSite=Lax."""
    text = tls_relay_config(ca, demo.port).replace(
        f"servers = 127.0.0.1:{demo.port}\n", f"servers = 127.0.0.1:{demo.port}\nbalance = cookie\nsticky = srv\n")
    text += "[route tunnel]\npath = /\nhost = tunnel.test\nupstream = app\nws_mode = tunnel\n"
    relay = start_relay(text, wait=False)
    relay.wait_listening(count=3)
    port, plain = tls_port(relay), int(relay.urls[0].rstrip("/").rsplit(":", 1)[1])

    def cookie_of(head: bytes) -> str:
        lines = [l for l in head.decode("latin-1").split("\r\n") if l.lower().startswith("set-cookie: srv=")]
        assert len(lines) == 1, head
        return lines[0]

    secure = cookie_of(https_get(port, ca))
    assert secure.endswith("; Path=/; HttpOnly; SameSite=Lax; Secure")
    with socket.create_connection(("127.0.0.1", plain), timeout=10) as s:
        s.sendall(b"GET /api/info HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        head = s.recv(65536).partition(b"\r\n\r\n")[0]
    assert cookie_of(head).endswith("; Path=/; HttpOnly; SameSite=Lax")

    async def ws_cookie(tls: bool, host: str) -> str:
        sock = socket.create_connection(("127.0.0.1", port if tls else plain), timeout=10)
        kw: dict[str, object] = {"ssl": client_context(ca), "server_hostname": "a.test"} if tls else {}
        async with websockets.connect(f"{'wss' if tls else 'ws'}://{host}/ws/echo", sock=sock, **kw) as ws:
            return "Set-Cookie: " + ws.response.headers["Set-Cookie"]  # type: ignore[union-attr]

    for host in ("a.test", "tunnel.test"):
        assert asyncio.run(asyncio.wait_for(ws_cookie(True, host), 20)).endswith("; HttpOnly; SameSite=Lax; Secure")
        assert asyncio.run(asyncio.wait_for(ws_cookie(False, host), 20)).endswith("; HttpOnly; SameSite=Lax")


def test_one_bad_certificate_is_left_out_and_named(ca: CA, tmp_path: Path) -> None:
    """Among several certificates, an expired, not yet valid or unreadable one is left out with
    its own problem naming its section; the others are served (a bad default gives way to the
    first usable one); a listener with no usable certificate is an error naming the certificate."""
    import datetime

    from wsrelay.tls.server import SNIContexts, load_each, server_contexts

    good_cert, good_key = ca.leaf("good", "good.test")
    old_cert, old_key = ca.leaf("old", "old.test", expired=True)
    text = f"""
[wsrelay]
listen = tcp:0
[listener l]
endpoint = tcp:0
tls = on
certificates = old gone good
default_certificate = old
[certificate old]
cert = {old_cert}
key = {old_key}
[certificate gone]
cert = {tmp_path / "gone.pem"}
key = {good_key}
[certificate good]
cert = {good_cert}
key = {good_key}
[route /]
redirect = 301
"""
    cfg = configmod.parse(text, "relay.ini")
    load = load_each(cfg.certificates, cfg.path)
    assert set(load.loaded) == {"good"} and set(load.problems) == {"old", "gone"}
    assert str(load.problems["old"]).startswith("relay.ini: [certificate old] cert: ") and "expired" in str(load.problems["old"])
    assert "gone.pem: cannot be read" in str(load.problems["gone"])
    contexts: SNIContexts = server_contexts(cfg, load.loaded, load.problems)["l"]
    assert contexts.context_for(b"good.test") is not None
    assert contexts.context_for(b"old.test") is contexts.context_for(b"good.test")  # the default now
    later = load_each(cfg.certificates, cfg.path, now=datetime.datetime.now(datetime.timezone.utc)
                      - datetime.timedelta(days=5))
    assert "not valid before" in str(later.problems["good"])
    only_bad = configmod.parse(text.replace("certificates = old gone good", "certificates = old gone"), "relay.ini")
    with pytest.raises(ConfigError) as info:
        server_contexts(only_bad, load.loaded, load.problems)
    assert (info.value.section, info.value.key) == ("certificate old", "cert")
    assert str(info.value).endswith("; [listener l] has no usable certificate")


def test_open_private_keys_get_a_warning(ca: CA, tmp_path: Path) -> None:
    """A private key file its group or others can access gets one warning naming it and its mode."""
    from wsrelay.tls.server import load_each

    cert, key = ca.leaf("a", "a.test")
    cfg = certificate_config(cert, key)
    key.chmod(0o640)
    assert load_each(cfg.certificates, cfg.path).warnings == (
        f"relay.ini: [certificate site] key: private key {key} is accessible to its group or others"
        " (mode 0640): chmod 600 it",)
    key.chmod(0o600)
    assert load_each(cfg.certificates, cfg.path).warnings == ()


def test_bad_certificate_fails_check_but_not_the_others_at_startup(ca: CA, tmp_path: Path,
                                                                  start_relay: Callable[..., RelayProcess]) -> None:
    """--check fails on any bad certificate (exit 1, one line naming it); a start with the same
    file serves the good certificates and logs one line naming the bad one, and one warning for a
    key others can read."""
    import subprocess

    from tests.support import TWISTD

    a_cert, a_key = ca.leaf("a", "a.test")
    old_cert, old_key = ca.leaf("old", "old.test", expired=True)
    a_key.chmod(0o644)
    text = f"""
[wsrelay]
listen = tcp:0:interface=127.0.0.1
[listener public]
endpoint = tcp:0:interface=127.0.0.1
tls = on
certificates = a old
[certificate a]
cert = {a_cert}
key = {a_key}
[certificate old]
cert = {old_cert}
key = {old_key}
[route /]
redirect = 301
"""
    path = write_config(tmp_path, text, "check.ini")
    result = subprocess.run([TWISTD, "wsrelay", "--config", str(path), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout
    assert result.stderr.startswith(f"wsrelay: {path}: [certificate old] cert: {old_cert}: the certificate expired on ")
    assert result.stderr.count("\n") == 1
    relay = start_relay(text, wait=False)
    relay.wait_listening(count=2)
    line = relay.output.wait_for(r"certificate not in service \(the listener's other certificates serve\)")
    assert f"[certificate old] cert: {old_cert}: the certificate expired" in line.string
    line = relay.output.wait_for("private key")
    assert f"[certificate a] key: private key {a_key} is accessible to its group or others (mode 0644)" in line.string
    with handshake(tls_port(relay), client_context(ca), "a.test") as s:
        assert peer_names(s) == ["a.test"]

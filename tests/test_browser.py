"""A real browser through wsrelay over TLS: Debian's headless Chromium, trusting a test CA through
its NSS database (no certificate error is ignored), loads the demo page over https:// from the
real ``twistd -n wsrelay`` in front of the demo upstream, and its WebSocket runs over wss://."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.browser import Browser, chromium_missing
from tests.certs import CA
from tests.support import RelayProcess, UpstreamProcess

MiB = 1024 * 1024

#: Run in the page: the checks of the issue on sockets of its own (the page's socket is left to
#: the page), returning what the browser observed.
BATTERY = """(async () => {
  const open = (path) => new Promise((resolve, reject) => {
    const s = new WebSocket('wss://' + location.host + path, ['demo.v1']);
    s.binaryType = 'arraybuffer';
    s.onopen = () => resolve(s);
    s.onerror = () => reject(new Error('WebSocket error on ' + path));
  });
  const next = (s) => new Promise((resolve, reject) => {
    s.onmessage = (e) => resolve(e.data);
    s.onclose = (e) => reject(new Error('closed early: ' + e.code));
  });
  const out = {};
  const s = await open('/ws/echo?id=battery');
  out.url = s.url; out.protocol = s.protocol; out.extensions = s.extensions;
  s.send('h\\u00e9llo through wss');
  out.text = await next(s);
  s.send(new Uint8Array([0, 1, 2, 127, 128, 255]).buffer);
  const b = await next(s);
  out.binary_is_buffer = b instanceof ArrayBuffer;
  out.binary = Array.from(new Uint8Array(b));
  const big = new Uint8Array(1 << 20);
  let x = 12345;
  for (let i = 0; i < big.length; i++) { x = (x * 1103515245 + 12345) >>> 0; big[i] = x >>> 24; }
  s.send(big.buffer);
  const back = new Uint8Array(await next(s));
  out.big_length = back.length;
  out.big_same = back.length === big.length && back.every((v, i) => v === big[i]);
  const got = [];
  const all = new Promise((resolve) => { s.onmessage = (e) => { got.push(e.data); if (got.length === 100) resolve(); }; });
  for (let i = 0; i < 100; i++) s.send('message ' + i);
  await all;
  out.hundred = got;
  s.close(1000);
  const c = await open('/ws/close?id=closing&code=4001&reason=' + encodeURIComponent('bye from the upstream'));
  out.close = await new Promise((resolve) => {
    c.onclose = (e) => resolve({code: e.code, reason: e.reason, clean: e.wasClean});
  });
  return out;
})()"""


@pytest.fixture
def browser_dir(tmp_path: Path) -> Path:
    missing = chromium_missing()
    if missing:
        pytest.skip(missing)
    directory = tmp_path / "browser"
    directory.mkdir()
    return directory


@pytest.fixture
def cas(tmp_path: Path) -> tuple[CA, CA]:
    """The CA the browser trusts and another one it does not."""
    (tmp_path / "trusted").mkdir()
    (tmp_path / "other").mkdir()
    return CA(tmp_path / "trusted"), CA(tmp_path / "other", name="wsrelay untrusted CA")


@pytest.fixture
def tls_relay(cas: tuple[CA, CA], demo_upstream: UpstreamProcess,
              start_relay: Callable[..., RelayProcess]) -> RelayProcess:
    """One TLS listener: ``localhost`` has a certificate of the trusted CA, ``rogue.localhost``
    one of the other CA (Chromium resolves ``*.localhost`` to the loopback address itself)."""
    trusted, other = cas
    good_cert, good_key = trusted.leaf("good", "localhost")
    rogue_cert, rogue_key = other.leaf("rogue", "rogue.localhost")
    relay = start_relay(f"""
        [wsrelay]
        listen = tcp:0:interface=127.0.0.1
        [listener public]
        endpoint = tcp:0:interface=127.0.0.1
        tls = on
        certificates = good rogue
        default_certificate = good
        [certificate good]
        cert = {good_cert}
        key = {good_key}
        [certificate rogue]
        cert = {rogue_cert}
        key = {rogue_key}
        [upstream demo]
        servers = 127.0.0.1:{demo_upstream.port}
        [route /]
        upstream = demo
        """, wait=False)
    relay.wait_listening(count=2)
    return relay


@pytest.fixture
def browser(browser_dir: Path, cas: tuple[CA, CA], tls_relay: RelayProcess) -> Iterator[Browser]:
    """Chromium trusting the first CA; it ends before wsrelay (whose stop would otherwise wait
    ``drain_timeout`` for the page's open WebSocket)."""
    b = Browser(browser_dir, [cas[0].pem])
    try:
        yield b
    finally:
        b.close()


def https_port(relay: RelayProcess) -> int:
    url = next(u for u in relay.urls if u.startswith("https://"))
    return int(url.rstrip("/").rsplit(":", 1)[1])


def upstream_saw(upstream: UpstreamProcess, ws_id: str) -> dict[str, object]:
    """What the demo upstream recorded of the WebSocket opened with ``?id=ws_id``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{upstream.port}/api/ws?id={ws_id}", timeout=10) as answer:
        return json.loads(answer.read())


def test_demo_page_in_chromium_over_tls(browser: Browser, tls_relay: RelayProcess,
                                        demo_upstream: UpstreamProcess, browser_dir: Path) -> None:
    """Chromium, trusting only the test CA, loads the demo over https and its WebSocket over wss
    with permessage-deflate; text, binary, 1 MiB and 100 ordered messages echo; an upstream close
    4001 reaches CloseEvent; the upstream saw X-Forwarded-Proto https and the browser's cookie;
    a certificate of another CA is refused in the same setup."""
    port = https_port(tls_relay)
    # The trust path is real: the same browser refuses a certificate from a CA it was not given.
    error = browser.navigate(f"https://rogue.localhost:{port}/")
    assert error is not None and "ERR_CERT_AUTHORITY_INVALID" in error, error

    assert browser.navigate(f"https://localhost:{port}/") is None
    assert browser.evaluate("location.protocol") == "https:"
    assert browser.evaluate("document.title") == "wsrelay demo"
    browser.evaluate("document.cookie = 'demo_user=chromium-test; Secure; SameSite=Strict; path=/'")

    # The page's own socket: what it shows for each hop.
    browser.wait_for("document.getElementById('state').textContent === 'open'"
                     " && document.getElementById('upstream').textContent.startsWith('subprotocol')")
    client_hop = browser.evaluate("document.getElementById('client').textContent")
    upstream_hop = browser.evaluate("document.getElementById('upstream').textContent")
    assert f"URL: wss://localhost:{port}/ws/echo" in client_hop
    assert "subprotocol: demo.v1" in client_hop and "permessage-deflate" in client_hop
    assert "subprotocol: demo.v1" in upstream_hop and "X-Forwarded-Proto: https" in upstream_hop
    assert "extensions: (none)" in upstream_hop  # ws_upstream_compression is off by default

    seen = browser.evaluate(BATTERY, timeout=60)
    assert seen["url"] == f"wss://localhost:{port}/ws/echo?id=battery"
    assert seen["protocol"] == "demo.v1"
    assert seen["extensions"].startswith("permessage-deflate"), seen["extensions"]  # the browser's view
    assert seen["text"] == "h\u00e9llo through wss"
    assert seen["binary_is_buffer"] and seen["binary"] == [0, 1, 2, 127, 128, 255]
    assert seen["big_length"] == MiB and seen["big_same"]
    assert seen["hundred"] == [f"message {i}" for i in range(100)]
    # wasClean: after the closing handshake wsrelay's client leg closes TCP with a FIN (RFC 6455
    # section 7.1.1). Autobahn's own server side aborts it (a reset), which Chromium reports as
    # false: a close through wsrelay is cleaner than one straight from an Autobahn server.
    assert (seen["close"]["code"], seen["close"]["reason"], seen["close"]["clean"]) == (4001, "bye from the upstream", True)

    handshake = upstream_saw(demo_upstream, "battery")
    headers = handshake["headers"]
    assert isinstance(headers, dict)
    assert headers["x-forwarded-proto"] == "https"
    assert "demo_user=chromium-test" in headers["cookie"]
    assert headers["origin"] == f"https://localhost:{port}"  # the browser's Origin, passed on
    assert handshake["protocol"] == "demo.v1"
    info = browser.evaluate("fetch('/api/info').then(r => r.json())")
    http_headers = {name.lower(): value for name, value in info["headers"]}
    assert http_headers["x-forwarded-proto"] == "https"
    assert "demo_user=chromium-test" in http_headers["cookie"]

    # The page's buttons: the upstream's close shows its code and reason; reconnect opens again.
    browser.evaluate("document.getElementById('upclose').click()")
    browser.wait_for("document.getElementById('state').textContent"
                     ".startsWith('closed: code 4001, reason \"closed by the upstream\"')")
    browser.evaluate("document.getElementById('reconnect').click()")
    browser.wait_for("document.getElementById('state').textContent === 'open'"
                     " && document.getElementById('upstream').textContent.startsWith('subprotocol')")
    for text in ("hello through wsrelay", "a second message", "and a third"):
        browser.evaluate(f"document.getElementById('msg').value = {json.dumps(text)};"
                         " document.getElementById('send').click()")
    browser.wait_for("window.demo.rtts.length === 3")
    assert all(rtt >= 0 for rtt in browser.evaluate("window.demo.rtts"))
    assert "echo in " in browser.evaluate("document.getElementById('log').textContent")
    shot = browser.screenshot(browser_dir.parent / "demo.png")
    assert shot.read_bytes().startswith(b"\x89PNG")

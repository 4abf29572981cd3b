"""The twistd plugin as a user runs it: discovery, --help, --check, start-up errors, SIGHUP
reload and SIGTERM, all through the real ``twistd`` process."""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.support import ROOT, TWISTD, RelayProcess, write_config

ROUTES_V1 = """
[wsrelay]
listen = tcp:0:interface=127.0.0.1
access_log = -
[route /old/]
redirect = 301
"""

ROUTES_V2 = """
[wsrelay]
listen = tcp:0:interface=127.0.0.1
access_log = -
[route /new/]
redirect = 308
"""


def run_twistd(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TWISTD, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def get(port: int, path: str, host: str = "example.test") -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def test_plugin_is_discovered() -> None:
    """twistd lists the wsrelay plugin, and Twisted's plugin scan finds its ServiceMaker."""
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins

    assert "wsrelay" in [p.tapname for p in getPlugins(IServiceMaker)]
    result = run_twistd("--help")
    assert result.returncode == 0
    assert "wsrelay" in result.stdout


def test_help_documents_every_option() -> None:
    """`twistd wsrelay --help` documents --config and --check."""
    result = run_twistd("wsrelay", "--help")
    assert result.returncode == 0, result.stderr
    assert "--config=" in result.stdout and "--check" in result.stdout
    assert "etc/relay.ini" in result.stdout


def test_check_accepts_the_sample_config() -> None:
    """--check validates etc/relay.ini and exits 0 without serving."""
    result = run_twistd("wsrelay", "--config", "etc/relay.ini", "--check")
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stdout


def test_check_rejects_a_bad_config(tmp_path: Path) -> None:
    """--check on a bad config exits 1 with one line naming file, section and key; no traceback."""
    path = write_config(tmp_path, ROUTES_V1 + "[route /x/]\nupstream = missing\n")
    result = run_twistd("wsrelay", "--config", str(path), "--check")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert f"{path}: [route /x/] upstream: no [upstream missing] section" in result.stderr


def test_start_with_bad_config_exits_1(tmp_path: Path) -> None:
    """Starting with an invalid config ends with status 1 and the message, no traceback."""
    path = write_config(tmp_path, ROUTES_V1.replace("redirect = 301", "redirect = 302"))
    result = run_twistd("-n", "--pidfile=", "wsrelay", "--config", str(path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert "[route /old/] redirect: '302' is not off, 301 or 308" in result.stderr


def test_missing_config_file_exits_1(tmp_path: Path) -> None:
    """A missing config file is named in the one-line error."""
    result = run_twistd("-n", "--pidfile=", "wsrelay", "--config", str(tmp_path / "nope.ini"))
    assert result.returncode == 1
    assert f"{tmp_path / 'nope.ini'}: no such file" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_address_in_use_exits_1(tmp_path: Path) -> None:
    """A listen address that cannot be bound ends start-up with status 1, naming section and key."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        path = write_config(tmp_path, ROUTES_V1.replace("tcp:0:", f"tcp:{port}:"))
        result = run_twistd("-n", "--pidfile=", "wsrelay", "--config", str(path))
    output = result.stderr + result.stdout
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert f"{path}: [wsrelay] listen: cannot listen on 'tcp:{port}:interface=127.0.0.1'" in output


def test_serves_and_stops_on_sigterm(start_relay: Callable[..., RelayProcess]) -> None:
    """The real process serves its routes (an unknown path gets 404) and exits 0 on SIGTERM."""
    relay = start_relay(ROUTES_V1)
    assert relay.url.startswith("http://127.0.0.1:")
    status, headers = get(relay.port, "/old/page?q=1")
    assert status == 301
    assert headers["location"] == "https://example.test/old/page?q=1"
    assert get(relay.port, "/elsewhere")[0] == 404
    relay.signal(signal.SIGTERM)
    # twistd re-raises the terminating signal after a clean shutdown (systemd counts it as clean).
    assert relay.wait(15) in (0, -signal.SIGTERM)
    relay.output.wait_for("wsrelay stopped$")


def test_sighup_reloads_routes_and_refuses_bad_config(start_relay: Callable[..., RelayProcess], tmp_path: Path) -> None:
    """SIGHUP puts a new config in service at once; a bad one is refused and the old one stays."""
    relay = start_relay(ROUTES_V1)
    assert get(relay.port, "/old/")[0] == 301
    write_config(tmp_path, ROUTES_V2)
    relay.signal(signal.SIGHUP)
    relay.output.wait_for("configuration reloaded")
    assert get(relay.port, "/new/")[0] == 308
    assert get(relay.port, "/old/")[0] == 404

    mark = len(relay.output.lines)
    write_config(tmp_path, ROUTES_V2 + "[route /bad/]\nupstream = missing\n")
    relay.signal(signal.SIGHUP)
    line = relay.output.wait_for("reload refused", start=mark)
    assert "[route /bad/] upstream: no [upstream missing] section" in line.string
    assert get(relay.port, "/new/")[0] == 308
    assert relay.popen.poll() is None


def test_systemd_unit_runs_twistd_unprivileged() -> None:
    """etc/wsrelay.service runs the documented twistd command as an unprivileged user, reloads with HUP."""
    unit = (ROOT / "etc" / "wsrelay.service").read_text()
    lines = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    assert lines["ExecStart"].endswith("twistd --nodaemon --pidfile= wsrelay --config /etc/wsrelay/relay.ini")
    assert lines["User"] not in ("root", "0")
    assert lines["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "--check" in unit  # a bad configuration stops the start with one line


def test_reload_adds_and_removes_listeners_and_keeps_open_websockets(
        start_relay: Callable[..., RelayProcess], tmp_path: Path) -> None:
    """A reload starts added listeners and stops removed ones; an open WebSocket carries on through it;
    SIGTERM then closes it with 1001 after the drain time."""
    import asyncio

    import websockets
    from websockets.exceptions import ConnectionClosed

    from tests.support import UpstreamProcess

    upstream = UpstreamProcess(tmp_path)
    try:
        base = f"""
[wsrelay]
listen = tcp:0:interface=127.0.0.1
drain_timeout = 1s
[upstream demo]
servers = 127.0.0.1:{upstream.port}
[route /]
upstream = demo
"""
        relay = start_relay(base)
        extra = "[listener extra]\nendpoint = tcp:0:interface=127.0.0.1\n"

        async def go() -> int | None:
            ws = await websockets.connect(f"ws://127.0.0.1:{relay.port}/ws/echo")
            await ws.send("before")
            assert await ws.recv() == "before"
            write_config(tmp_path, base + extra)
            relay.signal(signal.SIGHUP)
            relay.wait_listening(count=2)  # the added listener
            extra_port = int(relay.urls[1].rstrip("/").rsplit(":", 1)[1])
            assert get(extra_port, "/api/info")[0] == 200
            await ws.send("during")
            assert await ws.recv() == "during"
            mark = len(relay.output.lines)
            write_config(tmp_path, base)
            relay.signal(signal.SIGHUP)
            relay.output.wait_for("listener extra removed", start=mark)
            relay.output.wait_for("configuration reloaded", start=mark)
            try:
                get(extra_port, "/")
                raise AssertionError("the removed listener still answers")
            except OSError:
                pass
            await ws.send("after")
            assert await ws.recv() == "after"
            relay.signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed:
                pass
            return ws.close_code

        assert asyncio.run(asyncio.wait_for(go(), 60)) == 1001
        assert relay.wait(15) in (0, -signal.SIGTERM)
    finally:
        upstream.stop()


def test_unopenable_access_log_stops_check_and_startup(tmp_path: Path) -> None:
    """An access_log in a missing directory: --check and start-up both end with status 1 and one
    line naming the file, [wsrelay] and access_log; no traceback, and no file or directory made."""
    log = tmp_path / "missing" / "access.log"
    path = write_config(tmp_path, ROUTES_V1.replace("access_log = -", f"access_log = {log}"))
    expected = f"wsrelay: {path}: [wsrelay] access_log: {log}: cannot be opened (No such file or directory)\n"
    for args in (("wsrelay", "--config", str(path), "--check"), ("-n", "--pidfile=", "wsrelay", "--config", str(path))):
        result = run_twistd(*args)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Traceback" not in result.stderr + result.stdout
        assert result.stderr.endswith(expected), result.stderr
    assert not log.parent.exists()


def test_reload_with_unopenable_access_log_changes_nothing(start_relay: Callable[..., RelayProcess],
                                                           tmp_path: Path) -> None:
    """A reload whose access_log cannot be opened is refused with a line naming the key, before
    anything changes: the new routes and an added listener do not come into service."""
    relay = start_relay(ROUTES_V1)
    assert get(relay.port, "/old/")[0] == 301  # serving: SIGHUP is handled
    mark = len(relay.output.lines)
    log = tmp_path / "missing" / "access.log"
    write_config(tmp_path, ROUTES_V2.replace("access_log = -", f"access_log = {log}")
                 + "[listener extra]\nendpoint = tcp:0:interface=127.0.0.1\n")
    relay.signal(signal.SIGHUP)
    line = relay.output.wait_for("reload refused", start=mark)
    assert line.string.endswith(f"[wsrelay] access_log: {log}: cannot be opened (No such file or directory)")
    assert not any("listening on" in l or "Traceback" in l for l in relay.output.lines[mark:])
    assert get(relay.port, "/old/")[0] == 301
    assert get(relay.port, "/new/")[0] == 404
    write_config(tmp_path, ROUTES_V2)  # and a good one is still taken afterwards
    relay.signal(signal.SIGHUP)
    relay.output.wait_for("configuration reloaded", start=mark)
    assert get(relay.port, "/new/")[0] == 308


LISTENER = """
[wsrelay]
access_log = -
[listener web]
endpoint = tcp:0:interface=127.0.0.1
{settings}
[route /]
redirect = 308
"""


def test_reload_applies_a_kept_listeners_settings_or_refuses(start_relay: Callable[..., RelayProcess],
                                                             tmp_path: Path) -> None:
    """A listener that stays (same name and endpoint) takes its new redirect and redirect_port on
    reload; turning tls on for it is refused with one line naming the listener and key, and the
    running configuration stays in service."""
    relay = start_relay(LISTENER.format(settings=""))
    assert get(relay.port, "/a")[0] == 308
    mark = len(relay.output.lines)
    write_config(tmp_path, LISTENER.format(settings="redirect = 301\nredirect_port = 8443"))
    relay.signal(signal.SIGHUP)
    relay.output.wait_for("configuration reloaded", start=mark)
    status, headers = get(relay.port, "/a?b=1")
    assert (status, headers["location"]) == (301, "https://example.test:8443/a?b=1")

    mark = len(relay.output.lines)
    write_config(tmp_path, LISTENER.format(settings="tls = on\ncertificates = c\n[certificate c]\n"
                                                    "cert = c.pem\nkey = c.key"))
    relay.signal(signal.SIGHUP)
    line = relay.output.wait_for("reload refused", start=mark)
    assert line.string.endswith(f"{tmp_path / 'relay.ini'}: [listener web] tls: changed from off to on: the listener"
                                " keeps its socket on reload, restart wsrelay to apply this (or give it a new endpoint)")
    assert get(relay.port, "/a?b=1")[1]["location"] == "https://example.test:8443/a?b=1"
    assert relay.popen.poll() is None


def test_check_refuses_names_that_would_fail_at_request_time(tmp_path: Path) -> None:
    """--check (and so start-up and reload, which load the same way) refuses a server name that
    Twisted could not resolve nor TLS verify: exit 1, one line naming file, section and key."""
    path = write_config(tmp_path, ROUTES_V1 + "[upstream app]\nservers = https://my_backend:8443\n"
                        "[route /app/]\nupstream = app\n")
    result = run_twistd("wsrelay", "--config", str(path), "--check")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr == (f"wsrelay: {path}: [upstream app] servers: 'my_backend': '_' is not allowed in a host"
                             " name that is resolved or used as a TLS server name (letters, digits and '-' only)\n")

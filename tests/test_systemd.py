"""systemd integration: sd_notify states from the real process, the watchdog, readiness with
workers, socket activation through ``systemd-socket-activate``, and the units as shipped.

A datagram socket bound by the test stands in for systemd's ``NOTIFY_SOCKET``.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import ROOT, TWISTD, Process, RelayProcess, UpstreamProcess, write_config
from wsrelay.systemd import Notifier


class NotifySocket:
    """What systemd would receive: one message per datagram, as a dict of its fields."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def next(self, timeout: float = 15.0, skip: tuple[str, ...] = ("WATCHDOG",)) -> dict[str, str]:
        """The next message (messages that are only ``skip`` fields are passed over)."""
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                raise AssertionError(f"no notification within {timeout}s") from None
            fields = dict(line.split("=", 1) for line in data.decode().split("\n"))
            if not set(fields) <= set(skip):
                return fields

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    try:
        yield sock
    finally:
        sock.close()


CONFIG = """
[wsrelay]
listen = tcp:0:interface=127.0.0.1
{extra}
[upstream demo]
servers = 127.0.0.1:9
[route /]
upstream = demo
"""


def listening_sockets(port: int) -> int:
    """Sockets in LISTEN state on 127.0.0.1:``port`` (one per process with SO_REUSEPORT)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        count += int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A"
    return count


def test_notifier_speaks_the_protocol(tmp_path: Path) -> None:
    """KEY=VALUE lines in one datagram, to a path or to the abstract namespace; nothing at all
    without NOTIFY_SOCKET; WATCHDOG_USEC applies only to the process WATCHDOG_PID names."""
    sock = NotifySocket(tmp_path / "n.sock")
    Notifier({"NOTIFY_SOCKET": sock.path}, pid=1).ready("serving")
    assert sock.next() == {"READY": "1", "STATUS": "serving"}
    sock.close()
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    abstract.bind(b"\0wsrelay-test-%d" % id(abstract))
    abstract.settimeout(5)
    Notifier({"NOTIFY_SOCKET": "@" + abstract.getsockname()[1:].decode()}, pid=1).stopping("bye")
    assert abstract.recv(100) == b"STOPPING=1\nSTATUS=bye"
    abstract.close()
    silent = Notifier({}, pid=1)
    assert not silent.enabled
    silent.ready("x")  # nothing to send to, nothing raised
    assert Notifier({"WATCHDOG_USEC": "2000000"}, pid=7).watchdog_interval == 2.0
    assert Notifier({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "8"}, pid=7).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "7"}, pid=7).watchdog_interval == 2.0


def start(tmp_path: Path, notify: NotifySocket, extra: str = "", env: dict[str, str] | None = None) -> RelayProcess:
    path = write_config(tmp_path, CONFIG.format(extra=extra))
    relay = RelayProcess(path, wait=False, env={"NOTIFY_SOCKET": notify.path, **(env or {})})
    return relay


def test_ready_reloading_and_stopping(tmp_path: Path, notify: NotifySocket) -> None:
    """READY=1 once the listener accepts; SIGHUP gives RELOADING=1 with MONOTONIC_USEC, then
    READY=1 and a STATUS saying whether the new file is in service; SIGTERM gives STOPPING=1."""
    relay = start(tmp_path, notify)
    try:
        ready = notify.next()
        assert ready["READY"] == "1" and "serving 1 listeners" in ready["STATUS"]
        relay.wait_listening()
        socket.create_connection(("127.0.0.1", relay.port), timeout=5).close()  # bound before READY

        relay.signal(signal.SIGHUP)
        reloading = notify.next()
        assert reloading["RELOADING"] == "1"
        assert abs(int(reloading["MONOTONIC_USEC"]) - time.monotonic_ns() // 1000) < 30_000_000
        again = notify.next()
        assert again["READY"] == "1" and again["STATUS"].startswith("configuration reloaded")

        write_config(tmp_path, CONFIG.format(extra="") + "[route /bad/]\nupstream = missing\n")
        relay.signal(signal.SIGHUP)
        assert notify.next()["RELOADING"] == "1"
        refused = notify.next()
        assert refused["READY"] == "1"
        assert refused["STATUS"].startswith("reload refused") and "[route /bad/] upstream" in refused["STATUS"]

        relay.signal(signal.SIGTERM)
        stopping = notify.next()
        assert stopping["STOPPING"] == "1" and stopping["STATUS"].startswith("stopping")
        assert relay.wait(15) in (0, -signal.SIGTERM)
    finally:
        relay.stop()


def test_watchdog_pings_come_from_the_running_loop(tmp_path: Path, notify: NotifySocket) -> None:
    """With WATCHDOG_USEC for this process, WATCHDOG=1 comes every half interval; SIGSTOP (a
    loop that cannot run) stops them, and they resume with SIGCONT."""
    relay = start(tmp_path, notify, env={"WATCHDOG_USEC": "400000"})
    try:
        assert notify.next()["READY"] == "1"
        assert notify.next(skip=()) == {"WATCHDOG": "1"}
        assert notify.next(skip=()) == {"WATCHDOG": "1"}
        relay.signal(signal.SIGSTOP)
        drained = time.monotonic()
        try:
            while True:  # take what was already queued, then expect silence
                notify.sock.settimeout(0.6)
                notify.sock.recv(100)
                assert time.monotonic() - drained < 2, "pings went on while the process was stopped"
        except socket.timeout:
            pass
        relay.signal(signal.SIGCONT)
        assert notify.next(skip=()) == {"WATCHDOG": "1"}
    finally:
        relay.signal(signal.SIGCONT)
        relay.stop()


def test_ready_waits_for_every_worker(tmp_path: Path, notify: NotifySocket) -> None:
    """With workers = 2, READY=1 comes only once both processes listen on the port; the worker
    sends nothing to NOTIFY_SOCKET itself."""
    relay = start(tmp_path, notify, extra="workers = 2")
    try:
        ready = notify.next()
        assert ready["READY"] == "1" and "2 processes" in ready["STATUS"]
        relay.wait_listening()
        assert listening_sockets(relay.port) == 2
        relay.output.wait_for(r"worker 1.*listening|listening.*worker 1")
        notify.sock.settimeout(0.5)
        with pytest.raises(socket.timeout):
            notify.sock.recv(100)  # no second READY (from the worker)
    finally:
        relay.stop()


def test_workers_with_socket_activation_is_a_config_error(tmp_path: Path) -> None:
    """systemd: listeners and workers > 1 do not mix: a one-line error naming the key."""
    path = write_config(tmp_path, CONFIG.format(extra="workers = 2").replace(
        "tcp:0:interface=127.0.0.1", "systemd:domain=INET:name=web"))
    result = subprocess.run([TWISTD, "wsrelay", "--config", str(path), "--check"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert f"{path}: [wsrelay] workers: socket-activated" in result.stderr


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate not installed")
def test_socket_activation(tmp_path: Path) -> None:
    """Under systemd-socket-activate (which passes a named socket, as systemd does) a
    ``systemd:`` listener serves on the socket it was handed."""
    upstream = UpstreamProcess(tmp_path)
    with socket.socket() as probe:  # a free port for the activator to bind
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = write_config(tmp_path, CONFIG.format(extra="").replace("tcp:0:interface=127.0.0.1", "systemd:domain=INET:name=web")
                        .replace("127.0.0.1:9", f"127.0.0.1:{upstream.port}"))
    activator = Process(["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=web",
                         "-E", "PYTHONUNBUFFERED=1", TWISTD, "-n", "--pidfile=", "wsrelay", "--config", str(path)],
                        tmp_path)
    try:
        activator.output.wait_for(rf"Listening on 127\.0\.0\.1:{port}")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=20) as response:
            assert response.status == 200
        activator.output.wait_for(r"wsrelay ready")
    finally:
        activator.stop()
        upstream.stop()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_units_as_shipped_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """etc/wsrelay.service (Type=notify, watchdog) and etc/wsrelay.socket pass systemd-analyze
    verify, with their /opt/wsrelay paths pointed at this checkout's interpreter."""
    venv = str(Path(TWISTD).parent.parent)
    for name in ("wsrelay.service", "wsrelay.socket"):
        text = (ROOT / "etc" / name).read_text().replace("/opt/wsrelay/venv", venv)
        (tmp_path / name).write_text(text)
    unit = (tmp_path / "wsrelay.service").read_text()
    assert "Type=notify" in unit and "NotifyAccess=main" in unit and "WatchdogSec=" in unit
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "wsrelay.service"),
                             str(tmp_path / "wsrelay.socket")], capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "wsrelay" in line and "Failed to resolve user" not in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr

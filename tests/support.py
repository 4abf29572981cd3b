"""Helpers for integration tests: real processes on loopback, bounded waits, clean-up.

``RelayProcess`` runs the real ``twistd -n wsrelay`` (the installed plugin, as a user would) and
learns its listening URLs from the log line ``wsrelay listening on URL``; ``UpstreamProcess`` runs
the demo upstream.  Every wait has a deadline; every process is ended (SIGTERM, then SIGKILL) by
``stop()`` or by the pytest fixtures in ``conftest.py``.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from collections.abc import Callable
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
TWISTD = str(Path(sys.executable).with_name("twistd"))
LISTENING = re.compile(r"wsrelay listening on (\S+)")


class LineReader:
    """Collects a process's output lines in a thread (so a full pipe never blocks the process)
    and lets tests wait for a line with a deadline."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.lines: list[str] = []
        self.ended = False
        self._changed = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for raw in iter(self.stream.readline, b""):
            with self._changed:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float = 15.0, start: int = 0) -> re.Match[str]:
        """The first match of ``pattern`` in a line at index >= ``start``; AssertionError at the deadline."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        index = start
        with self._changed:
            while True:
                while index < len(self.lines):
                    m = regex.search(self.lines[index])
                    if m:
                        return m
                    index += 1
                remaining = deadline - time.monotonic()
                if self.ended or remaining <= 0:
                    what = "process ended" if self.ended else f"no line within {timeout}s"
                    raise AssertionError(f"{what} before a line matching {regex.pattern!r}; output:\n"
                                         + "\n".join(self.lines[-40:]))
                self._changed.wait(remaining)

    def wait_ended(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.ended, timeout)


def poll_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Check ``predicate`` until it holds or ``timeout`` passes; for another process's state
    (its /proc entries), which offers no event to wait on.  Returns the last result."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() >= deadline:
            return predicate()
        pause.wait(interval)
    return True


def tcp_queues(local_port: int, remote_port: int) -> tuple[int, int] | None:
    """(bytes written and not yet acknowledged, bytes received and not yet read) of the
    established loopback TCP socket whose local port is ``local_port`` and peer port
    ``remote_port``, from /proc/net/tcp; None when there is no such socket.  Only an established
    socket counts: a TIME_WAIT one of an earlier connection with the same ports (Linux reuses
    them on loopback) has empty queues and would hide the live one."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)
        if (local, remote) == (local_port, remote_port) and fields[3] == "01":
            tx, rx = fields[4].split(":")
            return int(tx, 16), int(rx, 16)
    return None


def accept_queue(port: int) -> int | None:
    """How many connections the kernel has queued (handshake done, not yet accepted) on the
    listening loopback TCP socket of ``port``, from /proc/net/tcp; None when there is none."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
            return int(fields[4].split(":")[1], 16)
    return None


def probe_round_trip(port: int) -> None:
    """One request wsrelay answers itself (400: no Host): it needs several turns of wsrelay's
    reactor, and touches no upstream."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]


def held_back(relay_port: int, upstream_port: int, peer_port: int, sent: Callable[[], int],
              probes: int = 5, timeout: float = 30.0) -> bool:
    """Wait until wsrelay has provably stopped reading one upstream connection (back-pressure),
    with ``timeout`` as a safety net only; False if that never happened.

    The proof is a socket state, not a pause of some length: the upstream has bytes it cannot send
    (its send queue is not empty), wsrelay has bytes it has not read (its receive queue is not
    empty), and across ``probes`` round trips through wsrelay's reactor (each needs it to run)
    neither queue nor the upstream's count of what it sent (``sent()``) changes by one byte.
    A wsrelay that kept reading, however slowly, would change them.  ``peer_port()`` is wsrelay's
    port on that connection, as the upstream saw it."""
    def state() -> tuple[object, ...]:
        return tcp_queues(upstream_port, peer_port), tcp_queues(peer_port, upstream_port), sent()

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = state()
        for _ in range(probes):
            probe_round_trip(relay_port)
        after = state()
        upstream_side, relay_side, _ = before
        if (before == after and upstream_side is not None and relay_side is not None
                and upstream_side[0] > 0 and relay_side[1] > 0):
            return True
    return False


def digest_of_repeats(block: bytes, times: int) -> str:
    """SHA-256 of ``block`` repeated ``times`` times, without building the whole."""
    h = hashlib.sha256()
    for _ in range(times):
        h.update(block)
    return h.hexdigest()


class Process:
    """A child process with merged stdout/stderr read through a LineReader."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str] | None = None, **popen: Any) -> None:
        """``popen``: more arguments for ``subprocess.Popen`` (``pass_fds``, ``preexec_fn``)."""
        full_env = dict(os.environ, PYTHONUNBUFFERED="1")
        full_env.update(env or {})
        self.popen = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=full_env, start_new_session=True, **popen)
        assert self.popen.stdout is not None
        self.output = LineReader(self.popen.stdout)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float = 15.0) -> int:
        """Exit status; AssertionError at the deadline."""
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"process {self.pid} still running after {timeout}s") from None
        self.output.wait_ended(5)
        return code

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                return self.wait(timeout)
            except AssertionError:
                os.killpg(self.popen.pid, signal.SIGKILL)
                return self.popen.wait(timeout=5)
        code = self.popen.poll()
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        return code

    def rss_kib(self) -> int:
        """Resident set size from /proc (KiB)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def cpu_seconds(self) -> float:
        """User and system CPU time the process has used so far, from /proc."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def open_connections(self, port: int) -> int:
        """TCP connections to local ``port`` still open at wsrelay's end (ESTABLISHED or CLOSE_WAIT):
        sockets of this process only (their inodes among its descriptors), from /proc/net/tcp and
        tcp6, so other programs' connections from or to the same port number never count."""
        inodes = set()
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                target = os.readlink(f"/proc/{self.pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        count = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local_port, state = int(fields[1].rsplit(":", 1)[1], 16), fields[3]
                count += local_port == port and state in ("01", "08") and fields[9] in inodes
        return count

    def fd_targets(self) -> list[str]:
        """What each open descriptor is (for failure messages)."""
        found = []
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                found.append(f"{fd}->{os.readlink(f'/proc/{self.pid}/fd/{fd}')}")
            except OSError:
                pass
        return found


class RelayProcess(Process):
    """``twistd -n --pidfile= wsrelay --config PATH`` and the URLs it listens on."""

    def __init__(self, config_path: Path, *, wait: bool = True, extra: list[str] | None = None,
                 cwd: Path | None = None, timeout: float = 20.0, env: dict[str, str] | None = None,
                 wrapper: list[str] | None = None) -> None:
        """``wrapper``: a command that execs twistd (``["prlimit", "--nofile=64:64", "--"]``)."""
        argv = [*(wrapper or []), TWISTD, "-n", "--pidfile=", "wsrelay", "--config", str(config_path), *(extra or [])]
        super().__init__(argv, cwd or config_path.parent, env)
        self.urls: list[str] = []
        self._next_line = 0
        if wait:
            self.wait_listening(timeout)

    def wait_listening(self, timeout: float = 20.0, count: int | None = None) -> list[str]:
        """Wait until ``count`` listening lines (default: at least one) have been seen in all."""
        needed = count or 1
        while len(self.urls) < needed:
            m = self.output.wait_for(LISTENING, timeout, self._next_line)
            self.urls.append(m.group(1))
            self._next_line = self.output.lines.index(m.string, self._next_line) + 1
        return self.urls

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def port(self) -> int:
        return int(self.url.rstrip("/").rsplit(":", 1)[1])


class UpstreamProcess(Process):
    """The demo upstream (HTML page, /api/info, /ws/echo) on 127.0.0.1, port chosen by the OS."""

    def __init__(self, cwd: Path, timeout: float = 20.0, port: int = 0) -> None:
        super().__init__([sys.executable, "-m", "wsrelay.demo", "--port", str(port)], cwd)
        m = self.output.wait_for(r"demo upstream listening on http://127\.0\.0\.1:(\d+)/", timeout)
        self.port = int(m.group(1))


def write_config(directory: Path, text: str, name: str = "relay.ini") -> Path:
    """Write a dedented config file and return its path."""
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path

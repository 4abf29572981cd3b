"""Worker processes: ``workers = N`` runs N processes that share each listening port.

The master (the process twistd started) binds every TCP listener with ``SO_REUSEPORT`` and serves
as worker 0; it then starts N-1 more twistd processes (``--worker I --ports JSON``) that bind the
same ports with ``SO_REUSEPORT``, so the kernel spreads new connections over all of them.  Each
process holds its own connections; nothing is shared but the ports.

The master forwards SIGHUP to every worker (each re-reads and validates the file itself), sends
SIGTERM to them when it stops and waits for them (bounded), and restarts a worker that dies on its
own (after a second, so a crash loop cannot spin).  A worker stops by itself if its master
disappears (``PR_SET_PDEATHSIG`` on Linux, and a check of the parent pid every second).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

_TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


#: The descriptor a worker writes ``ready`` to once its listeners are bound.
READY_FD = 3


def worker_argv(config_path: str, index: int, ports: dict[str, int], admin_dir: str | None = None) -> list[str]:
    argv = [sys.executable, "-c", _TWISTD, "--nodaemon", "--pidfile=", "wsrelay",
            "--config", config_path, "--worker", str(index), "--ports", json.dumps(ports),
            "--ready-fd", str(READY_FD)]
    if admin_dir is not None:
        from wsrelay.adminworkers import socket_path

        argv += ["--admin-socket", socket_path(admin_dir, index)]
    return argv


def worker_environment(environ: dict[str, str]) -> dict[str, str]:
    """A worker's environment: the master's, less what systemd meant for the main process only."""
    from wsrelay.systemd import SERVICE_MANAGER_VARIABLES

    return {k: v for k, v in environ.items() if k not in SERVICE_MANAGER_VARIABLES}


class _Worker(ProcessProtocol):
    def __init__(self, pool: Workers, index: int) -> None:
        self.pool = pool
        self.index = index
        self.ended: Deferred[None] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == READY_FD and b"ready" in data:
            self.pool._ready(self.index)

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.pool._ended(self, reason)


class Workers:
    """The master's extra worker processes."""

    def __init__(self, reactor: Any, config_path: str, count: int, ports: dict[str, int],
                 admin_dir: str | None = None) -> None:
        self.reactor = reactor
        self.admin_dir = admin_dir  # where each worker serves its admin pages (adminworkers)
        self.config_path = os.path.abspath(config_path)
        self.count = count
        self.ports = ports
        self.running: dict[int, tuple[_Worker, Any]] = {}
        self.stopping = False
        self.ready: set[int] = set()
        self._all_ready: list[Deferred[None]] = []

    def start(self) -> None:
        for index in range(1, self.count + 1):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        if self.stopping:
            return
        proto = _Worker(self, index)
        transport = self.reactor.spawnProcess(
            proto, sys.executable, worker_argv(self.config_path, index, self.ports, self.admin_dir),
            env=worker_environment(dict(os.environ)), childFDs={0: "w", 1: 1, 2: 2, READY_FD: "r"},
        )
        self.running[index] = (proto, transport)
        log.info("worker {index} started (pid {pid})", index=index, pid=transport.pid)

    def _ready(self, index: int) -> None:
        self.ready.add(index)
        if len(self.ready) >= self.count:
            waiting, self._all_ready = self._all_ready, []
            for d in waiting:
                d.callback(None)

    def when_ready(self) -> Deferred[None]:
        """Fires once every worker has said its listeners are bound (a worker restarted later
        says so again, unnoticed)."""
        d: Deferred[None] = Deferred()
        if len(self.ready) >= self.count:
            d.callback(None)
        else:
            self._all_ready.append(d)
        return d

    def _ended(self, proto: _Worker, reason: Failure) -> None:
        self.running.pop(proto.index, None)
        if self.stopping:
            return
        log.error("worker {index} ended unexpectedly ({reason}); restarting it in 1s",
                  index=proto.index, reason=reason.getErrorMessage())
        self.reactor.callLater(1.0, self._spawn, proto.index)

    def admin_sockets(self) -> dict[int, str]:
        """Each worker's admin socket by index, restarting ones included (none without admin_dir)."""
        if self.admin_dir is None:
            return {}
        from wsrelay.adminworkers import socket_path

        return {i: socket_path(self.admin_dir, i) for i in range(1, self.count + 1)}

    def pids(self) -> list[int]:
        return [t.pid for _, t in self.running.values() if t.pid]

    def signal(self, signum: int) -> None:
        for _, transport in list(self.running.values()):
            try:
                transport.signalProcess(signum)
            except Exception:  # already gone: processEnded will follow
                pass

    def stop(self, timeout: float) -> Deferred[Any]:
        """SIGTERM every worker; SIGKILL those still running after ``timeout``."""
        self.stopping = True
        ended = [proto.ended for proto, _ in self.running.values()]
        self.signal(signal.SIGTERM)
        timer = self.reactor.callLater(timeout, self.signal, signal.SIGKILL)
        done = DeferredList(ended)

        def cancel_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return done.addBoth(cancel_timer)


def watch_master(reactor: Any) -> LoopingCall:
    """In a worker: stop when the master goes away."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def check() -> None:
        if os.getppid() != parent:
            log.error("master process {pid} is gone; worker stopping", pid=parent)
            reactor.stop()

    loop = LoopingCall(check)
    loop.clock = reactor
    loop.start(1.0, now=False)
    return loop

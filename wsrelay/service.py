"""The wsrelay service: listeners, reload on SIGHUP, drain on stop.

Invariants:

- The reactor is passed in; nothing here imports the global one.
- A configuration is loaded and validated whole (including TLS files, cipher lists, CA files,
  the sticky secret and the access log) before anything changes; a bad one on reload is refused
  with a log line and the running one stays in service.  The exception is a bad certificate
  among good ones: it is left out (its running version kept if still valid) and logged, and
  only a TLS listener with no usable certificate makes the configuration bad.
- Listeners that a reload keeps (same name and endpoint) keep their sockets and take the new
  settings (certificates, TLS options, redirect, redirect_port, hsts_max_age) for new connections
  and requests; turning ``tls`` on or off needs a restart, so such a reload is refused.  Removed
  listeners stop listening (their open connections finish); added ones start.  Open requests and
  WebSocket pairs are never touched by a reload.
- Stopping stops listening at once (after accepting what the kernel queued: ``wsrelay.drain``),
  lets open HTTP exchanges finish for ``drain_timeout`` (then ends them), and closes WebSocket
  pairs with 1001 spread evenly over ``ws_drain_spread``, so that a new process bound to the same
  ports (``reuse_port``) or handed the same sockets (systemd) takes their clients over as a ramp.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from wsrelay import config as configmod
from wsrelay.capacity import ConnectionCap, descriptor_limit, sizing
from wsrelay.config import Config, ConfigError, Listener
from wsrelay.drain import drain, stop_listening, stop_time
from wsrelay.gateway import Gateway, check_access_log
from wsrelay.listeners import open_listener
from wsrelay.memory import HeapTrimmer
from wsrelay.site import RelaySite
from wsrelay.sticky import load_key
from wsrelay.systemd import Notifier
from wsrelay.tls.state import TLSState
from wsrelay.workers import Workers


def _listener_location(config: Config, listener: Listener) -> tuple[str, str]:
    if listener.name.startswith("listen "):
        return "wsrelay", "listen"
    return f"listener {listener.name}", "endpoint"


def _url(port: IListeningPort, listener: Listener | None) -> str:
    address = port.getHost()
    host = getattr(address, "host", None)
    if host is None:
        return f"unix:{getattr(address, 'name', '?')}"
    scheme = "https" if listener is not None and listener.tls is not None else "http"
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"{scheme}://{shown}:{address.port}/"


def check(config: Config) -> list[str]:
    """What ``--check`` verifies beyond parsing, short of listening: the TLS files (every
    certificate, strictly) and cipher lists, the upstream CA files, the access log, the sticky
    secret file.  Raises ConfigError; changes nothing.  Returns the warnings a start would log."""
    warnings = list(TLSState().prepare(config, strict=True).warnings)
    check_access_log(config)
    _, cap_line = sizing(config.max_connections, descriptor_limit())
    if cap_line is not None and config.max_connections is not None:  # a cap RLIMIT_NOFILE cannot hold
        warnings.append(cap_line)
    return warnings + list(load_key(config).warnings)


def _restart_needed(old: Config, new: Config) -> None:
    """ConfigError if ``new`` changes a kept listener (same name and endpoint) in a way a reload
    cannot apply: a kept listener keeps its socket, so whether it speaks TLS or expects a PROXY
    protocol header stays."""
    kept = {(l.name, l.endpoint): l for l in old.listeners}
    for listener in new.listeners:
        before = kept.get((listener.name, listener.endpoint))
        if before is None:
            continue
        for key, was, now in (("tls", before.tls is not None, listener.tls is not None),
                              ("proxy_protocol", before.proxy_protocol, listener.proxy_protocol)):
            if was != now:
                section, _ = _listener_location(new, listener)
                change = "on to off" if was else "off to on"
                raise ConfigError(new.path, section, key, f"changed from {change}: the listener keeps its socket"
                                  " on reload, restart wsrelay to apply this (or give it a new endpoint)")


class RelayService(MultiService):
    """Everything one wsrelay process runs."""

    log = Logger()

    def __init__(self, config: Config, reactor: Any, *, loader: Callable[[str], Config] = configmod.load,
                 handle_signals: bool = False, worker: int | None = None,
                 port_overrides: dict[str, int] | None = None, notifier: Notifier | None = None,
                 ready_fd: int | None = None, admin_socket: str | None = None) -> None:
        """``worker``: this process is worker N of a master (which bound the ports first);
        ``port_overrides``: listener name -> the port the master bound (for ``tcp:0`` listeners);
        ``notifier``: systemd's (the main process only); ``ready_fd``: where a worker says it listens;
        ``admin_socket``: where a worker serves its admin pages for the master (``adminworkers``)."""
        super().__init__()
        self.notifier = notifier or Notifier({}, pid=0)
        self.ready_fd = ready_fd
        self.reload_error: str | None = None
        # What the admin pages read (wsrelay.admin.State).
        self.ready = False  # every listener bound, every worker up
        self.draining = False
        self.loaded_at = time.time()
        self.reloads = {"ok": 0, "refused": 0}
        self.last_reload: float | None = None
        self.admin_port: IListeningPort | None = None
        self.admin_socket = admin_socket
        self.admin_dir: str | None = None  # the master's: where its workers' admin sockets are
        self.reactor = reactor
        self.worker = worker
        self.port_overrides = port_overrides or {}
        self.workers: Workers | None = None
        self.loader = loader
        self.handle_signals = handle_signals
        self._tls = TLSState()
        self._tls.prepare(config).commit()
        self.gateway = Gateway(reactor, config)
        self.ports: dict[tuple[str, str], IListeningPort] = {}
        self.sites: dict[tuple[str, str], RelaySite] = {}
        self.urls: list[str] = []
        self._previous_sighup: Any = None
        self.connections = ConnectionCap(reactor)  # max_connections, and accepting at EMFILE
        self.connections.configure(config.max_connections, self._worker_label)
        self.heap = HeapTrimmer(reactor, config.memory_trim_interval)  # glibc's free pages back
        self.heap.setServiceParent(self)

    @property
    def _worker_label(self) -> str:
        return "" if self.worker is None else f", worker {self.worker}"

    @property
    def config(self) -> Config:
        return self.gateway.runtime.config

    # -- listeners --------------------------------------------------------------------------

    def _listen(self, listener: Listener) -> tuple[IListeningPort, RelaySite]:
        """Start ``listener``; raise ConfigError if it cannot listen."""
        config = self.config
        section, key = _listener_location(config, listener)
        creator = self._tls.contexts[listener.name] if listener.tls is not None else None
        site = RelaySite(self.gateway, listener)
        port = _open(config, section, key, listener.endpoint, lambda: open_listener(
            self.reactor, listener.endpoint, site, tls_creator=creator,
            reuse_port=config.reuse_port or self.worker is not None or config.workers > 1,
            port=self.port_overrides.get(listener.name), proxy_protocol=listener.proxy_protocol,
            header_timeout=lambda: self.config.client_header_timeout,  # the configuration in force
        ))
        self.connections.watch(port)
        url = _url(port, listener)
        self.urls.append(url)
        self.log.info("wsrelay listening on {url} ({listener}{worker})", url=url, listener=listener.name,
                      worker=self._worker_label)
        return port, site

    def _start_listeners(self, listeners: tuple[Listener, ...]) -> None:
        started: list[tuple[tuple[str, str], tuple[IListeningPort, RelaySite]]] = []
        try:
            for listener in listeners:
                started.append(((listener.name, listener.endpoint), self._listen(listener)))
        except ConfigError:
            for _, (port, _site) in started:
                port.stopListening()
            raise
        for key, (port, site) in started:
            self.ports[key] = port
            self.sites[key] = site

    def _start_admin(self) -> None:
        """The admin listener ([admin] endpoint) in the main process; a worker's on its socket."""
        admin = self.config.admin
        if admin is None or self.admin_port is not None:
            return
        from wsrelay.admin import admin_site

        if self.worker is not None:  # its pages for the master's, on the socket the master named
            if (path := self.admin_socket) is not None:
                from wsrelay.adminworkers import serve_worker_pages

                self.admin_port = _open(self.config, "admin", "endpoint", f"unix:{path}",
                                        lambda: serve_worker_pages(self.reactor, path, admin_site(self)))
            return

        site = admin_site(self, admin.allow)
        self.admin_port = _open(self.config, "admin", "endpoint", admin.endpoint,
                                lambda: open_listener(self.reactor, admin.endpoint, site,
                                                      reuse_port=self.config.reuse_port))
        self.connections.watch(self.admin_port, counted=False)  # paused at EMFILE, never at the cap
        self.log.info("wsrelay admin listening on {url}", url=_url(self.admin_port, None))

    def worker_sockets(self) -> dict[int, str]:
        """The other workers' admin sockets, by worker index (the master's admin pages ask them)."""
        return self.workers.admin_sockets() if self.workers is not None else {}

    def certificate_expiry(self) -> dict[str, float]:
        """When each certificate in service expires (POSIX time), by name."""
        return {name: loaded.chain[0].not_valid_after_utc.timestamp() for name, loaded in self._tls.loaded.items()}

    def privilegedStartService(self) -> None:
        # Bind before privileges are shed (twistd --uid), so ports below 1024 work.
        self._start_listeners(self.config.listeners)
        self._start_admin()
        super().privilegedStartService()

    def startService(self) -> None:
        if not self.ports:
            self._start_listeners(self.config.listeners)
        self._start_admin()
        super().startService()
        if self.handle_signals:
            self._previous_sighup = signal.signal(signal.SIGHUP, self._on_sighup)
        if self.worker is None and self.config.workers > 1:
            ports = {key[0]: port.getHost().port for key, port in self.ports.items()
                     if hasattr(port.getHost(), "port")}
            if self.config.admin is not None:  # each worker's admin pages, for the master's
                self.admin_dir = tempfile.mkdtemp(prefix="wsrelay-admin-")  # mode 0700
            self.workers = Workers(self.reactor, self.config.path, self.config.workers - 1, ports,
                                   admin_dir=self.admin_dir)
            self.workers.start()
        if self.ready_fd is not None:  # a worker: tell the master this one listens
            try:
                os.write(self.ready_fd, b"ready\n")
                os.close(self.ready_fd)
            except OSError:
                pass
        if self.workers is not None:
            self.workers.when_ready().addCallback(lambda _: self._ready())
        elif self.worker is None:
            self._ready()

    def _ready(self) -> None:
        """Every listener is bound and every worker up: READY=1 (Type=notify), and the timers."""
        self.ready = True
        self.log.info("wsrelay ready{worker}", worker=self._worker_label)
        self.notifier.ready(self.describe())
        self.notifier.start(self.reactor, self.describe)

    def describe(self) -> str:
        """A one-line state for systemd's STATUS=."""
        processes = f", {self.config.workers} processes" if self.workers is not None else ""
        return f"serving {len(self.ports)} listeners{processes}: {len(self.gateway.live)} open exchanges"

    def _on_sighup(self, signum: int, frame: object) -> None:
        self.reactor.callFromThread(self._reload_all)

    def _reload_all(self) -> None:
        self.notifier.reloading()
        reloaded = self.reload()
        if self.workers is not None:
            self.workers.signal(signal.SIGHUP)  # each worker validates and reloads on its own
        self.notifier.ready(("configuration reloaded; " + self.describe()) if reloaded
                            else f"reload refused, the running configuration stays in service: {self.reload_error}")

    # -- reload -----------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the configuration file; True if the new one is in service.

        Everything that can fail comes first (parsing, a kept listener's change that needs a
        restart, TLS files and contexts, CA files, the access log, binding added listeners); only
        then does anything change, so a refused reload leaves the running configuration whole.
        """
        path = self.config.path
        access_log = None
        try:
            new = self.loader(path)
            _restart_needed(self.config, new)
            commit_tls = self._tls.prepare(new).commit
            access_log = self.gateway.access_log_for(new)
            sticky = load_key(new)
            wanted = {(l.name, l.endpoint): l for l in new.listeners}
            added = [l for key, l in wanted.items() if key not in self.ports]
            old_ports = self.ports
            self.ports = {k: p for k, p in old_ports.items() if k in wanted}
            commit_tls(only_new=True)  # contexts for added TLS listeners; existing ones swap below
            try:
                self._start_listeners(tuple(added))
            except ConfigError:
                self.ports = old_ports
                raise
        except ConfigError as e:
            if access_log is not None:
                access_log.close()
            self.reload_error = str(e)
            self.reloads["refused"] += 1
            self.log.error("reload refused, the running configuration stays in service{worker}: {error}",
                           error=str(e), worker=self._worker_label)
            return False
        if new.workers != self.config.workers and self.worker is None:
            self.log.warn("workers changed from {old} to {new}: takes effect at the next restart",
                          old=self.config.workers, new=new.workers)
        if new.admin != self.config.admin and self.worker is None:
            self.log.warn("[admin] changed: takes effect at the next restart")
        if new.log_format != self.config.log_format:
            self.log.warn("log_format changed: takes effect at the next restart")
        commit_tls()
        for key, port in old_ports.items():
            if key not in wanted:
                self.log.info("listener {name} removed: no longer listening on {endpoint}", name=key[0], endpoint=key[1])
                self.connections.release(port)  # accepted even at max_connections, as in a stop
                self._stop_listening(port, key[0])  # what the kernel queued on it is served, not reset
                self.sites.pop(key, None)
        for key, listener in wanted.items():
            self.sites[key].use(listener)  # redirect, redirect_port, hsts_max_age
        self.gateway.apply(new, access_log, sticky)
        self.connections.configure(new.max_connections, self._worker_label)
        self.heap.configure(new.memory_trim_interval)
        self.reloads["ok"] += 1
        self.last_reload = self.loaded_at = time.time()
        self.log.info("configuration reloaded from {path}: {routes} routes, {upstreams} upstream groups{worker}",
                      path=path, routes=len(new.routes), upstreams=len(new.upstreams), worker=self._worker_label)
        return True

    # -- stop -------------------------------------------------------------------------------

    def _stop_listening(self, port: IListeningPort, name: str) -> Deferred[None]:
        """drain.stop_listening, which runs the port's and its factory's cleanup at once: should
        that raise, the failure is logged and the reload or stop goes on with the rest."""
        stopped: Deferred[None] = maybeDeferred(stop_listening, port)
        stopped.addErrback(lambda failure: self.log.failure("stopping listener {name}", failure, name=name))
        return stopped

    @inlineCallbacks
    def stopService(self):  # type: ignore[no-untyped-def]
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        self.draining = self.gateway.draining = True  # /readyz says 503 from now on
        self.notifier.stop()
        self.notifier.stopping(f"stopping: draining {len(self.gateway.live)} open exchanges")
        config, gateway = self.config, self.gateway
        self.connections.set_limit(0)  # what the kernel queued is accepted (and answered) even at the cap
        yield DeferredList([self._stop_listening(p, key[0]) for key, p in self.ports.items()])
        self.ports.clear()
        self.sites.clear()
        workers_stopped = self.workers.stop(stop_time(config)) if self.workers else None
        if gateway.live:
            yield drain(self.reactor, gateway, config, self._worker_label)
        gateway.close()
        if workers_stopped is not None:
            yield workers_stopped
        if self.admin_port is not None:  # last: health and readiness answer through the drain
            yield self._stop_listening(self.admin_port, "admin")
            self.admin_port = None
        if self.admin_dir is not None:
            shutil.rmtree(self.admin_dir, ignore_errors=True)
            self.admin_dir = None
        yield super().stopService()
        self.notifier.close()
        self.log.info("wsrelay stopped{worker}", worker=self._worker_label)
        # twistd ends the process with the terminating signal right after the reactor stops,
        # before buffered log output would be written: flush it now.
        sys.stdout.flush()
        sys.stderr.flush()


def _open(config: Config, section: str, key: str, endpoint: str,
          listen: Callable[[], IListeningPort]) -> IListeningPort:
    """``listen()``, with a failure turned into the ConfigError naming ``section`` and ``key``."""
    try:
        return listen()
    except (OSError, CannotListenError) as e:
        reason = getattr(e, "socketError", None) or e
        reason = getattr(reason, "strerror", None) or reason
        raise ConfigError(config.path, section, key, f"cannot listen on {endpoint!r}: {reason}") from None
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(config.path, section, key, f"{endpoint!r}: {e}") from None


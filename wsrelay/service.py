"""The wsrelay service: listeners, reload on SIGHUP, drain on stop.

Invariants:

- The reactor is passed in; nothing here imports the global one.
- A configuration is loaded and validated whole (including TLS files) before anything changes;
  a bad one on reload is refused with a log line and the running one stays in service.
- Listeners that a reload keeps (same name and endpoint) keep their sockets; removed ones stop
  listening (their open connections finish); added ones start.  Open requests and WebSocket pairs
  are never touched by a reload.
- Stopping stops listening at once, lets open exchanges finish for ``drain_timeout``, then ends the
  rest (WebSocket pairs get a close frame with 1001).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from wsrelay import config as configmod
from wsrelay.config import Config, ConfigError, Listener
from wsrelay.gateway import Gateway
from wsrelay.listeners import open_listener
from wsrelay.site import RelaySite
from wsrelay.workers import Workers


def _listener_location(config: Config, listener: Listener) -> tuple[str, str]:
    if listener.name.startswith("listen "):
        return "wsrelay", "listen"
    return f"listener {listener.name}", "endpoint"


def _url(port: IListeningPort, listener: Listener) -> str:
    address = port.getHost()
    host = getattr(address, "host", None)
    if host is None:
        return f"unix:{getattr(address, 'name', '?')}"
    scheme = "https" if listener.tls is not None else "http"
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"{scheme}://{shown}:{address.port}/"


class _TLS:
    """Per-listener TLS server contexts, loaded from the config (imported lazily: pyOpenSSL)."""

    def __init__(self) -> None:
        self.contexts: dict[str, Any] = {}

    def prepare(self, config: Config) -> Callable[..., None]:
        """Load every certificate of ``config``; return a function that puts them in service.

        Raises ConfigError before anything changes.
        """
        if not any(l.tls for l in config.listeners):
            return lambda only_new=False: None
        from wsrelay import tls

        loaded = tls.load_certificates(config.certificates, config.path)
        built = {
            l.name: (l.tls, loaded) for l in config.listeners if l.tls is not None
        }

        def commit(only_new: bool = False) -> None:
            for name, (server_tls, certs) in built.items():
                if only_new and name in self.contexts:
                    continue
                if name in self.contexts:
                    self.contexts[name].update(server_tls, certs)
                else:
                    self.contexts[name] = tls.ServerContexts(server_tls, certs)

        return commit


class RelayService(MultiService):
    """Everything one wsrelay process runs."""

    log = Logger()

    def __init__(self, config: Config, reactor: Any, *, loader: Callable[[str], Config] = configmod.load,
                 handle_signals: bool = False, worker: int | None = None,
                 port_overrides: dict[str, int] | None = None) -> None:
        """``worker``: this process is worker N of a master (which bound the ports first);
        ``port_overrides``: listener name -> the port the master bound (for ``tcp:0`` listeners)."""
        super().__init__()
        self.reactor = reactor
        self.worker = worker
        self.port_overrides = port_overrides or {}
        self.workers: Workers | None = None
        self.loader = loader
        self.handle_signals = handle_signals
        self._tls = _TLS()
        self._tls.prepare(config)()
        self.gateway = Gateway(reactor, config)
        self.ports: dict[tuple[str, str], IListeningPort] = {}
        self.urls: list[str] = []
        self._previous_sighup: Any = None

    @property
    def _worker_label(self) -> str:
        return "" if self.worker is None else f", worker {self.worker}"

    @property
    def config(self) -> Config:
        return self.gateway.runtime.config

    # -- listeners --------------------------------------------------------------------------

    def _listen(self, listener: Listener) -> IListeningPort:
        """Start ``listener``; raise ConfigError if it cannot listen."""
        config = self.config
        section, key = _listener_location(config, listener)
        creator = self._tls.contexts[listener.name] if listener.tls is not None else None
        try:
            port = open_listener(
                self.reactor, listener.endpoint, RelaySite(self.gateway, listener), tls_creator=creator,
                reuse_port=self.worker is not None or config.workers > 1,
                port=self.port_overrides.get(listener.name),
            )
        except (OSError, CannotListenError) as e:
            reason = getattr(e, "socketError", None) or e
            reason = getattr(reason, "strerror", None) or reason
            raise ConfigError(config.path, section, key, f"cannot listen on {listener.endpoint!r}: {reason}") from None
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigError(config.path, section, key, f"{listener.endpoint!r}: {e}") from None
        url = _url(port, listener)
        self.urls.append(url)
        self.log.info("wsrelay listening on {url} ({listener}{worker})", url=url, listener=listener.name,
                      worker=self._worker_label)
        return port

    def _start_listeners(self, listeners: tuple[Listener, ...]) -> None:
        started: list[tuple[tuple[str, str], IListeningPort]] = []
        try:
            for listener in listeners:
                started.append(((listener.name, listener.endpoint), self._listen(listener)))
        except ConfigError:
            for _, port in started:
                port.stopListening()
            raise
        self.ports.update(started)

    def privilegedStartService(self) -> None:
        # Bind before privileges are shed (twistd --uid), so ports below 1024 work.
        self._start_listeners(self.config.listeners)
        super().privilegedStartService()

    def startService(self) -> None:
        if not self.ports:
            self._start_listeners(self.config.listeners)
        super().startService()
        if self.handle_signals:
            self._previous_sighup = signal.signal(signal.SIGHUP, self._on_sighup)
        if self.worker is None and self.config.workers > 1:
            ports = {key[0]: port.getHost().port for key, port in self.ports.items()
                     if hasattr(port.getHost(), "port")}
            self.workers = Workers(self.reactor, self.config.path, self.config.workers - 1, ports)
            self.workers.start()

    def _on_sighup(self, signum: int, frame: object) -> None:
        self.reactor.callFromThread(self._reload_all)

    def _reload_all(self) -> None:
        self.reload()
        if self.workers is not None:
            self.workers.signal(signal.SIGHUP)  # each worker validates and reloads on its own

    # -- reload -----------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the configuration file; True if the new one is in service."""
        path = self.config.path
        try:
            new = self.loader(path)
            commit_tls = self._tls.prepare(new)
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
            self.log.error("reload refused, the running configuration stays in service{worker}: {error}",
                           error=str(e), worker=self._worker_label)
            return False
        if new.workers != self.config.workers and self.worker is None:
            self.log.warn("workers changed from {old} to {new}: takes effect at the next restart",
                          old=self.config.workers, new=new.workers)
        commit_tls()
        for key, port in old_ports.items():
            if key not in wanted:
                self.log.info("listener {name} removed: no longer listening on {endpoint}", name=key[0], endpoint=key[1])
                port.stopListening()
        self.gateway.apply(new)
        self.log.info("configuration reloaded from {path}: {routes} routes, {upstreams} upstream groups{worker}",
                      path=path, routes=len(new.routes), upstreams=len(new.upstreams), worker=self._worker_label)
        return True

    # -- stop -------------------------------------------------------------------------------

    @inlineCallbacks
    def stopService(self):  # type: ignore[no-untyped-def]
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        yield DeferredList([Deferred.fromCoroutine(_stop(p)) for p in self.ports.values()])
        self.ports.clear()
        workers_stopped = self.workers.stop(self.config.drain_timeout + 5) if self.workers else None
        if self.gateway.live:
            self.log.info("draining {n} open exchanges for up to {t}s", n=len(self.gateway.live),
                          t=self.config.drain_timeout)
            yield self._idle_within(self.config.drain_timeout)
            self.gateway.shutdown_all()
            yield self._idle_within(2.0)  # a bounded moment for the close frames to go out
        self.gateway.close()
        if workers_stopped is not None:
            yield workers_stopped
        yield super().stopService()
        self.log.info("wsrelay stopped{worker}", worker=self._worker_label)
        # twistd ends the process with the terminating signal right after the reactor stops,
        # before buffered log output would be written: flush it now.
        sys.stdout.flush()
        sys.stderr.flush()


    def _idle_within(self, seconds: float) -> Deferred[None]:
        """Fires when no exchange is live, or after ``seconds``, whichever comes first."""
        idle = self.gateway.when_idle()
        timer = self.reactor.callLater(seconds, idle.cancel)

        def done(result: object) -> None:
            if timer.active():
                timer.cancel()

        return idle.addBoth(done)


async def _stop(port: IListeningPort) -> None:
    await port.stopListening()

"""twistd entry point: ``twistd -n wsrelay --config etc/relay.ini``.

The only module that imports the global reactor.  A configuration problem ends start-up with
exit status 1 and one line naming the file, section and key: never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from twisted.application.service import IService, Service
from twisted.python import usage

from wsrelay import config as configmod


class Options(usage.Options):
    """wsrelay [--config PATH] [--check]"""

    synopsis = "[--config PATH] [--check]"
    longdesc = (
        "wsrelay: a reverse proxy for HTTP and WebSocket. It routes requests by host and path to "
        "upstream groups, relays WebSocket messages (or tunnels bytes), terminates TLS, and reloads "
        "its configuration on SIGHUP. See README.rst and etc/relay.ini."
    )
    optParameters = [
        ["config", "c", configmod.DEFAULT_PATH, "The configuration file (INI; see etc/relay.ini)."],
        ["worker", None, None, "Internal: run as worker N of a master wsrelay (workers = N in the config).", int],
        ["ports", None, "{}", "Internal: JSON map of listener name to the port the master bound."],
        ["ready-fd", None, None, "Internal: a worker writes 'ready' to this descriptor once it listens.", int],
        ["admin-socket", None, None, "Internal: a worker serves its admin pages on this unix socket for the master."],
    ]
    optFlags = [
        ["check", "t", "Check the configuration (and its TLS files), print the result, exit 0 or 1 without serving."],
    ]


def _fail(message: str) -> SystemExit:
    sys.stderr.write(f"wsrelay: {message}\n")
    sys.stderr.flush()
    return SystemExit(1)


def makeService(options: Options) -> IService:
    """Load and check the configuration, then build the service (listening starts later)."""
    path = options["config"]
    try:
        config = configmod.load(path)
        if options["check"]:
            from wsrelay.service import check

            for warning in check(config):  # TLS files, cipher lists, CA files, the access log, secrets
                sys.stderr.write(f"wsrelay: warning: {warning}\n")
    except configmod.ConfigError as e:
        raise _fail(str(e)) from None
    if options["check"]:
        sys.stdout.write(f"wsrelay: configuration {path} is valid "
                         f"({len(config.listeners)} listeners, {len(config.routes)} routes, "
                         f"{len(config.upstreams)} upstream groups)\n")
        sys.stdout.flush()
        raise SystemExit(0)
    from twisted.internet import reactor

    from wsrelay.service import RelayService
    from wsrelay.systemd import Notifier

    worker = options["worker"]
    try:
        ports = {str(k): int(v) for k, v in json.loads(options["ports"]).items()}
    except (ValueError, AttributeError):
        raise _fail(f"--ports: {options['ports']!r} is not a JSON object of listener names to ports") from None
    try:
        # Loads TLS files and contexts, CA files, opens the access log: ConfigError on a problem.
        # Only the main process speaks to systemd (NotifyAccess=main); workers get no notifier.
        notifier = Notifier(os.environ, pid=os.getpid()) if worker is None else None
        service = RelayService(config, reactor, handle_signals=True, worker=worker, port_overrides=ports,
                               notifier=notifier, ready_fd=options["ready-fd"],
                               admin_socket=options["admin-socket"])
    except configmod.ConfigError as e:
        raise _fail(str(e)) from None
    if worker is not None:
        from wsrelay.workers import watch_master

        reactor.callWhenRunning(watch_master, reactor)
    return _Guarded(service)


class _Guarded(Service):
    """Wraps the relay service so that a listener that cannot bind ends twistd with status 1."""

    def __init__(self, inner: IService) -> None:
        self.inner = inner

    def privilegedStartService(self) -> None:
        try:
            self.inner.privilegedStartService()
        except configmod.ConfigError as e:
            raise _fail(str(e)) from None
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        self.inner.startService()

    def stopService(self):  # type: ignore[no-untyped-def]
        super().stopService()
        return self.inner.stopService()

    def setServiceParent(self, parent: Any) -> None:
        # twistd makes the application after makeService, then asks it for an ILogObserver
        # (unless --logger names one): log_format = json is set there.
        if self.inner.config.log_format == "json":  # type: ignore[attr-defined]
            from twisted.logger import ILogObserver

            from wsrelay import logs

            parent.setComponent(ILogObserver, logs.json())
        super().setServiceParent(parent)

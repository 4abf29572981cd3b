"""A log observer for systemd's journal: ``<priority>[namespace] text`` on stdout.

journald adds its own timestamps and reads the ``<N>`` prefix as the syslog priority
(``SyslogLevelPrefix=`` is on by default).  Use with ``twistd --logger=wsrelay.logs.journald``.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.logger import ILogObserver, LogLevel, formatEvent
from zope.interface import provider

_PRIORITY = {LogLevel.debug: 7, LogLevel.info: 6, LogLevel.warn: 4, LogLevel.error: 3, LogLevel.critical: 2}


def journald() -> ILogObserver:
    """twistd ``--logger`` factory."""

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        text = formatEvent(event)
        if event.get("log_failure") is not None:
            text += "\n" + event["log_failure"].getTraceback()
        prio = _PRIORITY.get(event.get("log_level", LogLevel.info), 6)
        ns = event.get("log_namespace", "-")
        for line in text.splitlines() or [""]:
            sys.stdout.write(f"<{prio}>[{ns}] {line}\n")
        sys.stdout.flush()

    return observe

"""Log observers for wsrelay's own log lines (the access log is ``accesslog.py``'s).

- :func:`journald`: ``<priority>[namespace] text`` on stdout, for systemd's journal (journald adds
  its own timestamps and reads the ``<N>`` prefix as the syslog priority); ``twistd
  --logger=wsrelay.logs.journald``.
- :func:`json`: one JSON object per line on stdout, for log shippers: ``time`` (ISO 8601, UTC),
  ``level``, ``namespace``, ``message`` (the formatted text), ``failure`` (a traceback, when
  there is one) and the event's own fields that are plain values (``route``, ``client``,
  ``status``, ``detail``...); ``log_format = json`` in ``[wsrelay]`` or ``twistd
  --logger=wsrelay.logs.json``.  wsrelay's log events carry no payloads, cookies or
  ``Authorization`` values, so neither format can show them.
"""

from __future__ import annotations

import datetime
import json as _json
import sys
from typing import Any

from twisted.logger import ILogObserver, LogLevel, formatEvent
from zope.interface import provider

_PRIORITY = {LogLevel.debug: 7, LogLevel.info: 6, LogLevel.warn: 4, LogLevel.error: 3, LogLevel.critical: 2}


def journald() -> ILogObserver:
    """twistd ``--logger`` factory."""
    out = sys.stdout  # the real one: twistd then turns sys.stdout into a log of its own

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        text = formatEvent(event)
        if event.get("log_failure") is not None:
            text += "\n" + event["log_failure"].getTraceback()
        prio = _PRIORITY.get(event.get("log_level", LogLevel.info), 6)
        ns = event.get("log_namespace", "-")
        for line in text.splitlines() or [""]:
            out.write(f"<{prio}>[{ns}] {line}\n")
        out.flush()

    return observe


_PLAIN = (str, int, float, bool, type(None))


def json() -> ILogObserver:
    """twistd ``--logger`` factory (and what ``log_format = json`` installs)."""
    out = sys.stdout  # the real one: twistd then turns sys.stdout into a log of its own

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        record: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(event.get("log_time", 0), datetime.timezone.utc)
                    .isoformat(timespec="milliseconds"),
            "level": getattr(event.get("log_level"), "name", "info"),
            "namespace": event.get("log_namespace", "-"),
            "message": formatEvent(event),
        }
        failure = event.get("log_failure")
        if failure is not None:
            record["failure"] = failure.getTraceback()
        for key, value in event.items():
            if not key.startswith("log_") and key not in record and isinstance(value, _PLAIN):
                record[key] = value
        out.write(_json.dumps(record, default=str) + "\n")
        out.flush()

    return observe

"""The admin pages of every worker, gathered by the master (``workers = N``).

Invariants:

- Each worker serves the admin pages of its own state on a unix socket in a directory only the
  master's user can enter (``mkdtemp``: mode 0700), made by the master and removed when it stops;
  workers have no TCP admin listener, and no ``allow`` list applies to the socket (the directory's
  permissions are the access control).
- The master's ``/metrics`` and ``/status`` ask every worker at scrape time, each with a bounded
  timeout: a worker that does not answer in time (starting, restarting, stuck) is left out of
  that answer and shown as ``wsrelay_worker_up{worker="N"} 0``; the page never waits longer than
  :data:`TIMEOUT`.
- Every sample gets a ``worker`` label (the master is worker 0), so ``sum without (worker)``
  gives the process-wide figure and nothing is added up by wsrelay itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.web.client import Agent, readBody
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

#: Seconds the master waits for a worker's page.
TIMEOUT = 2.0


def socket_path(directory: str, index: int) -> str:
    """Where worker ``index`` serves its admin pages."""
    return os.path.join(directory, f"worker-{index}.sock")


def serve_worker_pages(reactor: Any, path: str, site: Any) -> Any:
    """In a worker: serve ``site`` (its admin pages) on ``path`` (in the master's private
    directory; a socket left by a worker of the same index that died is replaced)."""
    if os.path.exists(path):
        os.unlink(path)
    return reactor.listenUNIX(path, site, mode=0o600)


@implementer(IAgentEndpointFactory)
class _UnixSocket:
    def __init__(self, reactor: Any, path: str) -> None:
        self.reactor = reactor
        self.path = path

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
        return UNIXClientEndpoint(self.reactor, self.path, timeout=TIMEOUT)


def fetch(reactor: Any, path: str, page: bytes) -> Deferred[bytes | None]:
    """The body of ``page`` from the worker listening on ``path``; None if it does not answer
    with 200 within :data:`TIMEOUT`."""
    agent = Agent.usingEndpointFactory(reactor, _UnixSocket(reactor, path))
    d = agent.request(b"GET", b"http://worker" + page)

    def body(response: Any) -> Any:
        if response.code != 200:
            response.deliverBody(_Discard())
            return None
        return readBody(response)

    d.addCallback(body)
    d.addTimeout(TIMEOUT, reactor)
    return d.addErrback(lambda _: None)


class _Discard:
    def makeConnection(self, transport: Any) -> None:
        transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        pass


def fetch_all(reactor: Any, sockets: dict[int, str], page: bytes) -> Deferred[dict[int, bytes | None]]:
    """``page`` from every worker of ``sockets``, at the same time, by worker index."""
    indexes = sorted(sockets)
    d = gatherResults([fetch(reactor, sockets[i], page) for i in indexes])
    return d.addCallback(lambda bodies: dict(zip(indexes, bodies)))


def merge_metrics(texts: dict[int, bytes | None]) -> bytes:
    """One Prometheus text page of every worker's page: each sample labelled with its worker,
    families merged by name, and ``wsrelay_worker_up`` (0 for a worker that gave no page)."""
    families: dict[str, Metric] = {}
    up = GaugeMetricFamily("wsrelay_worker_up", "1 if the worker's figures are in this page, 0 if it did "
                           "not answer in time", labels=["worker"])
    for index, text in sorted(texts.items()):
        up.add_metric([str(index)], float(text is not None))
        if text is None:
            continue
        for family in text_string_to_metric_families(text.decode("utf-8")):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            worker = str(index)
            merged.samples += [s._replace(labels={**s.labels, "worker": worker}) for s in family.samples]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([up, *families.values()]))  # type: ignore[arg-type]
    return generate_latest(registry)


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def merge_status(own: dict[str, Any], texts: dict[int, bytes | None]) -> dict[str, Any]:
    """The master's /status with each worker's under ``workers`` (null: it did not answer)."""
    workers: dict[str, Any] = {}
    for index, text in sorted(texts.items()):
        try:
            workers[str(index)] = json.loads(text) if text is not None else None
        except ValueError:
            workers[str(index)] = None
    return dict(own, workers=workers)

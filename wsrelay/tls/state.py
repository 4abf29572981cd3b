"""The TLS state of one process, across reloads: the listeners' server contexts, the
certificates in service, the upstream trust roots.

A configuration's TLS files are all loaded and checked first (:meth:`TLSState.prepare`, which
raises ConfigError before anything changes); :meth:`Prepared.commit` then puts them in service, so
a refused reload leaves the running TLS state whole.  pyOpenSSL is imported only when a
configuration uses TLS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from wsrelay.config import Config


class TLSState:
    """Per-listener TLS server contexts, the certificates in service and the upstream CA files,
    loaded from the config (imported lazily: pyOpenSSL)."""

    def __init__(self) -> None:
        self.contexts: dict[str, Any] = {}
        self.loaded: dict[str, Any] = {}  # certificate name -> LoadedCertificate in service

    @staticmethod
    def needed(config: Config) -> bool:
        return any(l.tls for l in config.listeners) or any(
            u.tls_ca or any(s.tls for s in u.servers) for u in config.upstreams.values())

    def prepare(self, config: Config, strict: bool = False) -> Prepared:
        """Load every certificate and CA file of ``config`` and build its contexts; return what
        puts them in service (``commit(only_new)``: only contexts for listeners that have none).

        A bad certificate is left out (its running version kept, if valid) and logged at commit;
        ``strict`` (``--check``) makes it an error.  Raises ConfigError before anything changes.
        """
        if not self.needed(config):
            return Prepared(lambda only_new=False: None, ())
        from wsrelay.tls import server, upstream

        certs = server.load_each(config.certificates, config.path, previous=self.loaded)
        if strict and certs.problems:
            raise next(iter(certs.problems.values()))
        built = server.server_contexts(config, certs.loaded, certs.problems)
        upstream_tls = upstream.load_upstream_tls(config)

        def commit(only_new: bool = False) -> None:
            for name, contexts in built.items():
                if name not in self.contexts:
                    self.contexts[name] = server.ServerContexts(contexts)
                elif not only_new:
                    self.contexts[name].use(contexts)
            if not only_new:
                upstream.use_upstream_tls(upstream_tls)
                self.loaded = dict(certs.loaded)
                server.report(certs)

        return Prepared(commit, certs.warnings)


@attrs.frozen
class Prepared:
    """What :meth:`TLSState.prepare` loaded: ``commit`` puts it in service, ``warnings`` are the
    lines a start would log (private keys others can read)."""

    commit: Callable[..., None]
    warnings: tuple[str, ...]

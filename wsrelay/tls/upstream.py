"""Client TLS toward upstream servers with pyOpenSSL.  No reactor.

The upstream's certificate is verified against the system trust store or ``tls_ca``, its name
checked with service-identity, SNI sent; ``tls_verify = off`` turns verification off for that group
only.  CA files are read at load (:func:`load_upstream_tls`, a ConfigError naming the upstream, the
key and the file if one holds no PEM certificate), not per connection; the creators of the
configuration in service (:func:`use_upstream_tls`) are module state, one set per process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet import ssl as tssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsrelay.config import Config, ConfigError, Server, Upstream
from wsrelay.config.hosts import is_ip

_log = Logger()


def read_ca(path: str) -> Any:
    """A trust root of the PEM certificates in ``path``; ValueError saying why it cannot be one."""
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ValueError(f"{path}: no PEM certificate in it") from None
    return tssl.trustRootFromCertificates([tssl.Certificate(crypto.X509.from_cryptography(c)) for c in certs])


@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """``tls_verify = off``: no certificate or name check, but SNI still sent (a server name, not
    an address: RFC 6066 section 3), since a server with several certificates picks one by it."""

    def __init__(self, hostname: str) -> None:
        self._options = tssl.CertificateOptions(verify=False, acceptableProtocols=[b"http/1.1"])
        self._sni = None if is_ip(hostname) else hostname.encode("ascii")  # A-labels (config.hosts)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._options.getContext(), None)
        connection.set_app_data(tlsProtocol)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        return connection


class UpstreamTLS:
    """Client TLS toward upstreams for one configuration: each ``tls_ca`` file is read once, at
    load, and one connection creator per (verification, CA, name) serves every connection."""

    def __init__(self, roots: Mapping[str, Any]) -> None:
        self._roots = dict(roots)  # tls_ca path -> trust root
        self._creators: dict[tuple[bool, str | None, str], Any] = {}

    def creator(self, upstream: Upstream, server: Server) -> Any:
        """The creator for an ``https://`` server of ``upstream``; never raises."""
        key = (upstream.tls_verify, upstream.tls_ca, upstream.tls_server_name or server.host)
        creator = self._creators.get(key)
        if creator is None:
            creator = self._creators[key] = self._build(*key)
        return creator

    def _build(self, verify: bool, ca: str | None, hostname: str) -> Any:
        if not verify:
            return _Unverified(hostname)
        trust = tssl.platformTrust() if ca is None else self._trust(ca)
        return tssl.optionsForClientTLS(hostname, trustRoot=trust, acceptableProtocols=[b"http/1.1"])

    def _trust(self, ca: str) -> Any:
        if ca not in self._roots:  # used without a configuration load (load_upstream_tls)
            try:
                self._roots[ca] = read_ca(ca)
            except ValueError as e:
                _log.error("upstream TLS: {error}: its servers fail verification", error=str(e))
                self._roots[ca] = tssl.trustRootFromCertificates([])  # trusts nothing
        return self._roots[ca]


def load_upstream_tls(config: Config) -> UpstreamTLS:
    """Read every ``tls_ca`` of ``config``; ConfigError naming the upstream on any problem."""
    roots: dict[str, Any] = {}
    for name, upstream in config.upstreams.items():
        if upstream.tls_ca is not None and upstream.tls_ca not in roots:
            try:
                roots[upstream.tls_ca] = read_ca(upstream.tls_ca)
            except ValueError as e:
                raise ConfigError(config.path, f"upstream {name}", "tls_ca", str(e)) from None
    return UpstreamTLS(roots)


_upstream_tls = UpstreamTLS({})  # the configuration in service (per process)


def use_upstream_tls(upstream_tls: UpstreamTLS) -> None:
    """Put a loaded configuration's upstream TLS in service for new connections."""
    global _upstream_tls
    _upstream_tls = upstream_tls


def client_creator(upstream: Upstream, server: Server) -> Any:
    """A Twisted client TLS connection creator for an ``https://`` server of ``upstream``."""
    return _upstream_tls.creator(upstream, server)


def describe_tls_failure(failure: Failure | BaseException) -> str:
    """A short reason for a log line: why a TLS connection to an upstream failed."""
    error = failure.value if isinstance(failure, Failure) else failure
    text = str(error)
    if "VerificationError" in type(error).__name__ or "DNSMismatch" in text or "mismatch" in text.lower():
        return f"upstream certificate does not match its name ({text[:200]})"
    if isinstance(error, SSL.Error) or "certificate verify failed" in text:
        return f"TLS handshake with upstream failed: {text[:200]}"
    return text[:200] or type(error).__name__

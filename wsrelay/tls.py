"""TLS with pyOpenSSL: listener contexts (SNI, safe defaults, reload) and upstream verification.

The only module that uses pyOpenSSL.  No reactor.

Server side, per TLS listener (:class:`ServerContexts`):

- TLS 1.2 and 1.3 only (``tls_min_version`` can raise it to 1.3); the cipher list of Mozilla's
  "intermediate" profile for TLS 1.2 (``tls_ciphers``); key exchange groups X25519, P-256, P-384;
  ALPN ``http/1.1`` only; no TLS compression, no renegotiation, no session tickets.
- One context per certificate, chosen by SNI: an exact name first, then a ``*.domain`` wildcard
  (one label); a client that sends no or an unknown name gets ``default_certificate``, or the
  handshake is refused with an ``unrecognized_name`` alert when the listener has none.
- Contexts are built once per configuration load; :meth:`ServerContexts.update` swaps them in on
  reload (new handshakes get the new certificates, open connections keep theirs).

Loading (:func:`load_certificates`) checks everything before anything is used: the files exist and
are PEM, the key opens (with its password) and matches the certificate, the certificate is within
its validity period.  Each problem is a ConfigError naming the section, key and file.

Upstream side (:func:`client_creator`): the upstream's certificate is verified against the system
trust store or ``tls_ca``, its name checked with service-identity, SNI sent; ``tls_verify = off``
turns verification off for that group only.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl as tssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.python.failure import Failure
from zope.interface import implementer

from wsrelay.config import Certificate, ConfigError, Server, ServerTLS, Upstream

GROUPS = b"X25519:P-256:P-384"


@attrs.frozen
class LoadedCertificate:
    """A certificate chain and key, checked, with the names it serves."""

    name: str
    chain: tuple[x509.Certificate, ...]
    key: Any  # cryptography private key
    names: tuple[str, ...]


LoadedCertificates = Mapping[str, LoadedCertificate]


def _names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        return tuple(n.lower() for n in san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        return ()


def load_certificate(cert: Certificate, config_path: str, now: datetime.datetime | None = None) -> LoadedCertificate:
    """Read and check one ``[certificate NAME]``; ConfigError names the file on any problem."""
    section = f"certificate {cert.name}"

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(config_path, section, key, message)

    try:
        with open(cert.cert_file, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise fail("cert", f"{cert.cert_file}: cannot be read ({e.strerror})") from None
    try:
        chain = tuple(x509.load_pem_x509_certificates(pem))
    except ValueError:
        raise fail("cert", f"{cert.cert_file}: no PEM certificate in it") from None
    try:
        with open(cert.key_file, "rb") as f:
            key_pem = f.read()
    except OSError as e:
        raise fail("key", f"{cert.key_file}: cannot be read ({e.strerror})") from None
    password = cert.password.encode("utf-8") if cert.password else None
    try:
        key = serialization.load_pem_private_key(key_pem, password=password)
    except TypeError:
        # Encrypted without a password given, or a password given for a plain key.
        what = "password" if password is None else "password"
        message = ("is encrypted: give its password" if password is None else "is not encrypted: remove 'password'")
        raise fail(what, f"{cert.key_file}: the key {message}") from None
    except ValueError:
        if password is not None:
            raise fail("password", f"{cert.key_file}: wrong password, or not a PEM private key") from None
        raise fail("key", f"{cert.key_file}: not a PEM private key") from None
    leaf = chain[0]
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if public != leaf.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo):
        raise fail("key", f"{cert.key_file} does not match the certificate in {cert.cert_file}")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if leaf.not_valid_after_utc < now:
        raise fail("cert", f"{cert.cert_file}: the certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d}")
    if leaf.not_valid_before_utc > now:
        raise fail("cert", f"{cert.cert_file}: the certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d}")
    names = cert.hosts or _names(leaf)
    if not names:
        raise fail("hosts", f"{cert.cert_file} names no DNS host: list the names in 'hosts'")
    return LoadedCertificate(name=cert.name, chain=chain, key=key, names=tuple(names))


def load_certificates(certs: Mapping[str, Certificate], config_path: str) -> dict[str, LoadedCertificate]:
    """Load every certificate of a configuration (all or nothing)."""
    return {name: load_certificate(cert, config_path) for name, cert in certs.items()}


def _set_groups(ctx: SSL.Context) -> None:
    """Key exchange groups of the Mozilla intermediate profile (X25519, P-256, P-384).

    pyOpenSSL 26 has no public call for this; ``SSL_CTX_set1_curves_list`` (the groups list under
    its older name) is reached through pyOpenSSL's bindings when they have it, else OpenSSL's
    defaults stay (which add X448 and P-521).
    """
    from OpenSSL._util import lib

    setter = getattr(lib, "SSL_CTX_set1_curves_list", None)
    if setter is not None and setter(ctx._context, GROUPS) != 1:  # type: ignore[attr-defined]
        raise SSL.Error("cannot set the key exchange groups")


def _context(tls: ServerTLS, cert: LoadedCertificate, select: Any) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION if tls.min_version == "1.3" else SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_TICKET | SSL.OP_CIPHER_SERVER_PREFERENCE
                    | getattr(SSL, "OP_NO_RENEGOTIATION", 0))
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_cipher_list(tls.ciphers.encode("ascii"))
    _set_groups(ctx)
    ctx.use_certificate(crypto.X509.from_cryptography(cert.chain[0]))
    for extra in cert.chain[1:]:
        ctx.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
    ctx.use_privatekey(crypto.PKey.from_cryptography_key(cert.key))
    ctx.check_privatekey()
    ctx.set_alpn_select_callback(lambda conn, offered: b"http/1.1" if b"http/1.1" in offered else SSL.NO_OVERLAPPING_PROTOCOLS)
    ctx.set_tlsext_servername_callback(select)
    return ctx


@implementer(IOpenSSLServerConnectionCreator)
class ServerContexts:
    """The TLS contexts of one listener, swappable on reload."""

    def __init__(self, tls: ServerTLS, loaded: Mapping[str, LoadedCertificate]) -> None:
        self.update(tls, loaded)

    def update(self, tls: ServerTLS, loaded: Mapping[str, LoadedCertificate]) -> None:
        """Build and swap in the contexts for ``tls`` (new handshakes only)."""
        contexts = {name: _context(tls, loaded[name], self._select) for name in tls.certificates}
        exact: dict[str, SSL.Context] = {}
        wildcard: dict[str, SSL.Context] = {}
        for name in tls.certificates:
            for host in loaded[name].names:
                target = wildcard if host.startswith("*.") else exact
                target.setdefault(host[2:] if host.startswith("*.") else host, contexts[name])
        default = contexts[tls.default_certificate] if tls.default_certificate else None
        # One attribute swap: a handshake sees the old set or the new one, never a mix.
        self._state = (exact, wildcard, default, next(iter(contexts.values())))

    def context_for(self, server_name: bytes | None) -> SSL.Context | None:
        exact, wildcard, default, _ = self._state
        if server_name:
            name = server_name.decode("ascii", "replace").lower().rstrip(".")
            if name in exact:
                return exact[name]
            parent = name.split(".", 1)[1] if "." in name else ""
            if parent in wildcard:
                return wildcard[parent]
        return default

    def _select(self, connection: SSL.Connection) -> None:
        ctx = self.context_for(connection.get_servername())
        if ctx is None:
            raise SSL.Error("unrecognized server name")  # aborts the handshake with an alert
        connection.set_context(ctx)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        exact, wildcard, default, first = self._state
        # Start on the default context (or any, when SNI decides) and switch in the SNI callback.
        return SSL.Connection(default or first, None)


def client_creator(upstream: Upstream, server: Server) -> Any:
    """A Twisted client TLS connection creator for an ``https://`` server of ``upstream``."""
    hostname = upstream.tls_server_name or server.host
    if not upstream.tls_verify:
        return tssl.CertificateOptions(verify=False, acceptableProtocols=[b"http/1.1"])
    trust: Any = tssl.platformTrust()
    if upstream.tls_ca:
        with open(upstream.tls_ca, "rb") as f:
            trust = tssl.trustRootFromCertificates(
                [tssl.Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM))
                 for c in x509.load_pem_x509_certificates(f.read())])
    return tssl.optionsForClientTLS(hostname, trustRoot=trust, acceptableProtocols=[b"http/1.1"])


def describe_tls_failure(failure: Failure | BaseException) -> str:
    """A short reason for a log line: why a TLS connection to an upstream failed."""
    error = failure.value if isinstance(failure, Failure) else failure
    text = str(error)
    if "VerificationError" in type(error).__name__ or "DNSMismatch" in text or "mismatch" in text.lower():
        return f"upstream certificate does not match its name ({text[:200]})"
    if isinstance(error, SSL.Error) or "certificate verify failed" in text:
        return f"TLS handshake with upstream failed: {text[:200]}"
    return text[:200] or type(error).__name__

"""TLS listeners with pyOpenSSL: certificates, SNI contexts, safe defaults, reload.  No reactor.

Per TLS listener (:class:`ServerContexts`):

- TLS 1.2 and 1.3 only (``tls_min_version`` can raise it to 1.3); the cipher list of Mozilla's
  "intermediate" profile for TLS 1.2 (``tls_ciphers``); key exchange groups X25519, P-256, P-384;
  ALPN ``http/1.1`` only; no TLS compression, no renegotiation, no session tickets.
- One context per certificate, chosen by SNI: an exact name first, then a ``*.domain`` wildcard
  (one label); a client that sends no or an unknown name gets ``default_certificate``, or, when
  the listener has none, is switched to a context without a certificate, so OpenSSL ends the
  handshake with an alert (one info line, no traceback).
- Contexts are built once per configuration load (:func:`server_contexts`);
  :meth:`ServerContexts.use` swaps them in on reload (new handshakes get the new certificates, open
  connections keep theirs).

Loading (:func:`load_each`, :func:`server_contexts`) checks everything before anything is used:
the files exist and are PEM, the key opens (with its password) and matches the certificate, the
certificate is within its validity period, ``tls_ciphers`` selects a cipher.  Each problem is a
ConfigError naming the section, key and file.  One bad certificate does not stop the others: it is
left out (on a reload its running version stays, if still valid) and :func:`report` logs it; only a
TLS listener left with no usable certificate is an error.  ``--check`` is strict: any bad
certificate fails it.  A private key file its group or others can access gets a warning.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wsrelay.config import Certificate, Config, ConfigError, Listener, ServerTLS
from wsrelay.sticky import loose_mode

GROUPS = b"X25519:P-256:P-384"
_log = Logger()


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


@attrs.frozen
class CertificateLoad:
    """The certificates of one configuration load: the usable ones, and why the others are not."""

    loaded: Mapping[str, LoadedCertificate]
    problems: Mapping[str, ConfigError]  # certificate name -> why its files cannot be used
    kept: frozenset[str]  # problems whose running version stays in service (a reload)
    warnings: tuple[str, ...]  # private keys others can read


def _valid(cert: LoadedCertificate, now: datetime.datetime) -> bool:
    return cert.chain[0].not_valid_before_utc <= now <= cert.chain[0].not_valid_after_utc


def load_each(certs: Mapping[str, Certificate], config_path: str,
              previous: Mapping[str, LoadedCertificate] | None = None,
              now: datetime.datetime | None = None) -> CertificateLoad:
    """Load each certificate on its own; a bad one is a problem, not an error for the others.
    ``previous``: the certificates in service (a reload), whose still-valid version stays in
    service in place of a bad new one of the same name."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    loaded: dict[str, LoadedCertificate] = {}
    problems: dict[str, ConfigError] = {}
    kept: set[str] = set()
    warnings: list[str] = []
    for name, cert in certs.items():
        try:
            loaded[name] = load_certificate(cert, config_path, now)
        except ConfigError as e:
            problems[name] = e
            old = (previous or {}).get(name)
            if old is not None and _valid(old, now):
                loaded[name] = old
                kept.add(name)
            continue
        warning = loose_mode(cert.key_file)
        if warning:
            warnings.append(f"{config_path}: [certificate {name}] key: private key {warning}")
    return CertificateLoad(loaded=loaded, problems=problems, kept=frozenset(kept), warnings=tuple(warnings))


def report(load: CertificateLoad) -> None:
    """Log each certificate left out or kept, and each key file others can read (one line each)."""
    for name, problem in load.problems.items():
        if name in load.kept:
            _log.error("certificate not reloaded, its running version stays in service: {error}", error=str(problem))
        else:
            _log.error("certificate not in service (the listener's other certificates serve): {error}",
                       error=str(problem))
    for warning in load.warnings:
        _log.warn("{warning}", warning=warning)


def usable_tls(listener: Listener, loaded: Mapping[str, Any], problems: Mapping[str, ConfigError],
               config_path: str) -> ServerTLS:
    """The TLS settings of ``listener`` with only its usable certificates; a bad default gives way
    to the first usable one.  ConfigError (the first problem) if none is usable."""
    tls = listener.tls
    assert tls is not None
    usable = tuple(name for name in tls.certificates if name in loaded)
    if not usable:
        first = problems.get(tls.certificates[0])
        message = first.message if first is not None else "not loaded"
        raise ConfigError(config_path, first.section if first else f"certificate {tls.certificates[0]}",
                          first.key if first else None,
                          f"{message}; [listener {listener.name}] has no usable certificate")
    if usable == tls.certificates:
        return tls
    default = tls.default_certificate
    if default is not None and default not in usable:
        default = usable[0]
    return attrs.evolve(tls, certificates=usable, default_certificate=default)


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


def _cipher_list(ciphers: str) -> bytes:
    # Never an anonymous or null suite, whatever tls_ciphers says: a refused handshake (no
    # certificate) must fail, not fall back to an unauthenticated one.
    return ciphers.encode("ascii") + b":!aNULL:!eNULL"


def _server_context(tls: ServerTLS, cert: LoadedCertificate | None) -> SSL.Context:
    """A listener context for ``cert``; with None, one with no certificate, whose handshakes fail."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION if tls.min_version == "1.3" else SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_TICKET | SSL.OP_CIPHER_SERVER_PREFERENCE
                    | getattr(SSL, "OP_NO_RENEGOTIATION", 0))
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_cipher_list(_cipher_list(tls.ciphers))
    _set_groups(ctx)
    if cert is not None:
        ctx.use_certificate(cert.chain[0])
        for extra in cert.chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(cert.key)
        ctx.check_privatekey()
    ctx.set_alpn_select_callback(lambda conn, offered: b"http/1.1" if b"http/1.1" in offered else SSL.NO_OVERLAPPING_PROTOCOLS)
    return ctx


class SNIContexts:
    """The contexts of one listener for one configuration, and the SNI choice among them.

    A handshake starts on one set and its servername callback is that set's: it never mixes the
    contexts of two configurations.
    """

    def __init__(self, listener: str, tls: ServerTLS, loaded: Mapping[str, LoadedCertificate]) -> None:
        self.listener = listener
        contexts = {name: _server_context(tls, loaded[name]) for name in tls.certificates}
        self.exact: dict[str, SSL.Context] = {}
        self.wildcard: dict[str, SSL.Context] = {}
        for name in tls.certificates:
            for host in loaded[name].names:
                target = self.wildcard if host.startswith("*.") else self.exact
                target.setdefault(host.removeprefix("*."), contexts[name])
        self.default = contexts[tls.default_certificate] if tls.default_certificate else None
        self.first = next(iter(contexts.values()))
        # No certificate: switching a handshake to it makes OpenSSL end it with a
        # handshake_failure alert.  (Raising in the callback would alert too, but pyOpenSSL hands
        # the exception to sys.excepthook: a traceback in the log per refused handshake.)
        self.refusing = _server_context(tls, None) if self.default is None else None
        for ctx in contexts.values():
            ctx.set_tlsext_servername_callback(self.select)

    def context_for(self, server_name: bytes | None) -> SSL.Context | None:
        """The context for an SNI name: exact, then ``*.parent``, then the default (None: refuse)."""
        if server_name:
            name = server_name.decode("ascii", "replace").lower().rstrip(".")
            if name in self.exact:
                return self.exact[name]
            parent = name.split(".", 1)[1] if "." in name else ""
            if parent in self.wildcard:
                return self.wildcard[parent]
        return self.default

    def select(self, connection: SSL.Connection) -> None:
        """The servername callback: switch to the chosen context, or to the refusing one."""
        server_name = connection.get_servername()
        ctx = self.context_for(server_name)
        if ctx is None:
            shown = server_name[:100].decode("ascii", "replace") if server_name else "none"
            _log.info("TLS handshake refused on listener {listener}: no certificate for server name {name!r}",
                      listener=self.listener, name=shown)
            ctx = self.refusing
        connection.set_context(ctx)


def server_contexts(config: Config, loaded: Mapping[str, LoadedCertificate],
                    problems: Mapping[str, ConfigError] | None = None) -> dict[str, SNIContexts]:
    """Build the contexts of every TLS listener of ``config`` from its usable certificates;
    ConfigError for a bad ``tls_ciphers`` or a listener with no usable certificate."""
    result = {}
    for listener in config.listeners:
        if listener.tls is None:
            continue
        try:
            SSL.Context(SSL.TLS_METHOD).set_cipher_list(_cipher_list(listener.tls.ciphers))
        except SSL.Error:
            raise ConfigError(config.path, f"listener {listener.name}", "tls_ciphers",
                              f"{listener.tls.ciphers!r} selects no cipher OpenSSL knows"
                              " (see 'openssl ciphers -v STRING')") from None
        tls = usable_tls(listener, loaded, problems or {}, config.path)
        result[listener.name] = SNIContexts(listener.name, tls, loaded)
    return result


@implementer(IOpenSSLServerConnectionCreator)
class ServerContexts:
    """The TLS connection creator of one listener; its contexts are swapped on reload."""

    def __init__(self, contexts: SNIContexts) -> None:
        self.contexts = contexts

    def use(self, contexts: SNIContexts) -> None:
        """Put another configuration's contexts in service (new handshakes only)."""
        self.contexts = contexts  # one attribute swap: a handshake sees the old set or the new one

    def context_for(self, server_name: bytes | None) -> SSL.Context | None:
        return self.contexts.context_for(server_name)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        contexts = self.contexts
        # Start on the default context (or any, when SNI decides) and switch in the SNI callback.
        return SSL.Connection(contexts.default or contexts.first, None)


def is_tls_error(reason: Any) -> bool:
    """Whether a connection ended with an OpenSSL error (a failed handshake, before it completed)."""
    return isinstance(reason, Failure) and reason.check(SSL.Error) is not None

"""The sticky cookie of ``balance = cookie``: a keyed server id and the cookie that carries it.

Invariants: no reactor, no sockets; files are read only by :func:`load_key`, when a
configuration is loaded (start-up, ``--check``, reload), never per request.

The id of a server is HMAC-SHA256(key, ``Server.key``) truncated to 128 bits, so it names the
server without revealing its address: without the key, hashing guessed addresses finds nothing.
The key must be the same in every process that should honour a cookie (the workers of one
installation, every node of a fleet behind an L4 balancer) and across restarts:

- ``sticky_secret_file`` (a file holding at least 16 bytes, read at load) or ``sticky_secret``
  (in the configuration) set it explicitly: the same secret gives the same ids everywhere;
- otherwise it is derived from this machine's ``/etc/machine-id`` (a random 128-bit id,
  HMAC-keyed as machine-id(5) advises) and the configuration file's absolute path: stable across
  restarts and shared by the workers of one installation, different on every machine.  Without
  a readable machine id, the host name stands in for it, with a warning (it can be guessed).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
from collections.abc import Sequence

import attrs

from wsrelay.config import Config, ConfigError, Server

MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")
MIN_SECRET_BYTES = 16
_LABEL = b"wsrelay sticky cookie v1"


@attrs.frozen
class StickyKey:
    """The key sticky ids are computed with, where it came from, and warnings for the log."""

    key: bytes = attrs.field(repr=False)
    source: str
    warnings: tuple[str, ...] = ()


def loose_mode(path: str) -> str | None:
    """A warning if the file at ``path`` may be read or changed by its group or others."""
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        return None
    if mode & 0o077:
        return f"{path} is accessible to its group or others (mode {mode:04o}): chmod 600 it"
    return None


def _machine_id(files: Sequence[str]) -> bytes | None:
    for path in files:
        try:
            with open(path, "rb") as f:
                value = f.read().strip()
        except OSError:
            continue
        if value:
            return value
    return None


def load_key(config: Config, machine_id_files: Sequence[str] = MACHINE_ID_FILES) -> StickyKey:
    """The sticky key of ``config``; ConfigError naming ``sticky_secret_file`` if it is unusable."""
    warnings: list[str] = []
    if config.sticky_secret_file is not None:
        path = config.sticky_secret_file

        def fail(message: str) -> ConfigError:
            return ConfigError(config.path, "wsrelay", "sticky_secret_file", f"{path}: {message}")

        try:
            with open(path, "rb") as f:
                secret = f.read().strip()
        except OSError as e:
            raise fail(f"cannot be read ({e.strerror})") from None
        if not secret:
            raise fail("is empty")
        if len(secret) < MIN_SECRET_BYTES:
            raise fail(f"holds {len(secret)} bytes: at least {MIN_SECRET_BYTES} are needed"
                       " (e.g. 'openssl rand -base64 32')")
        warning = loose_mode(path)
        if warning:
            warnings.append(f"sticky_secret_file {warning}")
        material, source = secret, f"sticky_secret_file {path}"
    elif config.sticky_secret is not None:
        material, source = config.sticky_secret.encode("utf-8"), "sticky_secret"
        if not config.path.startswith("<"):
            warning = loose_mode(config.path)
            if warning:
                warnings.append(f"sticky_secret is set in {warning}, or use sticky_secret_file")
    else:
        where = os.path.abspath(config.path).encode("utf-8")
        machine = _machine_id(machine_id_files)
        source = "machine-id"
        if machine is None:
            machine, source = socket.gethostname().encode("utf-8"), "host name"
            if any(u.balance == "cookie" for u in config.upstreams.values()):
                warnings.append(f"no readable {machine_id_files[0]}: sticky cookie ids are keyed with the host"
                                " name, which can be guessed; set sticky_secret_file in [wsrelay]")
        material = hmac.new(machine, _LABEL + b"\0" + where, hashlib.sha256).digest()
    key = hmac.new(material, _LABEL, hashlib.sha256).digest()
    return StickyKey(key=key, source=source, warnings=tuple(warnings))


def server_id(key: bytes, server: Server) -> str:
    """The opaque sticky id of ``server`` under ``key`` (32 hex digits)."""
    return hmac.new(key, server.key.encode("ascii"), hashlib.sha256).hexdigest()[:32]


def set_cookie(name: str, value: str, secure: bool) -> bytes:
    """The ``Set-Cookie`` value: the whole site, hidden from scripts, not sent on cross-site
    subrequests, and ``Secure`` when the request came over TLS."""
    return (f"{name}={value}; Path=/; HttpOnly; SameSite=Lax" + ("; Secure" if secure else "")).encode("ascii")

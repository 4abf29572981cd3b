"""Test certificates, made fresh per test run with ``cryptography``: a CA and leaves signed by it."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = datetime.datetime.now(datetime.timezone.utc)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class CA:
    """A certificate authority that writes PEM files into ``directory``."""

    def __init__(self, directory: Path, name: str = "wsrelay test CA") -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(NOW - datetime.timedelta(days=1)).not_valid_after(NOW + datetime.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.pem = directory / "ca.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def leaf(self, name: str, *hosts: str, days: int = 10, expired: bool = False,
             password: bytes | None = None) -> tuple[Path, Path]:
        """Write ``name.pem`` (leaf then CA) and ``name.key``; return their paths."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = NOW - datetime.timedelta(days=20 if expired else 1)
        end = NOW - datetime.timedelta(days=1) if expired else NOW + datetime.timedelta(days=days)
        cert = (x509.CertificateBuilder().subject_name(_name(hosts[0] if hosts else name)).issuer_name(self.cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False)
                .sign(self.key, hashes.SHA256()))
        pem = self.directory / f"{name}.pem"
        pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + self.cert.public_bytes(serialization.Encoding.PEM))
        key_path = self.directory / f"{name}.key"
        encryption = (serialization.BestAvailableEncryption(password) if password
                      else serialization.NoEncryption())
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
        return pem, key_path

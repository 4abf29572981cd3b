"""sslyze's Mozilla "intermediate" compliance scan against a wsrelay TLS listener.

sslyze pins an older ``cryptography``, so it lives in ``.venv-sslyze`` (made by scripts/test.sh).
Its compliance check validates the certificate against public trust stores only, which a test
certificate cannot pass; every other finding (versions, ciphers, curves, compression,
renegotiation...) must be clean.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.certs import CA
from tests.support import ROOT, RelayProcess

SSLYZE = ROOT / ".venv-sslyze" / "bin" / "sslyze"


@pytest.mark.skipif(not SSLYZE.exists(), reason="sslyze is installed by scripts/test.sh into .venv-sslyze")
def test_mozilla_intermediate_compliance(tmp_path: Path, start_relay: Callable[..., RelayProcess]) -> None:
    """sslyze --mozilla_config=intermediate finds nothing but the test certificate's untrusted CA."""
    ca = CA(tmp_path)
    cert, key = ca.leaf("a", "a.test")
    relay = start_relay(f"""
[wsrelay]
listen = tcp:0:interface=127.0.0.1
[listener tls]
endpoint = tcp:0:interface=127.0.0.1
tls = on
certificates = a
[certificate a]
cert = {cert}
key = {key}
[route /]
redirect = 301
""", wait=False)
    port = [u for u in relay.wait_listening(count=2) if u.startswith("https")][0].rstrip("/").rsplit(":", 1)[1]
    result = subprocess.run([str(SSLYZE), "--mozilla_config=intermediate", f"a.test:{port}{{127.0.0.1}}"],
                            capture_output=True, text=True, timeout=180)
    out = result.stdout
    assert "COMPLIANCE AGAINST TLS CONFIGURATION" in out, out[-2000:]
    findings = set(re.findall(r"^\s+\* (\w+):", out.split("COMPLIANCE AGAINST TLS CONFIGURATION", 1)[1], re.M))
    assert findings <= {"certificate_path_validation"}, out[-2000:]
    assert "Supported curves:                  X25519, secp256r1, secp384r1" in out
    assert "OK - Compression disabled" in out

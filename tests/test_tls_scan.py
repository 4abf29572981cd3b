"""sslyze's Mozilla "intermediate" compliance scan against a wsrelay TLS listener.

sslyze pins an older ``cryptography``, so it lives in ``.venv-sslyze`` (made by scripts/test.sh).
Its compliance check validates the certificate against public trust stores only, which a test
certificate cannot pass; every other finding (versions, ciphers, curves, compression,
renegotiation...) must be clean.  A clean compliance section proves nothing unless the scan ran, so
the test reads sslyze's JSON results too: every scan the profile needs must have COMPLETED, and
each checked area must show what it found (the versions refused and accepted, the cipher suites,
the curves).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.certs import CA
from tests.support import ROOT, RelayProcess

SSLYZE = ROOT / ".venv-sslyze" / "bin" / "sslyze"
#: The scans --mozilla_config=intermediate needs (sslyze 6).
SCANS = {"certificate_info", "ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites", "tls_1_0_cipher_suites",
         "tls_1_1_cipher_suites", "tls_1_2_cipher_suites", "tls_1_3_cipher_suites", "tls_compression",
         "openssl_ccs_injection", "tls_fallback_scsv", "heartbleed", "robot", "session_renegotiation",
         "elliptic_curves", "tls_extended_master_secret"}
#: Mozilla "intermediate" TLS 1.2 suites that an ECDSA certificate can use.
TLS12_SUITES = {"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"}


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
    scan_json = tmp_path / "sslyze.json"
    result = subprocess.run([str(SSLYZE), "--mozilla_config=intermediate", f"--json_out={scan_json}",
                             f"a.test:{port}{{127.0.0.1}}"], capture_output=True, text=True, timeout=180)
    out = result.stdout
    # sslyze exits 1 when a server is not compliant (here: always, the CA is not public) or its scan
    # is incomplete, and 0 when it could not reach any server: only 1 with a complete scan will do.
    assert result.returncode == 1, f"sslyze exited {result.returncode}:\n{out[-2000:]}{result.stderr[-2000:]}"
    assert "COMPLIANCE AGAINST TLS CONFIGURATION" in out, out[-2000:]
    compliance = out.split("COMPLIANCE AGAINST TLS CONFIGURATION", 1)[1]
    assert "Scan did not run successfully" not in compliance and "FAILED - Not compliant." in compliance, out[-2000:]
    findings = set(re.findall(r"^\s+\* (\w+):", compliance, re.M))
    assert findings <= {"certificate_path_validation"}, out[-2000:]
    assert findings == {"certificate_path_validation"}, out[-2000:]  # the one finding expected of a test CA
    assert "Supported curves:                  X25519, secp256r1, secp384r1" in out
    assert "OK - Compression disabled" in out

    server, = json.loads(scan_json.read_text())["server_scan_results"]
    assert (server["connectivity_status"], server["scan_status"]) == ("COMPLETED", "COMPLETED"), server
    scans = server["scan_result"]
    incomplete = {name: scans.get(name, {}).get("status") for name in SCANS
                  if scans.get(name, {}).get("status") != "COMPLETED"}
    assert not incomplete, f"scans that did not complete: {incomplete}"
    results = {name: scans[name]["result"] for name in SCANS}
    # Versions: each old one was tried with suites and refused; 1.2 and 1.3 were accepted.
    for old in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1"):
        version = results[f"{old}_cipher_suites"]
        assert not version["is_tls_version_supported"] and version["accepted_cipher_suites"] == [], old
        assert version["rejected_cipher_suites"], f"{old}: no cipher suite was tried"
    # Ciphers: exactly the intermediate profile's ECDSA suites on 1.2, forward secret; 1.3 suites.
    tls12, tls13 = results["tls_1_2_cipher_suites"], results["tls_1_3_cipher_suites"]
    assert tls12["is_tls_version_supported"] and tls13["is_tls_version_supported"]
    assert {c["cipher_suite"]["name"] for c in tls12["accepted_cipher_suites"]} == TLS12_SUITES
    assert all(c["ephemeral_key"] for c in tls12["accepted_cipher_suites"])
    assert len(tls12["rejected_cipher_suites"]) > 100  # the rest of the 156 suites sslyze tries
    assert {c["cipher_suite"]["name"] for c in tls13["accepted_cipher_suites"]} >= {
        "TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384"}
    # Curves: the three groups of the profile accepted, and others tried and refused.
    curves = results["elliptic_curves"]
    assert [c["name"] for c in curves["supported_curves"]] == ["X25519", "secp256r1", "secp384r1"]
    assert {"X448", "secp521r1", "brainpoolP256r1"} <= {c["name"] for c in curves["rejected_curves"]}
    assert results["tls_compression"]["supports_compression"] is False
    assert results["session_renegotiation"]["is_vulnerable_to_client_renegotiation_dos"] is False
    assert results["heartbleed"]["is_vulnerable_to_heartbleed"] is False
    assert results["openssl_ccs_injection"]["is_vulnerable_to_ccs_injection"] is False

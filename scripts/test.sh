#!/bin/sh
# Sets up everything the test suite needs on a fresh Debian machine, then runs all of it
# (unit tests, integration tests through the real twistd, the Autobahn testsuite via kosoku,
# the TLS scan via sslyze).  Usage: sh scripts/test.sh [pytest arguments]
set -eu
cd "$(dirname "$0")/.."

. scripts/debian.sh
debian_packages scripts/test.sh openssl:openssl venv:python3-venv

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# sslyze pins an older cryptography, so it lives in a venv of its own (used by tests/test_tls_scan.py).
if [ ! -x .venv-sslyze/bin/sslyze ]; then
    python3 -m venv .venv-sslyze
    .venv-sslyze/bin/python -m pip install -q sslyze
fi
exec .venv/bin/python -m pytest "$@"

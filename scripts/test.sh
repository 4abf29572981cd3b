#!/bin/sh
# Sets up everything the test suite needs on a fresh Debian machine, then runs all of it
# (unit tests, integration tests through the real twistd, the Autobahn testsuite via kosoku,
# the TLS scan via sslyze).  Usage: sh scripts/test.sh [pytest arguments]
set -eu
cd "$(dirname "$0")/.."

need_apt=""
command -v openssl >/dev/null 2>&1 || need_apt="$need_apt openssl"
if [ -n "$need_apt" ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need_apt
    else
        echo "scripts/test.sh: please install:$need_apt" >&2
        exit 1
    fi
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# sslyze pins an older cryptography, so it lives in a venv of its own (used by tests/test_tls_scan.py).
if [ ! -x .venv-sslyze/bin/sslyze ]; then
    python3 -m venv .venv-sslyze
    .venv-sslyze/bin/python -m pip install -q sslyze
fi
exec .venv/bin/python -m pytest "$@"

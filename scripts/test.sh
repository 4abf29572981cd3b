#!/bin/sh
# Sets up everything the test suite needs on a fresh Debian machine, then runs all of it
# (unit tests, integration tests through the real twistd, the Autobahn testsuite via kosoku,
# the TLS scan via sslyze, real clients: headless Chromium, Socket.IO, Node ws, wscat).
# Usage: sh scripts/test.sh [pytest arguments]
set -eu
cd "$(dirname "$0")/.."

. scripts/debian.sh
debian_packages scripts/test.sh openssl:openssl venv:python3-venv node:nodejs npm:npm
# The browser test (tests/test_browser.py) is skipped, with the reason, when these cannot be had.
(debian_packages scripts/test.sh chromium:chromium certutil:libnss3-tools) ||
    echo "scripts/test.sh: chromium or libnss3-tools could not be installed: the browser test will be skipped" >&2

# Node.js peers (Socket.IO, ws, wscat) for tests/test_socketio.py and tests/test_interop.py, at the
# versions tests/node/package-lock.json pins; reinstalled only when the lock file changes.
if [ ! -f tests/node/node_modules/.package-lock.json ] ||
        [ tests/node/package-lock.json -nt tests/node/node_modules/.package-lock.json ]; then
    (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
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

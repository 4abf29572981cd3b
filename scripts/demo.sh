#!/bin/sh
# Installs wsrelay into .venv, starts the demo upstream on 127.0.0.1:9001 and wsrelay in front of
# it on http://127.0.0.1:8080/ (etc/relay.ini).  Ctrl-C stops both.
set -eu
cd "$(dirname "$0")/.."
. scripts/debian.sh
debian_packages scripts/demo.sh venv:python3-venv
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
.venv/bin/wsrelay-demo-upstream --port 9001 &
upstream=$!
trap 'kill $upstream 2>/dev/null' EXIT INT TERM
echo "Open http://127.0.0.1:8080/ in a browser: the demo page, served through wsrelay."
.venv/bin/twistd --nodaemon --pidfile= wsrelay --config etc/relay.ini

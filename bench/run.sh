#!/bin/sh
# wsrelay benchmark: installs what it needs, then runs bench/bench.py.
#
#   sh bench/run.sh            full run (3 repetitions, about 10 minutes)
#   sh bench/run.sh --quick    smoke run (about 2 minutes)
#   sh bench/run.sh --help     bench.py's options (all arguments are passed through)
#   sh bench/run.sh soak [--minutes 10]   the soak (bench/soak.py; --help for its options)
#   sh bench/run.sh storm [--pairs 9500]  capacity and reconnect storm (bench/storm.py)
#
# Installs, only when missing: nginx and wrk (Debian packages nginx-light or nginx, and wrk, with
# apt-get; needs root or sudo), the Node.js packages ws and bufferutil (npm, into
# bench/node_modules), and a Python venv bench/.venv with wsrelay installed from this checkout
# (pip install -e .; BENCH_REINSTALL=1 rebuilds it).  Node.js (>= 18) and Python (>= 3.11) must be
# there already.  Results: bench/results/<timestamp>.json and .txt.
set -eu
bench=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$bench")
python=${PYTHON:-python3}

say() { echo "run.sh: $*"; }

if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else sudo="none"; fi

apt_install() {
    # apt_install PACKAGE [ALTERNATIVE]
    if [ "$sudo" = none ]; then
        say "cannot install $1: not root and no sudo; install it yourself"; exit 1
    fi
    if [ -z "${apt_updated:-}" ]; then
        say "apt-get update"
        $sudo apt-get update -qq
        apt_updated=1
    fi
    for pkg in "$@"; do
        say "installing Debian package $pkg (apt-get install -y $pkg)"
        if DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg" >/dev/null; then
            return 0
        fi
    done
    say "could not install $*"; exit 1
}

PATH="$PATH:/usr/sbin:/sbin"
if command -v nginx >/dev/null 2>&1; then
    say "nginx found: $(command -v nginx) ($(nginx -v 2>&1))"
else
    say "nginx not found"
    apt_install nginx-light nginx
    say "installed $(nginx -v 2>&1); note: on a systemd machine the package may also have started"
    say "the system nginx service (port 80); the bench starts and stops its own nginx processes"
fi
if command -v wrk >/dev/null 2>&1; then
    say "wrk found: $(command -v wrk)"
else
    say "wrk not found"
    apt_install wrk
fi
command -v taskset >/dev/null 2>&1 || apt_install util-linux
if ! command -v node >/dev/null 2>&1; then
    say "node not found"
    apt_install nodejs
fi
command -v npm >/dev/null 2>&1 || apt_install npm
say "node $(node --version)"

if [ ! -d "$bench/node_modules/ws" ] || [ ! -d "$bench/node_modules/bufferutil" ]; then
    say "npm install (ws, bufferutil) into bench/node_modules"
    (cd "$bench" && npm install --no-audit --no-fund --loglevel=error)
else
    say "bench/node_modules present"
fi

if [ ! -x "$bench/.venv/bin/twistd" ] || [ -n "${BENCH_REINSTALL:-}" ]; then
    say "creating bench/.venv and installing wsrelay into it (pip install -e .)"
    "$python" -m venv "$bench/.venv"
    "$bench/.venv/bin/python" -m pip install -q --upgrade pip
    "$bench/.venv/bin/python" -m pip install -q -e "$repo"
else
    say "bench/.venv present (BENCH_REINSTALL=1 to rebuild it)"
fi

script=bench.py
case "${1:-}" in
    soak|storm) script="$1.py"; shift ;;
esac
cd "$repo"
exec "$bench/.venv/bin/python" "$bench/$script" "$@"

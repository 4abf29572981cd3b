#!/bin/bash
# Reproduction: messages lost on a clean close after wsrelay stalled for longer than its close
# handshake timeout (found by the soak, bench/README.rst "Problems seen in wsrelay").
#
#   bash bench/repro/close-stall.sh [STALL_SECONDS]     (default 6; needs sh bench/run.sh once)
#   TWISTD=PATH bash bench/repro/close-stall.sh 6       (another venv's wsrelay)
#
# Fixed since (wsrelay/timers.py): a deadline now runs after the reactor's reads of its turn, and
# all three lines show 5 echoes.  Before: relay mode showed 0 echoes and 1000.
#
# A client sends 5 messages to an echo upstream and closes (1000) at once.  The upstream is held
# (SIGSTOP) until wsrelay has forwarded the messages and the close, then wsrelay is held for
# STALL_SECONDS while the upstream echoes the 5 messages and answers the close: the answer is in
# wsrelay's socket buffer in time, but when wsrelay runs again its close-handshake timer (5 s)
# fires before it reads that socket, so the upstream hop is aborted, the 5 echoes are dropped and
# the client is answered 1000 as if the close were clean.  The same run direct and through tunnel
# mode delivers the 5 echoes.  Only processes started here are stopped.
set -u
here=$(cd "$(dirname "$0")" && pwd)
bench=$(dirname "$here")
stall=${1:-6}
work=$(mktemp -d)
node "$bench/upstream.js" 0 > "$work/up.out" & up=$!
for _ in $(seq 50); do grep -q LISTENING "$work/up.out" 2>/dev/null && break; sleep 0.1; done
up_port=$(awk '{print $2}' "$work/up.out")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/relay.ini" <<INI
[wsrelay]
listen = tcp:$port:interface=127.0.0.1
access_log = off
[upstream echo]
servers = 127.0.0.1:$up_port
[route /ws/]
upstream = echo
ws_ping_interval = off
[route /tunnel/]
upstream = echo
ws_mode = tunnel
ws_ping_interval = off
INI
"${TWISTD:-$bench/.venv/bin/twistd}" -n --pidfile= wsrelay --config "$work/relay.ini" > "$work/relay.log" 2>&1 & relay=$!
for _ in $(seq 100); do grep -q "wsrelay ready" "$work/relay.log" 2>/dev/null && break; sleep 0.1; done

one() {  # one URL: prints the client's line
    rm -f "$work/in"; mkfifo "$work/in"
    node "$here/closestall.js" "$1" < "$work/in" > "$work/out" & client=$!
    exec 3>"$work/in"
    sleep 1                      # the client is open
    kill -STOP $up               # the upstream does not answer yet
    echo go >&3                  # 5 messages, then close(1000)
    sleep 0.5                    # wsrelay forwards them and the close to the upstream
    kill -STOP $relay            # wsrelay stalls...
    kill -CONT $up               # ...while the upstream echoes the 5 messages and answers the close
    sleep "$stall"
    kill -CONT $relay
    wait $client; exec 3>&-
    cat "$work/out"
}
one "ws://127.0.0.1:$up_port/ws/x"       # direct: 5 echoes, 1000
one "ws://127.0.0.1:$port/ws/x"          # relay mode: 0 echoes, 1000 (the defect)
one "ws://127.0.0.1:$port/tunnel/x"      # tunnel mode: 5 echoes, 1000
kill $relay $up; wait $relay $up 2>/dev/null
rm -rf "$work"

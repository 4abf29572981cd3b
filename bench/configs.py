"""Configuration files for the processes the benchmark starts (text only, no I/O).

* ``origin_nginx``: the HTTP upstream ("origin") for GET, an nginx serving ``/small`` (a 100-byte
  static file) and ``/1m`` (a 1 MiB static file, sendfile).  POST ``/sink`` goes to the Node.js
  server (``upstream.js``), which reads the whole body before it answers ``ok``; it also serves
  the WebSocket echo.  Both run on the load generator's core.
* ``proxy_nginx``: nginx as the proxy under test, in two flavours:

  - *usual*: the WebSocket recipe found in most guides, one ``location`` per upstream with
    ``proxy_http_version 1.1``, ``Upgrade $http_upgrade``, ``Connection "upgrade"``, the usual
    ``Host`` / ``X-Real-IP`` / ``X-Forwarded-*`` headers, and no upstream keep-alive (so every
    proxied HTTP request opens a new upstream connection);
  - *tuned*: ``upstream`` blocks with ``keepalive 32``, ``Connection ""`` on HTTP locations
    (upstream keep-alive), ``proxy_buffer_size 64k`` (with ``proxy_buffers 8 64k``, which nginx
    requires once the first buffer is that large).

  Both: one worker, ``access_log off``, ``keepalive_requests 100000`` toward clients (nginx's
  default of 1000 would make wrk reconnect; wsrelay has no such limit).
* ``storm_nginx`` / ``storm_wsrelay_ini`` (storm.py): only ``/ws/`` (relay mode for wsrelay, the
  usual recipe for nginx) to several echo upstreams in turn, ``workers`` processes, listen backlog
  4096 for both (wsrelay's default is 511, as nginx's).
* ``wsrelay_ini``: wsrelay with ``/`` to the origin, ``=/sink`` to the Node.js server, ``/ws/`` to the echo upstream in relay mode
  and ``/tunnel/`` in tunnel mode; no pings (``ws_ping_interval = off``), 4 MiB message and frame
  limits, ``access_log = off``, ``keepalive = 32`` toward the HTTP upstreams (as tuned nginx);
  the environment variable ``BENCH_WSRELAY_SETTINGS`` adds lines to its ``[wsrelay]`` section (an
  A/B of a setting, e.g. ``limit_conn = 100000``; an older twistd may not know the key).
"""

from __future__ import annotations

import os

SMALL_BODY = b"wsrelay benchmark small response, 100 bytes long: " + b"0123456789" * 4 + b"abcdefghi\n"
assert len(SMALL_BODY) == 100

WS_HEADERS = """\
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
"""

FORWARD_HEADERS = """\
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
"""


def _main(workdir: str, name: str, connections: int, nofile: int, workers: int = 1) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""\
{user}worker_processes {workers};
daemon off;
master_process on;
pid {workdir}/{name}.pid;
error_log {workdir}/{name}-error.log warn;
worker_rlimit_nofile {nofile};
events {{
    worker_connections {connections};
}}
"""


def _http_common(workdir: str, name: str) -> str:
    return f"""\
    access_log off;
    keepalive_requests 100000;
    keepalive_timeout 75s;
    client_body_temp_path {workdir}/{name}-body;
    proxy_temp_path {workdir}/{name}-proxy;
"""


def origin_nginx(workdir: str, port: int, www: str, nofile: int) -> str:
    """The HTTP upstream: /small, /1m, /sink."""
    return _main(workdir, "origin", 4096, nofile) + f"""\
http {{
{_http_common(workdir, "origin")}\
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /small {{
            root {www};
        }}
        location = /1m {{
            root {www};
        }}
        location = /early {{
            # answers a POST before reading its body (scenario http_post_early, not run by default)
            client_max_body_size 8m;
            return 200 "ok\\n";
        }}
        location / {{
            return 404;
        }}
    }}
}}
"""


def proxy_nginx(workdir: str, name: str, port: int, origin_port: int, ws_port: int, *,
                tuned: bool, connections: int, nofile: int) -> str:
    """nginx as the proxy under test: usual recipe or tuned."""
    if tuned:
        upstreams = f"""\
    upstream origin {{
        server 127.0.0.1:{origin_port};
        keepalive 32;
    }}
    upstream wsup {{
        server 127.0.0.1:{ws_port};
        keepalive 32;
    }}
    upstream sink {{
        server 127.0.0.1:{ws_port};
        keepalive 32;
    }}
    proxy_buffer_size 64k;
    proxy_buffers 8 64k;
"""
        http_loc = f"""\
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
{FORWARD_HEADERS}"""
        sink_loc = f"""\
            proxy_pass http://sink;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
{FORWARD_HEADERS}"""
        ws_loc = f"""\
            proxy_pass http://wsup;
{WS_HEADERS}{FORWARD_HEADERS}"""
    else:
        upstreams = ""
        http_loc = f"""\
            proxy_pass http://127.0.0.1:{origin_port};
{WS_HEADERS}{FORWARD_HEADERS}"""
        ws_loc = sink_loc = f"""\
            proxy_pass http://127.0.0.1:{ws_port};
{WS_HEADERS}{FORWARD_HEADERS}"""
    return _main(workdir, name, connections, nofile) + f"""\
http {{
{_http_common(workdir, name)}\
    client_max_body_size 8m;
{upstreams}\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
{http_loc}\
        }}
        location = /sink {{
{sink_loc}\
        }}
        location /ws/ {{
{ws_loc}\
        }}
        location /tunnel/ {{
{ws_loc}\
        }}
    }}
}}
"""


def wsrelay_ini(port: int, origin_port: int, ws_port: int, *, workers: int, admin: bool = False,
                access_log: tuple[str, str] | None = None) -> str:
    """wsrelay: / to the origin, /ws/ relay mode, /tunnel/ tunnel mode; ``admin``: with the admin
    listener (/metrics) on a port of its own; ``access_log``: (file, ``combined`` or ``json``) to
    measure logging (``access_log_format`` is written for json only, so a combined run also works
    with a wsrelay older than that key)."""
    admin_section = "\n[admin]\nendpoint = tcp:0:interface=127.0.0.1\n" if admin else ""
    log = "access_log = off"
    if access_log is not None:
        log = f"access_log = {access_log[0]}" + ("\naccess_log_format = json" if access_log[1] == "json" else "")
    return f"""\
; generated by bench/bench.py
[wsrelay]
listen = tcp:{port}:interface=127.0.0.1
{log}
workers = {workers}
drain_timeout = 1s
{os.environ.get("BENCH_WSRELAY_SETTINGS", "")}

[upstream origin]
servers = 127.0.0.1:{origin_port}
keepalive = 32

[upstream wsup]
servers = 127.0.0.1:{ws_port}

[upstream sink]
servers = 127.0.0.1:{ws_port}
keepalive = 32

[route /]
upstream = origin
max_body_size = 8M

[route =/sink]
upstream = sink
max_body_size = 8M

[route /ws/]
upstream = wsup
ws_mode = relay
ws_ping_interval = off
ws_max_message_size = 4M
ws_max_frame_size = 4M

[route /tunnel/]
upstream = wsup
ws_mode = tunnel
ws_ping_interval = off
ws_max_message_size = 4M
ws_max_frame_size = 4M
{admin_section}"""


def storm_nginx(workdir: str, name: str, port: int, ws_ports: list[int], *, workers: int, connections: int,
                nofile: int) -> str:
    """nginx for the reconnect storm: /ws/ to the echo upstreams (round robin), usual recipe."""
    servers = "".join(f"        server 127.0.0.1:{p};\n" for p in ws_ports)
    return _main(workdir, name, connections, nofile, workers) + f"""\
http {{
{_http_common(workdir, name)}\
    upstream wsup {{
{servers}\
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location /ws/ {{
            proxy_pass http://wsup;
{WS_HEADERS}{FORWARD_HEADERS}\
        }}
    }}
}}
"""


def storm_wsrelay_ini(port: int, ws_ports: list[int], *, workers: int) -> str:
    """wsrelay for the reconnect storm: /ws/ in relay mode to the echo upstreams (round robin)."""
    servers = ", ".join(f"127.0.0.1:{p}" for p in ws_ports)
    return f"""\
; generated by bench/storm.py
[wsrelay]
listen = tcp:{port}:interface=127.0.0.1:backlog=4096
access_log = off
workers = {workers}
drain_timeout = 1s

[upstream wsup]
servers = {servers}

[route /ws/]
upstream = wsup
ws_mode = relay
ws_ping_interval = off
"""

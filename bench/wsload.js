// WebSocket load generator for the wsrelay benchmark (bench/bench.py drives it).
//
//   node wsload.js '<json options>'
//
// Modes (options.mode):
//   thr   throughput: `conns` connections, each keeping `window` binary messages of `size` bytes in
//         flight against an echo upstream; counts echoes during `duration` s after `warmup` s.
//   lat   latency: `conns` connections, each a closed loop of one `size`-byte message in flight;
//         round-trip times during `duration` s after `warmup` s; p50/p90/p99/max in microseconds.
//   idle  opens `count` connections (at most `parallel` handshakes at a time) and holds them;
//         stdin commands: "add N" opens N more, "close" closes all and exits.
//   storm opens `count` connections as idle does (from source address `local`, e.g. 127.0.0.5)
//         and holds them, `active` of them sending a 64-byte message each second (checked when
//         it comes back); stdin "storm": every connection is dropped at once (socket destroyed,
//         as a deploy cuts them) and opened again at once, all together; a failed attempt (here
//         and in the first opening) is retried after 100-300 ms; "STORMED <json>" when all are
//         open again (times in epoch ms, failed attempts by kind); "count": "COUNT <json>" (how
//         many are open now); "close" closes all and exits.
//
// Output (stdout, one line each): "START" when the measured window begins, then
// "END <json>" when it ends (thr/lat); "OPEN <json>" after each batch of idle connections;
// "FAIL <reason>" on an error before the end.  The process always ends on its own: every wait
// is bounded (`guard` seconds overall).
//
// The client offers no permessage-deflate (perMessageDeflate: false), so every proxy under test
// relays the same bytes (wsrelay's relay mode would otherwise negotiate compression); except
// with "deflate": true (scenario ws_64B_deflate), which compresses every message as a browser does.
'use strict';

const crypto = require('crypto');
const WebSocket = require('ws');

const opt = JSON.parse(process.argv[2] || '{}');
const mode = opt.mode;
const url = opt.url;
const size = opt.size || 64;
const conns = opt.conns || 1;
const guard = (opt.guard || ((opt.warmup || 0) + (opt.duration || 0) + 60)) * 1000;

function out(line) {
  process.stdout.write(line + '\n');
}

let finished = false;
function finish(code) {
  if (finished) return;
  finished = true;
  // let stdout drain, then exit
  process.stdout.write('', () => process.exit(code));
  setTimeout(() => process.exit(code), 2000);
}

setTimeout(() => {
  out('FAIL guard timeout');
  finish(3);
}, guard);

function connect() {
  // opt.deflate: offer permessage-deflate and compress every message (threshold 0), as a browser does
  const deflate = opt.deflate ? { threshold: 0 } : false;
  return new WebSocket(url, { perMessageDeflate: deflate, maxPayload: 64 * 1024 * 1024, handshakeTimeout: 20000,
    localAddress: opt.local || undefined });
}

const stats = { errors: 0, unexpected_closes: 0, bad_echoes: 0, close_codes: {} };
let stopping = false;

function track(ws) {
  ws.on('error', (err) => {
    stats.errors += 1;
    if (!stats.first_error) stats.first_error = String(err && err.message);
  });
  ws.on('close', (code) => {
    stats.close_codes[code] = (stats.close_codes[code] || 0) + 1;
    if (!stopping) stats.unexpected_closes += 1;
  });
}

function openAll(n, onOpen) {
  const sockets = [];
  let opened = 0;
  for (let i = 0; i < n; i++) {
    const ws = connect();
    ws.binaryType = 'nodebuffer';
    track(ws);
    ws.on('open', () => {
      opened += 1;
      if (opened === n) onOpen(sockets);
    });
    ws.on('unexpected-response', (req, res) => {
      out(`FAIL handshake status ${res.statusCode}`);
      finish(2);
    });
    sockets.push(ws);
  }
  return sockets;
}

function closeAllAndExit(sockets, result) {
  stopping = true;
  let open = 0;
  for (const ws of sockets) {
    if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) {
      open += 1;
      ws.once('close', () => {
        open -= 1;
        if (open === 0) finish(0);
      });
      try { ws.close(1000); } catch (e) { /* already closing */ }
    }
  }
  if (open === 0) finish(0);
  setTimeout(() => finish(0), 5000);
}

// stdin commands, one a line: onCommand(word, argument); onEnd() when stdin closes
function commands(onCommand, onEnd) {
  let buf = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (chunk) => {
    buf += chunk;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const [cmd, arg] = buf.slice(0, i).trim().split(/\s+/);
      buf = buf.slice(i + 1);
      onCommand(cmd, arg);
    }
  });
  process.stdin.on('end', onEnd);
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

function runMeasured(sockets, startLoad, collect) {
  const warmup = (opt.warmup || 0) * 1000;
  const duration = (opt.duration || 1) * 1000;
  startLoad();
  setTimeout(() => {
    const t0 = process.hrtime.bigint();
    collect.begin(t0);
    out('START');
    setTimeout(() => {
      const t1 = process.hrtime.bigint();
      const result = collect.end(t1);
      result.elapsed = Number(t1 - t0) / 1e9;
      Object.assign(result, stats);
      out('END ' + JSON.stringify(result));
      stopping = true;
      // give in-flight echoes a moment to come back, then close cleanly
      const deadline = Date.now() + 5000;
      const wait = () => {
        if (collect.inflight() === 0 || Date.now() > deadline) closeAllAndExit(sockets);
        else setTimeout(wait, 20);
      };
      wait();
    }, duration);
  }, warmup);
}

function throughput() {
  const window = opt.window || 1;
  const payload = crypto.randomBytes(size);
  let counting = false;
  let msgs = 0;
  let inflight = 0;
  const sockets = openAll(conns, () => {
    runMeasured(sockets, () => {
      for (const ws of sockets) {
        for (let i = 0; i < window; i++) {
          ws.send(payload, { binary: true });
          inflight += 1;
        }
      }
    }, {
      begin() { counting = true; msgs = 0; },
      end() { counting = false; return { msgs, bytes: msgs * size }; },
      inflight() { return inflight; },
    });
  });
  for (const ws of sockets) {
    ws.on('message', (data) => {
      inflight -= 1;
      if (data.length !== size) stats.bad_echoes += 1;
      if (counting) msgs += 1;
      if (!stopping) {
        ws.send(payload, { binary: true });
        inflight += 1;
      }
    });
  }
}

function latency() {
  const payload = crypto.randomBytes(size);
  let counting = false;
  let samples = [];
  let inflight = 0;
  const sent = new Map();
  const send = (ws) => {
    sent.set(ws, process.hrtime.bigint());
    inflight += 1;
    ws.send(payload, { binary: true });
  };
  const sockets = openAll(conns, () => {
    runMeasured(sockets, () => {
      for (const ws of sockets) send(ws);
    }, {
      begin() { counting = true; samples = []; },
      end() {
        counting = false;
        const s = Float64Array.from(samples).sort();
        return {
          msgs: s.length,
          bytes: s.length * size,
          p50_us: percentile(s, 50),
          p90_us: percentile(s, 90),
          p99_us: percentile(s, 99),
          max_us: s.length ? s[s.length - 1] : null,
        };
      },
      inflight() { return inflight; },
    });
  });
  for (const ws of sockets) {
    ws.on('message', (data) => {
      const rtt = Number(process.hrtime.bigint() - sent.get(ws)) / 1000;
      inflight -= 1;
      if (data.length !== size) stats.bad_echoes += 1;
      if (counting) samples.push(rtt);
      if (!stopping) send(ws);
    });
  }
}

function idle() {
  const parallel = opt.parallel || 100;
  const sockets = [];
  let failed = 0;

  function openBatch(n, done) {
    let started = 0;
    let settled = 0;
    const next = () => {
      while (started < n && started - settled < parallel) {
        started += 1;
        const ws = connect();
        track(ws);
        let settledThis = false;
        const settle = (ok) => {
          if (settledThis) return;
          settledThis = true;
          settled += 1;
          if (!ok) failed += 1;
          if (settled === n) done();
          else next();
        };
        ws.on('open', () => settle(true));
        ws.on('error', () => settle(false));
        ws.on('close', () => settle(false));
        sockets.push(ws);
      }
    };
    if (n === 0) done();
    else next();
  }

  const report = () => {
    const open = sockets.filter((ws) => ws.readyState === WebSocket.OPEN).length;
    out('OPEN ' + JSON.stringify({ open, failed, errors: stats.errors, first_error: stats.first_error || null }));
  };
  openBatch(opt.count || 0, report);

  commands((cmd, arg) => {
    if (cmd === 'add') openBatch(Number(arg), report);
    else if (cmd === 'close') closeAllAndExit(sockets);
  }, () => closeAllAndExit(sockets));
}

function storm() {
  const count = opt.count || 0;
  const parallel = opt.parallel || 100;
  const slots = new Array(count).fill(null);
  const echo = { sent: 0, back: 0, bad: 0 };
  let errors = {};
  let attempts = 0;
  let pending = 0;
  let round = null;
  const payload = Buffer.alloc(64, 7);

  // open slot i; on success call done(true); a failure is retried (unless closing)
  function open(i, done) {
    attempts += 1;
    const ws = connect();
    let settled = false;
    const settle = (ok, why) => {
      if (settled) return;
      settled = true;
      if (ok) {
        slots[i] = ws;
        done(true);
        return;
      }
      errors[why] = (errors[why] || 0) + 1;
      ws.terminate();
      if (!stopping) setTimeout(() => open(i, done), 100 + Math.random() * 200);
    };
    ws.on('open', () => settle(true));
    ws.on('unexpected-response', (req, res) => settle(false, `status ${res.statusCode}`));
    ws.on('error', (err) => settle(false, err.code || err.message));
    ws.on('close', () => settle(false, 'closed before open'));
    ws.on('message', (data) => {
      echo.back += 1;
      if (data.length !== 64) echo.bad += 1;
    });
  }

  function report(prefix, extra) {
    const open = slots.filter((ws) => ws && ws.readyState === WebSocket.OPEN).length;
    out(prefix + ' ' + JSON.stringify(Object.assign({ open, attempts, errors, echo }, extra)));
  }

  // initial open: at most `parallel` handshakes at a time
  let next = 0;
  let settledCount = 0;
  const t0 = Date.now();
  const pump = () => {
    while (next < count && pending < parallel) {
      pending += 1;
      open(next++, () => {
        pending -= 1;
        settledCount += 1;
        if (settledCount === count) report('OPEN', { seconds: (Date.now() - t0) / 1000 });
        else pump();
      });
    }
  };
  if (count === 0) report('OPEN', { seconds: 0 });
  else pump();

  const active = Math.round(opt.active || 0);
  setInterval(() => {
    for (let i = 0; i < active && i < count; i++) {
      const ws = slots[i];
      if (ws && ws.readyState === WebSocket.OPEN) {
        ws.send(payload, { binary: true });
        echo.sent += 1;
      }
    }
  }, 1000);

  function reconnectAll() {
    const start = Date.now();
    round = { start, times: [] };
    errors = {};
    attempts = 0;
    let left = count;
    for (let i = 0; i < count; i++) {
      const old = slots[i];
      slots[i] = null;
      if (old) {
        old.removeAllListeners('close');
        old.on('error', () => {});
        old.terminate();
      }
    }
    for (let i = 0; i < count; i++) {
      open(i, () => {
        round.times.push(Date.now() - start);
        left -= 1;
        if (left === 0) {
          const t = round.times.sort((a, b) => a - b);
          round = null;
          report('STORMED', { start, end: Date.now(), p50_ms: percentile(t, 50), p99_ms: percentile(t, 99),
            max_ms: t[t.length - 1] });
        }
      });
    }
    if (count === 0) report('STORMED', { start, end: start });
  }

  commands((cmd) => {
    if (cmd === 'storm') reconnectAll();
    else if (cmd === 'count') report('COUNT', {});
    else if (cmd === 'close') {
      stopping = true;
      closeAllAndExit(slots.filter((ws) => ws));
    }
  }, () => closeAllAndExit(slots.filter((ws) => ws)));
}

if (mode === 'thr') throughput();
else if (mode === 'lat') latency();
else if (mode === 'idle') idle();
else if (mode === 'storm') storm();
else {
  out('FAIL unknown mode ' + mode);
  finish(2);
}

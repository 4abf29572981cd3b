// Mixed load for the soak (bench/soak.py drives it): WebSocket pairs with numbered messages,
// short pairs opening and closing, slow readers, clients vanishing with a reset, HTTP GETs and
// uploads, all at a steady pace (not as fast as possible).
//
//   node mixload.js '<json options>'
//
// Options: ws (WebSocket base URL, e.g. ws://127.0.0.1:PORT/ws/soak), http (HTTP base URL),
// prefix (connection ids are PREFIX-N), pairs (long-lived echo pairs), push (slow-reader pairs),
// churn (new short pairs per second), vanish (seconds between two resets of a long pair; 0: none),
// gets (GET /small per second), uploads (POST /sink per second), rate (messages per second per
// echo pair), window (unanswered messages at most per echo pair), guard (seconds, hard end).
//
// Every echo message is numbered per connection (numbered.js; upstream.js "count" checks the
// same); the client checks that echoes come back in order, whole.  A push pair reads 100 ms out
// of every 2 s (ws.pause), so the proxy's back-pressure must hold the upstream back.  Each connection, when it ends, gives one
// line "CC <json>": id, kind, sent, recv, bad (out of order or damaged), how it ended (clean: our
// close 1000 answered; vanished: we reset it; peer: the proxy closed it; refused: the handshake
// failed) and when.  "ERR <json>" lines: each HTTP or handshake failure with its time.
// stdin "stop": no new work; close every pair cleanly, wait for the answers, print
// "END <json>" (totals) and exit.  Every wait is bounded.
'use strict';

const http = require('http');
const crypto = require('crypto');
const WebSocket = require('ws');
const { message, wellFormed } = require('./numbered');

const opt = JSON.parse(process.argv[2] || '{}');
const WINDOW = opt.window || 4;
const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
const totals = { opened: 0, ended: 0, msgs_sent: 0, msgs_recv: 0, bad: 0, gets: 0, uploads: 0,
  upload_bytes: 0, http_errors: 0, ws_refused: 0, vanished: 0, peer_closed: 0 };
const live = new Set();
let serial = 0;
let httpInflight = 0;
let stopping = false;

function out(line) {
  process.stdout.write(line + '\n');
}

function error(what, detail) {
  out('ERR ' + JSON.stringify({ t: Date.now(), what, detail: String(detail).slice(0, 200) }));
}

function messageSize() {
  // mostly small, some medium, a few large
  const r = Math.random();
  if (r < 0.8) return 16 + Math.floor(Math.random() * 1000);
  if (r < 0.98) return 1024 + Math.floor(Math.random() * 63 * 1024);
  return 256 * 1024 + Math.floor(Math.random() * 768 * 1024);
}

// kind: "echo" (long-lived, replaced when it ends), "short" (closes itself after `life` ms),
// "push" (slow reader, replaced when it ends)
function openPair(kind, life) {
  const id = `${opt.prefix}-${++serial}`;
  const path = kind === 'push' ? 'push' : 'echo';
  const ws = new WebSocket(`${opt.ws}/${path}?id=${id}`, { perMessageDeflate: false, handshakeTimeout: 20000,
    maxPayload: 64 * 1024 * 1024 });
  ws.binaryType = 'nodebuffer';
  const rec = { id, kind, sent: 0, recv: 0, bad: 0, end: null, code: null, t_open: null, t_end: null };
  const pair = { ws, rec, timers: [], closing: false };
  live.add(pair);
  let done = false;
  const finish = (end, code) => {
    if (done) return;
    done = true;
    for (const t of pair.timers) clearInterval(t);
    rec.end = end;
    rec.code = code;
    rec.t_end = Date.now();
    live.delete(pair);
    totals.ended += 1;
    out('CC ' + JSON.stringify(rec));
    if (!stopping && (kind === 'echo' || kind === 'push')) setTimeout(() => { if (!stopping) openPair(kind); }, 1000);
  };
  ws.on('unexpected-response', (req, res) => {
    totals.ws_refused += 1;
    error('ws handshake', `status ${res.statusCode}`);
    res.resume();
    ws.terminate();
    finish('refused', res.statusCode);
  });
  ws.on('error', (err) => {
    if (rec.t_open === null && !done && !pair.aborted) {
      totals.ws_refused += 1;
      error('ws handshake', err.message);
      finish('refused', null);
    }
  });
  ws.on('open', () => {
    rec.t_open = Date.now();
    totals.opened += 1;
    if (kind === 'push') {
      // a slow reader: paused 1.9 s, reading 0.1 s
      const cycle = () => {
        if (pair.closing || ws.readyState !== WebSocket.OPEN) return;
        ws.pause();
        pair.timers.push(setTimeout(() => {
          if (ws.readyState === WebSocket.OPEN) ws.resume();
          pair.timers.push(setTimeout(cycle, 100));
        }, 1900));
      };
      cycle();
      return;
    }
    pair.timers.push(setInterval(() => {
      if (!pair.closing && ws.readyState === WebSocket.OPEN && rec.sent - rec.recv < WINDOW) {
        ws.send(message(rec.sent, messageSize()), { binary: true });
        rec.sent += 1;
        totals.msgs_sent += 1;
      }
    }, Math.max(1, Math.round(1000 / (opt.rate || 2)))));
    if (kind === 'short') pair.timers.push(setTimeout(() => closePair(pair), life));
  });
  ws.on('message', (data) => {
    if (!wellFormed(data, rec.recv)) {
      rec.bad += 1;
      totals.bad += 1;
    }
    rec.recv += 1;
    totals.msgs_recv += 1;
  });
  ws.on('close', (code) => {
    if (pair.vanished || rec.end !== null) return;
    if (pair.closing) finish(code === 1000 ? 'clean' : 'closing-' + code, code);
    else {
      totals.peer_closed += 1;
      finish('peer', code);
    }
  });
  pair.finish = finish;
  return pair;
}

function closePair(pair) {
  if (pair.closing) return;
  pair.closing = true;
  if (pair.rec.kind === 'push') pair.ws.resume();
  try { pair.ws.close(1000); } catch (e) { /* not open yet */ }
}

function vanish() {
  const candidates = Array.from(live).filter((p) => p.rec.kind === 'echo' && p.rec.t_open !== null && !p.closing);
  if (!candidates.length) return;
  const pair = candidates[Math.floor(Math.random() * candidates.length)];
  pair.vanished = true;
  totals.vanished += 1;
  pair.ws._socket.resetAndDestroy(); // an RST, no close frame
  pair.finish('vanished', null);
}

function get() {
  httpInflight += 1;
  let settled = false;
  const settle = () => { if (settled) return false; settled = true; httpInflight -= 1; return true; };
  const req = http.get(`${opt.http}/small`, { agent }, (res) => {
    let n = 0;
    res.on('data', (c) => { n += c.length; });
    res.on('error', (e) => { if (settle()) { totals.http_errors += 1; error('GET', 'response ' + e.message); } });
    res.on('end', () => {
      if (!settle()) return;
      if (res.statusCode === 200 && n === 100) totals.gets += 1;
      else {
        totals.http_errors += 1;
        error('GET', `status ${res.statusCode}, ${n} bytes`);
      }
    });
  });
  req.setTimeout(30000, () => req.destroy(new Error('timeout')));
  req.on('error', (e) => {
    if (!settle()) return;
    totals.http_errors += 1;
    error('GET', e.message);
  });
}

const CHUNK = crypto.randomBytes(64 * 1024);
function upload() {
  httpInflight += 1;
  let settled = false;
  const settle = () => { if (settled) return false; settled = true; httpInflight -= 1; return true; };
  const size = 16 * 1024 + Math.floor(Math.random() * 2 * 1024 * 1024);
  const req = http.request(`${opt.http}/sink`, { method: 'POST', agent,
    headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': String(size) } }, (res) => {
    let body = '';
    res.on('data', (c) => { body += c; });
    res.on('error', (e) => { if (settle()) { totals.http_errors += 1; error('POST', 'response ' + e.message); } });
    res.on('end', () => {
      if (!settle()) return;
      if (res.statusCode === 200 && body.trim() === `ok ${size}`) {
        totals.uploads += 1;
        totals.upload_bytes += size;
      } else {
        totals.http_errors += 1;
        error('POST', `status ${res.statusCode}, ${body.trim().slice(0, 60)}`);
      }
    });
  });
  req.setTimeout(60000, () => req.destroy(new Error('timeout')));
  req.on('error', (e) => {
    if (!settle()) return;
    totals.http_errors += 1;
    error('POST', e.message);
  });
  let left = size;
  const write = () => {
    while (left > 0) {
      const n = Math.min(left, CHUNK.length);
      left -= n;
      if (!req.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n))) {
        req.once('drain', write);
        return;
      }
    }
    req.end();
  };
  write();
}

const loops = [];
function every(perSecond, fn) {
  if (perSecond > 0) loops.push(setInterval(fn, 1000 / perSecond));
}

for (let i = 0; i < (opt.pairs || 0); i++) openPair('echo');
for (let i = 0; i < (opt.push || 0); i++) openPair('push');
every(opt.churn || 0, () => openPair('short', 500 + Math.random() * 9500));
every(opt.vanish ? 1 / opt.vanish : 0, vanish);
every(opt.gets || 0, get);
every(opt.uploads || 0, upload);

function stop() {
  if (stopping) return;
  stopping = true;
  for (const t of loops) clearInterval(t);
  for (const pair of Array.from(live)) {
    if (pair.rec.t_open === null) {
      pair.aborted = true; // still in its handshake: not an error, the run is over
      pair.ws.terminate();
      pair.finish('aborted', null);
    }
    else closePair(pair);
  }
  const deadline = Date.now() + 30000;
  const wait = () => {
    if ((live.size === 0 && httpInflight === 0) || Date.now() > deadline) {
      for (const pair of Array.from(live)) pair.finish('stuck', null);
      totals.http_unfinished = httpInflight;
      agent.destroy();
      out('END ' + JSON.stringify(totals));
      process.stdout.write('', () => process.exit(0));
    } else setTimeout(wait, 50);
  };
  wait();
}

let buf = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  buf += chunk;
  if (buf.includes('stop')) stop();
});
setTimeout(() => {
  out('FAIL guard timeout');
  stop();
}, (opt.guard || 3600) * 1000);
out('STARTED');

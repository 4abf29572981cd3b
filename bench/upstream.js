// WebSocket echo upstream for the wsrelay benchmark (bench/bench.py starts it).
//
//   node upstream.js PORT [count]   (0: any free port; prints "LISTENING <port>" when ready)
//
// Every WebSocket connection, on any path, echoes each message back as it came (text as text,
// binary as binary).  No permessage-deflate, no pings, no connection tracking: the cheapest
// echo the `ws` package can do, so that the proxy in front of it is what the benchmark measures.
// HTTP: POST (any path; the bench uses /sink) reads the whole request body, then answers 200
// "ok"; anything else gets 404.  The GET endpoints are served by a separate nginx "origin"
// (see configs.py): nginx's own `return 200` on POST answers before reading the body, which is
// not what a sink that measures uploads should do.
//
// With "count" (bench/soak.py), a WebSocket whose URL carries "?id=ID" is accounted for: its
// messages are numbered (numbered.js) and checked in order; on ".../push?id=ID" the upstream
// sends numbered 16 KiB messages instead, as fast as the connection takes them (it waits while
// more than 1 MiB is buffered: back-pressure), to a client that reads slowly.  When such a
// connection ends, and for every one still open when SIGTERM arrives (then the process exits
// without closing them, as a crashed upstream), one line "UPC <json>" gives its counts.  The
// POST sink answers "ok <bytes received>".  Other connections are the plain echo above.
'use strict';

const http = require('http');
const { WebSocketServer } = require('ws');
const { message, wellFormed } = require('./numbered');

const port = Number(process.argv[2] || 0);
const counting = process.argv[3] === 'count';
const OK = Buffer.from('ok\n');
const server = http.createServer((req, res) => {
  if (req.method !== 'POST') {
    res.writeHead(404, { 'Content-Length': '0' });
    res.end();
    return;
  }
  let received = 0;
  req.on('data', (chunk) => { received += chunk.length; });
  req.on('end', () => {
    const body = counting ? Buffer.from(`ok ${received}\n`) : OK;
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': String(body.length) });
    res.end(body);
  });
});
server.keepAliveTimeout = 75000;
const wss = new WebSocketServer({
  server,
  perMessageDeflate: false,
  clientTracking: false,
  maxPayload: 64 * 1024 * 1024,
});
const accounted = new Map(); // id -> record of an open accounted connection
wss.on('connection', (ws, req) => {
  const id = counting && /[?&]id=([\w.-]+)/.exec(req.url);
  if (id) {
    account(ws, id[1], req.url.includes('/push?') ? 'push' : 'echo');
    return;
  }
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => {});
});

function report(rec, end, code) {
  rec.end = end;
  rec.code = code;
  accounted.delete(rec.id);
  process.stdout.write('UPC ' + JSON.stringify(rec) + '\n');
}

function account(ws, id, kind) {
  const rec = { id, kind, recv: 0, sent: 0, bad: 0, stalls: 0, end: null, code: null };
  accounted.set(id, rec);
  ws.on('error', () => {});
  ws.on('close', (code) => report(rec, 'closed', code));
  ws.on('message', (data) => {
    if (!wellFormed(data, rec.recv)) rec.bad += 1;
    rec.recv += 1;
    if (kind === 'echo') {
      ws.send(data, { binary: true });
      rec.sent += 1;
    }
  });
  if (kind !== 'push') return;
  const timer = setInterval(() => {
    if (ws.readyState !== ws.OPEN) {
      clearInterval(timer);
      return;
    }
    if (ws.bufferedAmount > 1024 * 1024) {
      rec.stalls += 1; // the reader is behind: wait (back-pressure)
      return;
    }
    for (let i = 0; i < 8 && ws.bufferedAmount <= 1024 * 1024; i++) {
      ws.send(message(rec.sent, 16 * 1024), { binary: true });
      rec.sent += 1;
    }
  }, 20);
}

function killed() {
  for (const rec of Array.from(accounted.values())) report(rec, 'killed', null);
  process.exit(0);
}
server.on('clientError', (err, socket) => socket.destroy());
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});
process.on('SIGTERM', () => (counting ? killed() : process.exit(0)));
process.on('SIGINT', () => process.exit(0));

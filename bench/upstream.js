// WebSocket echo upstream for the wsrelay benchmark (bench/bench.py starts it).
//
//   node upstream.js PORT        (0: any free port; prints "LISTENING <port>" when ready)
//
// Every WebSocket connection, on any path, echoes each message back as it came (text as text,
// binary as binary).  No permessage-deflate, no pings, no connection tracking: the cheapest
// echo the `ws` package can do, so that the proxy in front of it is what the benchmark measures.
// HTTP: POST (any path; the bench uses /sink) reads the whole request body, then answers 200
// "ok"; anything else gets 404.  The GET endpoints are served by a separate nginx "origin"
// (see configs.py): nginx's own `return 200` on POST answers before reading the body, which is
// not what a sink that measures uploads should do.
'use strict';

const http = require('http');
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 0);
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
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': String(OK.length) });
    res.end(OK);
  });
});
server.keepAliveTimeout = 75000;
const wss = new WebSocketServer({
  server,
  perMessageDeflate: false,
  clientTracking: false,
  maxPayload: 64 * 1024 * 1024,
});
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => {});
});
server.on('clientError', (err, socket) => socket.destroy());
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));

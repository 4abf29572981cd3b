// A Node `ws` upstream for wsrelay's interop matrix (tests/test_interop.py).
// Usage: node interop_server.js  -> prints "interop upstream ws listening on PORT".
// Echoes every message (text as text, binary as binary); chooses the LAST subprotocol offered
// (so a client sees the upstream's choice, not its own first); permessage-deflate accepted.
// Text commands: "!protocol" answers the chosen subprotocol; "!close CODE REASON" closes so.
// Prints "closed id=ID code=CODE reason=REASON" for every close it receives (ID: ?id= of the URL).
'use strict';
const { WebSocketServer } = require('ws');

const server = new WebSocketServer({
  host: '127.0.0.1', port: 0, perMessageDeflate: true, maxPayload: 64 * 1024 * 1024,
  handleProtocols: (offered) => (offered.size ? [...offered].pop() : false),
});
server.on('connection', (ws, request) => {
  const id = new URL(request.url, 'http://upstream').searchParams.get('id') || '-';
  ws.on('message', (data, isBinary) => {
    if (!isBinary) {
      const text = data.toString();
      if (text === '!protocol') { ws.send(ws.protocol || '(none)'); return; }
      const close = /^!close (\d+) (.*)$/.exec(text);
      if (close) { ws.close(Number(close[1]), close[2]); return; }
    }
    ws.send(data, { binary: isBinary });
  });
  ws.on('close', (code, reason) => console.log(`closed id=${id} code=${code} reason=${reason.toString()}`));
});
server.on('listening', () => console.log(`interop upstream ws listening on ${server.address().port}`));
process.on('SIGTERM', () => process.exit(0));

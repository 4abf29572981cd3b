// bench/repro/close-stall.sh's client: opens URL, and on a line on stdin sends 5 binary messages
// and close(1000) at once; prints how many echoes arrived before the close, and its code.
'use strict';
const WebSocket = require('../node_modules/ws');

const ws = new WebSocket(process.argv[2], { perMessageDeflate: false });
let echoes = 0;
ws.on('open', () => {
  process.stdin.once('data', () => {
    for (let i = 0; i < 5; i++) ws.send(Buffer.alloc(100, i));
    ws.close(1000);
  });
});
ws.on('message', () => { echoes += 1; });
ws.on('close', (code) => {
  process.stdout.write(JSON.stringify({ url: process.argv[2], sent: 5, echoes, code }) + '\n');
  process.exit(0);
});
ws.on('error', (e) => process.stdout.write(`error ${e.message}\n`));

// A Node `ws` client for wsrelay's interop matrix (tests/test_interop.py).
// Usage: node interop_client.js URL ID deflate|plain  -> one JSON line of what it observed.
// Connection ID-a: subprotocols offered, text, binary, a message in three fragments, 1 MiB, the
// "!protocol" answer, then the client closes with 4002.  Connection ID-b: asks the upstream to
// close with 4001 and reports the code and reason it got.  Every wait has a deadline.
'use strict';
const crypto = require('crypto');
const WebSocket = require('ws');

const [url, id, compression] = process.argv.slice(2);
const options = { perMessageDeflate: compression === 'deflate', maxPayload: 0, handshakeTimeout: 10000 };
const sha256 = (data) => crypto.createHash('sha256').update(data).digest('hex');
const within = (promise, what) => Promise.race([promise, new Promise((_, reject) =>
  setTimeout(() => reject(new Error(`timeout: ${what}`)), 15000))]);

function open(suffix) {
  const ws = new WebSocket(`${url}?id=${id}-${suffix}`, ['interop.v1', 'interop.v2'], options);
  const inbox = [];
  const waiting = [];
  ws.on('message', (data, isBinary) => {
    const m = { data, isBinary };
    if (waiting.length) waiting.shift()(m); else inbox.push(m);
  });
  ws.next = () => within(new Promise((resolve) => (inbox.length ? resolve(inbox.shift()) : waiting.push(resolve))), 'message');
  ws.closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  ws.opened = within(new Promise((resolve, reject) => { ws.on('open', resolve); ws.on('error', reject); }), 'open');
  return ws;
}

async function main() {
  const out = {};
  const a = open('a');
  await a.opened;
  out.protocol = a.protocol;
  out.extensions = a.extensions;
  a.send('h\u00e9llo \u2713');
  let m = await a.next();
  out.text = m.isBinary ? null : m.data.toString();
  a.send(Buffer.from([...Array(256).keys()]));
  m = await a.next();
  out.binary = m.isBinary ? m.data.toString('hex') : null;
  a.send('frag-one|', { fin: false });
  a.send('frag-two|', { fin: false });
  a.send('frag-three', { fin: true });
  m = await a.next();
  out.fragmented = m.isBinary ? null : m.data.toString();
  const big = crypto.randomBytes(1024 * 1024);
  a.send(big);
  m = await a.next();
  out.big = { length: m.data.length, same: m.isBinary && sha256(m.data) === sha256(big) };
  a.send('!protocol');
  out.upstream_protocol = (await a.next()).data.toString();
  a.close(4002, 'client bye');
  out.client_close_answer = await within(a.closed, 'close a');
  const b = open('b');
  await b.opened;
  b.send('!close 4001 upstream bye');
  out.upstream_close = await within(b.closed, 'close b');
  console.log(JSON.stringify(out));
}
main().then(() => process.exit(0), (err) => { console.log(JSON.stringify({ error: String(err) })); process.exit(1); });

// Socket.IO clients for wsrelay's tests (tests/test_socketio.py).
// Usage: node sio_clients.js URL COUNT  -> one JSON line with what the clients observed.
// Each client has its own cookie jar (withCredentials), starts with HTTP long-polling and upgrades
// to WebSocket, as browsers do; every wait has a deadline.
'use strict';
const { io } = require('socket.io-client');

const [url, countText] = process.argv.slice(2);
const count = Number(countText || '1');
const deadline = (promise, ms, what) => Promise.race([
  promise,
  new Promise((_, reject) => setTimeout(() => reject(new Error(`timeout: ${what}`)), ms)),
]);

function start(index) {
  const socket = io(url, {
    forceNew: true, withCredentials: true, reconnection: false, timeout: 5000,
    transports: ['polling', 'websocket'],
  });
  const client = { index, socket, room: [], welcome: null, first: null, upgradedTo: null };
  socket.on('welcome', (w) => { client.welcome = w; });
  socket.on('room', (m) => client.room.push(m));
  client.upgraded = new Promise((resolve) => socket.io.on('open', () => {
    client.first = socket.io.engine.transport.name; // the transport the session opened with
    socket.io.engine.once('upgrade', (t) => { client.upgradedTo = t.name; resolve(); });
  }));
  client.connected = new Promise((resolve, reject) => {
    socket.once('connect', () => resolve());
    socket.once('connect_error', (err) => reject(err));
  });
  return client;
}

async function main() {
  const clients = [];
  try {
    for (let i = 0; i < count; i++) {
      const c = start(i);
      clients.push(c);
      await deadline(c.connected, 10000, `client ${i} connect`);
      await deadline(c.upgraded, 10000, `client ${i} upgrade`);
    }
    const out = [];
    for (const c of clients) {
      const who = await deadline(c.socket.emitWithAck('whoami'), 5000, 'whoami');
      const echo = await deadline(c.socket.emitWithAck('echo', `hello from client ${c.index}`), 5000, 'echo');
      await deadline(c.socket.emitWithAck('join', 'lobby'), 5000, 'join');
      out.push({ index: c.index, first: c.first, upgradedTo: c.upgradedTo, transport: c.socket.io.engine.transport.name,
                 server: who.server, serverTransport: who.transport, welcome: c.welcome, echo });
    }
    // One client per server shouts in the room; everyone waits for its own server's shout.
    const shouters = new Map();
    out.forEach((o, i) => { if (!shouters.has(o.server)) shouters.set(o.server, clients[i]); });
    for (const [server, c] of shouters) {
      await deadline(c.socket.emitWithAck('shout', 'lobby', `shout on ${server}`), 5000, 'shout');
    }
    await deadline(Promise.all(clients.map((c) => new Promise((resolve) => {
      const check = () => (c.room.length > 0 ? resolve() : c.socket.once('room', check));
      check();
    }))), 5000, 'room broadcast');
    // A round trip after the broadcast: anything else sent to a client before it has arrived.
    for (const c of clients) await deadline(c.socket.emitWithAck('whoami'), 5000, 'whoami');
    out.forEach((o, i) => { o.room = clients[i].room; });
    console.log(JSON.stringify({ ok: true, clients: out }));
  } catch (err) {
    console.log(JSON.stringify({ ok: false, error: String(err && err.message), description: String(err && err.description && (err.description.message || err.description)) }));
  } finally {
    clients.forEach((c) => c.socket.close());
  }
}
main().then(() => process.exit(0));

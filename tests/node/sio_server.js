// A Socket.IO server for wsrelay's tests (tests/test_socketio.py).
// Usage: node sio_server.js NAME  -> prints "socket.io server NAME listening on PORT" (port chosen
// by the OS, 127.0.0.1), then one line per connection, upgrade and engine connection error.
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const name = process.argv[2] || 'server';
const httpServer = http.createServer();
const io = new Server(httpServer);

// Socket.IO's documented diagnostics: code 1 "Session ID unknown" when a request of a session
// reaches a server that does not hold it (no sticky sessions in front of several servers).
io.engine.on('connection_error', (err) => {
  console.log(`connection_error code=${err.code} message=${err.message}`);
});

io.on('connection', (socket) => {
  console.log(`connection ${socket.id} transport=${socket.conn.transport.name}`);
  socket.conn.once('upgrade', (transport) => console.log(`upgrade ${socket.id} transport=${transport.name}`));
  socket.emit('welcome', { server: name });
  socket.on('whoami', (ack) => ack({ server: name, transport: socket.conn.transport.name }));
  socket.on('echo', (data, ack) => ack({ server: name, data }));
  socket.on('join', (room, ack) => { socket.join(room); ack({ server: name }); });
  socket.on('shout', (room, text, ack) => {
    io.to(room).emit('room', { server: name, text });
    ack({ server: name });
  });
});

httpServer.listen(0, '127.0.0.1', () => {
  console.log(`socket.io server ${name} listening on ${httpServer.address().port}`);
});
process.on('SIGTERM', () => process.exit(0));

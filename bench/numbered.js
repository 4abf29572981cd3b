// Numbered WebSocket messages of the soak (mixload.js sends them, upstream.js "count" checks
// them): u32 sequence number, u32 payload length, then the payload, every byte of which is the
// sequence number's low byte.
'use strict';

function message(seq, size) {
  const buf = Buffer.alloc(8 + size, seq & 0xff);
  buf.writeUInt32BE(seq, 0);
  buf.writeUInt32BE(size, 4);
  return buf;
}

// Is `data` message number `seq`, whole?  (header, length, first and last payload byte)
function wellFormed(data, seq) {
  return data.length >= 8 && data.readUInt32BE(0) === seq && data.readUInt32BE(4) === data.length - 8
    && (data.length === 8 || (data[8] === (seq & 0xff) && data[data.length - 1] === (seq & 0xff)));
}

module.exports = { message, wellFormed };

// The Socket.IO peer of scripts/bench-dist: one node of a Socket.IO cluster whose nodes share
// rooms through @socket.io/redis-adapter (Redis pub/sub), driven by `concord bench --proto
// socketio`. Events: `join` (room) → joins, acks; `publish` (room, data) → emits `event`
// (room, data) to every member of the room on every node, then acks. No order across nodes, no
// recovery of missed messages, nothing persisted: the adapter's plain broadcast.
//
// Environment: REDIS_URL (redis://127.0.0.1:6379), PORT (0 = any free port). Prints
// "socket.io listening on 127.0.0.1:PORT" once it serves.
"use strict";
const { createServer } = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

async function main() {
  const pub = createClient({ url: process.env.REDIS_URL || "redis://127.0.0.1:6379" });
  const sub = pub.duplicate();
  for (const c of [pub, sub]) c.on("error", (e) => console.error("redis:", e.message));
  await Promise.all([pub.connect(), sub.connect()]);
  const http = createServer();
  const io = new Server(http, {
    adapter: createAdapter(pub, sub),
    transports: ["websocket"],
    serveClient: false,
    perMessageDeflate: false,
  });
  io.on("connection", (socket) => {
    socket.on("join", (room, ack) => {
      socket.join(String(room));
      if (typeof ack === "function") ack();
    });
    socket.on("publish", (room, data, ack) => {
      io.to(String(room)).emit("event", room, data);
      if (typeof ack === "function") ack();
    });
  });
  const stop = () => io.close(() => process.exit(0));
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  http.listen(Number(process.env.PORT || 0), "127.0.0.1", () => {
    console.log(`socket.io listening on 127.0.0.1:${http.address().port}`);
  });
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

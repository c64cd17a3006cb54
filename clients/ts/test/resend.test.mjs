// The wire form of a resend, against a scripted server (a `ws` server in this process): a
// publish that had no answer goes out again after the reconnect with the same id and data and
// `resend: true`; the first send has no `resend` field.
import { test } from "node:test";
import assert from "node:assert/strict";
import { WebSocketServer } from "ws";
import { connect } from "../dist/node.js";

test("a publish sent again after a reconnect is flagged as a resend, with its id and data", async () => {
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  await new Promise((ok) => wss.on("listening", ok));
  const publishes = [];
  let connections = 0;
  wss.on("connection", (ws) => {
    const n = ++connections;
    ws.on("message", (raw) => {
      const m = JSON.parse(String(raw));
      if (m.type === "hello") ws.send(JSON.stringify({ type: "welcome", node: "scripted", server_time: Date.now() }));
      if (m.type !== "publish") return;
      publishes.push(m);
      if (n === 1) ws.terminate(); // no answer: the client must send it again
      else ws.send(JSON.stringify({ type: "ack", room: m.room, id: m.id, seq: 1, hlc: "0000000000001-000000-scripted" }));
    });
  });
  const url = `ws://127.0.0.1:${wss.address().port}/v1/ws`;
  const c = connect({ url, backoff: { initialMs: 20, maxMs: 50 } });
  try {
    const ack = await c.publish("chat:resend", { n: 1 }, { id: "p-1" });
    assert.equal(ack.seq, 1);
    assert.equal(publishes.length, 2, "sent once, then once more after the reconnect");
    assert.equal(publishes[0].resend, undefined, "the first send is not a resend");
    assert.equal(publishes[1].resend, true, "the second send is flagged");
    assert.deepEqual(
      publishes.map((m) => [m.room, m.id, m.data]),
      [["chat:resend", "p-1", { n: 1 }], ["chat:resend", "p-1", { n: 1 }]],
      "same room, id and data",
    );
  } finally {
    c.close();
    await new Promise((ok) => wss.close(ok));
  }
});

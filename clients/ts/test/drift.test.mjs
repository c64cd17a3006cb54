// Drift detection against a scripted server (the real one never sends a wrong hash): a hash that
// differs from the replica's copy of the server state is reported with `drift`, and the doc
// resyncs (joins again without `since`), dropping its pending edits and saying so.
import { test } from "node:test";
import assert from "node:assert/strict";
import { WebSocketServer } from "ws";
import { connect, stateHash } from "../dist/node.js";
import { until } from "./support.mjs";

test("a wrong hash is reported with drift and the doc resyncs to the server's state", async () => {
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  await new Promise((r) => wss.on("listening", r));
  const got = [];
  let socket;
  wss.on("connection", (ws) => {
    socket = ws;
    ws.on("message", (raw) => {
      const m = JSON.parse(String(raw));
      got.push(m);
      const send = (v) => ws.send(JSON.stringify(v));
      if (m.type === "hello") send({ type: "welcome", client_id: m.client_id, node: "fake", server_time: Date.now() });
      if (m.type === "join") {
        const resync = got.filter((x) => x.type === "join").length > 1;
        const state = resync ? { a: 5 } : { a: 1 };
        send({ type: "joined", room: m.room, kind: "doc", epoch: "e1", seq: resync ? 7 : 0, recovered: false, events: [], state, hash: stateHash(state), presence: {}, members: [] });
      }
    });
  });
  const client = connect({ url: `ws://127.0.0.1:${wss.address().port}/v1/ws` });
  try {
    const doc = await client.joinDoc("doc:drift");
    const resynced = [];
    doc.on("resynced", (r) => resynced.push(r));
    doc.edit([{ op: "set", path: ["b"], value: 1 }]);
    await until("the list was sent", () => got.some((m) => m.type === "op"));
    // Someone else's list, with a hash that is not the hash of the state it leads to.
    socket.send(JSON.stringify({ type: "event", room: "doc:drift", seq: 1, hlc: "x", from: "other", id: "o1", ops: [{ op: "set", path: ["a"], value: 2 }], hash: "0".repeat(32) }));
    await until("the doc resynced", () => resynced.length === 1);
    const drift = got.find((m) => m.type === "drift");
    assert.deepEqual(drift, { type: "drift", room: "doc:drift", seq: 1, hash: stateHash({ a: 2 }) }, "the drift report names the seq and our hash");
    const rejoin = got.filter((m) => m.type === "join")[1];
    assert.equal(rejoin.since, undefined, "the resync joins without since");
    assert.deepEqual(resynced[0], { seq: 7, reason: "drift", dropped: 1 });
    assert.deepEqual(doc.state, { a: 5 }, "the state is the server's; the pending edit was dropped");
    assert.equal(doc.seq, 7);
    assert.equal(doc.drifts, 1);
  } finally {
    client.close();
    wss.close();
  }
});

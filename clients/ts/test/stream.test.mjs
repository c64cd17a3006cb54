// Stream rooms against a real `concord serve`: order, ack matching, a server restart in the
// middle of a burst of publishes (nothing lost, nothing doubled), recovery and resets.
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect } from "../dist/node.js";
import { getJson, startServer, tempDir, until } from "./support.mjs";

const FAST = ["--rate-publish-per-conn", "100000:100000", "--rate-frames-per-conn", "100000:100000", "--rate-publish-per-room", "100000:100000"];

test("publishes are acked by id and delivered to every member in send order", async () => {
  const server = await startServer({ args: FAST });
  const a = connect({ url: server.url });
  const b = connect({ url: server.url });
  try {
    const ra = await a.join("chat:order");
    const rb = await b.join("chat:order");
    const got = [];
    rb.on("event", (e) => got.push(e));
    const acks = await Promise.all(Array.from({ length: 60 }, (_, i) => a.publish("chat:order", { n: i }, { id: `m-${i}` })));
    acks.forEach((ack, i) => {
      assert.equal(ack.id, `m-${i}`, "each promise resolves with the ack of its own id");
      if (i > 0) assert.ok(ack.seq > acks[i - 1].seq, `acks follow the send order (${acks[i - 1].seq} then ${ack.seq})`);
    });
    await until("B has every event", () => got.length === 60);
    assert.deepEqual(got.map((e) => e.data.n), [...Array(60).keys()], "B sees the events in send order");
    assert.deepEqual(got.map((e) => e.seq), acks.map((x) => x.seq), "event seqs equal the ack seqs");
    assert.equal(ra.seq, acks[59].seq);
    const again = await a.publish("chat:order", { n: "retry" }, { id: "m-3" });
    assert.equal(again.seq, acks[3].seq, "a retried id gets the original ack");
    await assert.rejects(a.publish("nosuch:room", 1), (e) => e.code === "not_found", "errors carry the protocol code");
  } finally {
    a.close();
    b.close();
    await server.stop();
  }
});

test("a server restart in the middle of a burst loses nothing and doubles nothing", async () => {
  const dir = tempDir();
  let server = await startServer({ dataDir: dir, args: FAST });
  const port = server.addr.split(":")[1];
  const a = connect({ url: server.url, backoff: { initialMs: 50, maxMs: 300 } });
  const b = connect({ url: server.url, backoff: { initialMs: 50, maxMs: 300 } });
  try {
    await a.join("chat:restart");
    const rb = await b.join("chat:restart");
    const seen = [];
    rb.on("event", (e) => seen.push(e));
    const resets = [];
    rb.on("reset", (r) => resets.push(r));
    const N = 400;
    let acked = 0;
    const acks = [];
    const producer = (async () => {
      for (let i = 0; i < N; i++) {
        acks.push(a.publish("chat:restart", { n: i }).then((ack) => (acked++, ack)));
        await new Promise((r) => setTimeout(r, 1));
      }
    })();
    await until("some publishes are acked", () => acked >= 50);
    await server.kill();
    const atKill = acks.length;
    await new Promise((r) => setTimeout(r, 150));
    server = await startServer({ dataDir: dir, listen: `127.0.0.1:${port}`, args: FAST });
    await producer;
    assert.ok(atKill < N, `the kill happened mid-burst (${atKill} of ${N} sent)`);
    const all = await Promise.all(acks);
    assert.equal(new Set(all.map((x) => x.seq)).size, N, "every publish has its own seq");
    const history = await getJson(`${server.http}/v1/rooms/chat:restart/events?after=0&limit=1000`);
    const ns = history.events.map((e) => e.data.n);
    assert.equal(ns.length, N, `the room holds exactly ${N} events, not ${ns.length}`);
    assert.deepEqual([...ns].sort((x, y) => x - y), [...Array(N).keys()], "each publish is stored exactly once");
    await until("B caught up", () => rb.seq === history.seq);
    assert.deepEqual(resets, [], "B recovered without a reset");
    assert.deepEqual(seen.map((e) => e.seq), history.events.map((e) => e.seq), "B saw every event once, in order");
  } finally {
    a.close();
    b.close();
    await server.stop();
  }
});

test("a client that was offline recovers the missed events; a lost history is surfaced as a reset", async () => {
  let server = await startServer({ args: ["--memory", ...FAST] });
  const port = server.addr.split(":")[1];
  const a = connect({ url: server.url, backoff: { initialMs: 50, maxMs: 300 } });
  const b = connect({ url: server.url, backoff: { initialMs: 50, maxMs: 300 } });
  try {
    await a.join("chat:rec");
    const rb = await b.join("chat:rec");
    const joins = [];
    rb.on("joined", (j) => joins.push(j));
    const seen = [];
    rb.on("event", (e) => seen.push(e.data));
    b.setOnline(false);
    assert.equal(b.status, "offline");
    for (let i = 0; i < 10; i++) await a.publish("chat:rec", i);
    b.setOnline(true);
    await until("B recovered", () => seen.length === 10);
    assert.deepEqual(seen, [...Array(10).keys()]);
    assert.equal(joins.at(-1).recovered, true, "the rejoin was a recovery");

    const resets = [];
    rb.on("reset", (r) => resets.push(r));
    await server.kill();
    server = await startServer({ args: ["--memory", ...FAST], listen: `127.0.0.1:${port}` });
    await until("B rejoined the recreated room", () => resets.length === 1);
    assert.equal(joins.at(-1).recovered, false, "a room whose history is gone cannot be recovered");
    assert.equal(rb.seq, 0, "the new truth is the new room");
  } finally {
    a.close();
    b.close();
    await server.stop();
  }
});

test("presence reaches the others and is cleared when a member leaves or disconnects", async () => {
  const server = await startServer({ args: ["--presence-interval", "10ms"] });
  const a = connect({ url: server.url });
  const b = connect({ url: server.url });
  const c = connect({ url: server.url });
  try {
    const ra = await a.join("chat:presence");
    const rb = await b.join("chat:presence");
    const rc = await c.join("chat:presence");
    rb.setPresence({ cursor: 3 });
    rc.setPresence({ cursor: 7 });
    await until("A sees both cursors", () => ra.presence.get(b.clientId)?.cursor === 3 && ra.presence.get(c.clientId)?.cursor === 7);
    assert.equal(ra.members.size, 3);
    rc.leave();
    await until("C's presence is gone after leave", () => !ra.presence.has(c.clientId) && !ra.members.has(c.clientId));
    b.close();
    await until("B's presence is gone after its connection closed", () => !ra.presence.has(b.clientId) && !ra.members.has(b.clientId));
    assert.deepEqual([...ra.members.keys()], [a.clientId]);
  } finally {
    a.close();
    b.close();
    c.close();
    await server.stop();
  }
});

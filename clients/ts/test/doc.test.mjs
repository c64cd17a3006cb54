// Doc rooms against a real `concord serve`: several clients editing one document at random
// (seeded), some going offline and back, converge on the server's state and hash.
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, stateHash } from "../dist/node.js";
import { getJson, rng, seed, startServer, tempDir, until } from "./support.mjs";

const ARGS = ["--doc-hash-every", "1", "--rate-publish-per-conn", "100000:100000", "--rate-frames-per-conn", "100000:100000", "--rate-publish-per-room", "100000:100000"];

/** A random edit valid against `s` (text, task list, counter). */
function randomEdit(s, r) {
  const body = [...(s.body ?? "")];
  const tasks = s.tasks ?? [];
  switch (r.below(7)) {
    case 0:
    case 1:
      return [{ op: "text", path: ["body"], pos: r.below(body.length + 1), insert: ["a", "bc", "😀", "é"][r.below(4)] }];
    case 2: {
      const pos = r.below(body.length + 1);
      return [{ op: "text", path: ["body"], pos, delete: r.below(Math.min(3, body.length - pos) + 1) }];
    }
    case 3:
      return [{ op: "ins", path: ["tasks", r.below(tasks.length + 1)], value: { text: `t${r.below(100)}`, done: false } }];
    case 4:
      return tasks.length ? [{ op: "set", path: ["tasks", r.below(tasks.length), "done"], value: r.below(2) === 1 }] : [{ op: "add", path: ["n"], value: 1 }];
    case 5:
      return tasks.length > 1 ? [{ op: "move", path: ["tasks", r.below(tasks.length)], to: r.below(tasks.length) }] : [{ op: "add", path: ["n"], value: 2 }];
    default:
      return tasks.length && r.below(2) ? [{ op: "del", path: ["tasks", r.below(tasks.length)] }] : [{ op: "add", path: ["n"], value: -1 }];
  }
}

test("clients editing one doc at random converge on the server's state and hash", async () => {
  const r = rng(seed("doc convergence"));
  const server = await startServer({ args: ARGS });
  const clients = Array.from({ length: 4 }, () => connect({ url: server.url, backoff: { initialMs: 20, maxMs: 200 } }));
  try {
    const room = "doc:converge";
    const docs = [];
    for (const c of clients) docs.push(await c.joinDoc(room));
    docs[0].edit([{ op: "set", path: ["body"], value: "hello" }, { op: "set", path: ["tasks"], value: [] }, { op: "set", path: ["n"], value: 0 }]);
    await docs[0].flushed();
    await until("everyone has the initial state", () => docs.every((d) => d.seq >= 1));
    const resyncs = [];
    docs.forEach((d, i) => d.on("resynced", (x) => resyncs.push([i, x])));
    for (let round = 0; round < 120; round++) {
      const i = r.below(docs.length);
      if (r.below(10) === 0) clients[i].setOnline(clients[i].status === "offline");
      for (let k = 0; k < 1 + r.below(3); k++) docs[i].edit(randomEdit(docs[i].state, r));
      if (r.below(3) === 0) await new Promise((res) => setTimeout(res, r.below(15)));
    }
    for (const c of clients) c.setOnline(true);
    await Promise.all(docs.map((d) => d.flushed()));
    const head = await getJson(`${server.http}/v1/rooms/${room}`);
    await until("every replica reached the head", () => docs.every((d) => d.seq === head.seq));
    for (const [i, d] of docs.entries()) {
      assert.deepEqual(d.state, head.state, `replica ${i} equals the server's state`);
      assert.equal(stateHash(d.state), head.hash, `replica ${i} has the server's hash`);
      assert.equal(d.drifts, 0, `replica ${i} never drifted`);
    }
    assert.deepEqual(resyncs, [], "no replica had to resync");
    assert.ok(head.seq > 10, `many lists were committed (${head.seq})`);
  } finally {
    for (const c of clients) c.close();
    await server.stop();
  }
});

test("a refused list is reported with its code and the doc rolls back to the server's state", async () => {
  const server = await startServer({ args: ARGS });
  const a = connect({ url: server.url });
  try {
    const d = await a.joinDoc("doc:refuse");
    d.edit([{ op: "set", path: ["t"], value: "x" }]);
    await d.flushed();
    const events = [];
    d.on("rejected", (e) => events.push(["rejected", e.code]));
    d.on("resynced", (e) => events.push(["resynced", e.reason]));
    // Valid locally, but 65 levels deep: the server refuses it (doc_max_depth 64).
    let deep = 1;
    for (let i = 0; i < 64; i++) deep = [deep];
    d.edit([{ op: "set", path: ["deep"], value: deep }]);
    await until("the refusal arrived", () => events.length === 2);
    assert.deepEqual(events, [["rejected", "rejected"], ["resynced", "rejected"]]);
    await d.flushed();
    assert.deepEqual(d.state, { t: "x" }, "the refused edit was rolled back");
    assert.throws(() => d.edit([{ op: "del", path: ["nope"] }]), /has no key/, "an edit that does not apply locally is refused at once");
  } finally {
    a.close();
    await server.stop();
  }
});

test("a long offline session is sent in lists within the server's limits and commits whole", async () => {
  const server = await startServer({ args: ARGS });
  const a = connect({ url: server.url });
  const b = connect({ url: server.url });
  try {
    const da = await a.joinDoc("doc:long");
    const db = await b.joinDoc("doc:long");
    da.edit([{ op: "set", path: ["body"], value: "" }]);
    await da.flushed();
    a.setOnline(false);
    // 1200 keystrokes of 40 characters: more ops and more bytes than one list may carry.
    for (let i = 0; i < 1200; i++) da.edit([{ op: "text", path: ["body"], pos: 40 * i, insert: "abcdefghijklmnopqrstuvwxyz0123456789abc\n" }]);
    assert.throws(() => da.edit([{ op: "set", path: ["big"], value: "x".repeat(70_000) }]), (e) => e.code === "too_large", "one edit larger than a list may be is refused");
    const rejected = [];
    da.on("rejected", (e) => rejected.push(e));
    a.setOnline(true);
    await da.flushed();
    const head = await getJson(`${server.http}/v1/rooms/doc:long`);
    await until("B has everything", () => db.seq === head.seq);
    assert.deepEqual(rejected, []);
    assert.equal(head.state.body.length, 1200 * 40, "every keystroke committed");
    assert.ok(head.seq >= 4, `sent as several lists (${head.seq - 1})`);
    assert.deepEqual(db.state, head.state);
    assert.deepEqual(da.state, head.state);
  } finally {
    a.close();
    b.close();
    await server.stop();
  }
});

test("doc edits in flight across a server restart are committed exactly once", async () => {
  const dir = tempDir();
  let server = await startServer({ dataDir: dir, args: ARGS });
  const port = server.addr.split(":")[1];
  const opts = { url: server.url, backoff: { initialMs: 20, maxMs: 200 } };
  const a = connect(opts);
  const b = connect(opts);
  try {
    const da = await a.joinDoc("doc:restart");
    const db = await b.joinDoc("doc:restart");
    da.edit([{ op: "set", path: ["n"], value: 0 }, { op: "set", path: ["log"], value: [] }]);
    await da.flushed();
    const N = 300;
    let made = 0;
    const producer = (async () => {
      for (let i = 0; i < N; i++, made++) {
        da.edit([{ op: "add", path: ["n"], value: 1 }, { op: "ins", path: ["log", 0], value: i }]);
        if (i % 2) db.edit([{ op: "add", path: ["n"], value: 1000 }]);
        await new Promise((r) => setTimeout(r, 1));
      }
    })();
    await until("some lists are committed", () => da.seq >= 20);
    await server.kill();
    assert.ok(made < N, `the server died in the middle of the edits (${made} of ${N} made)`);
    await new Promise((r) => setTimeout(r, 100));
    server = await startServer({ dataDir: dir, listen: `127.0.0.1:${port}`, args: ARGS });
    await producer;
    await Promise.all([da.flushed(), db.flushed()]);
    const head = await getJson(`${server.http}/v1/rooms/doc:restart`);
    await until("both replicas reached the head", () => da.seq === head.seq && db.seq === head.seq);
    assert.equal(head.state.n, N + 1000 * (N / 2), "every add committed exactly once");
    assert.deepEqual([...head.state.log].sort((x, y) => x - y), [...Array(N).keys()], "every insert committed exactly once");
    assert.deepEqual(da.state, head.state);
    assert.deepEqual(db.state, head.state);
    assert.equal(da.drifts + db.drifts, 0);
  } finally {
    a.close();
    b.close();
    await server.stop();
  }
});

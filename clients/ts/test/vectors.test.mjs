// The OT of this client against the vectors concord-core generates (test/vectors.json):
// canonical JSON and hashes, atomic apply (results, hashes, failing op), transform_pair.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { apply, canonicalJson, stateHash, transformPair, ApplyError } from "../dist/index.js";

const vectors = JSON.parse(readFileSync(new URL("./vectors.json", import.meta.url), "utf8"));

test("canonical JSON and state hashes equal concord-core's", () => {
  assert.ok(vectors.hash.length > 10);
  for (const c of vectors.hash) {
    assert.equal(canonicalJson(c.value), c.canonical, `canonical form of ${JSON.stringify(c.value)}`);
    assert.equal(stateHash(c.value), c.hash, `hash of ${c.canonical}`);
  }
});

test("op lists apply to the same states and hashes as in concord-core, failures at the same op", () => {
  let failures = 0;
  for (const c of vectors.apply) {
    const before = JSON.stringify(c.state);
    if (c.error !== undefined) {
      failures++;
      assert.throws(() => apply(c.state, c.ops), (e) => e instanceof ApplyError && e.index === c.error_index && e.message === c.error,
        `expected ${c.error} for ${JSON.stringify(c.ops)}`);
    } else {
      const out = apply(c.state, c.ops);
      assert.deepEqual(out, c.result, `apply ${JSON.stringify(c.ops)} to ${before}`);
      assert.equal(stateHash(out), c.hash);
    }
    assert.equal(JSON.stringify(c.state), before, "apply must not touch its input");
  }
  assert.ok(failures >= 5, "the vectors include failing lists");
});

test("transformPair gives concord-core's results for every op pair, and they converge", () => {
  let astral = 0;
  for (const c of vectors.transform) {
    const [a1, b1] = transformPair(c.a, c.b);
    const ctx = `a=${JSON.stringify(c.a)} b=${JSON.stringify(c.b)} on ${JSON.stringify(c.state)}`;
    assert.deepEqual(a1, c.a1, `a1 of ${ctx}`);
    assert.deepEqual(b1, c.b1, `b1 of ${ctx}`);
    const x = apply(apply(c.state, c.b), a1);
    const y = apply(apply(c.state, c.a), b1);
    assert.deepEqual(x, c.result, `state·b·a1 of ${ctx}`);
    assert.equal(stateHash(y), c.hash, `state·a·b1 converges for ${ctx}`);
    if (/[\u{10000}-\u{10FFFF}]/u.test(JSON.stringify(c.state))) astral++;
  }
  assert.ok(astral > 20, "the vectors edit text with astral code points");
});

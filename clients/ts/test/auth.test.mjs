// JWT auth against a real `concord serve`: the token function is called for each connection and
// again before the token expires; the refreshed connection keeps working past the old expiry.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { connect } from "../dist/node.js";
import { startServer, tempDir, until } from "./support.mjs";

const SECRET = "a-test-secret-of-32-bytes-length";
const b64 = (v) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");
function jwt(claims) {
  const head = b64({ alg: "HS256", typ: "JWT" }) + "." + b64(claims);
  return head + "." + createHmac("sha256", SECRET).update(head).digest("base64url");
}

test("a token function is refreshed before expiry and the connection outlives the first token", async () => {
  const dir = tempDir();
  const secretFile = join(dir, "secret");
  writeFileSync(secretFile, SECRET);
  const server = await startServer({ dataDir: dir, args: ["--auth", "jwt", "--jwt-secret-file", secretFile, "--jwt-leeway", "0", "--auth-grace", "1s"] });
  let issued = 0;
  const token = () => {
    issued++;
    return jwt({ sub: "user-1", exp: Math.floor(Date.now() / 1000) + 3, rooms: { "chat:*": ["read", "write", "presence"] } });
  };
  const a = connect({ url: server.url, token, refreshBeforeMs: 2000 });
  try {
    const room = await a.join("chat:auth");
    const statuses = [];
    a.on("status", (s) => statuses.push(s));
    await until("the token was refreshed", () => issued >= 2, 10_000);
    await new Promise((r) => setTimeout(r, 4000)); // past the first token's expiry and grace
    const ack = await a.publish("chat:auth", "still here");
    assert.equal(ack.seq, 1);
    assert.equal(room.seq, 1);
    assert.equal(a.status, "connected");
    assert.deepEqual(statuses, [], "the connection never dropped: the refreshed token kept it");
    await assert.rejects(a.publish("secret:x", 1), (e) => e.code === "forbidden", "a right the token lacks is `forbidden`");
  } finally {
    a.close();
    await server.stop();
  }
});

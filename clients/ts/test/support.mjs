// Test support: the real `concord serve` binary as a child process (port 0, temp data dir,
// killed by its pid), HTTP reads, and waiting for conditions with generous deadlines.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";

const repo = resolve(new URL(".", import.meta.url).pathname, "../../..");

/** The debug binary cargo built (CONCORD_BIN overrides, e.g. for another CARGO_TARGET_DIR). */
export function binary() {
  const bin = process.env.CONCORD_BIN ?? join(process.env.CARGO_TARGET_DIR ?? join(repo, "target"), "debug", "concord");
  if (!existsSync(bin)) throw new Error(`no concord binary at ${bin}: run cargo build -p concord-cli (or set CONCORD_BIN)`);
  return bin;
}

export function tempDir(prefix = "concord-ts-") {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Starts `concord serve` and resolves once it prints its listening address. */
export async function startServer({ dataDir, listen = "127.0.0.1:0", args = [] } = {}) {
  const dir = dataDir ?? tempDir();
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("CONCORD_")));
  env.CONCORD_LOG = env.CONCORD_LOG ?? "warn";
  const child = spawn(binary(), ["serve", "--listen", listen, "--data-dir", dir, ...args], { env, stdio: ["ignore", "pipe", "pipe"] });
  const stderr = [];
  child.stderr.on("data", (d) => stderr.push(String(d)));
  const addr = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`the server did not report its address within 30 s: ${stderr.join("")}`)), 30_000);
    createInterface({ input: child.stdout }).on("line", (line) => {
      const m = /concord listening on (\S+)/.exec(line);
      if (m) (clearTimeout(timer), ok(m[1]));
    });
    child.on("exit", (code) => fail(new Error(`the server exited (${code}): ${stderr.join("")}`)));
  });
  const exited = new Promise((ok) => child.on("exit", ok));
  return {
    addr,
    dataDir: dir,
    url: `ws://${addr}/v1/ws`,
    http: `http://${addr}`,
    /** SIGKILL, by pid, and wait until it is reaped. */
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await exited;
    },
    async stop() {
      await this.kill();
      if (!dataDir) rmSync(dir, { recursive: true, force: true });
    },
  };
}

export async function getJson(url) {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`GET ${url}: ${res.status} ${await res.text()}`);
  return res.json();
}

/** Waits until `cond()` is truthy (polling), failing with `what` after `ms`. */
export async function until(what, cond, ms = 20_000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A seeded PRNG (mulberry32). */
export function rng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return { next, below: (n) => Math.floor(next() * n) };
}

/** The seed of a randomized test: CONCORD_TS_SEED, else random (printed for replay). */
export function seed(name) {
  const s = Number(process.env.CONCORD_TS_SEED ?? Math.floor(Math.random() * 2 ** 31));
  console.log(`# ${name}: seed ${s} (replay with CONCORD_TS_SEED=${s})`);
  return s;
}

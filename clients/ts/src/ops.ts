//! The doc op model of protocol v1 (§8.4): types, decoding with indexed errors, path helpers.

/** A JSON value as the protocol carries it. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** One step of a path: a map key (string) or a list index (number). */
export type PathSeg = string | number;
export type Path = PathSeg[];

/** One doc operation (wire form). Text positions and lengths count Unicode code points. */
export type Op =
  | { op: "set"; path: Path; value: Json }
  | { op: "del"; path: Path }
  | { op: "ins"; path: Path; value: Json }
  | { op: "move"; path: Path; to: number }
  | { op: "text"; path: Path; pos: number; insert: string }
  | { op: "text"; path: Path; pos: number; delete: number }
  | { op: "add"; path: Path; value: number };

/** An op list that is not well formed (the message names the op: `op 2: unknown op "frob"`). */
export class OpDecodeError extends Error {
  constructor(readonly index: number | null, readonly detail: string) {
    super(index === null ? detail : `op ${index}: ${detail}`);
    this.name = "OpDecodeError";
  }
}

const isCount = (v: unknown): v is number => typeof v === "number" && Number.isInteger(v) && v >= 0;

/** Checks an op list's shape as the server does and returns it with only the known fields. */
export function decodeOps(v: unknown, maxOps = 1000, maxPathDepth = 64): Op[] {
  if (!Array.isArray(v)) throw new OpDecodeError(null, "ops must be an array");
  if (v.length > maxOps) throw new OpDecodeError(null, `too many ops (${v.length} > ${maxOps})`);
  return v.map((op, i) => {
    try {
      return decodeOp(op, maxPathDepth);
    } catch (e) {
      throw new OpDecodeError(i, (e as Error).message);
    }
  });
}

function decodeOp(v: unknown, maxPathDepth: number): Op {
  if (v === null || typeof v !== "object" || Array.isArray(v)) throw new Error("op must be an object");
  const o = v as Record<string, unknown>;
  if (!("op" in o)) throw new Error('missing "op"');
  const name = o.op;
  if (typeof name !== "string") throw new Error('"op" must be a string');
  if (!["set", "del", "ins", "move", "text", "add"].includes(name)) throw new Error(`unknown op ${JSON.stringify(name)}`);
  if (!("path" in o)) throw new Error('missing "path"');
  if (!Array.isArray(o.path)) throw new Error("path must be an array");
  if (o.path.length > maxPathDepth) throw new Error(`path too deep (${o.path.length} > ${maxPathDepth})`);
  const path: Path = o.path.map((s, i) => {
    if (typeof s === "string" || isCount(s)) return s;
    throw new Error(`path[${i}] must be a string or a non-negative integer`);
  });
  const endsInIndex = typeof path[path.length - 1] === "number";
  const field = (k: string): unknown => {
    if (!(k in o)) throw new Error(`missing ${JSON.stringify(k)}`);
    return o[k];
  };
  const count = (k: string): number => {
    const n = field(k);
    if (!isCount(n)) throw new Error(`${JSON.stringify(k)} must be a non-negative integer`);
    return n;
  };
  switch (name) {
    case "set":
      return { op: "set", path, value: field("value") as Json };
    case "del":
      if (path.length === 0) throw new Error("del path must not be empty");
      return { op: "del", path };
    case "ins":
      if (!endsInIndex) throw new Error("ins path must end with a list index");
      return { op: "ins", path, value: field("value") as Json };
    case "move":
      if (!endsInIndex) throw new Error("move path must end with a list index");
      return { op: "move", path, to: count("to") };
    case "text": {
      const pos = count("pos");
      const hasIns = "insert" in o, hasDel = "delete" in o;
      if (hasIns && hasDel) throw new Error('text op takes "insert" or "delete", not both');
      if (hasIns) {
        if (typeof o.insert !== "string") throw new Error('"insert" must be a string');
        return { op: "text", path, pos, insert: o.insert };
      }
      if (hasDel) return { op: "text", path, pos, delete: count("delete") };
      throw new Error('text op needs "insert" or "delete"');
    }
    default: {
      const value = field("value");
      if (typeof value !== "number") throw new Error("add value must be a number");
      return { op: "add", path, value };
    }
  }
}

/** Whether `prefix` is a proper prefix of `path` (an ancestor of it). */
export function isStrictPrefix(prefix: Path, path: Path): boolean {
  return prefix.length < path.length && prefix.every((s, i) => s === path[i]);
}

export function samePath(a: Path, b: Path): boolean {
  return a.length === b.length && a.every((s, i) => s === b[i]);
}

/** Formats a path as the Rust core does in messages: `["items",3]`. */
export function displayPath(path: Path): string {
  return "[" + path.map((s) => (typeof s === "number" ? String(s) : JSON.stringify(s))).join(",") + "]";
}

/** Length of a string in code points. */
export function cpLength(s: string): number {
  let n = 0;
  for (const _ of s) n++;
  return n;
}

//! Applying op lists to a JSON state atomically (all or nothing), as concord-core's apply.rs.

import { cpLength, displayPath, type Json, type Op, type Path, type PathSeg } from "./ops.js";

/** An op list that does not apply; the message names the failing op (`op 1: …`). */
export class ApplyError extends Error {
  constructor(readonly index: number, readonly detail: string) {
    super(`op ${index}: ${detail}`);
    this.name = "ApplyError";
  }
}

/** A deep copy of a JSON value. */
export function clone<T extends Json>(v: T): T {
  if (v === null || typeof v !== "object") return v;
  if (Array.isArray(v)) return v.map((x) => clone(x)) as T;
  const out: { [k: string]: Json } = {};
  for (const k of Object.keys(v)) out[k] = clone((v as { [k: string]: Json })[k]);
  return out as T;
}

/** Applies `ops` to a copy of `state` and returns it; throws {@link ApplyError}, leaving `state` untouched. */
export function apply(state: Json, ops: readonly Op[]): Json {
  const box: { root: Json } = { root: clone(state) };
  ops.forEach((op, i) => {
    try {
      applyOp(box, op);
    } catch (e) {
      throw new ApplyError(i, (e as Error).message);
    }
  });
  return box.root;
}

type Container = Json[] | { [k: string]: Json };

const typeName = (v: Json): string =>
  v === null ? "null"
  : typeof v === "boolean" ? "a boolean"
  : typeof v === "number" ? "a number"
  : typeof v === "string" ? "a string"
  : Array.isArray(v) ? "a list"
  : "an object";

const isObject = (v: Json): v is { [k: string]: Json } => v !== null && typeof v === "object" && !Array.isArray(v);
const has = (o: object, k: string) => Object.prototype.hasOwnProperty.call(o, k);

const outOfRange = (path: Path, i: number, len: number) =>
  new Error(`index ${i} out of range at ${displayPath(path.slice(0, Math.max(0, path.length - 1)))} (len ${len})`);

function wrongContainer(at: Path, v: Json, seg: PathSeg): Error {
  const want = typeof seg === "string" ? "an object" : "a list";
  const step = typeof seg === "string" ? JSON.stringify(seg) : String(seg);
  return new Error(`${displayPath(at)} is ${typeName(v)}, not ${want} (path step ${step})`);
}

function walk(root: Json, path: Path): Json {
  let cur = root;
  path.forEach((seg, depth) => {
    const here = path.slice(0, depth);
    if (typeof seg === "string" && isObject(cur)) {
      if (!has(cur, seg)) throw new Error(`${displayPath(here)} has no key ${JSON.stringify(seg)}`);
      cur = cur[seg];
    } else if (typeof seg === "number" && Array.isArray(cur)) {
      if (seg >= cur.length) throw outOfRange(path.slice(0, depth + 1), seg, cur.length);
      cur = cur[seg];
    } else throw wrongContainer(here, cur, seg);
  });
  return cur;
}

function parentList(root: Json, path: Path): [Json[], number] {
  const i = path[path.length - 1];
  if (typeof i !== "number") throw new Error("path must end with a list index");
  const parentPath = path.slice(0, -1);
  const list = walk(root, parentPath);
  if (!Array.isArray(list)) throw new Error(`${displayPath(parentPath)} is ${typeName(list)}, not a list`);
  return [list, i];
}

/** `a + b` as the server adds (integers exactly within ±2^53 here, else doubles). */
export function addNumbers(a: number, b: number): number {
  const sum = a + b;
  if (!Number.isFinite(sum)) throw new Error("the sum is not a finite number");
  return sum;
}

function setAt(box: { root: Json }, path: Path, value: Json, del: boolean): void {
  if (path.length === 0) {
    if (del) throw new Error("cannot delete the document root");
    box.root = value;
    return;
  }
  const parentPath = path.slice(0, -1);
  const last = path[path.length - 1];
  const parent = walk(box.root, parentPath) as Container;
  if (typeof last === "string" && isObject(parent)) {
    if (del) {
      if (!has(parent, last)) throw new Error(`${displayPath(parentPath)} has no key ${JSON.stringify(last)}`);
      delete parent[last];
    } else parent[last] = value;
  } else if (typeof last === "number" && Array.isArray(parent)) {
    if (last >= parent.length) throw outOfRange(path, last, parent.length);
    if (del) parent.splice(last, 1);
    else parent[last] = value;
  } else throw wrongContainer(parentPath, parent, last);
}

function applyOp(box: { root: Json }, op: Op): void {
  switch (op.op) {
    case "set":
      return setAt(box, op.path, clone(op.value), false);
    case "del":
      return setAt(box, op.path, null, true);
    case "ins": {
      const [list, i] = parentList(box.root, op.path);
      if (i > list.length) throw outOfRange(op.path, i, list.length);
      list.splice(i, 0, clone(op.value));
      return;
    }
    case "move": {
      const [list, i] = parentList(box.root, op.path);
      const len = list.length;
      if (i >= len) throw outOfRange(op.path, i, len);
      if (op.to >= len) throw new Error(`move target ${op.to} out of range at ${displayPath(op.path.slice(0, -1))} (len ${len})`);
      const [v] = list.splice(i, 1);
      list.splice(op.to, 0, v);
      return;
    }
    case "text": {
      const target = walk(box.root, op.path);
      if (typeof target !== "string") throw new Error(`text op on ${displayPath(op.path)} which is ${typeName(target)}, not a string`);
      const chars = Array.from(target);
      const len = chars.length;
      if (op.pos > len) throw new Error(`text position ${op.pos} out of range at ${displayPath(op.path)} (length ${len})`);
      if ("insert" in op) chars.splice(op.pos, 0, op.insert);
      else {
        if (op.delete > len - op.pos) throw new Error(`text delete of ${op.delete} at ${op.pos} out of range at ${displayPath(op.path)} (length ${len})`);
        chars.splice(op.pos, op.delete);
      }
      return setAt(box, op.path, chars.join(""), false);
    }
    case "add": {
      const target = walk(box.root, op.path);
      if (typeof target !== "number") throw new Error(`add on ${displayPath(op.path)} which is ${typeName(target)}, not a number`);
      return setAt(box, op.path, addNumbers(target, op.value), false);
    }
  }
}

export { cpLength };

//! Operational transformation of doc ops, ported from concord-core (rules.rs, list_rules.rs,
//! text_rules.rs, transform.rs): the same results op for op, checked by the shared vectors.

import { cpLength, isStrictPrefix, samePath, type Op, type Path } from "./ops.js";

type ListOp = { k: "ins"; i: number } | { k: "del"; i: number } | { k: "move"; from: number; to: number };

/** Where element `k` is after `b`, or null if `b` deleted it. */
function mapElement(k: number, b: ListOp): number | null {
  switch (b.k) {
    case "ins":
      return k >= b.i ? k + 1 : k;
    case "del":
      return k === b.i ? null : k > b.i ? k - 1 : k;
    case "move": {
      if (k === b.from) return b.to;
      const j = k > b.from ? k - 1 : k;
      return j >= b.to ? j + 1 : j;
    }
  }
}

const gapWithout = (g: number, i: number) => (g > i ? g - 1 : g);
const place = (g: number, other: number, first: boolean) => (other < g || (other === g && !first) ? g + 1 : g);

function transformListOp(a: ListOp, b: ListOp, aLater: boolean): ListOp | null {
  const aFirst = !aLater;
  if (a.k === "del") {
    const k = mapElement(a.i, b);
    return k === null ? null : { k: "del", i: k };
  }
  if (a.k === "ins") {
    if (b.k === "ins") return { k: "ins", i: place(a.i, b.i, aFirst) };
    if (b.k === "del") return { k: "ins", i: gapWithout(a.i, b.i) };
    return { k: "ins", i: place(gapWithout(a.i, b.from), b.to, aFirst) };
  }
  const j = a.from, u = a.to;
  const from = mapElement(j, b);
  if (b.k === "move" && b.from === j) return aLater ? { k: "move", from: b.to, to: u } : null;
  if (from === null) return null;
  if (b.k === "ins") return { k: "move", from, to: place(u, gapWithout(b.i, j), aFirst) };
  if (b.k === "del") return { k: "move", from, to: gapWithout(u, b.i > j ? b.i - 1 : b.i) };
  const i = b.from, t = b.to;
  const gapA = gapWithout(u, i > j ? i - 1 : i);
  const gapB = gapWithout(t, j > i ? j - 1 : j);
  return { k: "move", from, to: place(gapA, gapB, aFirst) };
}

function asListOp(op: Op): [Path, ListOp] | null {
  const last = op.path[op.path.length - 1];
  if (typeof last !== "number") return null;
  const list = op.path.slice(0, -1);
  if (op.op === "ins") return [list, { k: "ins", i: last }];
  if (op.op === "del") return [list, { k: "del", i: last }];
  if (op.op === "move") return [list, { k: "move", from: last, to: op.to }];
  return null;
}

function withIndex(a: Op, depth: number, index: number): Op {
  const path = a.path.slice();
  path[depth] = index;
  return { ...a, path } as Op;
}

function withListOp(a: Op, depth: number, lop: ListOp): Op {
  if (lop.k === "move") return { ...withIndex(a, depth, lop.from), to: lop.to } as Op;
  return withIndex(a, depth, lop.i);
}

type Edit = [number, { insert: string } | { delete: number }];

const editLen = (e: Edit[1]) => ("insert" in e ? cpLength(e.insert) : e.delete);

function transformText(a: Edit, b: Edit, aLater: boolean): Edit[] {
  const [p, ae] = a;
  const [q, be] = b;
  const n = editLen(be);
  if ("insert" in ae) {
    if ("insert" in be) return [[q < p || (q === p && aLater) ? p + n : p, ae]];
    return [[p <= q ? p : p >= q + n ? p - n : q, ae]];
  }
  const m = ae.delete;
  if ("insert" in be) {
    if (q <= p) return [[p + n, ae]];
    if (q >= p + m) return [[p, ae]];
    return [[p, { delete: q - p }], [p + n, { delete: p + m - q }]];
  }
  const overlap = Math.max(0, Math.min(p + m, q + n) - Math.max(p, q));
  const pos = p <= q ? p : p >= q + n ? p - n : q;
  const left = m - overlap;
  return m > 0 && left === 0 ? [] : [[pos, { delete: left }]];
}

function sameTarget(a: Op, b: Op, aLater: boolean): Op[] {
  const keep = (yes: boolean) => (yes ? [a] : []);
  const aIsListDel = a.op === "del" && asListOp(a) !== null;
  if (a.op === "set" && (b.op === "set" || b.op === "del")) return keep(aLater);
  if (a.op === "del" && b.op === "set") return keep(aIsListDel || aLater);
  if ((a.op === "del" || a.op === "text" || a.op === "add") && b.op === "del") return [];
  if ((a.op === "text" || a.op === "add") && b.op === "set") return [];
  if (a.op === "text" && b.op === "text") {
    const ae = "insert" in a ? { insert: a.insert } : { delete: a.delete };
    const be = "insert" in b ? { insert: b.insert } : { delete: b.delete };
    return transformText([a.pos, ae], [b.pos, be], aLater).map(([pos, e]) => ({ op: "text", path: a.path, pos, ...e }) as Op);
  }
  return [a];
}

/** Transforms `a` over the concurrent op `b` (both made against one state); `aLater`: `a` is
 * sequenced after `b`. Returns what replaces `a`: nothing (dropped), one op or two (a split delete). */
export function transformOp(a: Op, b: Op, aLater: boolean): Op[] {
  const pa = a.path, pb = b.path;
  if ((b.op === "set" || b.op === "del") && isStrictPrefix(pb, pa)) return [];
  const bl = asListOp(b);
  if (bl) {
    const [list, bLop] = bl;
    const depth = list.length;
    if (!isStrictPrefix(list, pa)) return [a];
    if (pa.length === depth + 1 && (a.op === "ins" || a.op === "move")) {
      const al = asListOp(a);
      if (al) {
        const r = transformListOp(al[1], bLop, aLater);
        return r ? [withListOp(a, depth, r)] : [];
      }
    }
    const k = pa[depth];
    if (typeof k !== "number") return [a];
    const moved = mapElement(k, bLop);
    return moved === null ? [] : [withIndex(a, depth, moved)];
  }
  if (!samePath(pa, pb)) return [a];
  return sameTarget(a, b, aLater);
}

function grid(a: readonly Op[], b: readonly Op[], aLater: boolean): [Op[], Op[]] {
  const out: Op[] = [];
  let rest = b.slice();
  for (const op of a) {
    const [pieces, next] = cross(op, rest, aLater);
    out.push(...pieces);
    rest = next;
  }
  return [out, rest];
}

function cross(x: Op, b: readonly Op[], xLater: boolean): [Op[], Op[]] {
  let xs: Op[] = [x];
  const bOut: Op[] = [];
  for (const y of b) {
    let ys: Op[];
    if (xs.length === 0) ys = [y];
    else if (xs.length === 1) {
      const one = xs[0];
      [xs, ys] = [transformOp(one, y, xLater), transformOp(y, one, !xLater)];
    } else [xs, ys] = grid(xs, [y], xLater);
    bOut.push(...ys);
  }
  return [xs, bOut];
}

/** The two-way transform of concurrent lists `a` (later) and `b` (earlier):
 * `[a1, b1]` with `state·b·a1 == state·a·b1`. */
export function transformPair(a: readonly Op[], b: readonly Op[]): [Op[], Op[]] {
  return grid(a, b, true);
}

/** `incoming` (later) rebased over `committed` (earlier), as the server does. */
export function transform(incoming: readonly Op[], committed: readonly Op[]): Op[] {
  return grid(incoming, committed, true)[0];
}

//! Doc rooms: an optimistic local replica of a shared JSON document, kept in sync with the
//! server by operational transformation (protocol §8.12, the loop of the Rust client):
//! local edits apply at once, at most one op list is in flight, later edits wait in a buffer,
//! others' committed lists are transformed over what is pending, every server hash is checked
//! against a shadow copy of the server state, and a mismatch or a refusal resyncs (pending
//! edits are then dropped and the application is told).

import { apply, clone } from "./apply.js";
import { ConcordError, type ErrorMsg } from "./errors.js";
import { stateHash } from "./hash.js";
import { decodeOps, type Json, type Op, type Path } from "./ops.js";
import { BaseRoom, type EventMsg, type JoinedMsg, type Link, type RoomEvents } from "./room.js";
import { transformPair } from "./transform.js";

/** The size of an op list's JSON text in UTF-8 bytes. */
const byteLength = (ops: Op[]) => new TextEncoder().encode(JSON.stringify(ops)).length;

/** UTF-8 bytes of the string at `path` in `state` (0 if there is none). */
function stringBytes(state: Json, path: Path): number {
  let cur: Json | undefined = state;
  for (const seg of path) {
    if (cur === null || typeof cur !== "object") return 0;
    cur = Array.isArray(cur) ? (typeof seg === "number" ? cur[seg] : undefined) : typeof seg === "string" ? cur[seg] : undefined;
  }
  return typeof cur === "string" ? new TextEncoder().encode(cur).length : 0;
}

export type ResyncReason = "drift" | "rejected" | "conflict" | "reset" | "protocol";

/** Where a doc is: everything committed, edits waiting, no connection, or waiting for the server's state. */
export type SyncState = "synced" | "pending" | "offline" | "resyncing";

export interface DocEvents extends RoomEvents {
  /** The local state changed (a local edit, a committed list, a resync). */
  change: { seq: number; local: boolean };
  /** The server refused the list in flight; a `resynced` follows. */
  rejected: ConcordError;
  /** The state was replaced by the server's; pending edits were dropped. */
  resynced: { seq: number; reason: ResyncReason; dropped: number };
  /** Sync state changed. */
  sync: SyncState;
}

interface InFlight {
  id: string;
  ops: Op[];
  sent: boolean;
  timer?: ReturnType<typeof setTimeout>;
}

/** A doc room's replica. `state` is what the user sees; `edit` changes it. */
export class Doc extends BaseRoom<DocEvents> {
  private local: Json = {};
  private confirmed: Json = {};
  private confirmedSeq = 0;
  private inFlight: InFlight | null = null;
  private buffer: Op[][] = [];
  private resyncing: ResyncReason | null = null;
  private scheduled = false;
  private waiters: (() => void)[] = [];
  private lastSync: SyncState = "offline";
  /** Hash mismatches seen (each one reported with `drift` and resynced). */
  drifts = 0;

  /** `maxOps` and `maxBytes` bound each op list sent (the server's `doc_max_ops` and
   * `max_data_bytes`, defaults 1000 and 65 536; a little room is kept under the byte limit). */
  /** `maxTextWork` bounds the bytes of the strings a list's text ops edit, summed per op (the
   * server's `doc_max_apply_work`, 16 MiB by default; half of it leaves room for concurrent growth). */
  constructor(
    name: string,
    link: Link,
    private readonly maxOps = 1000,
    private readonly maxBytes = 60_000,
    private readonly maxTextWork = 8 * 1024 * 1024,
  ) {
    super(name, "doc", link);
  }

  /** The local (optimistic) state: the server's plus pending edits. Do not mutate it. */
  get state(): Json {
    return this.local;
  }

  /** The last committed seq applied. */
  get seq(): number {
    return this.confirmedSeq;
  }

  /** Edits not yet committed (in flight and buffered), as op lists. */
  get pending(): number {
    return (this.inFlight ? 1 : 0) + this.buffer.length;
  }

  get syncState(): SyncState {
    if (this.resyncing) return "resyncing";
    if (!this.joined) return "offline";
    return this.pending ? "pending" : "synced";
  }

  /** The hash of the server's state at `seq` as this replica knows it. */
  confirmedHash(): string {
    return stateHash(this.confirmed);
  }

  /** Applies `ops` locally at once and sends them in the background. Throws `OpDecodeError`
   * or `ApplyError` (nothing applied) when the list is malformed or does not apply. */
  edit(ops: Op[]): void {
    const list = decodeOps(ops, this.maxOps);
    const size = byteLength(list);
    if (size > this.maxBytes) throw new ConcordError("too_large", `the edit is ${size} bytes of ops (more than ${this.maxBytes}): split it`, this.name);
    this.local = apply(this.local, list);
    this.buffer.push(list);
    this.emit("change", { seq: this.confirmedSeq, local: true });
    this.schedule();
  }

  /** Resolves when nothing is pending (every edit made so far is committed or was dropped). */
  flushed(): Promise<void> {
    if (!this.pending && !this.resyncing) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  private schedule(): void {
    this.notifySync();
    if (this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      this.trySend();
    });
  }

  private notifySync(): void {
    const s = this.syncState;
    if (s !== this.lastSync) {
      this.lastSync = s;
      this.emit("sync", s);
    }
    if (!this.pending && !this.resyncing) for (const w of this.waiters.splice(0)) w();
  }

  private trySend(): void {
    if (!this.joined || this.resyncing) return;
    if (!this.inFlight && this.buffer.length) {
      // As many whole edits as fit in one list (an edit is never split: it is atomic).
      const ops: Op[] = [];
      let n = 0;
      let bytes = 2;
      let work = 0;
      const strings = new Map<string, number>();
      const textWork = (edit: Op[]) =>
        edit.reduce((sum, op) => {
          if (op.op !== "text") return sum;
          const key = JSON.stringify(op.path);
          if (!strings.has(key)) strings.set(key, stringBytes(this.confirmed, op.path));
          return sum + (strings.get(key) ?? 0);
        }, 0);
      while (n < this.buffer.length) {
        const next = this.buffer[n];
        const more = byteLength(next) - 1;
        const moreWork = textWork(next);
        if (ops.length && (ops.length + next.length > this.maxOps || bytes + more > this.maxBytes || work + moreWork > this.maxTextWork)) break;
        ops.push(...next);
        bytes += more;
        work += moreWork;
        n++;
      }
      this.buffer.splice(0, n);
      this.inFlight = { id: this.link.newId(), ops, sent: false };
    }
    const f = this.inFlight;
    if (f && !f.sent && !f.timer) {
      f.sent = this.link.send({ type: "op", room: this.name, id: f.id, base: this.confirmedSeq, ops: f.ops });
    }
  }

  protected onJoinedEvents(m: JoinedMsg, rejoin: boolean): void {
    if (m.recovered && rejoin && !this.resyncing) {
      if (m.events.length && m.events[0].seq !== this.confirmedSeq + 1 && m.events[0].seq > this.confirmedSeq) {
        this.resync("protocol");
        return;
      }
      for (const e of m.events) this.onEvent(e);
      if (this.inFlight) this.inFlight.sent = false;
      this.schedule();
      return;
    }
    const reason = this.resyncing ?? (rejoin ? "reset" : null);
    const dropped = this.pending;
    this.clearInFlight();
    this.buffer = [];
    this.resyncing = null;
    this.confirmed = m.state ?? {};
    this.local = clone(this.confirmed);
    this.confirmedSeq = m.seq;
    if (m.hash && stateHash(this.confirmed) !== m.hash) this.drifts++;
    if (reason) this.emit("resynced", { seq: m.seq, reason, dropped });
    this.emit("change", { seq: m.seq, local: false });
    this.schedule();
  }

  onEvent(e: EventMsg): void {
    if (this.resyncing || !this.joined) return;
    if (e.seq <= this.confirmedSeq) return;
    if (e.seq !== this.confirmedSeq + 1) return this.link.reconnect(`gap in ${this.name}: ${this.confirmedSeq} then ${e.seq}`);
    const ops = e.ops ?? [];
    try {
      this.confirmed = apply(this.confirmed, ops);
    } catch {
      return this.resync("drift");
    }
    this.confirmedSeq = e.seq;
    const own = this.inFlight && e.from === this.link.clientId && e.id === this.inFlight.id;
    if (own) {
      this.clearInFlight();
    } else {
      let theirs = ops;
      if (this.inFlight) [this.inFlight.ops, theirs] = transformPair(this.inFlight.ops, theirs);
      this.buffer = this.buffer.map((edit) => {
        const [mine, rest] = transformPair(edit, theirs);
        theirs = rest;
        return mine;
      });
      try {
        this.local = apply(this.local, theirs);
      } catch {
        return this.resync("drift");
      }
    }
    if (e.hash !== undefined && stateHash(this.confirmed) !== e.hash) {
      this.drifts++;
      this.link.send({ type: "drift", room: this.name, seq: e.seq, hash: stateHash(this.confirmed) });
      return this.resync("drift");
    }
    if (!this.pending) this.local = clone(this.confirmed);
    this.emit("change", { seq: e.seq, local: false });
    this.schedule();
  }

  onAck(): void {
    // The echo event commits the list in flight (it follows its ack on this connection).
  }

  protected override onRoomError(m: ErrorMsg): boolean {
    const f = this.inFlight;
    if (!f || m.id !== f.id) return false;
    if (m.code === "unavailable" || m.code === "rate_limited") {
      f.sent = false;
      f.timer = setTimeout(() => {
        f.timer = undefined;
        this.trySend();
      }, m.retry_after_ms ?? 200);
      return true;
    }
    this.emit("rejected", new ConcordError(m.code, m.message, m.room, m.id));
    this.resync(m.code === "conflict" ? "conflict" : "rejected");
    return true;
  }

  override onDisconnect(): void {
    super.onDisconnect();
    if (this.inFlight) this.inFlight.sent = false;
    this.notifySync();
  }

  private clearInFlight(): void {
    if (this.inFlight?.timer) clearTimeout(this.inFlight.timer);
    this.inFlight = null;
  }

  /** Replaces the state with the server's: joins again without `since`. */
  resync(reason: ResyncReason): void {
    this.resyncing = reason;
    this.notifySync();
    if (this.joined) this.sendJoin(false);
  }

  override sendJoin(withSince = true): void {
    super.sendJoin(withSince && !this.resyncing);
  }
}

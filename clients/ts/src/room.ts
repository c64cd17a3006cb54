//! Rooms: what every joined room keeps (membership, presence, join/rejoin) and the stream room.

import { Emitter } from "./emitter.js";
import { ConcordError, fromFrame, type ErrorMsg } from "./errors.js";
import type { Json, Op } from "./ops.js";

/** A member entry (§10). */
export interface Member {
  client_id: string;
  user: string;
  meta: Record<string, Json>;
}

/** An `event` frame: `data` in stream rooms, `ops` (and sometimes `hash`) in doc rooms. */
export interface EventMsg {
  type: "event";
  room: string;
  seq: number;
  hlc: string;
  from: string;
  id?: string;
  data?: Json;
  ops?: Op[];
  hash?: string;
}

export interface JoinedMsg {
  type: "joined";
  room: string;
  kind: "stream" | "doc";
  epoch: string;
  seq: number;
  recovered: boolean;
  events: EventMsg[];
  state?: Json;
  hash?: string;
  presence: Record<string, Json>;
  members: Member[];
}

/** What a room needs from its client. */
export interface Link {
  readonly clientId: string;
  /** Sends a frame if the connection is up and welcomed; false otherwise. */
  send(frame: object): boolean;
  /** Drops the connection to reconnect and recover (a gap, a broken promise). */
  reconnect(why: string): void;
  forget(room: string): void;
  newId(): string;
}

export interface RoomEvents extends Record<string, unknown> {
  /** Members or presence changed. */
  presence: ReadonlyMap<string, Json>;
  members: ReadonlyMap<string, Member>;
  /** A refusal for this room that is not the answer to a publish (presence, rejoin, …). */
  error: ConcordError;
  /** The room was joined (again); `recovered: false` after a reconnect means events were missed. */
  joined: { seq: number; epoch: string; recovered: boolean; rejoin: boolean };
}

/** What every room has: join and rejoin with `since`, members, presence. */
export abstract class BaseRoom<M extends RoomEvents = RoomEvents> extends Emitter<M> {
  epoch: string | null = null;
  /** Joined on the current connection. */
  joined = false;
  readonly presence = new Map<string, Json>();
  readonly members = new Map<string, Member>();
  private myPresence: Json | undefined;
  private first: { resolve: () => void; reject: (e: ConcordError) => void } | null = null;
  private everJoined = false;

  constructor(
    readonly name: string,
    readonly kind: "stream" | "doc",
    protected readonly link: Link,
  ) {
    super();
  }

  /** The seq this room has processed (its position for `since`). */
  abstract get seq(): number;

  protected abstract onJoinedEvents(m: JoinedMsg, rejoin: boolean): void;
  abstract onEvent(e: EventMsg): void;
  abstract onAck(m: { id: string; seq: number; dropped?: number[] }): void;
  /** An error echoing this room; true when handled. */
  protected onRoomError(_e: ErrorMsg): boolean {
    return false;
  }
  /** The connection dropped. */
  onDisconnect(): void {
    this.joined = false;
  }

  /** @internal Resolves on the first `joined`, rejects on the first refusal. */
  start(history?: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.first = { resolve, reject };
      this.history = history;
      this.sendJoin();
    });
  }
  private history: number | undefined;

  /** @internal Sends `join`, with `since` when the room was joined before. */
  sendJoin(withSince = true): void {
    const since = withSince && this.epoch !== null ? { epoch: this.epoch, seq: this.seq } : undefined;
    this.link.send({ type: "join", room: this.name, kind: this.kind, since, history: since ? undefined : this.history });
  }

  /** @internal */
  onJoined(m: JoinedMsg): void {
    const rejoin = this.everJoined;
    this.everJoined = true;
    this.joined = true;
    this.epoch = m.epoch;
    this.presence.clear();
    for (const [k, v] of Object.entries(m.presence ?? {})) if (v !== null) this.presence.set(k, v);
    this.members.clear();
    for (const member of m.members ?? []) this.members.set(member.client_id, member);
    this.onJoinedEvents(m, rejoin);
    if (this.myPresence !== undefined) this.link.send({ type: "presence", room: this.name, data: this.myPresence });
    this.emit("joined", { seq: m.seq, epoch: m.epoch, recovered: m.recovered, rejoin });
    this.emit("members", this.members);
    this.emit("presence", this.presence);
    this.first?.resolve();
    this.first = null;
  }

  /** @internal */
  onError(m: ErrorMsg): void {
    if (this.onRoomError(m)) return;
    const err = fromFrame(m);
    if (this.first) {
      this.first.reject(err);
      this.first = null;
      this.link.forget(this.name);
      return;
    }
    this.emit("error", err);
  }

  /** @internal */
  onPresence(clientId: string, data: Json): void {
    if (data === null) this.presence.delete(clientId);
    else this.presence.set(clientId, data);
    this.emit("presence", this.presence);
  }

  /** @internal */
  onMember(m: Member, joined: boolean): void {
    if (joined) this.members.set(m.client_id, m);
    else this.members.delete(m.client_id);
    this.emit("members", this.members);
  }

  /** Sets this client's presence in the room (`null` clears it); sent again after every rejoin. */
  setPresence(data: Json): void {
    this.myPresence = data === null ? undefined : data;
    if (this.joined) this.link.send({ type: "presence", room: this.name, data });
  }

  /** Leaves the room; its handle stops receiving anything. */
  leave(): void {
    if (this.joined) this.link.send({ type: "leave", room: this.name });
    this.joined = false;
    this.link.forget(this.name);
    this.closed();
  }

  /** @internal The room is gone (left, or the client closed). */
  closed(): void {
    this.first?.reject(new ConcordError("left", "the room was left before it was joined", this.name));
    this.first = null;
  }
}

export interface StreamEvents extends RoomEvents {
  /** A new event, in seq order, exactly once. */
  event: EventMsg;
  /** After a reconnect the missed events could not all be recovered (`recovered:false`):
   * `events` (the latest history) is the new truth. */
  reset: { events: EventMsg[]; epoch: string; seq: number };
}

/** A stream room: events in seq order, without gaps or repeats; resets surfaced. */
export class Room extends BaseRoom<StreamEvents> {
  private lastSeq = 0;
  /** The events received (at most `keep`, the newest), for rendering. */
  events: EventMsg[] = [];

  constructor(name: string, link: Link, private readonly keep = 1000) {
    super(name, "stream", link);
  }

  get seq(): number {
    return this.lastSeq;
  }

  protected onJoinedEvents(m: JoinedMsg, rejoin: boolean): void {
    if (rejoin && !m.recovered) {
      this.lastSeq = m.seq;
      this.events = m.events.slice(-this.keep);
      this.emit("reset", { events: m.events, epoch: m.epoch, seq: m.seq });
      return;
    }
    if (!rejoin) this.lastSeq = m.events.length ? m.events[0].seq - 1 : m.seq;
    for (const e of m.events) this.onEvent(e);
    this.lastSeq = Math.max(this.lastSeq, m.seq);
  }

  onEvent(e: EventMsg): void {
    if (e.seq <= this.lastSeq) return;
    if (e.seq !== this.lastSeq + 1) return this.link.reconnect(`gap in ${this.name}: ${this.lastSeq} then ${e.seq}`);
    this.lastSeq = e.seq;
    this.events.push(e);
    if (this.events.length > this.keep) this.events.splice(0, this.events.length - this.keep);
    this.emit("event", e);
  }

  onAck(): void {}
}

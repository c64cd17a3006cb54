//! The client: one WebSocket to the server, kept open with jittered backoff; rooms rejoined
//! with `since` after every reconnect; publishes queued until acked and resent with their ids
//! (nothing lost, nothing doubled); token refresh; connection status.

import { backoffDelay, type BackoffOptions } from "./backoff.js";
import { Doc } from "./doc.js";
import { Emitter } from "./emitter.js";
import { ConcordError, fromFrame, type ErrorMsg } from "./errors.js";
import type { Json } from "./ops.js";
import { Room, type BaseRoom, type EventMsg, type JoinedMsg, type Link, type Member } from "./room.js";

/** The part of the platform WebSocket the client uses (browsers' and `ws`'s). */
export interface SocketLike {
  readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type SocketFactory = new (url: string) => SocketLike;

/** Storage for the stable client id (`localStorage` in browsers by default). */
export interface IdStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

export interface ClientOptions {
  /** The WebSocket endpoint, e.g. `ws://127.0.0.1:7400/v1/ws`. */
  url: string;
  /** Stable across reconnects; default: kept in `storage` under `concord.client_id`, else random. */
  clientId?: string;
  /** A JWT, or a function that returns a fresh one (called at each connect and refresh). */
  token?: string | (() => string | Promise<string>);
  /** The WebSocket class; default `globalThis.WebSocket` (use `@concord/client/node` in Node 20). */
  WebSocket?: SocketFactory;
  /** Reconnect backoff (full jitter); default 100 ms doubling up to 5 s. */
  backoff?: BackoffOptions;
  /** Where the client id is kept; default `localStorage` when present; `null`: nowhere. */
  storage?: IdStorage | null;
  /** Refresh a JWT this long before its `exp` (ms, default 30 000). */
  refreshBeforeMs?: number;
  /** Events a stream room keeps for rendering (default 1000). */
  keepEvents?: number;
}

/** `connecting`: first connection; `connected`: welcomed; `reconnecting`: lost, retrying with
 * backoff; `offline`: switched off by {@link Client.setOnline}; `closed`: {@link Client.close}. */
export type Status = "connecting" | "connected" | "reconnecting" | "offline" | "closed";

export interface Ack {
  room: string;
  id: string;
  seq: number;
  hlc: string;
}

interface Pending {
  room: string;
  id: string;
  frame: string;
  sent: boolean;
  /** Times it went out: a publish sent again carries `resend: true` (the distributed mode then
   * looks its id up beyond the idempotency window; protocol.md §23). */
  sends: number;
  timer?: ReturnType<typeof setTimeout>;
  resolve: (a: Ack) => void;
  reject: (e: ConcordError) => void;
}

export interface ClientEvents extends Record<string, unknown> {
  status: Status;
  /** An error not tied to a publish or a room (e.g. a refused token). */
  error: ConcordError;
  /** Welcome of each (re)connection. */
  welcome: { node: string; serverTime: number };
}

const CLOSED = 3;
const OPEN = 1;

const randomHex = (bytes: number) =>
  Array.from(globalThis.crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, "0")).join("");

function defaultStorage(): IdStorage | null {
  try {
    return (globalThis as { localStorage?: IdStorage }).localStorage ?? null;
  } catch {
    return null;
  }
}

/** A JWT's `exp` (seconds), if it has one. */
function jwtExp(token: string): number | null {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(part)).exp;
    return typeof exp === "number" ? exp : null;
  } catch {
    return null;
  }
}

export class Client extends Emitter<ClientEvents> {
  readonly clientId: string;
  status: Status = "connecting";
  private ws: SocketLike | null = null;
  private welcomed = false;
  private online = true;
  private attempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  private readonly rooms = new Map<string, BaseRoom<any>>();
  private readonly pending = new Map<string, Pending>();
  private readonly session = randomHex(4);
  private counter = 0;
  private readonly link: Link;
  private readonly Socket: SocketFactory;

  constructor(private readonly opts: ClientOptions) {
    super();
    const storage = opts.storage === undefined ? defaultStorage() : opts.storage;
    let id = opts.clientId ?? storage?.getItem("concord.client_id") ?? null;
    if (!id) {
      id = "c-" + randomHex(8);
      try {
        storage?.setItem("concord.client_id", id);
      } catch {
        // storage full or forbidden: the id lives as long as this client
      }
    }
    this.clientId = id;
    const Socket = opts.WebSocket ?? (globalThis as { WebSocket?: SocketFactory }).WebSocket;
    if (!Socket) throw new Error("no WebSocket: pass options.WebSocket (in Node 20 import from @concord/client/node)");
    this.Socket = Socket;
    this.link = {
      clientId: this.clientId,
      send: (f) => this.send(f),
      reconnect: (why) => this.drop(why),
      forget: (room) => this.rooms.delete(room),
      newId: () => this.newId(),
    };
    void this.connect();
  }

  /** Whether the connection is up and welcomed. */
  get connected(): boolean {
    return this.welcomed;
  }

  /** Publishes not acknowledged yet. */
  get unacked(): number {
    return this.pending.size;
  }

  /** Resolves once connected (welcomed). */
  ready(): Promise<void> {
    if (this.welcomed) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const off = this.on("status", (s) => {
        if (s === "connected") (off(), resolve());
        if (s === "closed") (off(), reject(new ConcordError("closed", "the client was closed")));
      });
    });
  }

  /** Joins a stream room (created if missing when `create`, the default). */
  async join(room: string, opts: { history?: number; create?: boolean } = {}): Promise<Room> {
    const r = new Room(room, this.link, this.opts.keepEvents);
    if (opts.create === false) Object.defineProperty(r, "kind", { value: undefined });
    this.rooms.get(room)?.leave();
    this.rooms.set(room, r);
    await r.start(opts.history);
    return r;
  }

  /** Joins a doc room (created as `{}` if missing). */
  async joinDoc(room: string): Promise<Doc> {
    const d = new Doc(room, this.link);
    this.rooms.get(room)?.leave();
    this.rooms.set(room, d);
    await d.start();
    return d;
  }

  /** Publishes `data` to a stream room; resolves with the ack once it is durably committed.
   * Kept and resent with the same id across reconnects until acked. */
  publish(room: string, data: Json, opts: { id?: string } = {}): Promise<Ack> {
    const id = opts.id ?? this.newId();
    const existing = this.pending.get(id);
    if (existing) {
      return new Promise((resolve, reject) => {
        const [r0, j0] = [existing.resolve, existing.reject];
        existing.resolve = (a) => (r0(a), resolve(a));
        existing.reject = (e) => (j0(e), reject(e));
      });
    }
    return new Promise((resolve, reject) => {
      const p: Pending = { room, id, frame: JSON.stringify({ type: "publish", room, id, data }), sent: false, sends: 0, resolve, reject };
      this.pending.set(id, p);
      this.sendPending(p);
    });
  }

  /** Switches the connection off (`false`: drops the socket, edits and publishes queue) and on. */
  setOnline(online: boolean): void {
    if (this.status === "closed" || online === this.online) return;
    this.online = online;
    if (!online) {
      clearTimeout(this.retryTimer);
      this.setStatus("offline");
      this.ws?.close(1000, "offline");
    } else {
      this.attempt = 0;
      void this.connect();
    }
  }

  /** Sends `auth` with a fresh token (from the token function) on the open connection. */
  async refreshToken(): Promise<void> {
    const token = await this.token();
    if (token && this.welcomed) {
      this.send({ type: "auth", token });
      this.scheduleRefresh(token);
    }
  }

  /** Closes the connection for good; pending publishes are rejected with `closed`. */
  close(): void {
    this.online = false;
    clearTimeout(this.retryTimer);
    clearTimeout(this.refreshTimer);
    this.setStatus("closed");
    this.ws?.close(1000, "closed");
    for (const p of this.pending.values()) p.reject(new ConcordError("closed", "the client was closed", p.room, p.id));
    this.pending.clear();
    for (const r of this.rooms.values()) r.closed();
    this.rooms.clear();
  }

  private newId(): string {
    return `${this.session}-${++this.counter}`;
  }

  private async token(): Promise<string | undefined> {
    const t = this.opts.token;
    return typeof t === "function" ? await t() : t;
  }

  private setStatus(s: Status): void {
    if (this.status === s) return;
    this.status = s;
    this.emit("status", s);
  }

  private send(frame: object): boolean {
    if (!this.welcomed || !this.ws || this.ws.readyState !== OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  private sendPending(p: Pending): void {
    if (p.sent || p.timer || !this.welcomed || !this.ws || this.ws.readyState !== OPEN) return;
    // `{"type":"publish",…}` → `{"type":"publish","resend":true,…}` (same id, same data).
    this.ws.send(p.sends > 0 ? `{"type":"publish","resend":true,${p.frame.slice('{"type":"publish",'.length)}` : p.frame);
    p.sent = true;
    p.sends++;
  }

  private drop(why: string): void {
    if (this.ws && this.ws.readyState !== CLOSED) this.ws.close(4000, why.slice(0, 100));
  }

  private async connect(): Promise<void> {
    if (!this.online || this.status === "closed" || this.ws) return;
    this.setStatus(this.attempt === 0 && this.status !== "reconnecting" && this.status !== "offline" ? "connecting" : "reconnecting");
    let token: string | undefined;
    try {
      token = await this.token();
    } catch (e) {
      this.emit("error", new ConcordError("unauthorized", `the token function failed: ${e}`));
    }
    if (!this.online || this.ws) return;
    const ws = new this.Socket(this.opts.url);
    this.ws = ws;
    ws.onopen = () => ws.send(JSON.stringify({ type: "hello", client_id: this.clientId, token }));
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      let m: { type?: string } & Record<string, unknown>;
      try {
        m = JSON.parse(String(ev.data));
      } catch {
        return;
      }
      this.onMessage(m, token);
    };
    ws.onerror = () => {};
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.welcomed = false;
      clearTimeout(this.refreshTimer);
      for (const p of this.pending.values()) p.sent = false;
      for (const r of this.rooms.values()) r.onDisconnect();
      if (!this.online || this.status === "closed") return;
      this.setStatus("reconnecting");
      const delay = backoffDelay(this.attempt++, this.opts.backoff);
      this.retryTimer = setTimeout(() => void this.connect(), delay);
    };
  }

  private onMessage(m: Record<string, unknown>, token: string | undefined): void {
    const room = typeof m.room === "string" ? this.rooms.get(m.room) : undefined;
    switch (m.type) {
      case "welcome": {
        this.welcomed = true;
        this.attempt = 0;
        this.setStatus("connected");
        this.emit("welcome", { node: String(m.node), serverTime: Number(m.server_time) });
        this.scheduleRefresh(token);
        for (const r of this.rooms.values()) r.sendJoin();
        for (const p of this.pending.values()) this.sendPending(p);
        return;
      }
      case "joined":
        return room?.onJoined(m as unknown as JoinedMsg);
      case "event":
        return room?.onEvent(m as unknown as EventMsg);
      case "ack": {
        const p = this.pending.get(String(m.id));
        if (p && p.room === m.room) {
          this.pending.delete(p.id);
          return p.resolve({ room: p.room, id: p.id, seq: Number(m.seq), hlc: String(m.hlc) });
        }
        return room?.onAck(m as unknown as { id: string; seq: number });
      }
      case "presence":
        return room?.onPresence(String(m.client_id), m.data as Json);
      case "member_joined":
      case "member_left":
        return room?.onMember(m as unknown as Member, m.type === "member_joined");
      case "error":
        return this.onError(m as unknown as ErrorMsg);
      default:
        return; // left, auth_ok and types this version does not know
    }
  }

  private onError(m: ErrorMsg): void {
    const p = m.id !== undefined ? this.pending.get(m.id) : undefined;
    if (p && p.room === m.room) {
      if (m.code === "unavailable" || m.code === "rate_limited") {
        p.sent = false;
        p.timer = setTimeout(() => {
          p.timer = undefined;
          this.sendPending(p);
        }, m.retry_after_ms ?? 200);
        return;
      }
      this.pending.delete(p.id);
      return p.reject(fromFrame(m));
    }
    const room = m.room !== undefined ? this.rooms.get(m.room) : undefined;
    if (room) return room.onError(m);
    if (m.code === "unauthorized" && /expired/.test(m.message) && this.welcomed) void this.refreshToken();
    this.emit("error", fromFrame(m));
  }

  private scheduleRefresh(token: string | undefined): void {
    clearTimeout(this.refreshTimer);
    const exp = token && typeof this.opts.token === "function" ? jwtExp(token) : null;
    if (exp === null) return;
    const wait = Math.max(1000, exp * 1000 - Date.now() - (this.opts.refreshBeforeMs ?? 30_000));
    this.refreshTimer = setTimeout(() => void this.refreshToken(), Math.min(wait, 2 ** 31 - 1));
  }
}

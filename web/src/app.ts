//! The demo page: a chat (stream room), a task list and shared notes (doc room), live cursors
//! and who is here (presence), the connection and sync state, a "go offline" switch, and the
//! room's seq and hash. Plain DOM, no framework; state lives in the Concord client.

import { Client, type Doc, type EventMsg, type Json, type Op, type Room } from "../../clients/ts/src/index.js";

interface Task { id: string; text: string; done: boolean }
interface Me { name: string; color: string }
interface Presence extends Me { card?: string; x?: number; y?: number; focus?: string | null; typing?: boolean }

const params = new URLSearchParams(location.search);
const roomName = (params.get("room") ?? "lobby").replace(/[^A-Za-z0-9._-]/g, "").slice(0, 60) || "lobby";
const NAMES = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Donald", "Frances", "Leslie", "Radia", "Linus"];
const COLORS = ["#4f46e5", "#db2777", "#0891b2", "#ea580c", "#16a34a", "#9333ea", "#0d9488", "#c2410c"];

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const el = (tag: string, cls?: string, text?: string) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};

function stored(key: string, make: () => string): string {
  try {
    const v = localStorage.getItem(key);
    if (v) return v;
    const fresh = make();
    localStorage.setItem(key, fresh);
    return fresh;
  } catch {
    return make();
  }
}

const pick = <T>(xs: T[]) => xs[Math.floor(Math.random() * xs.length)];
const myName = params.get("name")?.slice(0, 40) || stored("concord.demo.name", () => pick(NAMES));
/** A color per name, so that a person keeps theirs everywhere. */
const colorOf = (name: string) => COLORS[[...name].reduce((h, c) => (h * 31 + c.codePointAt(0)!) >>> 0, 7) % COLORS.length];
const me: Me = { name: myName, color: colorOf(myName) };
const initials = (name: string) => name.slice(0, 2).toUpperCase();

const scheme = location.protocol === "https:" ? "wss:" : "ws:";
const client = new Client({ url: `${scheme}//${location.host}/v1/ws`, token: params.get("token") ?? undefined });
let chat: Room | null = null;
let doc: Doc | null = null;
let node = "";
const pendingChat: { id: string; text: string }[] = [];
let myPresence: Presence = { ...me, focus: null };

// ---- rendering, coalesced to one frame -------------------------------------------------------
let queued = false;
function render(): void {
  if (queued) return;
  queued = true;
  requestAnimationFrame(() => {
    queued = false;
    renderStatus();
    renderNotes();
    renderTasks();
    renderChat();
    renderPeople();
    renderCursors();
    renderInternals();
  });
}

function renderStatus(): void {
  const conn = $("conn");
  conn.dataset.state = client.status;
  $("conn-text").textContent = client.status;
  const sync = $("sync");
  const pending = (doc?.pending ?? 0) + client.unacked;
  const state = !doc ? "offline" : doc.syncState === "resyncing" ? "resyncing" : pending ? "pending" : doc.syncState;
  sync.dataset.state = state;
  $("sync-text").textContent =
    state === "synced" ? "all changes saved" : state === "pending" ? `${pending} edit${pending === 1 ? "" : "s"} waiting` : state;
  ($("offline") as HTMLInputElement).checked = client.status === "offline";
}

const docState = () => (doc?.state ?? {}) as { notes?: unknown; tasks?: unknown };
const notesText = () => (typeof docState().notes === "string" ? (docState().notes as string) : "");
const tasks = (): Task[] => (Array.isArray(docState().tasks) ? (docState().tasks as Task[]) : []);

const cps = (s: string) => Array.from(s);
/** Code point index of UTF-16 offset `u` in `s`. */
const toCp = (s: string, u: number) => cps(s.slice(0, u)).length;
const toUtf16 = (s: string, cp: number) => cps(s).slice(0, cp).join("").length;

/** The single changed region between two texts, in code points. */
function diff(a: string[], b: string[]) {
  let p = 0;
  while (p < a.length && p < b.length && a[p] === b[p]) p++;
  let s = 0;
  while (s < a.length - p && s < b.length - p && a[a.length - 1 - s] === b[b.length - 1 - s]) s++;
  return { pos: p, del: a.length - p - s, ins: b.slice(p, b.length - s).join("") };
}

let shownNotes = "";
function renderNotes(): void {
  const ta = $("notes") as HTMLTextAreaElement;
  ta.disabled = !doc;
  const text = notesText();
  if (ta.value === text) return (shownNotes = text), undefined;
  // Someone else changed the text: keep the caret where it was relative to the text around it.
  const focused = document.activeElement === ta;
  const [s0, s1] = [toCp(ta.value, ta.selectionStart), toCp(ta.value, ta.selectionEnd)];
  const d = diff(cps(ta.value), cps(text));
  const insLen = cps(d.ins).length;
  const map = (c: number) => (c <= d.pos ? c : c >= d.pos + d.del ? c - d.del + insLen : d.pos + insLen);
  ta.value = text;
  shownNotes = text;
  if (focused) ta.setSelectionRange(toUtf16(text, map(s0)), toUtf16(text, map(s1)));
}

function renderTasks(): void {
  const list = $("tasks");
  const all = tasks();
  list.replaceChildren();
  for (const t of all) {
    const li = el("li", "task" + (t.done ? " done" : ""));
    li.dataset.id = t.id;
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = !!t.done;
    box.setAttribute("aria-label", `done: ${t.text}`);
    box.addEventListener("change", () => editTask(t.id, (i) => [{ op: "set", path: ["tasks", i, "done"], value: box.checked }]));
    const remove = el("button", "remove", "×");
    remove.setAttribute("aria-label", `remove ${t.text}`);
    remove.addEventListener("click", () => editTask(t.id, (i) => [{ op: "del", path: ["tasks", i] }]));
    li.append(box, el("span", "text", String(t.text)), remove);
    list.append(li);
  }
  if (!all.length) list.append(el("li", "empty", "No tasks yet."));
  const done = all.filter((t) => t.done).length;
  $("task-count").textContent = all.length ? `${done} of ${all.length} done` : "";
  for (const e of $("task-form").querySelectorAll<HTMLInputElement | HTMLButtonElement>("input,button")) e.disabled = !doc;
}

const hlcTime = (hlc: string) => new Date(Number(hlc.slice(0, 13))).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

function message(data: { name?: string; color?: string; text?: string }, mine: boolean, when: string, pending = false): HTMLElement {
  const li = el("li", "msg" + (mine ? " mine" : "") + (pending ? " pending" : ""));
  const av = el("span", "avatar", initials(String(data.name ?? "?")));
  av.style.background = String(data.color ?? "#888");
  const bubble = el("div", "bubble");
  const meta = el("span", "meta");
  meta.append(el("b", undefined, String(data.name ?? "someone")), ` · ${when}`);
  bubble.append(meta, el("span", "text", String(data.text ?? "")));
  li.append(av, bubble);
  return li;
}

let shownChat = "";
function renderChat(): void {
  const list = $("messages");
  const events = chat?.events ?? [];
  const key = `${events.length}:${events.at(-1)?.seq}:${pendingChat.length}`;
  if (key !== shownChat) {
    shownChat = key;
    const stick = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.replaceChildren(
      ...events.map((e: EventMsg) => {
        const li = message((e.data ?? {}) as object, e.from === client.clientId, hlcTime(e.hlc));
        li.dataset.seq = String(e.seq);
        return li;
      }),
      ...pendingChat.map((p) => message({ ...me, text: p.text }, true, "sending…", true)),
    );
    if (!events.length && !pendingChat.length) list.append(el("li", "empty", "No messages yet. Say hi!"));
    if (stick || pendingChat.length) list.scrollTop = list.scrollHeight;
  }
  for (const e of $("chat-form").querySelectorAll<HTMLInputElement | HTMLButtonElement>("input,button")) e.disabled = !chat;
}

function peopleHere(): [string, Presence | undefined][] {
  if (!client.connected) return [[client.clientId, myPresence]];
  const ids = new Set<string>([client.clientId, ...(chat?.members.keys() ?? []), ...(doc?.members.keys() ?? [])]);
  const seen = (id: string) => (id === client.clientId ? myPresence : ((doc?.presence.get(id) ?? chat?.presence.get(id)) as Presence | undefined));
  return [...ids].map((id) => [id, seen(id)]);
}

function renderPeople(): void {
  const list = $("people");
  list.replaceChildren(
    ...peopleHere().map(([id, p]) => {
      const li = el("li");
      li.dataset.client = id;
      const av = el("span", "avatar", initials(p?.name ?? "?"));
      av.style.background = p?.color ?? "#9aa1b1";
      const what = p?.typing ? "typing…" : p?.focus ? `in ${p.focus}` : "";
      const name = p?.name ?? `guest ${id.slice(-4)}`;
      li.append(av, el("span", "name", name + (id === client.clientId ? " (you)" : "")), el("span", "what", what));
      return li;
    }),
  );
}

const ARROW = (color: string) =>
  `<svg width="18" height="22" viewBox="0 0 18 22"><path d="M1 1 L1 17 L5.5 13 L8.5 20 L11 19 L8 12 L14 12 Z" fill="${color}" stroke="#fff" stroke-width="1.5" stroke-linejoin="round"/></svg>`;

const CARDS = ["notes", "tasks", "chat", "people", "internals"];

function renderCursors(): void {
  const layer = $("cursors");
  const live = new Set<string>();
  for (const [id, p] of doc?.joined ? doc.presence : []) {
    const q = p as unknown as Presence;
    if (id === client.clientId || typeof q?.x !== "number" || typeof q?.y !== "number" || !CARDS.includes(q.card ?? "")) continue;
    const card = document.querySelector(`.card.${q.card}`)?.getBoundingClientRect();
    if (!card) continue;
    live.add(id);
    let c = layer.querySelector<HTMLElement>(`.cursor[data-client="${CSS.escape(id)}"]`);
    if (!c) {
      c = el("div", "cursor");
      c.dataset.client = id;
      c.innerHTML = ARROW(/^#[0-9a-f]{6}$/i.test(q.color) ? q.color : "#888");
      const label = el("span", "label", q.name);
      label.style.background = q.color;
      c.append(label);
      layer.append(c);
    }
    const x = card.left + window.scrollX + q.x * card.width;
    const y = card.top + window.scrollY + q.y * card.height;
    c.style.transform = `translate(${Math.round(x)}px, ${Math.round(y)}px)`;
  }
  for (const c of layer.querySelectorAll<HTMLElement>(".cursor")) if (!live.has(c.dataset.client ?? "")) c.remove();
}

function renderInternals(): void {
  const rows: [string, string][] = [
    ["you", `${me.name} · ${client.clientId}`],
    ["server node", node || "—"],
    ["doc room", doc ? `doc:${roomName}` : "—"],
    ["doc seq", String(doc?.seq ?? "—")],
    ["doc hash", doc ? doc.confirmedHash() : "—"],
    ["chat seq", String(chat?.seq ?? "—")],
    ["epoch", doc?.epoch ?? "—"],
    ["unacked messages", String(client.unacked)],
    ["pending edits", String(doc?.pending ?? 0)],
  ];
  const dl = $("internals");
  dl.replaceChildren(...rows.flatMap(([k, v]) => {
    const dd = el("dd", undefined, v);
    dd.dataset.key = k;
    return [el("dt", undefined, k), dd];
  }));
}

// ---- presence ------------------------------------------------------------------------------
let presenceTimer: ReturnType<typeof setTimeout> | undefined;
let sentBrief = "";
function setPresence(patch: Partial<Presence>): void {
  myPresence = { ...myPresence, ...patch };
  if (presenceTimer) return;
  presenceTimer = setTimeout(() => {
    presenceTimer = undefined;
    doc?.setPresence(myPresence as unknown as Json);
    // The chat room gets only who and what (not every pointer move): presence is rate limited
    // per connection (30/s by default) and the doc room already carries the cursor.
    const brief = { name: me.name, color: me.color, focus: myPresence.focus ?? null, typing: !!myPresence.typing };
    if (JSON.stringify(brief) !== sentBrief) {
      sentBrief = JSON.stringify(brief);
      chat?.setPresence(brief);
    }
  }, 50);
  render();
}

let typingTimer: ReturnType<typeof setTimeout> | undefined;
function typing(): void {
  clearTimeout(typingTimer);
  if (!myPresence.typing) setPresence({ typing: true });
  typingTimer = setTimeout(() => setPresence({ typing: false }), 1500);
}

// ---- edits ---------------------------------------------------------------------------------
function edit(ops: Op[]): void {
  if (!doc) return;
  try {
    doc.edit(ops);
  } catch (e) {
    console.warn("edit refused locally", e);
  }
}

function editTask(id: string, ops: (i: number) => Op[]): void {
  const i = tasks().findIndex((t) => t.id === id);
  if (i >= 0) edit(ops(i));
}

const randomId = () => Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16).padStart(2, "0")).join("");

function wire(): void {
  const ta = $("notes") as HTMLTextAreaElement;
  ta.addEventListener("input", () => {
    if (!doc) return;
    if (typeof docState().notes !== "string") {
      edit([{ op: "set", path: ["notes"], value: ta.value }]);
    } else {
      const d = diff(cps(shownNotes), cps(ta.value));
      const ops: Op[] = [];
      if (d.del) ops.push({ op: "text", path: ["notes"], pos: d.pos, delete: d.del });
      if (d.ins) ops.push({ op: "text", path: ["notes"], pos: d.pos, insert: d.ins });
      if (ops.length) edit(ops);
    }
    shownNotes = notesText();
    typing();
  });
  ta.addEventListener("focus", () => setPresence({ focus: "notes" }));
  ta.addEventListener("blur", () => setPresence({ focus: null, typing: false }));

  $("task-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $("task-input") as HTMLInputElement;
    const text = input.value.trim();
    if (!text) return;
    const task: Task = { id: randomId(), text, done: false };
    if (Array.isArray(docState().tasks)) edit([{ op: "ins", path: ["tasks", tasks().length], value: task as unknown as Json }]);
    else edit([{ op: "set", path: ["tasks"], value: [task as unknown as Json] }]);
    input.value = "";
  });
  $("task-input").addEventListener("focus", () => setPresence({ focus: "tasks" }));

  $("chat-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $("chat-input") as HTMLInputElement;
    const text = input.value.trim();
    if (!text || !chat) return;
    const id = `${client.clientId}-${randomId()}`;
    pendingChat.push({ id, text });
    client.publish(chat.name, { text, name: me.name, color: me.color }, { id }).catch((e) => console.warn("message refused", e))
      .finally(() => {
        const i = pendingChat.findIndex((p) => p.id === id);
        if (i >= 0) pendingChat.splice(i, 1);
        render();
      });
    input.value = "";
    render();
  });
  $("chat-input").addEventListener("focus", () => setPresence({ focus: "chat" }));
  $("chat-input").addEventListener("input", typing);

  ($("offline") as HTMLInputElement).addEventListener("change", (ev) => {
    client.setOnline(!(ev.target as HTMLInputElement).checked);
    render();
  });

  // A cursor is placed relative to the card it is over, so it lands on the same thing on a
  // laptop and on a phone, whose layouts differ.
  $("board").addEventListener("pointermove", (e) => {
    const card = (e.target as HTMLElement).closest<HTMLElement>(".card");
    const name = card && CARDS.find((c) => card.classList.contains(c));
    if (!card || !name) return;
    const r = card.getBoundingClientRect();
    setPresence({ card: name, x: Math.max(0, Math.min(1, (e.clientX - r.left) / r.width)), y: Math.max(0, Math.min(1, (e.clientY - r.top) / r.height)) });
  });
  window.addEventListener("resize", render);
}

async function start(): Promise<void> {
  $("room-name").textContent = `· ${roomName}`;
  wire();
  client.on("status", render);
  client.on("welcome", (w) => ((node = w.node), render()));
  render();
  const [c, d] = await Promise.all([client.join(`chat:${roomName}`, { history: 200 }), client.joinDoc(`doc:${roomName}`)]);
  chat = c;
  doc = d;
  for (const ev of ["event", "reset", "presence", "members", "joined"] as const) chat.on(ev, render);
  // The text field follows the doc at once (not at the next frame), so that the next keystroke
  // is diffed against the text the doc has.
  doc.on("change", renderNotes);
  for (const ev of ["change", "presence", "members", "sync", "resynced", "joined"] as const) doc.on(ev, render);
  doc.on("rejected", (e) => console.warn("the server refused an edit:", e.message));
  const s = docState();
  const init: Op[] = [];
  if (typeof s.notes !== "string") init.push({ op: "set", path: ["notes"], value: "" });
  if (!Array.isArray(s.tasks)) init.push({ op: "set", path: ["tasks"], value: [] });
  if (init.length) edit(init);
  setPresence({ focus: null });
  render();
  (window as unknown as { concordDemo: unknown }).concordDemo = { client, get doc() { return doc; }, get chat() { return chat; } };
}

start().catch((e) => {
  console.error(e);
  $("conn-text").textContent = `error: ${e.message ?? e}`;
  $("conn").dataset.state = "closed";
});

// The demo in a real browser (Debian's chromium driven by playwright-core): two people edit
// the shared notes and tasks at once, one goes offline and back, they chat, move cursors and
// reload; both converge on the server's state. Screenshots go to the folder printed first.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { getJson, startServer, until } from "../../clients/ts/test/support.mjs";

const CHROMIUM = process.env.CONCORD_CHROMIUM ?? "/usr/bin/chromium";
const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const shots = process.env.CONCORD_SCREENSHOTS ?? join(new URL("..", import.meta.url).pathname, "test-output", new Date().toISOString().replace(/[:.]/g, "-"));

async function person(url, name, viewport) {
  const profile = mkdtempSync(join(tmpdir(), "concord-chromium-"));
  const context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: FLAGS, viewport, deviceScaleFactor: 1 });
  const page = context.pages()[0] ?? (await context.newPage());
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(`${url}&name=${name}`);
  await loaded(page);
  return { name, page, context, errors, close: async () => (await context.close(), rmSync(profile, { recursive: true, force: true })) };
}

const loaded = (page) => page.waitForFunction(() => window.concordDemo?.doc && window.concordDemo.client.status === "connected" && !document.querySelector("#notes").disabled, null, { timeout: 20_000 });

/** The demo's view of itself: doc state and seq, chat texts, pending work. */
const view = (p) => p.page.evaluate(() => {
  const { client, doc, chat } = window.concordDemo;
  return {
    id: client.clientId, status: client.status, seq: doc.seq, pending: doc.pending + client.unacked, state: doc.state,
    notes: document.querySelector("#notes").value,
    tasks: [...document.querySelectorAll("#tasks .task")].map((li) => [li.querySelector(".text").textContent, li.querySelector("input").checked]),
    chat: [...document.querySelectorAll("#messages .msg:not(.pending) .text")].map((e) => e.textContent),
    chatSeq: chat.seq,
  };
});

async function converged(server, room, people) {
  let head;
  await until("both browsers reach the server's doc", async () => {
    head = await getJson(`${server.http}/v1/rooms/doc:${room}`);
    const vs = await Promise.all(people.map(view));
    return vs.every((v) => v.pending === 0 && v.seq === head.seq && v.notes === head.state.notes);
  }, 30_000);
  const vs = await Promise.all(people.map(view));
  for (const v of vs) {
    assert.deepEqual(v.state, head.state, `${v.id}'s doc equals the server's state over HTTP`);
    assert.deepEqual(v.tasks, head.state.tasks.map((t) => [t.text, t.done]), `${v.id}'s task list shows the server's tasks`);
  }
  return head;
}

const shot = async (p, step) => (await p.page.evaluate(() => window.scrollTo(0, 0)), p.page.screenshot({ path: join(shots, `${step}-${p.name}.png`), fullPage: true }));

test("two browsers edit, go offline, chat, move cursors and reload, and converge on the server's state", async () => {
  mkdirSync(shots, { recursive: true });
  console.log(`# screenshots: ${shots}`);
  const server = await startServer({ args: ["--doc-hash-every", "1"] });
  const room = `t${Date.now().toString(36)}`;
  const url = `${server.http}/?room=${room}`;
  const ann = await person(url, "Ann", { width: 1280, height: 860 });
  const bob = await person(url, "Bob", { width: 390, height: 844 });
  const people = [ann, bob];
  try {
    // Both type in the shared text field at the same time, at either end.
    await ann.page.click("#notes");
    await ann.page.keyboard.type("Our notes\n");
    await until("Bob sees Ann's first line", async () => (await view(bob)).notes === "Our notes\n");
    await bob.page.click("#notes");
    await bob.page.keyboard.press("Control+Home");
    await Promise.all([
      ann.page.keyboard.type("Hello from Ann 😀. ", { delay: 15 }),
      bob.page.keyboard.type("Bob was here! ", { delay: 15 }),
    ]);
    // Tasks: both add, then both tick at once.
    await ann.page.fill("#task-input", "Write the spec");
    await ann.page.press("#task-input", "Enter");
    await bob.page.fill("#task-input", "Review it");
    await bob.page.press("#task-input", "Enter");
    await until("both see two tasks", async () => (await Promise.all(people.map(view))).every((v) => v.tasks.length === 2));
    await Promise.all([ann.page.locator("#tasks .task input").nth(0).check(), bob.page.locator("#tasks .task input").nth(1).check()]);
    let head = await converged(server, room, people);
    assert.ok(head.state.notes.includes("Hello from Ann 😀. ") && head.state.notes.includes("Bob was here! "), `both texts survive: ${head.state.notes}`);
    assert.deepEqual(head.state.tasks.map((t) => t.done), [true, true], "both ticks landed");
    await Promise.all(people.map((p) => shot(p, "1-converged")));

    // Bob goes offline, edits; Ann edits meanwhile; Bob comes back.
    await bob.page.click(".switch");
    await until("Bob is offline", async () => (await view(bob)).status === "offline");
    await bob.page.click("#notes");
    await bob.page.keyboard.press("Control+End");
    await bob.page.keyboard.type(" [offline edit]");
    await bob.page.fill("#task-input", "Offline task");
    await bob.page.press("#task-input", "Enter");
    await bob.page.locator("#tasks .task input").nth(0).uncheck();
    await ann.page.click("#notes");
    await ann.page.keyboard.press("Control+Home");
    await ann.page.keyboard.type("[Ann online] ");
    await until("Bob's edits wait", async () => (await view(bob)).pending > 0);
    await Promise.all(people.map((p) => shot(p, "2-bob-offline")));
    await bob.page.click(".switch");
    head = await converged(server, room, people);
    const annView = await view(ann);
    assert.equal(annView.notes.split("[offline edit]").length - 1, 1, `Ann sees Bob's offline text exactly once: ${annView.notes}`);
    assert.equal(annView.tasks.filter(([t]) => t === "Offline task").length, 1, "Ann sees Bob's offline task exactly once");
    assert.ok(annView.notes.startsWith("[Ann online] "), "Ann's concurrent edit is kept");
    assert.equal(annView.tasks[0][1], false, "Bob's offline untick landed");

    // Chat: interleaved messages appear in the same order in both, as on the server.
    for (const [p, text] of [[ann, "hi Bob"], [bob, "hi Ann"], [ann, "the spec is done"], [bob, "reviewing now"], [ann, "great, thanks!"]]) {
      await p.page.fill("#chat-input", text);
      await p.page.press("#chat-input", "Enter");
    }
    await until("both see five messages", async () => (await Promise.all(people.map(view))).every((v) => v.chat.length === 5));
    const history = await getJson(`${server.http}/v1/rooms/chat:${room}/events?after=0`);
    const order = history.events.map((e) => e.data.text);
    for (const v of await Promise.all(people.map(view))) assert.deepEqual(v.chat, order, `${v.id} shows the chat in seq order`);

    // A cursor moved in Ann's page shows up in Bob's.
    const annId = annView.id;
    const box = await ann.page.locator(".card.tasks").boundingBox();
    await ann.page.mouse.move(box.x + 20, box.y + 20);
    await ann.page.mouse.move(box.x + box.width * 0.6, box.y + box.height * 0.5, { steps: 5 });
    await bob.page.waitForSelector(`.cursor[data-client="${annId}"]`, { timeout: 10_000 });
    const label = await bob.page.textContent(`.cursor[data-client="${annId}"] .label`);
    assert.equal(label, "Ann", "Bob sees Ann's cursor with her name");
    await bob.page.waitForFunction((id) => {
      const c = document.querySelector(`.cursor[data-client="${id}"]`).getBoundingClientRect();
      const t = document.querySelector(".card.tasks").getBoundingClientRect();
      return c.left > t.left && c.left < t.right && c.top > t.top && c.top < t.bottom;
    }, annId, { timeout: 10_000 });
    await until("Bob lists Ann as here", async () => (await bob.page.textContent("#people")).includes("Ann"));
    await Promise.all(people.map((p) => shot(p, "3-chat-and-cursor")));

    // A reload keeps the history and the document.
    await bob.page.reload();
    await loaded(bob.page);
    await until("Bob's chat is back after the reload", async () => (await view(bob)).chat.length === 5);
    assert.deepEqual((await view(bob)).chat, order, "the reloaded page shows the same history");
    await converged(server, room, people);
    await until("Ann sees Bob again in who is here", async () => (await ann.page.textContent("#people")).includes("Bob"));
    await Promise.all(people.map((p) => shot(p, "4-after-reload")));
    for (const p of people) assert.deepEqual(p.errors, [], `${p.name}'s page threw no errors`);
  } finally {
    for (const p of people) await p.close();
    await server.stop();
  }
});

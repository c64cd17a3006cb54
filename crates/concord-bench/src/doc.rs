//! `doc` (open-loop op lists into doc rooms, OT rebase under load) and `flood` (normal
//! publishers with and without one abusive connection, to see what the per-connection rate limit
//! protects).
//!
//! `doc`: D doc rooms, E editors each. Op list `g` is scheduled at `start + g / rate`, belongs to
//! editor `g % (D·E)` and is either a text insert of "ab" at a random position of `body` or an
//! `add` of 1 on the counter `n`, with `base` = the latest seq that editor has seen in an event.
//! Editors pipeline: an editor sends its due lists without waiting for the acks of its earlier
//! ones, so under load bases are stale and the server rebases each list over what was committed
//! since its base — including the editor's own earlier lists, which a correct OT client would
//! instead have transformed locally (it keeps at most one list in flight, protocol §8.12). For
//! load that is fine: text inserts and adds stay valid whatever they are rebased over (the body
//! only grows, so a position valid at `base` stays valid). At the end the counter of every doc
//! (GET /v1/rooms/{room}) must equal the number of acked adds.

use crate::conn::{self, Spec, Ws};
use crate::load::{self, Clock, Load};
use crate::scenarios::{open_room, LoadOpts, ACTIVE_BUFFER, SETTLE};
use crate::stats::{self, Series};
use crate::wire::{self, Kind};
use crate::{parse_duration, Common};
use anyhow::{anyhow, bail, Context};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

/// The body every doc starts with, and what every text op inserts.
const BODY: &str = "hello world";
const INSERT: &str = "ab";

#[derive(clap::Args, Clone, Debug)]
pub struct DocArgs {
    /// Doc rooms (new rooms per run).
    #[arg(long, default_value_t = 1)]
    pub docs: usize,
    /// Editor connections per doc (each joins its doc with kind doc).
    #[arg(long, default_value_t = 100)]
    pub editors: usize,
    /// Op lists per second offered, all editors together (open loop).
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// How long the schedule runs.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Share of op lists that are an `add` on the counter (the rest are text inserts).
    #[arg(long, default_value_t = 0.5)]
    pub add_share: f64,
    /// After the schedule ends, how long to wait for missing acks.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain: Duration,
}

#[derive(clap::Args, Clone, Debug)]
pub struct FloodArgs {
    /// Normal publisher connections (one room).
    #[arg(long, default_value_t = 50)]
    pub normal: usize,
    /// Publishes per second of each normal connection (open loop).
    #[arg(long, default_value_t = 20.0)]
    pub normal_rate: f64,
    /// Publishes per second the abusive connection attempts in phase 2 (0 = no phase 2).
    #[arg(long, default_value_t = 20000.0)]
    pub abuser_rate: f64,
    /// How long each phase's schedule runs.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    #[command(flatten)]
    pub opts: LoadOpts,
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn is_add(g: u64, share: f64) -> bool {
    (mix(g) >> 11) as f64 / (1u64 << 53) as f64 <= share
}

/// What an editor has seen: the latest seq and how many text inserts up to it.
#[derive(Default)]
#[repr(align(64))]
struct Editor {
    seq: AtomicU64,
    inserts: AtomicU64,
    sent: AtomicU64,
    answered: AtomicU64,
}

#[derive(Default)]
struct ReadResult {
    acked: u64,
    acked_with_drops: u64,
    errors: BTreeMap<String, u64>,
    samples: Vec<String>,
    closed: Option<String>,
    last_answer_us: u64,
}

/// Tells each editor how many of its lists are due; only the newly due `g`s are visited, so the
/// cost does not grow with the number of editors.
fn ticker(
    clock: Arc<Clock>,
    total: u64,
    ticks: Vec<mpsc::UnboundedSender<u64>>,
    stop: Arc<AtomicBool>,
) {
    let n = ticks.len() as u64;
    let mut g = 0u64;
    while g < total && !stop.load(Relaxed) {
        let now = clock.now_us();
        let next = clock.sched_us(g);
        if next > now {
            std::thread::sleep(Duration::from_micros((next - now).max(load::TICK_US)));
            continue;
        }
        let mut last = g;
        while last < total && clock.sched_us(last) <= now {
            last += 1;
        }
        let (from, to) = if last - g > n {
            (last - n, last)
        } else {
            (g, last)
        };
        for h in from..to {
            let _ = ticks[(h % n) as usize].send(h / n + 1);
        }
        g = last;
    }
}

#[allow(clippy::too_many_arguments)]
async fn editor_sender(
    mut sink: SplitSink<Ws, Message>,
    mut ticks: mpsc::UnboundedReceiver<u64>,
    index: u64,
    editors: u64,
    room: String,
    add_share: f64,
    state: Arc<Editor>,
) -> Option<String> {
    let body_len = BODY.chars().count() as u64;
    let ins_len = INSERT.chars().count() as u64;
    let mut k = 0u64;
    while let Some(mut upto) = ticks.recv().await {
        while let Ok(u) = ticks.try_recv() {
            upto = upto.max(u);
        }
        while k < upto {
            let g = k * editors + index;
            // seq first, then inserts: the length may include one more insert than `base`,
            // which is still valid (the body only grows).
            let base = state.seq.load(Relaxed);
            let ops = if is_add(g, add_share) {
                json!([{"op": "add", "path": ["n"], "value": 1}])
            } else {
                let len = body_len + ins_len * state.inserts.load(Relaxed);
                let pos = mix(g ^ 0x5555) % (len + 1);
                json!([{"op": "text", "path": ["body"], "pos": pos, "insert": INSERT}])
            };
            if let Err(e) = sink
                .feed(Message::text(wire::op(&room, g, base, &ops)))
                .await
            {
                return Some(format!("editor {index}: sending failed: {e}"));
            }
            k += 1;
        }
        if let Err(e) = sink.flush().await {
            return Some(format!("editor {index}: flushing failed: {e}"));
        }
        state.sent.store(k, Relaxed);
    }
    None
}

#[allow(clippy::too_many_arguments)]
async fn editor_reader(
    mut stream: SplitStream<Ws>,
    clock: Arc<Clock>,
    state: Arc<Editor>,
    add_share: f64,
    adds: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> ReadResult {
    let mut r = ReadResult::default();
    loop {
        let text = match crate::conn::next_text(&mut stream, &mut stop).await {
            Ok(t) => t,
            Err(crate::conn::ReadEnd::Stopped) => break,
            Err(crate::conn::ReadEnd::Closed(why)) => {
                r.closed = Some(why);
                break;
            }
        };
        let now = clock.now_us();
        match wire::kind(&text) {
            Kind::Ack => {
                if let Some(g) = wire::id_u64(&text) {
                    stats::sample(Series::Ack, now.saturating_sub(clock.sched_us(g)));
                    if is_add(g, add_share) && !text.contains("\"dropped\"") {
                        adds.fetch_add(1, Relaxed);
                    }
                }
                if text.contains("\"dropped\"") {
                    r.acked_with_drops += 1;
                }
                r.acked += 1;
                r.last_answer_us = now;
                state.answered.fetch_add(1, Relaxed);
            }
            Kind::Event => {
                if text.contains(r#""insert":"#) {
                    state.inserts.fetch_add(1, Relaxed);
                }
                if let Some(seq) = wire::seq(&text) {
                    state.seq.fetch_max(seq, Relaxed);
                }
            }
            Kind::Error => {
                let code = wire::str_field(&text, "code").unwrap_or("?").to_string();
                *r.errors.entry(code).or_default() += 1;
                if wire::str_field(&text, "id").is_some() {
                    r.last_answer_us = now;
                    state.answered.fetch_add(1, Relaxed);
                }
                if r.samples.len() < 2 {
                    r.samples.push(wire::describe_error(&text));
                }
            }
            _ => {}
        }
    }
    r
}

/// `GET /v1/rooms/{room}` on the server of `ws_url`, as JSON.
async fn get_room(ws_url: &str, room: &str) -> anyhow::Result<serde_json::Value> {
    let rest = ws_url
        .strip_prefix("ws://")
        .ok_or_else(|| anyhow!("only ws:// URLs are supported for the final check"))?;
    let addr = rest.split('/').next().unwrap_or(rest);
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!("GET /v1/rooms/{room} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("bad HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{}", head.lines().next().unwrap_or(""));
    }
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    serde_json::from_str(&body).context("decoding the room")
}

pub async fn doc(common: &Common, a: DocArgs) -> anyhow::Result<()> {
    if a.docs == 0 || a.editors == 0 || a.rate <= 0.0 {
        bail!("doc needs --docs ≥ 1, --editors ≥ 1 and a positive --rate");
    }
    let tag = conn::run_tag();
    let n = a.docs * a.editors;
    println!(
        "scenario doc: {} doc(s) × {} editors = {n} connections, {} op lists/s for {:.1} s ({:.0}% add on a counter, the rest a text insert at a random position), {}",
        a.docs,
        a.editors,
        a.rate,
        a.duration.as_secs_f64(),
        a.add_share * 100.0,
        common.url()
    );
    let rooms: Vec<String> = (0..a.docs).map(|d| format!("bench-{tag}-d{d}")).collect();
    // Editor i edits doc i % D; editors 0..D create the docs.
    let specs: Vec<Spec> = (0..n)
        .map(|i| Spec {
            client_id: conn::client_id(&tag, "e", i),
            rooms: vec![rooms[i % a.docs].clone()],
        })
        .collect();
    let t = Instant::now();
    let mut first = conn::open_all_kind(
        common.url(),
        &specs[..a.docs],
        common.connect_concurrency,
        ACTIVE_BUFFER,
        "doc",
    )
    .await?;
    let init = json!([
        {"op": "set", "path": ["body"], "value": BODY},
        {"op": "set", "path": ["n"], "value": 0},
    ]);
    for (d, ws) in first.iter_mut().enumerate() {
        ws.send(Message::text(wire::op(&rooms[d], u64::MAX - 1, 0, &init)))
            .await?;
    }
    for (d, ws) in first.iter_mut().enumerate() {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => match wire::kind(&t) {
                    Kind::Ack => break,
                    Kind::Error => bail!("initialising {}: {}", rooms[d], wire::describe_error(&t)),
                    _ => {}
                },
                Some(Ok(_)) => {}
                other => bail!("initialising {}: {other:?}", rooms[d]),
            }
        }
    }
    let more = conn::open_all_kind(
        common.url(),
        &specs[a.docs..],
        common.connect_concurrency,
        ACTIVE_BUFFER,
        "doc",
    )
    .await?;
    let mut all: Vec<Ws> = first.into_iter().chain(more).collect();
    let joined = t.elapsed();
    let discarded = conn::settle(&mut all, SETTLE).await;
    println!(
        "setup         {n} editors joined {} doc(s) (each set to {{\"body\":\"{BODY}\",\"n\":0}}) in {:.2} s; {discarded} queued frames discarded",
        a.docs,
        joined.as_secs_f64()
    );

    let load = Load {
        rate: a.rate,
        duration: a.duration,
        drain: a.drain,
        payload: 0,
        members_per_room: a.editors as u64,
        proto: crate::Proto::Concord,
    };
    let total = load.planned();
    let clock = Arc::new(Clock::new(a.rate));
    let (stop_tx, stop_rx) = watch::channel(false);
    let adds: Vec<Arc<AtomicU64>> = (0..a.docs).map(|_| Arc::default()).collect();
    let mut states = Vec::with_capacity(n);
    let mut ticks = Vec::with_capacity(n);
    let mut senders = Vec::with_capacity(n);
    let mut readers = Vec::with_capacity(n);
    let _ = stats::take();
    for (i, ws) in all.into_iter().enumerate() {
        let (sink, stream) = ws.split();
        let state = Arc::new(Editor::default());
        state.seq.store(1, Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        ticks.push(tx);
        senders.push(tokio::spawn(editor_sender(
            sink,
            rx,
            i as u64,
            n as u64,
            rooms[i % a.docs].clone(),
            a.add_share,
            state.clone(),
        )));
        readers.push(tokio::spawn(editor_reader(
            stream,
            clock.clone(),
            state.clone(),
            a.add_share,
            adds[i % a.docs].clone(),
            stop_rx.clone(),
        )));
        states.push(state);
    }
    let ticker_stop = Arc::new(AtomicBool::new(false));
    let ticker_thread = {
        let (clock, stop) = (clock.clone(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("bench-ticker".into())
            .spawn(move || ticker(clock, total, ticks, stop))
            .expect("spawning the ticker thread")
    };
    let end = tokio::time::Instant::from_std(clock.start + a.duration);
    tokio::time::sleep_until(end).await;
    let deadline = end + a.drain;
    let deadline_hit = loop {
        let answered: u64 = states.iter().map(|s| s.answered.load(Relaxed)).sum();
        if answered >= total {
            break false;
        }
        if tokio::time::Instant::now() >= deadline {
            break true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let _ = stop_tx.send(true);
    ticker_stop.store(true, Relaxed);
    let _ = tokio::task::spawn_blocking(move || ticker_thread.join()).await;
    let mut send_errors = BTreeMap::<String, u64>::new();
    for s in senders {
        s.abort();
        if let Ok(Some(e)) = s.await {
            let e = e.split_once(": ").map(|x| x.1).unwrap_or(&e).to_string();
            *send_errors.entry(e).or_default() += 1;
        }
    }
    let mut acked = 0;
    let mut with_drops = 0;
    let mut errors = BTreeMap::<String, u64>::new();
    let mut samples = BTreeMap::<String, u64>::new();
    let mut closed = BTreeMap::<String, u64>::new();
    let mut last_answer = 0;
    for h in readers {
        if let Ok(r) = h.await {
            acked += r.acked;
            with_drops += r.acked_with_drops;
            for (c, k) in r.errors {
                *errors.entry(c).or_default() += k;
            }
            for s in r.samples {
                *samples.entry(s).or_default() += 1;
            }
            if let Some(c) = r.closed {
                *closed.entry(c).or_default() += 1;
            }
            last_answer = last_answer.max(r.last_answer_us);
        }
    }
    let [ack, _, _] = stats::take();
    let sent: u64 = states.iter().map(|s| s.sent.load(Relaxed)).sum();
    let n_err: u64 = errors.values().sum();
    let over = Duration::from_micros(last_answer).max(a.duration);
    println!(
        "offered       {} for {:.1} s = {total} op lists; sent {sent}",
        stats::rate(a.rate),
        a.duration.as_secs_f64()
    );
    println!(
        "committed     {acked} = {} (last ack {:.2} s after the first scheduled send); {with_drops} acks with dropped ops; errors {n_err}; unanswered {}",
        stats::rate(load::per_sec(acked, over)),
        last_answer as f64 / 1e6,
        total.saturating_sub(acked + n_err)
    );
    println!("ack latency   {}", stats::latency_line(&ack));
    for (c, k) in &errors {
        println!("errors        {k}× {c}");
    }
    for (s, k) in &samples {
        println!("  e.g.        {k}× {s}");
    }
    for (e, k) in &send_errors {
        println!("send error    {k}× {e}");
    }
    for (c, k) in &closed {
        println!("closed        {k} connection(s): {c}");
    }
    if deadline_hit {
        println!(
            "NOTE          stopped at the drain deadline ({:.1} s after the schedule) with acks missing",
            a.drain.as_secs_f64()
        );
    }
    // The final check: every doc's counter equals its acked adds.
    let (mut ok, mut bad, mut failed) = (0, 0, 0);
    let mut examples = Vec::new();
    for (d, room) in rooms.iter().enumerate() {
        let want = adds[d].load(Relaxed);
        match get_room(common.url(), room).await {
            Ok(v) => {
                let got = v["state"]["n"].as_u64();
                if got == Some(want) {
                    ok += 1;
                } else {
                    bad += 1;
                    if examples.len() < 3 {
                        examples.push(format!("{room}: n = {got:?}, acked adds {want}"));
                    }
                }
            }
            Err(e) => {
                failed += 1;
                if examples.len() < 3 {
                    examples.push(format!("{room}: GET failed: {e}"));
                }
            }
        }
    }
    let verdict = if bad == 0 && failed == 0 {
        "OK"
    } else {
        "MISMATCH"
    };
    println!(
        "counter check {verdict}: {ok} of {} doc(s) have n = acked adds ({} adds acked in all); {bad} differ; {failed} GETs failed",
        a.docs,
        adds.iter().map(|x| x.load(Relaxed)).sum::<u64>()
    );
    for e in examples {
        println!("  {e}");
    }
    let unanswered = total.saturating_sub(acked + n_err);
    if unanswered > 0 && bad > 0 {
        println!(
            "  (not conclusive: {unanswered} lists were unanswered when the bench stopped reading; lists committed after that are in n but not counted)"
        );
    }
    Ok(())
}

/// What the abusive connection saw.
#[derive(Default, Debug)]
struct AbuserResult {
    sent: u64,
    acked: u64,
    errors: BTreeMap<String, u64>,
    closed: Option<String>,
}

/// One connection that publishes at `rate` (in 1 ms batches) for `duration`, then reads answers
/// for up to `drain`.
async fn abuser(
    ws: Ws,
    room: String,
    rate: f64,
    duration: Duration,
    drain: Duration,
) -> AbuserResult {
    let (mut sink, mut stream) = ws.split();
    let (done_tx, mut done_rx) = watch::channel(0u64);
    let send = tokio::spawn(async move {
        let start = Instant::now();
        let mut sent = 0u64;
        let mut iv = tokio::time::interval(Duration::from_millis(1));
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            iv.tick().await;
            let el = start.elapsed().min(duration);
            let due = (el.as_secs_f64() * rate) as u64;
            while sent < due {
                let frame = wire::publish(&room, sent, 0, "");
                if sink.feed(Message::text(frame)).await.is_err() {
                    let _ = done_tx.send(sent);
                    return sent;
                }
                sent += 1;
            }
            if sink.flush().await.is_err() || el >= duration {
                let _ = done_tx.send(sent);
                return sent;
            }
        }
    });
    let mut r = AbuserResult::default();
    let mut until: Option<tokio::time::Instant> = None;
    loop {
        if until.is_none() && done_rx.has_changed().unwrap_or(true) {
            until = Some(tokio::time::Instant::now() + drain);
            r.sent = *done_rx.borrow_and_update();
        }
        if until.is_some() && r.acked + r.errors.values().sum::<u64>() >= r.sent {
            break;
        }
        let wait = until.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_millis(50));
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = tokio::time::sleep_until(wait) => {
                if until.is_some() { break } else { continue }
            }
        };
        match msg {
            Some(Ok(Message::Text(t))) => match wire::kind(&t) {
                Kind::Ack => r.acked += 1,
                Kind::Error => {
                    let code = wire::str_field(&t, "code").unwrap_or("?").to_string();
                    *r.errors.entry(code).or_default() += 1;
                }
                _ => {}
            },
            Some(Ok(Message::Close(f))) => {
                r.closed = Some(format!("close {f:?}"));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                r.closed = Some(format!("connection error: {e}"));
                break;
            }
            None => {
                r.closed = Some("closed".into());
                break;
            }
        }
    }
    if let Ok(sent) = send.await {
        r.sent = sent;
    }
    r
}

pub async fn flood(common: &Common, a: FloodArgs) -> anyhow::Result<()> {
    if a.normal == 0 || a.normal_rate <= 0.0 {
        bail!("flood needs --normal ≥ 1 and a positive --normal-rate");
    }
    let tag = conn::run_tag();
    let room = format!("bench-{tag}-flood");
    let rate = a.normal as f64 * a.normal_rate;
    println!(
        "scenario flood: room {room}, {} normal publishers × {}/s = {}/s (open loop) for {:.1} s; phase 2 adds one connection attempting {}/s; {}",
        a.normal,
        a.normal_rate,
        rate,
        a.duration.as_secs_f64(),
        a.abuser_rate,
        common.url()
    );
    let load = Load {
        rate,
        duration: a.duration,
        drain: a.opts.drain,
        payload: a.opts.payload,
        members_per_room: a.normal as u64,
        proto: crate::Proto::Concord,
    };
    let mut p99 = Vec::new();
    for phase in 1..=2 {
        let with_abuser = phase == 2;
        if with_abuser && a.abuser_rate <= 0.0 {
            break;
        }
        let ptag = format!("{tag}-{phase}");
        let (publishers, _) = open_room(common, &ptag, &room, a.normal, 0).await?;
        let ab = if with_abuser {
            let spec = Spec {
                client_id: conn::client_id(&ptag, "abuser", 0),
                rooms: vec![room.clone()],
            };
            let mut ws = conn::open(common.url(), &spec, ACTIVE_BUFFER).await?;
            conn::settle(std::slice::from_mut(&mut ws), SETTLE).await;
            Some(ws)
        } else {
            None
        };
        let _ = stats::take();
        let abuser_task = ab.map(|ws| {
            let (room, r, d, dr) = (room.clone(), a.abuser_rate, a.duration, a.opts.drain);
            tokio::spawn(async move {
                // Start with the normal schedule (it begins after the load engine's lead-in).
                tokio::time::sleep(Duration::from_millis(200)).await;
                abuser(ws, room, r, d, dr).await
            })
        });
        let outcome = load::run(&load, publishers, Vec::new()).await;
        println!(
            "--- phase {phase}: {} ---",
            if with_abuser {
                format!("with one abusive connection at {}/s", a.abuser_rate)
            } else {
                "normal publishers only".to_string()
            }
        );
        println!(
            "normal        acked {} of {}; errors {}; ack latency {}",
            outcome.acked,
            outcome.planned,
            outcome.errors,
            stats::latency_line(&outcome.ack)
        );
        let rl: u64 = outcome
            .error_samples
            .iter()
            .filter(|(e, _)| e.starts_with("rate_limited"))
            .map(|(_, n)| n)
            .sum();
        println!("normal        rate_limited errors (sampled, ≤ 4 per connection): {rl}");
        for (e, n) in &outcome.error_samples {
            println!("  error       {n}× {e}");
        }
        for (c, n) in &outcome.closed {
            println!("  closed      {n} connection(s): {c}");
        }
        if outcome.deadline_hit {
            println!("  NOTE        stopped at the drain deadline with acks or deliveries missing");
        }
        p99.push(outcome.ack.value_at_quantile(0.99));
        if let Some(t) = abuser_task {
            let r = t.await?;
            println!(
                "abuser        sent {} ({}/s attempted); acked {}; rate_limited {}; other errors {:?}; {}",
                r.sent,
                a.abuser_rate,
                r.acked,
                r.errors.get("rate_limited").copied().unwrap_or(0),
                r.errors
                    .iter()
                    .filter(|(c, _)| c.as_str() != "rate_limited")
                    .collect::<Vec<_>>(),
                r.closed.as_deref().unwrap_or("connection still open")
            );
        }
    }
    if let [a1, a2] = p99[..] {
        println!(
            "p99 ratio     with abuser / without = {:.3} ms / {:.3} ms = {:.2}×",
            a2 as f64 / 1000.0,
            a1 as f64 / 1000.0,
            a2 as f64 / a1.max(1) as f64
        );
    }
    Ok(())
}

//! The open-loop engine shared by `pubsub`, `fanout` and `rooms`.
//!
//! Message `g` (0, 1, 2, …) of a run is scheduled at `start + g / rate`, whatever happens to the
//! previous ones. It belongs to publisher `g % P` and goes to that publisher's rooms in turn. A
//! timer thread (sub-millisecond, unlike tokio's 1 ms timer wheel) tells each publisher how many
//! of its messages are due; the publisher feeds every due message and flushes once, so a
//! publisher that fell behind sends its backlog at once and the backlog shows up in the latency.
//!
//! Latency is always measured from the scheduled send time, never from the actual one
//! (coordinated omission): an ack's latency comes from its id (`g`), a delivery's from the
//! scheduled unix time `t` the publisher put in `data`.
//!
//! The same engine drives a Socket.IO server (`Proto::Socketio`): publishes become `publish`
//! events with the message index as their ack id, deliveries are `event` events, and the
//! Engine.IO pings are answered through each connection's control channel.

use crate::conn::Ws;
use crate::eio::{self, Packet};
use crate::stats::{self, Series};
use crate::wire::{self, Kind};
use crate::Proto;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

/// The timer thread never sleeps less than this: the schedule's granularity.
pub const TICK_US: u64 = 200;
/// Time between the end of connection setup and the first scheduled message.
const LEAD_IN: Duration = Duration::from_millis(200);
/// Error samples kept per connection.
const SAMPLES: usize = 4;

/// The offered load.
#[derive(Clone, Debug)]
pub struct Load {
    /// Publishes per second, all publishers together.
    pub rate: f64,
    pub duration: Duration,
    /// After the schedule ends, how long to wait for missing acks and deliveries.
    pub drain: Duration,
    /// Extra bytes of `data` per publish.
    pub payload: usize,
    /// Members of every room (publishers included): each acked publish is delivered this often.
    pub members_per_room: u64,
    /// The server's protocol.
    pub proto: Proto,
}

impl Load {
    pub fn planned(&self) -> u64 {
        (self.rate * self.duration.as_secs_f64()).round() as u64
    }
}

/// A publishing connection and the rooms it publishes to, in turn.
pub struct Publisher {
    pub ws: Ws,
    pub rooms: Vec<String>,
}

/// The run's time base: relative µs since `start`, and the unix µs of `start`.
pub(crate) struct Clock {
    pub(crate) start: Instant,
    pub(crate) base_unix_us: u64,
    pub(crate) rate: f64,
}

impl Clock {
    /// A clock whose schedule starts `LEAD_IN` from now.
    pub(crate) fn new(rate: f64) -> Clock {
        Clock {
            start: Instant::now() + LEAD_IN,
            base_unix_us: unix_now_us() + LEAD_IN.as_micros() as u64,
            rate: rate.max(1e-9),
        }
    }
    pub(crate) fn sched_us(&self, g: u64) -> u64 {
        (g as f64 * 1e6 / self.rate) as u64
    }
    pub(crate) fn now_us(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.start)
            .as_micros() as u64
    }
    pub(crate) fn unix_us(&self, rel_us: u64) -> u64 {
        self.base_unix_us + rel_us
    }
}

/// Per-connection progress the coordinator can watch (one cache line per connection).
#[derive(Default)]
#[repr(align(64))]
struct Counters {
    sent: AtomicU64,
    answered: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
    send_lag_us: AtomicU64,
}

/// What one connection's reader saw.
struct ConnResult {
    publisher: bool,
    acked: u64,
    errors: u64,
    deliveries: u64,
    gaps: u64,
    samples: Vec<String>,
    closed: Option<String>,
    last_answer_us: u64,
    last_delivery_us: u64,
}

/// The result of a run.
pub struct Outcome {
    pub publishers: usize,
    pub subscribers: usize,
    pub planned: u64,
    pub sent: u64,
    pub max_send_lag_us: u64,
    pub acked: u64,
    pub errors: u64,
    pub ack: Histogram<u64>,
    /// Deliveries to the subscriber connections.
    pub sub_deliveries: u64,
    pub sub_delivery: Histogram<u64>,
    /// Deliveries of events back to the publishing connections (they are room members too).
    pub pub_deliveries: u64,
    pub pub_delivery: Histogram<u64>,
    pub gaps: u64,
    pub error_samples: BTreeMap<String, u64>,
    pub closed: BTreeMap<String, u64>,
    pub send_errors: Vec<String>,
    pub last_answer: Duration,
    pub last_delivery: Duration,
    pub deadline_hit: bool,
    members_per_room: u64,
    load: Load,
}

fn unix_now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Tells each publisher how many of its messages are due, until all `total` are.
pub(crate) fn ticker(
    clock: Arc<Clock>,
    total: u64,
    ticks: Vec<mpsc::UnboundedSender<u64>>,
    stop: Arc<AtomicBool>,
) {
    let p = ticks.len() as u64;
    let mut issued = vec![0u64; ticks.len()];
    let mut g = 0u64;
    while g < total && !stop.load(Relaxed) {
        let now = clock.now_us();
        let next = clock.sched_us(g);
        if next > now {
            std::thread::sleep(Duration::from_micros((next - now).max(TICK_US)));
            continue;
        }
        let mut last = g;
        while last < total && clock.sched_us(last) <= now {
            last += 1;
        }
        for (i, tx) in ticks.iter().enumerate() {
            let pi = i as u64;
            let due = if last > pi {
                (last - pi - 1) / p + 1
            } else {
                0
            };
            if due > issued[i] {
                issued[i] = due;
                let _ = tx.send(due);
            }
        }
        g = last;
    }
}

/// Frames a reader asks its connection's writer to send (Engine.IO pongs).
type Control = mpsc::UnboundedSender<&'static str>;

/// What a publisher sends, and to whom.
struct Schedule {
    index: u64,
    publishers: u64,
    rooms: Vec<String>,
    padding: String,
    proto: Proto,
}

impl Schedule {
    fn frame(&self, g: u64, k: u64, t_unix_us: u64) -> String {
        let room = &self.rooms[(k % self.rooms.len().max(1) as u64) as usize];
        match self.proto {
            Proto::Concord => wire::publish(room, g, t_unix_us, &self.padding),
            Proto::Socketio => eio::publish(room, g, t_unix_us, &self.padding),
        }
    }
}

/// Sends publisher `index`'s messages as they fall due (feed all due, flush once), and the
/// control frames its reader asks for.
async fn sender(
    mut sink: SplitSink<Ws, Message>,
    mut ticks: mpsc::UnboundedReceiver<u64>,
    mut control: mpsc::UnboundedReceiver<&'static str>,
    plan: Schedule,
    clock: Arc<Clock>,
    counters: Arc<Counters>,
) -> Option<String> {
    let (index, publishers) = (plan.index, plan.publishers);
    let mut k = 0u64;
    let mut scheduling = true;
    loop {
        let mut upto = tokio::select! {
            biased;
            Some(frame) = control.recv() => {
                if let Err(e) = sink.send(Message::text(frame)).await {
                    return Some(format!("publisher {index}: sending failed: {e}"));
                }
                continue;
            }
            tick = ticks.recv(), if scheduling => match tick {
                Some(upto) => upto,
                None => {
                    scheduling = false;
                    continue;
                }
            },
            else => return None,
        };
        while let Ok(u) = ticks.try_recv() {
            upto = u;
        }
        let first = clock.sched_us(k * publishers + index);
        while k < upto {
            let g = k * publishers + index;
            let frame = plan.frame(g, k, clock.unix_us(clock.sched_us(g)));
            if let Err(e) = sink.feed(Message::text(frame)).await {
                return Some(format!("publisher {index}: sending failed: {e}"));
            }
            k += 1;
        }
        if let Err(e) = sink.flush().await {
            return Some(format!("publisher {index}: flushing failed: {e}"));
        }
        counters.sent.store(k, Relaxed);
        counters
            .send_lag_us
            .fetch_max(clock.now_us().saturating_sub(first), Relaxed);
    }
}

/// A subscriber's writer: sends only the control frames its reader asks for.
async fn control_writer(
    mut sink: SplitSink<Ws, Message>,
    mut control: mpsc::UnboundedReceiver<&'static str>,
) {
    while let Some(frame) = control.recv().await {
        if sink.send(Message::text(frame)).await.is_err() {
            return;
        }
    }
}

impl ConnResult {
    fn ack(&mut self, g: Option<u64>, now: u64, clock: &Clock, counters: &Counters) {
        if let Some(g) = g {
            stats::sample(Series::Ack, now.saturating_sub(clock.sched_us(g)));
        }
        self.acked += 1;
        self.last_answer_us = now;
        counters.acked.fetch_add(1, Relaxed);
        counters.answered.fetch_add(1, Relaxed);
    }

    fn delivery(&mut self, series: Series, t: Option<u64>, now: u64, clock: &Clock, c: &Counters) {
        if let Some(t) = t {
            stats::sample(series, clock.unix_us(now).saturating_sub(t));
        }
        self.deliveries += 1;
        self.last_delivery_us = now;
        c.delivered.fetch_add(1, Relaxed);
    }
}

/// Counts a break in a room's order: `pos` must be exactly one past the room's last one
/// (`step` = Concord's seqs) or above it (Socket.IO: the scheduled send times).
fn check_order(last: &mut HashMap<String, u64>, room: &str, pos: u64, step: bool) -> bool {
    match last.get_mut(room) {
        Some(prev) => {
            let ok = if step { pos == *prev + 1 } else { pos >= *prev };
            *prev = pos;
            ok
        }
        None => {
            last.insert(room.to_string(), pos);
            true
        }
    }
}

/// Reads one connection until told to stop: acks, deliveries, errors, gaps.
async fn reader(
    mut stream: SplitStream<Ws>,
    publisher: bool,
    clock: Arc<Clock>,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
    proto: Proto,
    control: Control,
) -> ConnResult {
    let mut r = ConnResult {
        publisher,
        acked: 0,
        errors: 0,
        deliveries: 0,
        gaps: 0,
        samples: Vec::new(),
        closed: None,
        last_answer_us: 0,
        last_delivery_us: 0,
    };
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    let series = if publisher {
        Series::PubDelivery
    } else {
        Series::SubDelivery
    };
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
        if proto == Proto::Socketio {
            match eio::parse(&text) {
                Packet::Ack { id, .. } => r.ack(Some(id), now, &clock, &counters),
                Packet::Event { args, .. } if eio::event_name(args) == Some("event") => {
                    let t = eio::data_t(args);
                    r.delivery(series, t, now, &clock, &counters);
                    if let (Some(room), Some(t)) = (eio::event_room(args), t) {
                        if !check_order(&mut last_seq, room, t, false) {
                            r.gaps += 1;
                        }
                    }
                }
                Packet::Ping => {
                    let _ = control.send(eio::PONG);
                }
                Packet::Close | Packet::Disconnect => {
                    r.closed = Some(format!("the server ended the session ({text})"));
                    break;
                }
                _ => {}
            }
            continue;
        }
        match wire::kind(&text) {
            Kind::Ack => r.ack(wire::id_u64(&text), now, &clock, &counters),
            Kind::Event => {
                r.delivery(series, wire::data_t(&text), now, &clock, &counters);
                if let (Some(room), Some(seq)) = (wire::room(&text), wire::seq(&text)) {
                    if !check_order(&mut last_seq, room, seq, true) {
                        r.gaps += 1;
                    }
                }
            }
            Kind::Error => {
                r.errors += 1;
                if wire::str_field(&text, "id").is_some() {
                    r.last_answer_us = now;
                    counters.answered.fetch_add(1, Relaxed);
                }
                if r.samples.len() < SAMPLES {
                    r.samples.push(wire::describe_error(&text));
                }
            }
            _ => {}
        }
    }
    r
}

/// Runs the schedule over `publishers` while `subscribers` read; waits (up to the drain time)
/// for every ack and every delivery, then stops everything and merges the results.
pub async fn run(load: &Load, publishers: Vec<Publisher>, subscribers: Vec<Ws>) -> Outcome {
    let total = load.planned();
    let clock = Arc::new(Clock {
        start: Instant::now() + LEAD_IN,
        base_unix_us: unix_now_us() + LEAD_IN.as_micros() as u64,
        rate: load.rate.max(1e-9),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let padding = wire::padding(load.payload);
    let n_pub = publishers.len();
    let n_sub = subscribers.len();
    let mut pub_counters = Vec::new();
    let mut all_counters = Vec::new();
    let mut senders = Vec::new();
    let mut readers = Vec::new();
    let mut ticks = Vec::new();
    for (i, p) in publishers.into_iter().enumerate() {
        let (sink, stream) = p.ws.split();
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        ticks.push(tx);
        let plan = Schedule {
            index: i as u64,
            publishers: n_pub as u64,
            rooms: p.rooms,
            padding: padding.clone(),
            proto: load.proto,
        };
        senders.push(tokio::spawn(sender(
            sink,
            rx,
            control_rx,
            plan,
            clock.clone(),
            counters.clone(),
        )));
        readers.push(tokio::spawn(reader(
            stream,
            true,
            clock.clone(),
            counters.clone(),
            stop_rx.clone(),
            load.proto,
            control_tx,
        )));
        pub_counters.push(counters.clone());
        all_counters.push(counters);
    }
    let mut sub_writers = Vec::new();
    for ws in subscribers {
        let (sink, stream) = ws.split();
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        sub_writers.push(tokio::spawn(control_writer(sink, control_rx)));
        let counters = Arc::new(Counters::default());
        readers.push(tokio::spawn(reader(
            stream,
            false,
            clock.clone(),
            counters.clone(),
            stop_rx.clone(),
            load.proto,
            control_tx,
        )));
        all_counters.push(counters);
    }
    let ticker_stop = Arc::new(AtomicBool::new(false));
    let ticker_thread = {
        let (clock, stop) = (clock.clone(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("bench-ticker".into())
            .spawn(move || ticker(clock, total, ticks, stop))
            .expect("spawning the ticker thread")
    };

    let end = tokio::time::Instant::from_std(clock.start + load.duration);
    tokio::time::sleep_until(end).await;
    let deadline = end + load.drain;
    let sum = |cs: &[Arc<Counters>], f: fn(&Counters) -> &AtomicU64| {
        cs.iter().map(|c| f(c).load(Relaxed)).sum::<u64>()
    };
    let deadline_hit = loop {
        let answered = sum(&pub_counters, |c| &c.answered);
        let acked = sum(&pub_counters, |c| &c.acked);
        let delivered = sum(&all_counters, |c| &c.delivered);
        if answered >= total && delivered >= acked * load.members_per_room {
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

    let mut send_errors = Vec::new();
    for s in senders {
        s.abort();
        if let Ok(Some(e)) = s.await {
            send_errors.push(e);
        }
    }
    for w in sub_writers {
        w.abort();
    }
    let mut results = Vec::with_capacity(readers.len());
    for h in readers {
        if let Ok(r) = h.await {
            results.push(r);
        }
    }
    let [ack, sub_delivery, pub_delivery] = stats::take();
    let mut out = Outcome {
        publishers: n_pub,
        subscribers: n_sub,
        planned: total,
        sent: sum(&pub_counters, |c| &c.sent),
        max_send_lag_us: pub_counters
            .iter()
            .map(|c| c.send_lag_us.load(Relaxed))
            .max()
            .unwrap_or(0),
        acked: 0,
        errors: 0,
        ack,
        sub_deliveries: 0,
        sub_delivery,
        pub_deliveries: 0,
        pub_delivery,
        gaps: 0,
        error_samples: BTreeMap::new(),
        closed: BTreeMap::new(),
        send_errors,
        last_answer: Duration::ZERO,
        last_delivery: Duration::ZERO,
        deadline_hit,
        members_per_room: load.members_per_room,
        load: load.clone(),
    };
    let (mut last_answer, mut last_delivery) = (0, 0);
    for r in results {
        out.acked += r.acked;
        out.errors += r.errors;
        out.gaps += r.gaps;
        if r.publisher {
            out.pub_deliveries += r.deliveries;
        } else {
            out.sub_deliveries += r.deliveries;
        }
        for s in r.samples {
            *out.error_samples.entry(s).or_default() += 1;
        }
        if let Some(c) = r.closed {
            *out.closed.entry(c).or_default() += 1;
        }
        last_answer = last_answer.max(r.last_answer_us);
        last_delivery = last_delivery.max(r.last_delivery_us);
    }
    out.last_answer = Duration::from_micros(last_answer);
    out.last_delivery = Duration::from_micros(last_delivery);
    out
}

pub(crate) fn per_sec(n: u64, over: Duration) -> f64 {
    if over.is_zero() {
        0.0
    } else {
        n as f64 / over.as_secs_f64()
    }
}

impl Outcome {
    /// Acked publishes per second, over the time from the first scheduled send to the last ack
    /// (at least the scheduled duration).
    pub fn acked_per_sec(&self) -> f64 {
        per_sec(self.acked, self.last_answer.max(self.load.duration))
    }

    pub fn deliveries(&self) -> u64 {
        self.sub_deliveries + self.pub_deliveries
    }

    /// Deliveries (all connections) per second, up to the last delivery.
    pub fn deliveries_per_sec(&self) -> f64 {
        per_sec(
            self.deliveries(),
            self.last_delivery.max(self.load.duration),
        )
    }

    pub fn sub_deliveries_per_sec(&self) -> f64 {
        per_sec(
            self.sub_deliveries,
            self.last_delivery.max(self.load.duration),
        )
    }

    pub fn print(&self) {
        let l = &self.load;
        let secs = l.duration.as_secs_f64();
        println!(
            "offered       {} for {secs:.1} s = {} publishes from {} publisher connection(s) (schedule granularity {TICK_US} µs)",
            stats::rate(l.rate),
            self.planned,
            self.publishers
        );
        println!(
            "sent          {} (worst lag of a send batch behind its schedule: {:.3} ms)",
            self.sent,
            self.max_send_lag_us as f64 / 1000.0
        );
        let unanswered = self.planned.saturating_sub(self.acked + self.errors);
        println!(
            "acked         {} = {} (last ack {:.2} s after the first scheduled send); errors {}; unanswered {}",
            self.acked,
            stats::rate(self.acked_per_sec()),
            self.last_answer.as_secs_f64(),
            self.errors,
            unanswered
        );
        println!("ack latency   {}", stats::latency_line(&self.ack));
        let expected = self.acked * self.members_per_room;
        let order = match l.proto {
            Proto::Concord => "seq gaps",
            Proto::Socketio => "deliveries out of send order",
        };
        println!(
            "deliveries    {} of {} expected = {} (all connections; last {:.2} s after start); {order} {}",
            self.deliveries(),
            expected,
            stats::rate(self.deliveries_per_sec()),
            self.last_delivery.as_secs_f64(),
            self.gaps
        );
        if self.subscribers > 0 {
            println!(
                "  to {} subscribers: {} = {}",
                self.subscribers,
                self.sub_deliveries,
                stats::rate(self.sub_deliveries_per_sec())
            );
            println!(
                "  subscriber delivery latency {}",
                stats::latency_line(&self.sub_delivery)
            );
        }
        if self.pub_deliveries > 0 {
            println!("  to publishers (own echoes): {}", self.pub_deliveries);
            println!(
                "  publisher delivery latency  {}",
                stats::latency_line(&self.pub_delivery)
            );
        }
        for (e, n) in &self.error_samples {
            println!("error         {n}× {e}");
        }
        for e in &self.send_errors {
            println!("send error    {e}");
        }
        for (c, n) in &self.closed {
            println!("closed        {n} connection(s): {c}");
        }
        if self.deadline_hit {
            println!(
                "NOTE          stopped at the drain deadline ({:.1} s after the schedule ended) with acks or deliveries missing",
                l.drain.as_secs_f64()
            );
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "offered_per_sec": self.load.rate,
            "duration_s": self.load.duration.as_secs_f64(),
            "planned": self.planned,
            "sent": self.sent,
            "acked": self.acked,
            "errors": self.errors,
            "acked_per_sec": self.acked_per_sec(),
            "ack_latency": stats::latency_json(&self.ack),
            "deliveries": self.deliveries(),
            "expected_deliveries": self.acked * self.members_per_room,
            "deliveries_per_sec": self.deliveries_per_sec(),
            "subscriber_deliveries": self.sub_deliveries,
            "subscriber_deliveries_per_sec": self.sub_deliveries_per_sec(),
            "subscriber_delivery_latency": stats::latency_json(&self.sub_delivery),
            "publisher_delivery_latency": stats::latency_json(&self.pub_delivery),
            "seq_gaps": self.gaps,
            "closed": self.closed,
            "deadline_hit": self.deadline_hit,
            "max_send_lag_ms": self.max_send_lag_us as f64 / 1000.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_checks() {
        let mut last = HashMap::new();
        assert!(check_order(&mut last, "a", 5, true));
        assert!(check_order(&mut last, "a", 6, true));
        assert!(!check_order(&mut last, "a", 8, true), "a gap");
        assert!(check_order(&mut last, "a", 9, true));
        assert!(check_order(&mut last, "b", 100, false));
        assert!(
            check_order(&mut last, "b", 100, false),
            "equal times keep the order"
        );
        assert!(check_order(&mut last, "b", 250, false));
        assert!(
            !check_order(&mut last, "b", 240, false),
            "a time going back"
        );
    }
}

//! The throughput scenarios: `pubsub` (P publishers, S subscribers, one room), `fanout`
//! (1 publisher → N subscribers) and `rooms` (publishes spread over many rooms).

use crate::conn::{self, Spec};
use crate::load::{self, Load, Publisher};
use crate::{parse_duration, Common};
use anyhow::bail;
use std::time::{Duration, Instant};

/// Read buffer of active bench connections. tungstenite zero-fills the free part of it before
/// every read, so bigger is slower with many small reads.
pub(crate) const ACTIVE_BUFFER: usize = 8 * 1024;
/// Setup ends once every connection has received nothing for this long.
pub(crate) const SETTLE: Duration = Duration::from_millis(300);
/// The server's default `--max-rooms-per-conn`.
const SERVER_MAX_ROOMS_PER_CONN: usize = 128;

/// Load-shaping options every throughput scenario has.
#[derive(clap::Args, Clone, Debug)]
pub struct LoadOpts {
    /// Extra bytes of `data` in every publish (besides the scheduled time `t`).
    #[arg(long, default_value_t = 0)]
    pub payload: usize,
    /// After the schedule ends, how long to wait for missing acks and deliveries.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Also print the summary as one JSON line.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Clone, Debug)]
pub struct PubsubArgs {
    /// Publishes per second offered, all publishers together (open loop).
    #[arg(long, default_value_t = 5000.0)]
    pub rate: f64,
    /// Connections that only receive.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Connections that publish (each on its own schedule; they are room members too).
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// How long the schedule runs.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// The room (default: a new room per run).
    #[arg(long)]
    pub room: Option<String>,
    #[command(flatten)]
    pub opts: LoadOpts,
}

#[derive(clap::Args, Clone, Debug)]
pub struct FanoutArgs {
    /// Connections that only receive.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Publishes per second from the one publisher (open loop).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// How long the schedule runs.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// The room (default: a new room per run).
    #[arg(long)]
    pub room: Option<String>,
    #[command(flatten)]
    pub opts: LoadOpts,
}

#[derive(clap::Args, Clone, Debug)]
pub struct RoomsArgs {
    /// Rooms the publishes are spread over (new rooms per run).
    #[arg(long, default_value_t = 1000)]
    pub rooms: usize,
    /// Publishes per second offered, all connections together (open loop).
    #[arg(long, default_value_t = 20000.0)]
    pub rate: f64,
    /// How long the schedule runs.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Publishing connections; connection c joins rooms c, c+C, c+2C, … and publishes to them in
    /// turn (each room's only member is its publisher, unless --subscribers).
    #[arg(long, default_value_t = 16)]
    pub conns: usize,
    /// Receiving connections; subscriber s joins rooms s, s+S, s+2S, … (at most as many as
    /// rooms: every room gets one subscriber). With several URLs subscriber s is on the server
    /// after the one of publisher s, so with S = C every delivery crosses servers.
    #[arg(long, default_value_t = 0)]
    pub subscribers: usize,
    #[command(flatten)]
    pub opts: LoadOpts,
}

async fn finish(
    common: &Common,
    load: &Load,
    publishers: Vec<Publisher>,
    subscribers: Vec<conn::Ws>,
    opts: &LoadOpts,
    mut json: serde_json::Value,
) {
    let outcome = load::run(load, publishers, subscribers).await;
    outcome.print();
    if opts.json {
        if let (Some(obj), serde_json::Value::Object(more)) = (json.as_object_mut(), outcome.json())
        {
            obj.extend(more);
            obj.insert("urls".into(), common.urls.clone().into());
            obj.insert(
                "proto".into(),
                format!("{:?}", common.proto).to_lowercase().into(),
            );
        }
        println!("{json}");
    }
}

/// P publishers and S subscribers in one room.
pub async fn pubsub(common: &Common, a: PubsubArgs) -> anyhow::Result<()> {
    if a.publishers == 0 || a.rate <= 0.0 {
        bail!("pubsub needs at least one publisher and a positive --rate");
    }
    let tag = conn::run_tag();
    let room = a
        .room
        .clone()
        .unwrap_or_else(|| format!("bench-{tag}-pubsub"));
    println!(
        "scenario pubsub: room {room}, {} publishers, {} subscribers, {} publishes/s for {:.1} s, payload +{} B, {}",
        a.publishers,
        a.subscribers,
        a.rate,
        a.duration.as_secs_f64(),
        a.opts.payload,
        common.urls.join(",")
    );
    let (publishers, subscribers) =
        open_room(common, &tag, &room, a.publishers, a.subscribers).await?;
    let load = Load {
        rate: a.rate,
        duration: a.duration,
        drain: a.opts.drain,
        payload: a.opts.payload,
        members_per_room: (a.publishers + a.subscribers) as u64,
        proto: common.proto,
    };
    let json = serde_json::json!({"scenario": "pubsub", "room": room, "publishers": a.publishers, "subscribers": a.subscribers});
    finish(common, &load, publishers, subscribers, &a.opts, json).await;
    Ok(())
}

/// 1 publisher → N subscribers in one room.
pub async fn fanout(common: &Common, a: FanoutArgs) -> anyhow::Result<()> {
    if a.rate <= 0.0 {
        bail!("fanout needs a positive --rate");
    }
    let tag = conn::run_tag();
    let room = a
        .room
        .clone()
        .unwrap_or_else(|| format!("bench-{tag}-fanout"));
    println!(
        "scenario fanout: room {room}, 1 publisher → {} subscribers, {} publishes/s for {:.1} s (offered {} deliveries/s to subscribers), payload +{} B, {}",
        a.subscribers,
        a.rate,
        a.duration.as_secs_f64(),
        a.rate * a.subscribers as f64,
        a.opts.payload,
        common.urls.join(",")
    );
    let (publishers, subscribers) = open_room(common, &tag, &room, 1, a.subscribers).await?;
    let load = Load {
        rate: a.rate,
        duration: a.duration,
        drain: a.opts.drain,
        payload: a.opts.payload,
        members_per_room: 1 + a.subscribers as u64,
        proto: common.proto,
    };
    let json = serde_json::json!({"scenario": "fanout", "room": room, "publishers": 1, "subscribers": a.subscribers});
    finish(common, &load, publishers, subscribers, &a.opts, json).await;
    Ok(())
}

/// The URL of subscriber `s` in one room: the first URL is the publishers', the others take
/// the subscribers in turn (one URL: everyone on it).
fn subscriber_url(common: &Common, s: usize) -> &str {
    match common.urls.len() {
        0 | 1 => common.url(),
        n => &common.urls[1 + s % (n - 1)],
    }
}

/// Opens the publishers (the first join creates the room), then the subscribers.
pub(crate) async fn open_room(
    common: &Common,
    tag: &str,
    room: &str,
    publishers: usize,
    subscribers: usize,
) -> anyhow::Result<(Vec<Publisher>, Vec<conn::Ws>)> {
    let t = Instant::now();
    let rooms = vec![room.to_string()];
    let pub_specs: Vec<Spec> = (0..publishers)
        .map(|i| Spec {
            client_id: conn::client_id(tag, "p", i),
            rooms: rooms.clone(),
        })
        .collect();
    let sub_specs: Vec<Spec> = (0..subscribers)
        .map(|i| Spec {
            client_id: conn::client_id(tag, "s", i),
            rooms: rooms.clone(),
        })
        .collect();
    let pub_specs: Vec<(&str, Spec)> = pub_specs.into_iter().map(|s| (common.url(), s)).collect();
    let sub_specs: Vec<(&str, Spec)> = sub_specs
        .into_iter()
        .enumerate()
        .map(|(i, s)| (subscriber_url(common, i), s))
        .collect();
    let proto = common.proto;
    let pubs = conn::open_each(proto, &pub_specs[..1], 1, ACTIVE_BUFFER).await?;
    let more = conn::open_each(
        proto,
        &pub_specs[1..],
        common.connect_concurrency,
        ACTIVE_BUFFER,
    )
    .await?;
    let mut subs =
        conn::open_each(proto, &sub_specs, common.connect_concurrency, ACTIVE_BUFFER).await?;
    let joined = t.elapsed();
    let mut pubs: Vec<conn::Ws> = pubs.into_iter().chain(more).collect();
    let discarded = conn::settle(&mut pubs, SETTLE).await + conn::settle(&mut subs, SETTLE).await;
    println!(
        "setup         {} connections greeted and joined in {:.2} s; {discarded} frames queued \
         meanwhile (member_joined, …) read and discarded in {:.2} s",
        publishers + subscribers,
        joined.as_secs_f64(),
        (t.elapsed() - joined).as_secs_f64()
    );
    let publishers = pubs
        .into_iter()
        .map(|ws| Publisher {
            ws,
            rooms: rooms.clone(),
        })
        .collect();
    Ok((publishers, subs))
}

/// Publishes spread over many rooms by C connections.
pub async fn rooms(common: &Common, a: RoomsArgs) -> anyhow::Result<()> {
    if a.conns == 0 || a.rooms == 0 || a.rate <= 0.0 {
        bail!("rooms needs --conns ≥ 1, --rooms ≥ 1 and a positive --rate");
    }
    let per_conn = a.rooms.div_ceil(a.conns);
    if per_conn > SERVER_MAX_ROOMS_PER_CONN {
        eprintln!(
            "warning: {per_conn} rooms per connection is more than the server's default --max-rooms-per-conn \
             ({SERVER_MAX_ROOMS_PER_CONN}); use --conns ≥ {} unless the server was started with a higher limit",
            a.rooms.div_ceil(SERVER_MAX_ROOMS_PER_CONN)
        );
    }
    let subscribers = a.subscribers.min(a.rooms);
    let tag = conn::run_tag();
    println!(
        "scenario rooms: {} rooms over {} publishing and {subscribers} subscribing connections (≤ {per_conn} rooms each), {} publishes/s for {:.1} s, payload +{} B, {}",
        a.rooms,
        a.conns,
        a.rate,
        a.duration.as_secs_f64(),
        a.opts.payload,
        common.urls.join(",")
    );
    let spread = |role: &str, conns: usize, i: usize| Spec {
        client_id: conn::client_id(&tag, role, i),
        rooms: (i..a.rooms)
            .step_by(conns)
            .map(|r| format!("bench-{tag}-r{r}"))
            .collect(),
    };
    let specs: Vec<(&str, Spec)> = (0..a.conns)
        .map(|c| (common.url_at(c), spread("r", a.conns, c)))
        .collect();
    let sub_specs: Vec<(&str, Spec)> = (0..subscribers)
        .map(|s| (common.url_at(s + 1), spread("s", subscribers, s)))
        .collect();
    let t = Instant::now();
    let opened = conn::open_each(
        common.proto,
        &specs,
        common.connect_concurrency,
        ACTIVE_BUFFER,
    )
    .await?;
    let mut subs = conn::open_each(
        common.proto,
        &sub_specs,
        common.connect_concurrency,
        ACTIVE_BUFFER,
    )
    .await?;
    let joined = t.elapsed();
    let discarded = conn::settle(&mut subs, SETTLE).await;
    println!(
        "setup         {} connections joined {} new rooms in {:.2} s ({discarded} frames queued meanwhile discarded)",
        a.conns + subscribers,
        a.rooms,
        joined.as_secs_f64()
    );
    let publishers = opened
        .into_iter()
        .zip(specs)
        .filter(|(_, (_, s))| !s.rooms.is_empty())
        .map(|(ws, (_, s))| Publisher { ws, rooms: s.rooms })
        .collect();
    let load = Load {
        rate: a.rate,
        duration: a.duration,
        drain: a.opts.drain,
        payload: a.opts.payload,
        members_per_room: 1 + u64::from(subscribers > 0),
        proto: common.proto,
    };
    let json = serde_json::json!({"scenario": "rooms", "rooms": a.rooms, "conns": a.conns, "subscribers": subscribers});
    finish(common, &load, publishers, subs, &a.opts, json).await;
    Ok(())
}

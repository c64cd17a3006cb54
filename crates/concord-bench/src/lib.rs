//! Open-loop load generator for Concord (`concord bench <scenario>`), with HDR histograms.
//!
//! Scenarios: `pubsub` (P publishers and S subscribers in one room), `fanout` (1 publisher → N
//! subscribers), `rooms` (publishes spread over many rooms), `idle` (RSS per idle connection),
//! `doc` (op lists into doc rooms) and `flood` (normal publishers with and without an abuser).
//! Every scenario talks protocol v1 over plain WebSockets (hello → welcome, join → joined);
//! latencies are measured from the scheduled send time of an open-loop schedule (see `load`).
//! `pubsub`, `fanout` and `rooms` can also drive a Socket.IO server (`--proto socketio`, see
//! `eio`) with the same schedule, so that one load generator measures both.

mod conn;
mod doc;
mod eio;
mod idle;
mod load;
mod scenarios;
mod stats;
mod sys;
mod wire;

pub use sys::raise_nofile_limit;

use std::time::Duration;

/// Benchmark options.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// Options of every scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// Server WebSocket URL; several (comma-separated or repeated) spread the connections over
    /// several servers, e.g. the gateways of a cluster: `pubsub`/`fanout` put the publishers on
    /// the first and the subscribers on the others; `rooms` puts publisher c on URL c mod N and
    /// subscriber s on URL (s + 1) mod N, so every room's subscriber is on another server than
    /// its publisher. Other scenarios use the first.
    #[arg(
        long = "url",
        global = true,
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:7400/v1/ws"
    )]
    pub urls: Vec<String>,
    /// The server's protocol: `concord` (protocol v1) or `socketio` (Socket.IO v5 over
    /// Engine.IO v4 WebSockets, for `pubsub`, `fanout` and `rooms`; the server must answer the
    /// events `join` (room) and `publish` (room, data) with an ack and emit `event` (room,
    /// data) to the room, as scripts/bench-dist's Socket.IO server does).
    #[arg(long, global = true, value_enum, default_value_t = Proto::Concord)]
    pub proto: Proto,
    /// Connections set up at the same time.
    #[arg(long, global = true, default_value_t = 64)]
    pub connect_concurrency: usize,
}

impl Common {
    /// The first URL.
    pub fn url(&self) -> &str {
        self.urls.first().map(String::as_str).unwrap_or_default()
    }

    /// URL `i` modulo the number of URLs (connections spread round-robin).
    pub fn url_at(&self, i: usize) -> &str {
        match self.urls.len() {
            0 => "",
            n => &self.urls[i % n],
        }
    }
}

/// The protocol spoken to the server.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// Concord's protocol v1.
    Concord,
    /// Socket.IO v5 over Engine.IO v4 (WebSocket transport only).
    Socketio,
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum Scenario {
    /// Open-loop publishes into one room with P publishers and S subscribers: ack latency,
    /// delivery latency, deliveries/s.
    Pubsub(scenarios::PubsubArgs),
    /// One publisher → N subscribers in one room: deliveries/s and delivery latency.
    Fanout(scenarios::FanoutArgs),
    /// Publishes spread over many rooms: acked publishes/s and ack latency.
    Rooms(scenarios::RoomsArgs),
    /// N idle connections (hello + join): server RSS per connection.
    Idle(idle::IdleArgs),
    /// Open-loop op lists into D doc rooms with E editors each (stale bases, server rebases):
    /// committed lists/s, ack latency, errors by code, counter check.
    Doc(doc::DocArgs),
    /// Normal publishers in one room without, then with, one abusive connection: normal ack
    /// latency in both phases and what the rate limit did to the abuser.
    Flood(doc::FloodArgs),
}

/// `500ms`, `10s`, `2m` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 500ms, 10s, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("bad duration {s:?}: {e}"))
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Err(e) = sys::raise_nofile_limit() {
        eprintln!("warning: could not raise the open-file limit: {e}");
    }
    let common = &args.common;
    let concord_only = matches!(
        args.scenario,
        Scenario::Idle(_) | Scenario::Doc(_) | Scenario::Flood(_)
    );
    if common.proto == Proto::Socketio && concord_only {
        anyhow::bail!("--proto socketio drives only the pubsub, fanout and rooms scenarios");
    }
    match args.scenario {
        Scenario::Pubsub(a) => scenarios::pubsub(common, a).await,
        Scenario::Fanout(a) => scenarios::fanout(common, a).await,
        Scenario::Rooms(a) => scenarios::rooms(common, a).await,
        Scenario::Idle(a) => idle::idle(common, a).await,
        Scenario::Doc(a) => doc::doc(common, a).await,
        Scenario::Flood(a) => doc::flood(common, a).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn arguments_parse() {
        let cli = Cli::parse_from([
            "b",
            "pubsub",
            "--rate",
            "20000",
            "--subscribers",
            "100",
            "--url",
            "ws://x/v1/ws",
        ]);
        assert_eq!(cli.bench.common.url(), "ws://x/v1/ws");
        assert_eq!(cli.bench.common.proto, Proto::Concord);
        assert!(
            matches!(cli.bench.scenario, Scenario::Pubsub(a) if a.rate == 20000.0 && a.publishers == 4)
        );
        let cli = Cli::parse_from(["b", "idle", "--connections", "10", "--server-pid", "42"]);
        assert!(matches!(cli.bench.scenario, Scenario::Idle(a) if a.server_pid == Some(42)));
        let cli = Cli::parse_from([
            "b",
            "rooms",
            "--rooms",
            "1000",
            "--conns",
            "16",
            "--duration",
            "15s",
        ]);
        assert!(
            matches!(cli.bench.scenario, Scenario::Rooms(a) if a.duration == Duration::from_secs(15))
        );
        let cli = Cli::parse_from([
            "b",
            "rooms",
            "--url",
            "ws://a/v1/ws,ws://b/v1/ws",
            "--url",
            "ws://c/v1/ws",
            "--proto",
            "socketio",
            "--subscribers",
            "16",
        ]);
        let c = &cli.bench.common;
        assert_eq!(c.urls, ["ws://a/v1/ws", "ws://b/v1/ws", "ws://c/v1/ws"]);
        assert_eq!((c.url_at(1), c.url_at(5)), ("ws://b/v1/ws", "ws://c/v1/ws"));
        assert_eq!(c.proto, Proto::Socketio);
        assert!(matches!(cli.bench.scenario, Scenario::Rooms(a) if a.subscribers == 16));
    }
}

//! Prometheus metrics of one server instance (a registry per instance, so tests stay isolated).
//!
//! The labelled counters take typed label values ([`Limit`], [`RateScope`], [`AuthFailure`],
//! [`JoinOutcome`]: see `labels.rs`). A series appears with its first sample, not at start:
//! docs/protocol.md §19 says so ("Counters with labels appear once the first sample of a label
//! value exists"); each enum's `VARIANTS` would make touching them all at start a loop.

mod labels;

pub use labels::{AuthFailure, JoinOutcome, Limit, RateScope};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: JoinOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: Limit,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: AuthFailure,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabel {
    pub scope: RateScope,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoomLabel {
    pub room: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabel {
    pub close_code: String,
}

/// Every metric the server exports, cheap to clone (all handles are shared).
#[derive(Clone)]
pub struct Metrics {
    pub connections: Gauge,
    /// Open TCP connections (HTTP and WebSocket), as counted by the connection limits.
    pub tcp_connections: Gauge,
    pub rooms_active: Gauge,
    /// Room actors that ended in a panic (their room is reloaded by the next message).
    pub room_actor_panics: Counter,
    pub frames_in: Counter,
    pub events_committed: Counter,
    pub deliveries: Counter,
    pub duplicate_ops: Counter,
    pub joins: Family<OutcomeLabel, Counter>,
    pub errors: Family<CodeLabel, Counter>,
    pub limit_hits: Family<LimitLabel, Counter>,
    pub disconnects: Family<CloseLabel, Counter>,
    pub auth_failures: Family<ReasonLabel, Counter>,
    pub rate_limited: Family<ScopeLabel, Counter>,
    pub presence_in: Counter,
    pub presence_out: Counter,
    pub presence_coalesced: Counter,
    pub presence_held: Counter,
    pub doc_hash_mismatch: Counter,
    /// Doc rooms whose document could not be loaded (op log not replayable; `concord repair`).
    pub doc_load_failures: Counter,
    /// Doc snapshots that could not be read back (the state was rebuilt without them).
    pub doc_snapshot_unreadable: Counter,
    /// Publishes of the busiest rooms (top 10, refreshed at each scrape: bounded cardinality).
    pub room_top_publishes: Family<RoomLabel, Gauge>,
    pub ack_latency: Histogram,
    pub store_commit: Histogram,
    pub store_batch_events: Histogram,
    /// Acks held until the persisted watermark covers them (ack level `durable`).
    pub durable_acks_waiting: Gauge,
    /// Time from a write's admission to its ack at the ack level `durable`.
    pub durable_wait: Histogram,
    /// The distributed mode: commits and doc forwards whose outcome was unknown (handed over
    /// again), feeds that lost notifications (the room read its head again), ranges read from
    /// the log to fill a gap, doc lists forwarded to another gateway, doc rooms this gateway
    /// owns.
    pub cluster_unknown_outcomes: Counter,
    pub cluster_feed_resumes: Counter,
    pub cluster_fills: Counter,
    pub cluster_forwards: Counter,
    pub doc_rooms_owned: Gauge,
    registry: std::sync::Arc<Registry>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let m = Metrics {
            connections: Gauge::default(),
            tcp_connections: Gauge::default(),
            rooms_active: Gauge::default(),
            room_actor_panics: Counter::default(),
            frames_in: Counter::default(),
            events_committed: Counter::default(),
            deliveries: Counter::default(),
            duplicate_ops: Counter::default(),
            joins: Family::default(),
            errors: Family::default(),
            limit_hits: Family::default(),
            disconnects: Family::default(),
            auth_failures: Family::default(),
            rate_limited: Family::default(),
            presence_in: Counter::default(),
            presence_out: Counter::default(),
            presence_coalesced: Counter::default(),
            presence_held: Counter::default(),
            doc_hash_mismatch: Counter::default(),
            doc_load_failures: Counter::default(),
            doc_snapshot_unreadable: Counter::default(),
            room_top_publishes: Family::default(),
            ack_latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
            store_commit: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
            store_batch_events: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            durable_acks_waiting: Gauge::default(),
            durable_wait: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            cluster_unknown_outcomes: Counter::default(),
            cluster_feed_resumes: Counter::default(),
            cluster_fills: Counter::default(),
            cluster_forwards: Counter::default(),
            doc_rooms_owned: Gauge::default(),
            registry: Default::default(),
        };
        r.register(
            "concord_connections",
            "Open WebSocket connections",
            m.connections.clone(),
        );
        r.register(
            "concord_tcp_connections",
            "Open TCP connections (HTTP and WebSocket)",
            m.tcp_connections.clone(),
        );
        r.register(
            "concord_rooms_active",
            "Rooms loaded in memory",
            m.rooms_active.clone(),
        );
        r.register(
            "concord_frames_in",
            "WebSocket frames received",
            m.frames_in.clone(),
        );
        r.register(
            "concord_events_committed",
            "Events committed (durable)",
            m.events_committed.clone(),
        );
        r.register(
            "concord_deliveries",
            "Event frames queued to members",
            m.deliveries.clone(),
        );
        r.register(
            "concord_duplicate_ops",
            "Retried ops answered with their original ack",
            m.duplicate_ops.clone(),
        );
        r.register(
            "concord_joins",
            "Joins by outcome (fresh, recovered, reset)",
            m.joins.clone(),
        );
        r.register("concord_errors", "Error replies by code", m.errors.clone());
        r.register(
            "concord_limit_hits",
            "Requests refused or connections closed by a limit",
            m.limit_hits.clone(),
        );
        r.register(
            "concord_disconnects",
            "Connections closed by the server, by close code",
            m.disconnects.clone(),
        );
        r.register(
            "concord_auth_failures",
            "Refused tokens by reason",
            m.auth_failures.clone(),
        );
        r.register(
            "concord_rate_limited",
            "Requests refused by a rate limit, by scope",
            m.rate_limited.clone(),
        );
        r.register(
            "concord_presence_in",
            "Presence updates received",
            m.presence_in.clone(),
        );
        r.register(
            "concord_presence_out",
            "Presence frames written to connections",
            m.presence_out.clone(),
        );
        r.register(
            "concord_presence_coalesced",
            "Presence updates replaced by a newer value before being sent",
            m.presence_coalesced.clone(),
        );
        r.register(
            "concord_presence_held",
            "Presence updates held by a connection's presence rate until it admitted them",
            m.presence_held.clone(),
        );
        r.register(
            "concord_doc_hash_mismatch",
            "Doc state hash mismatches reported by clients (drift)",
            m.doc_hash_mismatch.clone(),
        );
        r.register(
            "concord_room_top_publishes",
            "Publishes since load of the 10 busiest loaded rooms",
            m.room_top_publishes.clone(),
        );
        r.register(
            "concord_room_actor_panics",
            "Room actors that panicked (the room reloads from the store on its next message)",
            m.room_actor_panics.clone(),
        );
        r.register(
            "concord_doc_load_failures",
            "Doc rooms whose document could not be loaded from the store",
            m.doc_load_failures.clone(),
        );
        r.register(
            "concord_doc_snapshot_unreadable",
            "Doc snapshots that could not be read back (rebuilt from the op log)",
            m.doc_snapshot_unreadable.clone(),
        );
        r.register(
            "concord_ack_latency_seconds",
            "Time from receiving a publish to sending its ack",
            m.ack_latency.clone(),
        );
        r.register(
            "concord_durable_acks_waiting",
            "Acks held until the workers' PostgreSQL commit covers them (ack level durable)",
            m.durable_acks_waiting.clone(),
        );
        r.register(
            "concord_durable_ack_wait_seconds",
            "Time from admitting a write to acking it at ack level durable",
            m.durable_wait.clone(),
        );
        r.register(
            "concord_cluster_unknown_outcomes",
            "Distributed mode: commits and doc forwards whose outcome was unknown (handed over again)",
            m.cluster_unknown_outcomes.clone(),
        );
        r.register(
            "concord_cluster_feed_resumes",
            "Distributed mode: room feeds that lost notifications (the room read its head again)",
            m.cluster_feed_resumes.clone(),
        );
        r.register(
            "concord_cluster_fills",
            "Distributed mode: ranges read from the log to fill a gap in a room's feed",
            m.cluster_fills.clone(),
        );
        r.register(
            "concord_cluster_forwards",
            "Distributed mode: doc op lists forwarded to the gateway owning their room",
            m.cluster_forwards.clone(),
        );
        r.register(
            "concord_doc_rooms_owned",
            "Distributed mode: doc rooms whose lease this gateway holds",
            m.doc_rooms_owned.clone(),
        );
        r.register(
            "concord_store_commit_seconds",
            "Duration of one store group commit",
            m.store_commit.clone(),
        );
        r.register(
            "concord_store_batch_events",
            "Events per store group commit",
            m.store_batch_events.clone(),
        );
        Metrics {
            registry: std::sync::Arc::new(r),
            ..m
        }
    }

    pub fn error(&self, code: concord_protocol::ErrorCode) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.as_str().to_string(),
            })
            .inc();
    }

    pub fn limit(&self, limit: Limit) {
        self.limit_hits.get_or_create(&LimitLabel { limit }).inc();
    }

    pub fn disconnect(&self, close_code: u16) {
        self.disconnects
            .get_or_create(&CloseLabel {
                close_code: close_code.to_string(),
            })
            .inc();
    }

    pub fn auth_failure(&self, reason: AuthFailure) {
        self.auth_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a rate-limit refusal (the error reply itself is counted by `error`).
    pub fn rate_limit(&self, scope: RateScope) {
        self.rate_limited.get_or_create(&ScopeLabel { scope }).inc();
    }

    pub fn join(&self, outcome: JoinOutcome) {
        self.joins.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// The current value of one sample (see [`crate::exposition::sample`]); panics on a name
    /// this registry does not export.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        crate::exposition::sample(&self.render(), name, labels).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typed_label_is_exported_as_its_documented_value() {
        let m = Metrics::new();
        m.limit(Limit::DocMaxRebaseWork);
        m.limit(Limit::DocMaxRebaseWork);
        m.rate_limit(RateScope::RoomCreateConn);
        m.auth_failure(AuthFailure::NotYetValid);
        m.join(JoinOutcome::Recovered);
        let limit = [("limit", "doc_max_rebase_work")];
        assert_eq!(m.value("concord_limit_hits_total", &limit), 2.0);
        let scope = [("scope", "room_create_conn")];
        assert_eq!(m.value("concord_rate_limited_total", &scope), 1.0);
        let reason = [("reason", "not_yet_valid")];
        assert_eq!(m.value("concord_auth_failures_total", &reason), 1.0);
        let outcome = [("outcome", "recovered")];
        assert_eq!(m.value("concord_joins_total", &outcome), 1.0);
    }

    #[test]
    fn a_label_value_appears_with_its_first_sample() {
        let m = Metrics::new();
        m.join(JoinOutcome::Fresh);
        let text = m.render();
        assert!(text.contains("outcome=\"fresh\""), "{text}");
        assert!(!text.contains("outcome=\"reset\""), "{text}");
    }
}

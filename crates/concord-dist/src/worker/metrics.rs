//! The worker's metrics (prometheus-client) and the tiny HTTP listener serving `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub partition: u32,
}

/// Every metric of a worker.
#[derive(Clone)]
pub struct WorkerMetrics {
    registry: Arc<Registry>,
    /// Entries in the partition's work stream (unread + pending: acked ones are deleted).
    pub backlog: Family<PartitionLabel, Gauge>,
    /// Age of the oldest entry still in any owned work stream, in ms.
    pub oldest_pending_ms: Gauge,
    /// Events per committed batch.
    pub batch_events: Histogram,
    /// Seconds from BEGIN to COMMIT of a batch.
    pub batch_seconds: Histogram,
    /// Ms from an event's hlc to its batch's commit (persist lag).
    pub persist_lag_ms: Histogram,
    pub events_persisted: Counter,
    /// Entries delivered more than once (read again after a crash, a claim or a failure).
    pub redeliveries: Counter,
    pub dead_letters: Counter,
    /// Events in Redis not yet in PostgreSQL (head − watermark) of the partition's last room
    /// persisted.
    pub watermark_lag: Family<PartitionLabel, Gauge>,
    pub partitions_owned: Gauge,
    /// Transient failures (Redis or PostgreSQL unreachable).
    pub errors: Counter,
    /// Doc snapshots written, and the ones that failed (logged; the next multiple tries again).
    pub snapshots: Counter,
    pub snapshot_errors: Counter,
}

impl WorkerMetrics {
    pub fn new() -> WorkerMetrics {
        let mut registry = Registry::default();
        let m = WorkerMetrics {
            registry: Arc::new(Registry::default()),
            backlog: Family::default(),
            oldest_pending_ms: Gauge::default(),
            batch_events: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            batch_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            persist_lag_ms: Histogram::new(exponential_buckets(1.0, 2.0, 20)),
            events_persisted: Counter::default(),
            redeliveries: Counter::default(),
            dead_letters: Counter::default(),
            watermark_lag: Family::default(),
            partitions_owned: Gauge::default(),
            errors: Counter::default(),
            snapshots: Counter::default(),
            snapshot_errors: Counter::default(),
        };
        let r = &mut registry;
        r.register(
            "concord_worker_backlog",
            "Entries in the work stream",
            m.backlog.clone(),
        );
        r.register(
            "concord_worker_oldest_pending_ms",
            "Age of the oldest entry in the owned work streams",
            m.oldest_pending_ms.clone(),
        );
        r.register(
            "concord_worker_batch_events",
            "Events per batch",
            m.batch_events.clone(),
        );
        r.register(
            "concord_worker_batch_seconds",
            "Batch transaction latency",
            m.batch_seconds.clone(),
        );
        r.register(
            "concord_worker_persist_lag_ms",
            "From an event's hlc to its commit in PostgreSQL",
            m.persist_lag_ms.clone(),
        );
        r.register(
            "concord_worker_events_persisted",
            "Events written to PostgreSQL",
            m.events_persisted.clone(),
        );
        r.register(
            "concord_worker_redeliveries",
            "Entries delivered more than once",
            m.redeliveries.clone(),
        );
        r.register(
            "concord_worker_dead_letters",
            "Entries dead-lettered",
            m.dead_letters.clone(),
        );
        r.register(
            "concord_worker_watermark_lag",
            "Head minus watermark of the last room persisted",
            m.watermark_lag.clone(),
        );
        r.register(
            "concord_worker_partitions_owned",
            "Partitions whose lease this worker holds",
            m.partitions_owned.clone(),
        );
        r.register(
            "concord_worker_errors",
            "Transient failures",
            m.errors.clone(),
        );
        r.register(
            "concord_worker_snapshots",
            "Doc snapshots written to PostgreSQL",
            m.snapshots.clone(),
        );
        r.register(
            "concord_worker_snapshot_errors",
            "Doc snapshots that could not be built or written",
            m.snapshot_errors.clone(),
        );
        WorkerMetrics {
            registry: Arc::new(registry),
            ..m
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics::new()
    }
}

/// Serves the exposition on every connection to `addr` (any path). Returns the bound address.
pub async fn serve(addr: SocketAddr, metrics: WorkerMetrics) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf))
                        .await;
                let body = metrics.encode();
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(bound)
}

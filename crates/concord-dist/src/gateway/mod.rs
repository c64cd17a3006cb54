//! What a gateway of the distributed mode runs on: [`RedisCommitPoint`] (the commit point of
//! shared stream rooms, over `RedisLog::commit`, and every room's feed, over Redis pub/sub)
//! and [`GatewayStore`] (the `Store` bundle of its room actors: [`RedisStore`], the room
//! records and history a gateway reads from Redis then PostgreSQL, and the roles the other
//! parts play; bundle.rs). Both plug into `concord_server::run` through `Env::backend`.

mod ack;
mod bundle;
mod commit_point;
mod feed;
mod inbox;
mod rebuild;
mod roster;
mod store;

pub use ack::AckLevel;
pub use bundle::GatewayStore;
pub use commit_point::RedisCommitPoint;
pub use feed::Notifier;
pub use rebuild::{check as check_rebuild, Outcome as Rebuilt, Seen};
pub use store::RedisStore;

use crate::{LogConfig, LogError, RedisLog, RedisTarget};
use concord_server::cluster::Backend;
use std::sync::Arc;

/// How a gateway joins its cluster.
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    /// The gateway's node id (the node part of the hlcs it proposes).
    pub node: String,
    /// What its acks promise (refused when Redis cannot keep it).
    pub ack: AckLevel,
    /// Its heartbeat's lease: past it without a renewal, the other gateways remove its
    /// clients from their rooms.
    pub lease: std::time::Duration,
    /// The PostgreSQL archive: history below the Redis log's floor, the client registry.
    pub archive: Option<crate::pg::PgArchive>,
}

impl GatewayOptions {
    pub fn new(node: &str) -> Self {
        GatewayOptions {
            node: node.to_string(),
            ack: AckLevel::Memory,
            lease: std::time::Duration::from_secs(10),
            archive: None,
        }
    }
}

/// Connects a gateway's backend: one `RedisLog` shared by the commit point and the store, one
/// subscriber connection for the feeds, and the gateway's heartbeat. Refuses an ack level Redis
/// cannot keep.
pub async fn connect(
    target: &RedisTarget,
    config: LogConfig,
    options: GatewayOptions,
) -> Result<Backend, LogError> {
    let log = Arc::new(RedisLog::connect(target, config).await?);
    ack::check(&log, options.ack).await?;
    let notifier = Notifier::start(target.clone());
    // What this gateway acked or delivered tells, after a loss of Redis, whether acked events
    // are gone; at the level `durable` nothing acked or delivered can be (rebuild.rs).
    let seen = (options.ack != AckLevel::Durable).then(|| Arc::new(Seen::default()));
    let point = RedisCommitPoint::new(log.clone(), notifier, &options.node)
        .await
        .with_ack(options.ack, seen.clone())
        .with_archive(options.archive.clone());
    roster::heartbeat(log.clone(), point.gateway_id_owned(), options.lease);
    Ok(Backend {
        store: Arc::new(GatewayStore::new(
            log.clone(),
            RedisStore::new(log, options.archive.clone()).with_seen(seen),
            options.archive,
        )),
        commit_point: Arc::new(point),
    })
}

//! What a gateway of the distributed mode runs on: [`RedisCommitPoint`] (the commit point of
//! shared stream rooms, over `RedisLog::commit`, and every room's feed, over Redis pub/sub)
//! and [`RedisStore`] (the room records and recent history a gateway reads, from Redis). Both
//! plug into `concord_server::run` through `Env::backend`.

mod ack;
mod commit_point;
mod feed;
mod store;

pub use ack::AckLevel;
pub use commit_point::RedisCommitPoint;
pub use feed::Notifier;
pub use store::RedisStore;

use crate::{LogConfig, LogError, RedisLog, RedisTarget};
use concord_server::cluster::Backend;
use std::sync::Arc;

/// Connects a gateway's backend: one `RedisLog` shared by the commit point and the store, and
/// one subscriber connection for the feeds. `node` is the gateway's node id (the node part of
/// the hlcs it proposes; unique in the cluster). Refuses an ack level Redis cannot keep.
pub async fn connect(
    target: &RedisTarget,
    config: LogConfig,
    node: &str,
    ack: AckLevel,
) -> Result<Backend, LogError> {
    let log = Arc::new(RedisLog::connect(target, config).await?);
    ack::check(&log, ack).await?;
    let notifier = Notifier::start(target.clone());
    Ok(Backend {
        store: Arc::new(RedisStore::new(log.clone())),
        commit_point: Arc::new(RedisCommitPoint::new(log, notifier, node)),
    })
}

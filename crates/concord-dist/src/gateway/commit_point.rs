//! `RedisCommitPoint`: shared stream rooms commit through `concord_commit` (no fence, no
//! expected head: any gateway writes) and follow their room's channel.

use super::feed::Notifier;
use crate::{CommitRequest, LogError, NewEvent, RedisLog};
use async_trait::async_trait;
use concord_core::{Epoch, RoomId};
use concord_protocol::ErrorCode;
use concord_server::cluster::{
    self as core, CommitFailure, CommitPoint, CommitResult, Feed, RosterDelta,
};
use concord_server::room::RoomError;
use std::sync::Arc;

pub struct RedisCommitPoint {
    log: Arc<RedisLog>,
    notifier: Notifier,
    node: String,
    /// Drawn at start: the keys of writes without an op id are this process's own even if two
    /// gateways were given the same node id.
    boot: u64,
    /// `{node}-{boot}`: this process among the cluster's gateways.
    id: String,
}

impl RedisCommitPoint {
    pub fn new(log: Arc<RedisLog>, notifier: Notifier, node: &str) -> Self {
        let boot: u64 = rand::random();
        RedisCommitPoint {
            log,
            notifier,
            node: node.to_string(),
            boot,
            id: format!("{node}-{:08x}", boot as u32),
        }
    }

    pub(super) fn gateway_id_owned(&self) -> String {
        self.id.clone()
    }
}

/// What a commit's error means for the writes: `Unknown` (it may have landed: hand it over
/// again), `Moved` (the room's epoch or existence changed: reload) or a refusal.
fn failure(e: LogError) -> CommitFailure {
    match e {
        LogError::Unknown(why) => CommitFailure::Unknown(why),
        // A connection error may come after the call was sent: the outcome is unknown too.
        LogError::Redis(e) => CommitFailure::Unknown(e.to_string()),
        LogError::NoRoom => CommitFailure::Moved("the room is not in Redis".into()),
        LogError::EpochChanged { current } => {
            CommitFailure::Moved(format!("the room is in epoch {current}"))
        }
        LogError::BatchTooLarge { len, max } => CommitFailure::Refused(RoomError::new(
            ErrorCode::TooLarge,
            format!("a commit of {len} events (at most {max})"),
        )),
        other => CommitFailure::Refused(RoomError::new(ErrorCode::Internal, other.to_string())),
    }
}

#[async_trait]
impl CommitPoint for RedisCommitPoint {
    async fn commit(
        &self,
        room: &RoomId,
        epoch: &Epoch,
        events: Vec<core::NewEvent>,
    ) -> Result<Vec<CommitResult>, CommitFailure> {
        let Some(first) = events.first() else {
            return Ok(Vec::new());
        };
        let req = CommitRequest {
            epoch: epoch.clone(),
            fence: None,
            expected_head: None,
            hlc: first.proposed.clone(),
            node: self.node.clone(),
            events: events
                .into_iter()
                .map(|e| NewEvent {
                    key: e
                        .op_id
                        .is_none()
                        .then(|| format!("{:016x}{}", self.boot, e.proposed)),
                    from: e.from,
                    op_id: e.op_id,
                    data: e.data,
                    resend: false,
                })
                .collect(),
        };
        let committed = self.log.commit(room, &req).await.map_err(failure)?;
        Ok(committed
            .into_iter()
            .map(|c| CommitResult {
                seq: c.seq,
                hlc: c.hlc,
                duplicate: c.duplicate,
                dropped: Vec::new(),
            })
            .collect())
    }

    async fn subscribe(&self, room: &RoomId) -> Feed {
        let channel = self.log.keys().room(room.as_str()).channel;
        self.notifier.subscribe(channel).await
    }

    fn gateway_id(&self) -> &str {
        &self.id
    }

    async fn tell_roster(&self, room: &RoomId, delta: &RosterDelta) -> Result<(), String> {
        super::roster::tell(&self.log, room, &self.id, delta).await
    }

    async fn load_roster(&self, room: &RoomId) -> Result<Vec<(String, RosterDelta)>, String> {
        super::roster::load(&self.log, room, &self.id).await
    }

    async fn gone_gateways(&self, room: &RoomId, gateways: &[String]) -> Vec<String> {
        super::roster::gone(&self.log, room, gateways).await
    }
}

//! `RedisCommitPoint`: shared stream rooms commit through `concord_commit` (no fence, no
//! expected head: any gateway writes) and follow their room's channel; a doc room's owner
//! holds its lease (`concord_lease`) and commits with its fence and the expected head; op
//! lists are forwarded to the owner through the gateways' inboxes (`inbox.rs`).

use super::feed::Notifier;
use super::inbox::Forwarding;
use crate::{CommitRequest, LogError, NewEvent, RedisLog};
use async_trait::async_trait;
use concord_core::{Epoch, RoomId, Seq};
use concord_protocol::ErrorCode;
use concord_server::cluster::{
    self as core, CommitFailure, CommitPoint, CommitResult, Feed, RosterDelta,
};
use concord_server::cluster::{ForwardAnswer, ForwardedList, Inbox};
use concord_server::room::RoomError;
use concord_server::store::StoredEvent;
use std::sync::Arc;
use std::time::Duration;

pub struct RedisCommitPoint {
    log: Arc<RedisLog>,
    notifier: Notifier,
    node: String,
    /// Drawn at start: the keys of writes without an op id are this process's own even if two
    /// gateways were given the same node id.
    boot: u64,
    /// `{node}-{boot}`: this process among the cluster's gateways.
    id: String,
    forwarding: Forwarding,
}

impl RedisCommitPoint {
    /// The commit point of gateway `node` (listening on its inbox when this returns).
    pub async fn new(log: Arc<RedisLog>, notifier: Notifier, node: &str) -> Self {
        let boot: u64 = rand::random();
        let id = format!("{node}-{:08x}", boot as u32);
        let forwarding = Forwarding::start(log.clone(), &notifier, &id).await;
        RedisCommitPoint {
            log,
            notifier,
            node: node.to_string(),
            boot,
            id,
            forwarding,
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
        LogError::Fenced { current } => CommitFailure::Fenced(format!("the fence is {current}")),
        LogError::HeadMoved { head } => CommitFailure::HeadMoved(head),
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

    async fn acquire_lease(&self, room: &RoomId, lease: Duration) -> Result<Option<u64>, String> {
        self.log
            .acquire_lease(room, &self.id, lease)
            .await
            .map_err(|e| e.to_string())
    }

    async fn release_lease(&self, room: &RoomId) -> Result<(), String> {
        self.log
            .release_lease(room, &self.id)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn lease_holder(&self, room: &RoomId) -> Result<Option<String>, String> {
        self.log
            .lease_holder(room)
            .await
            .map(|h| h.map(|h| h.owner))
            .map_err(|e| e.to_string())
    }

    async fn commit_doc(
        &self,
        room: &RoomId,
        epoch: &Epoch,
        fence: u64,
        events: Vec<StoredEvent>,
    ) -> Result<Vec<CommitResult>, CommitFailure> {
        let Some(first) = events.first() else {
            return Ok(Vec::new());
        };
        let req = CommitRequest {
            epoch: epoch.clone(),
            fence: Some(fence),
            expected_head: Some(Seq(first.seq.0 - 1)),
            hlc: first.hlc.clone(),
            node: self.node.clone(),
            // Every doc list has an op id (keyless lists are not forwarded twice); one without
            // is keyed by its hlc, unique in the cluster.
            events: events
                .into_iter()
                .map(|e| NewEvent {
                    key: e
                        .op_id
                        .is_none()
                        .then(|| format!("{:016x}{}", self.boot, e.hlc)),
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

    async fn forward(
        &self,
        owner: &str,
        room: &RoomId,
        list: ForwardedList,
        timeout: Duration,
    ) -> ForwardAnswer {
        self.forwarding.forward(owner, room, list, timeout).await
    }

    fn take_inbox(&self) -> Option<Inbox> {
        self.forwarding.take_inbox()
    }
}

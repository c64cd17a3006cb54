//! `RedisCommitPoint`: shared stream rooms commit through `concord_commit` (no fence, no
//! expected head: any gateway writes) and follow their room's channel; a doc room's owner
//! holds its lease (`concord_lease`) and commits with its fence and the expected head; op
//! lists are forwarded to the owner through the gateways' inboxes (`inbox.rs`).

use super::ack::AckLevel;
use super::feed::Notifier;
use super::inbox::Forwarding;
use super::rebuild::Seen;
use crate::pg::PgArchive;
use crate::{CommitRequest, LogError, NewEvent, RedisLog};
use async_trait::async_trait;
use concord_core::{Epoch, HlcText, RoomId, Seq};
use concord_protocol::outbound::MemberInfo;
use concord_protocol::ErrorCode;
use concord_server::cluster::{
    self as core, CommitFailure, CommitPoint, CommitResult, Feed, FeedItem, RosterDelta,
};
use concord_server::cluster::{ForwardAnswer, ForwardedList, Inbox};
use concord_server::room::RoomError;
use concord_server::store::StoredEvent;
use futures::StreamExt;
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
    /// Acks wait for the persisted watermark (ack level `durable`).
    durable: bool,
    /// What this gateway acked or delivered (none at the ack level `durable`).
    seen: Option<Arc<Seen>>,
    /// Where flagged resends older than Redis's idempotency window are looked up.
    archive: Option<PgArchive>,
    /// Other gateways' heartbeats as last read (shared by the rooms).
    liveness: super::roster::Liveness,
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
            durable: false,
            seen: None,
            archive: None,
            liveness: Default::default(),
        }
    }

    /// Looks flagged resends up in `archive` before committing them.
    pub fn with_archive(mut self, archive: Option<PgArchive>) -> Self {
        self.archive = archive;
        self
    }

    /// The original results of flagged resends the archive holds (by index of `events`).
    async fn archived_resends(
        &self,
        room: &RoomId,
        events: &[core::NewEvent],
    ) -> Result<Vec<Option<CommitResult>>, CommitFailure> {
        let mut out = vec![None; events.len()];
        let Some(archive) = &self.archive else {
            return Ok(out);
        };
        let keys: Vec<(String, String)> = events
            .iter()
            .filter(|e| e.resend)
            .filter_map(|e| Some((e.from.to_string(), e.op_id.as_ref()?.to_string())))
            .collect();
        if keys.is_empty() {
            return Ok(out);
        }
        let found = archive
            .find_ops(room.as_str(), &keys)
            .await
            .map_err(|e| CommitFailure::Unknown(format!("looking resends up: {e}")))?;
        for (slot, e) in out.iter_mut().zip(events) {
            let (true, Some(op)) = (e.resend, &e.op_id) else {
                continue;
            };
            let hit = found
                .iter()
                .find(|f| f.from == e.from.as_str() && f.op_id == op.as_str());
            if let Some(f) = hit {
                let hlc = HlcText::parse(&f.hlc).ok_or_else(|| {
                    CommitFailure::Unknown(format!("archived hlc {} unreadable", f.hlc))
                })?;
                *slot = Some(CommitResult {
                    seq: Seq(f.seq),
                    hlc,
                    duplicate: true,
                    dropped: Vec::new(),
                });
            }
        }
        Ok(out)
    }

    /// What its acks promise; `seen` notes what it acks and delivers.
    pub fn with_ack(mut self, level: AckLevel, seen: Option<Arc<Seen>>) -> Self {
        self.durable = level == AckLevel::Durable;
        self.seen = seen;
        self
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
        // A flagged resend may be older than Redis's idempotency window: the archive answers
        // the ones it holds with their original results; the others go to Redis.
        let mut answers = self.archived_resends(room, &events).await?;
        let events: Vec<core::NewEvent> = events
            .into_iter()
            .zip(&answers)
            .filter(|(_, a)| a.is_none())
            .map(|(e, _)| e)
            .collect();
        let Some(first) = events.first() else {
            return Ok(answers.into_iter().flatten().collect());
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
                    resend: e.resend,
                })
                .collect(),
        };
        let committed = self.log.commit(room, &req).await.map_err(failure)?;
        if let (Some(seen), Some(top)) = (&self.seen, committed.iter().map(|c| c.seq).max()) {
            seen.note(room, epoch, top);
        }
        let mut committed = committed.into_iter().map(|c| CommitResult {
            seq: c.seq,
            hlc: c.hlc,
            duplicate: c.duplicate,
            dropped: Vec::new(),
        });
        for a in answers.iter_mut().filter(|a| a.is_none()) {
            *a = committed.next();
        }
        answers
            .into_iter()
            .map(|a| {
                a.ok_or_else(|| {
                    CommitFailure::Refused(RoomError::new(
                        ErrorCode::Internal,
                        "Redis answered fewer results than writes",
                    ))
                })
            })
            .collect()
    }

    async fn subscribe(&self, room: &RoomId) -> Feed {
        let channel = self.log.keys().room(room.as_str()).channel;
        let feed = self.notifier.subscribe(channel).await;
        let Some(seen) = self.seen.clone() else {
            return feed;
        };
        let room = room.clone();
        Box::pin(feed.inspect(move |item| {
            if let FeedItem::Events { epoch, events } = item {
                if let Some(last) = events.last() {
                    seen.note(&room, epoch, last.seq);
                }
            }
        }))
    }

    fn gateway_id(&self) -> &str {
        &self.id
    }

    async fn tell_roster(&self, room: &RoomId, delta: &RosterDelta) -> Result<(), String> {
        super::roster::tell(&self.log, room, &self.id, delta).await
    }

    async fn load_roster(&self, room: &RoomId) -> Result<Vec<(String, RosterDelta)>, String> {
        super::roster::load(&self.log, &self.liveness, room, &self.id).await
    }

    async fn gone_gateways(&self, room: &RoomId, gateways: &[String]) -> Vec<String> {
        super::roster::gone(&self.log, &self.liveness, room, gateways).await
    }

    async fn take_seat(
        &self,
        room: &RoomId,
        info: &Arc<MemberInfo>,
        limit: usize,
    ) -> Result<bool, String> {
        super::roster::seat(&self.log, room, &self.id, info, limit).await
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

    fn durable(&self) -> bool {
        self.durable
    }

    async fn persisted(&self, room: &RoomId) -> Option<(Epoch, Seq)> {
        match self.log.room_meta(room).await {
            Ok(Some(m)) => Some((m.epoch, m.wm)),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(room = %room, error = %e, "reading the room's watermark failed");
                None
            }
        }
    }
}

//! One step of an owned partition: read a batch from its work stream (its own pending entries
//! and entries claimed from dead consumers while recovering, new entries when live), write it
//! to PostgreSQL in one transaction, XACK after COMMIT, then raise each room's watermark in
//! Redis. A refused entry is retried alone; after `max_deliveries` it is dead-lettered.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use super::entry::Entry;
use super::failpoint::{self, Failpoint};
use super::keys::Partition;
use super::{now_ms, Ctx, WorkerError};
use crate::pg::{ArchiveError, ArchivedEvent};

/// Where a partition's reading stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Claim entries idle past the lease from other consumers, redo own pending entries; new
    /// entries wait until the group has nothing pending (so a room's events land in order).
    Recovering,
    /// Read new entries.
    Live,
}

/// A partition this worker owns.
pub struct PartState {
    pub part: Partition,
    pub mode: Mode,
    /// The lease is ours until then (last successful renewal + lease); no step after it.
    pub valid_until: Instant,
    group_ready: bool,
    /// Local count of refusals per entry id (deliveries never undercount a refused entry).
    refusals: HashMap<String, u64>,
    /// Watermarks persisted and acknowledged but not yet raised in Redis (room → epoch, seq).
    marks: BTreeMap<String, (String, u64)>,
    /// No step before then (after a transient failure, or while idle).
    next_step: Instant,
    idle_steps: u32,
}

impl PartState {
    /// Whether the partition's group exists (created at the first step).
    pub fn group_ready(&self) -> bool {
        self.group_ready
    }

    pub fn new(part: Partition, valid_until: Instant) -> PartState {
        PartState {
            part,
            mode: Mode::Recovering,
            valid_until,
            group_ready: false,
            refusals: HashMap::new(),
            marks: BTreeMap::new(),
            next_step: Instant::now(),
            idle_steps: 0,
        }
    }
}

/// Runs one step; returns the number of entries handled (0: nothing to do or not now).
pub async fn step(ctx: &Ctx, st: &mut PartState) -> usize {
    let now = Instant::now();
    if now >= st.valid_until || now < st.next_step {
        return 0;
    }
    match try_step(ctx, st).await {
        Ok(0) => {
            // Idle: poll again after batch_max_wait, backing off to idle_poll_max.
            st.idle_steps = st.idle_steps.saturating_add(1);
            let wait = ctx
                .config
                .batch_max_wait
                .saturating_mul(1u32 << st.idle_steps.min(8))
                .min(ctx.config.idle_poll_max.max(ctx.config.batch_max_wait));
            st.next_step = Instant::now() + wait;
            0
        }
        Ok(n) => {
            st.idle_steps = 0;
            n
        }
        Err(e) => {
            tracing::warn!(partition = st.part.number, error = %e, "persist step failed; retrying");
            ctx.metrics.errors.inc();
            st.mode = Mode::Recovering;
            // The group may have gone with a Redis that restarted empty: created again first.
            st.group_ready = false;
            st.next_step = Instant::now() + ctx.config.retry_delay;
            0
        }
    }
}

async fn try_step(ctx: &Ctx, st: &mut PartState) -> Result<usize, WorkerError> {
    let p = &st.part;
    if !st.marks.is_empty() {
        raise_watermarks(ctx, p, &mut st.marks).await?;
    }
    if !st.group_ready {
        ctx.streams.ensure_group(p).await?;
        st.group_ready = true;
    }
    let max = ctx.config.batch_max_events.max(1);
    let (entries, deliveries) = match st.mode {
        Mode::Recovering => {
            let lease_ms = u64::try_from(ctx.config.lease.as_millis()).unwrap_or(u64::MAX);
            ctx.streams.autoclaim(p, lease_ms, max).await?;
            let entries = ctx.streams.read(p, "0", max).await?;
            if entries.is_empty() {
                if ctx.streams.pending_count(p).await? == 0 {
                    st.mode = Mode::Live;
                    // Read new entries at once.
                    return Box::pin(try_step(ctx, st)).await;
                }
                return Ok(0);
            }
            let first = &entries[0].id;
            let last = &entries[entries.len() - 1].id;
            let d = ctx
                .streams
                .deliveries(p, first, last, entries.len())
                .await?;
            (entries, d)
        }
        Mode::Live => (ctx.streams.read(p, ">", max).await?, HashMap::new()),
    };
    if entries.is_empty() {
        return Ok(0);
    }
    let redelivered = entries
        .iter()
        .filter(|e| deliveries.get(&e.id).copied().unwrap_or(1) > 1)
        .count();
    ctx.metrics.redeliveries.inc_by(redelivered as u64);
    let n = entries.len();
    persist(ctx, st, entries, &deliveries).await?;
    Ok(n)
}

/// Writes the entries, acknowledges what landed, handles refused and malformed ones.
async fn persist(
    ctx: &Ctx,
    st: &mut PartState,
    entries: Vec<Entry>,
    deliveries: &HashMap<String, u64>,
) -> Result<(), WorkerError> {
    let p = st.part.clone();
    let mut gone = Vec::new();
    let mut good: Vec<(Entry, ArchivedEvent)> = Vec::new();
    let mut bad: Vec<(Entry, String)> = Vec::new();
    for e in entries {
        if e.fields.is_none() {
            gone.push(e.id);
            continue;
        }
        match e.parse(p.number) {
            Ok(ev) => good.push((e, ev)),
            Err(why) => bad.push((e, format!("malformed: {why}"))),
        }
    }
    ctx.streams.ack(&p, &gone).await?;

    for chunk in chunks(good, ctx.config.batch_max_bytes) {
        let events: Vec<ArchivedEvent> = chunk.iter().map(|(_, ev)| ev.clone()).collect();
        match write(ctx, &events).await {
            Ok(()) => landed(ctx, &p, &mut st.marks, &chunk).await?,
            Err(e) if e.is_refusal() => {
                // One entry spoils the batch: find it by writing each alone.
                for one in chunk {
                    match write(ctx, std::slice::from_ref(&one.1)).await {
                        Ok(()) => {
                            landed(ctx, &p, &mut st.marks, std::slice::from_ref(&one)).await?
                        }
                        Err(e) if e.is_refusal() => bad.push((one.0, format!("refused: {e}"))),
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }

    for (entry, error) in bad {
        let local = st.refusals.entry(entry.id.clone()).or_insert(0);
        *local += 1;
        let n = deliveries.get(&entry.id).copied().unwrap_or(1).max(*local);
        if n >= u64::from(ctx.config.max_deliveries) {
            tracing::warn!(partition = p.number, entry = %entry.id, %error, deliveries = n, "dead-lettering a work entry");
            ctx.archive
                .dead_letter(
                    p.number,
                    &entry.id,
                    &entry.fields_json(),
                    &error,
                    u32::try_from(n).unwrap_or(u32::MAX),
                    now_ms(),
                )
                .await?;
            ctx.streams.dead_letter(&p, &entry, &error, n).await?;
            ctx.metrics.dead_letters.inc();
            st.refusals.remove(&entry.id);
        } else {
            tracing::debug!(partition = p.number, entry = %entry.id, %error, deliveries = n, "work entry refused; it will be retried");
            st.mode = Mode::Recovering;
        }
    }
    Ok(())
}

/// Splits entries (in stream order) into runs of at most `max_bytes` (an entry larger than
/// that goes alone).
fn chunks(
    entries: Vec<(Entry, ArchivedEvent)>,
    max_bytes: usize,
) -> Vec<Vec<(Entry, ArchivedEvent)>> {
    let mut out: Vec<Vec<(Entry, ArchivedEvent)>> = Vec::new();
    let mut size = 0usize;
    for item in entries {
        let s = item.0.size();
        match out.last_mut() {
            Some(run) if size + s <= max_bytes => {
                size += s;
                run.push(item);
            }
            _ => {
                size = s;
                out.push(vec![item]);
            }
        }
    }
    out
}

/// One transaction: BEGIN, the batch, COMMIT (with the failpoints around COMMIT).
async fn write(ctx: &Ctx, events: &[ArchivedEvent]) -> Result<(), ArchiveError> {
    let started = Instant::now();
    let mut tx = ctx.archive.begin().await?;
    ctx.archive
        .insert_in(&mut tx, events, ctx.config.postgres.method)
        .await?;
    failpoint::hit(Failpoint::MidBatch);
    tx.commit().await?;
    failpoint::hit(Failpoint::AfterCommit);
    let m = &ctx.metrics;
    m.batch_seconds.observe(started.elapsed().as_secs_f64());
    m.batch_events.observe(events.len() as f64);
    m.events_persisted.inc_by(events.len() as u64);
    let now = now_ms();
    for e in events {
        if let Some(h) = concord_core::HlcText::parse(&e.hlc) {
            m.persist_lag_ms
                .observe(now.saturating_sub(h.timestamp().wall_ms) as f64);
        }
    }
    Ok(())
}

/// After COMMIT: XACK (+XDEL) the entries, then raise each room's watermark in Redis.
async fn landed(
    ctx: &Ctx,
    p: &Partition,
    marks: &mut BTreeMap<String, (String, u64)>,
    chunk: &[(Entry, ArchivedEvent)],
) -> Result<(), WorkerError> {
    let ids: Vec<String> = chunk.iter().map(|(e, _)| e.id.clone()).collect();
    ctx.streams.ack(p, &ids).await?;
    super::snapshot::after_batch(ctx, chunk.iter().map(|(_, ev)| ev)).await;
    for (_, ev) in chunk {
        let m = marks
            .entry(ev.room.clone())
            .or_insert_with(|| (ev.epoch.clone(), ev.seq));
        if ev.seq > m.1 {
            *m = (ev.epoch.clone(), ev.seq);
        }
    }
    raise_watermarks(ctx, p, marks).await
}

/// Raises the Redis watermark of every room in `marks` (persisted, acknowledged, not yet
/// confirmed in Redis); those that fail stay for the next step, so a room that gets no more
/// events still has its watermark raised once Redis answers.
async fn raise_watermarks(
    ctx: &Ctx,
    p: &Partition,
    marks: &mut BTreeMap<String, (String, u64)>,
) -> Result<(), WorkerError> {
    let calls = marks.iter().map(|(room, (epoch, seq))| async move {
        let head = ctx
            .streams
            .persisted(p, room, epoch, *seq, ctx.config.log_keep)
            .await;
        (room.clone(), *seq, head)
    });
    let mut first_error = None;
    for (room, seq, head) in futures::future::join_all(calls).await {
        match head {
            Ok(head) => {
                marks.remove(&room);
                ctx.metrics
                    .watermark_lag
                    .get_or_create(&super::metrics::PartitionLabel {
                        partition: p.number,
                    })
                    .set(i64::try_from(head.saturating_sub(seq)).unwrap_or(i64::MAX));
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

//! One round over the owned partitions: read each due partition's batch from its work stream
//! (its own pending entries and entries claimed from dead consumers while recovering, new
//! entries when live), write the batches of many partitions together — one transaction per
//! chunk of whole partitions' batches, chunks written `concurrency` at a time — XACK each
//! entry after its COMMIT, then raise each room's watermark in Redis. A refused chunk is
//! written again entry by entry; an entry refused `max_deliveries` times is dead-lettered.
//!
//! Order: a room lives in one partition, and a partition's batch is never split across
//! concurrent transactions (a batch too big for one chunk is written as consecutive chunks, in
//! order, stopping at the first failure), so a room's watermark is raised only over events
//! that are all committed, and it only moves forward.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures::StreamExt;

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

    fn due(&self, now: Instant) -> bool {
        now < self.valid_until && now >= self.next_step
    }

    /// Nothing to read: poll again after batch_max_wait, backing off to idle_poll_max.
    fn idle(&mut self, ctx: &Ctx) {
        self.idle_steps = self.idle_steps.saturating_add(1);
        let wait = ctx
            .config
            .batch_max_wait
            .saturating_mul(1u32 << self.idle_steps.min(8))
            .min(ctx.config.idle_poll_max.max(ctx.config.batch_max_wait));
        self.next_step = Instant::now() + wait;
    }

    /// A transient failure: recover (re-read what is pending) after `retry_delay`.
    fn failed(&mut self, ctx: &Ctx, error: &dyn std::fmt::Display) {
        tracing::warn!(partition = self.part.number, %error, "persist step failed; retrying");
        ctx.metrics.errors.inc();
        self.mode = Mode::Recovering;
        // The group may have gone with a Redis that restarted empty: created again first.
        self.group_ready = false;
        self.next_step = Instant::now() + ctx.config.retry_delay;
    }
}

/// One entry on its way to PostgreSQL: its partition, the entry, the event it describes.
type Item = (Partition, Entry, ArchivedEvent);

/// What one partition gave this round.
struct Read {
    part: Partition,
    good: Vec<(Entry, ArchivedEvent)>,
    bad: Vec<(Entry, String)>,
    deliveries: HashMap<String, u64>,
}

/// What writing one job did, by partition.
#[derive(Default)]
struct Outcome {
    /// The events committed and acknowledged (for the watermarks).
    landed: Vec<(u32, ArchivedEvent)>,
    refused: Vec<(u32, Entry, String)>,
    /// Partitions whose entries stay pending, and why.
    failed: Vec<(u32, String)>,
}

/// Runs one round; returns the number of entries handled (0: nothing to do or not now).
/// `cursor`: where the round starts among the owned partitions, so that partitions left for
/// the next round by the round's budget come first then.
pub async fn round(ctx: &Ctx, owned: &mut BTreeMap<u32, PartState>, cursor: &mut usize) -> usize {
    let now = Instant::now();
    let mut due: Vec<&mut PartState> = owned.values_mut().collect();
    if due.is_empty() {
        return 0;
    }
    let start = *cursor % due.len();
    due.rotate_left(start);
    let due_len = due.len();
    // The round reads at most this many entries: memory and the round's length stay bounded
    // when every partition has a backlog.
    let budget = AtomicUsize::new(
        ctx.config
            .batch_max_events
            .max(1)
            .saturating_mul(ctx.config.concurrency.max(1))
            .saturating_mul(4),
    );
    let first_left = AtomicUsize::new(usize::MAX);
    // Futures gathered in a Vec first (not built by stream combinators' closures): the
    // worker's future must stay `Send`.
    let mut reading = Vec::new();
    for (i, st) in due.into_iter().enumerate() {
        if st.due(now) {
            reading.push(read_due(ctx, st, i, &budget, &first_left));
        }
    }
    let reads: Vec<Read> = futures::stream::iter(reading)
        .buffer_unordered(READS_AT_ONCE)
        .collect::<Vec<Option<Read>>>()
        .await
        .into_iter()
        .flatten()
        .collect();
    let left = first_left.load(Ordering::Relaxed);
    if left != usize::MAX {
        *cursor = (start + left) % due_len;
    }
    let handled: usize = reads.iter().map(|r| r.good.len() + r.bad.len()).sum();
    if handled == 0 {
        return 0;
    }

    let mut bad: HashMap<u32, Vec<(Entry, String)>> = HashMap::new();
    let mut deliveries: HashMap<u32, HashMap<String, u64>> = HashMap::new();
    let mut batches = Vec::with_capacity(reads.len());
    for r in reads {
        bad.entry(r.part.number).or_default().extend(r.bad);
        deliveries.insert(r.part.number, r.deliveries);
        batches.push((r.part, r.good));
    }
    let jobs = jobs(
        batches,
        ctx.config.batch_max_events,
        ctx.config.batch_max_bytes,
    );
    let writing: Vec<_> = jobs.into_iter().map(|j| run_job(ctx, j)).collect();
    let outcomes: Vec<Outcome> = futures::stream::iter(writing)
        .buffer_unordered(ctx.config.concurrency.max(1))
        .collect()
        .await;

    for o in outcomes {
        for (number, ev) in o.landed {
            if let Some(st) = owned.get_mut(&number) {
                let m = st
                    .marks
                    .entry(ev.room.clone())
                    .or_insert_with(|| (ev.epoch.clone(), ev.seq));
                if ev.seq > m.1 {
                    *m = (ev.epoch, ev.seq);
                }
            }
        }
        for (number, entry, error) in o.refused {
            bad.entry(number).or_default().push((entry, error));
        }
        for (number, error) in o.failed {
            if let Some(st) = owned.get_mut(&number) {
                st.failed(ctx, &error);
            }
        }
    }
    let mut raising = Vec::new();
    for st in owned.values_mut().filter(|st| !st.marks.is_empty()) {
        raising.push(raise(ctx, st));
    }
    let raised: Vec<(u32, Result<(), WorkerError>)> = futures::stream::iter(raising)
        .buffer_unordered(READS_AT_ONCE)
        .collect()
        .await;
    for (number, r) in raised {
        if let (Err(e), Some(st)) = (r, owned.get_mut(&number)) {
            st.failed(ctx, &e);
        }
    }
    for (number, entries) in bad {
        let Some(st) = owned.get_mut(&number) else {
            continue;
        };
        let d = deliveries.remove(&number).unwrap_or_default();
        if let Err(e) = refused(ctx, st, entries, &d).await {
            st.failed(ctx, &e);
        }
    }
    handled
}

/// Partitions read at once (Redis calls: cheap, pipelined on one connection).
const READS_AT_ONCE: usize = 32;

/// Takes up to `want` from the round's budget (`None` when it is spent).
fn take_budget(budget: &AtomicUsize, want: usize) -> Option<usize> {
    let mut got = 0;
    budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            got = left.min(want);
            (got > 0).then_some(left - got)
        })
        .ok()
        .map(|_| got)
}

/// Reads partition `i` of the round if the round's budget allows (else notes the first one
/// left for the next round).
async fn read_due(
    ctx: &Ctx,
    st: &mut PartState,
    i: usize,
    budget: &AtomicUsize,
    first_left: &AtomicUsize,
) -> Option<Read> {
    let Some(max) = take_budget(budget, ctx.config.batch_max_events.max(1)) else {
        first_left.fetch_min(i, Ordering::Relaxed);
        return None;
    };
    read(ctx, st, max).await
}

/// Raises a partition's pending watermarks.
async fn raise(ctx: &Ctx, st: &mut PartState) -> (u32, Result<(), WorkerError>) {
    let r = raise_watermarks(ctx, &st.part, &mut st.marks).await;
    (st.part.number, r)
}

/// Reads a due partition's batch (at most `max` entries); `None` when it had nothing or
/// failed (its state then says when to try again).
async fn read(ctx: &Ctx, st: &mut PartState, max: usize) -> Option<Read> {
    match try_read(ctx, st, max).await {
        Ok(r) if r.good.is_empty() && r.bad.is_empty() => {
            st.idle(ctx);
            None
        }
        Ok(r) => {
            st.idle_steps = 0;
            Some(r)
        }
        Err(e) => {
            st.failed(ctx, &e);
            None
        }
    }
}

async fn try_read(ctx: &Ctx, st: &mut PartState, max: usize) -> Result<Read, WorkerError> {
    let p = &st.part;
    if !st.marks.is_empty() {
        raise_watermarks(ctx, p, &mut st.marks).await?;
    }
    if !st.group_ready {
        ctx.streams.ensure_group(p).await?;
        st.group_ready = true;
    }
    let (entries, deliveries) = loop {
        match st.mode {
            Mode::Recovering => {
                let lease_ms = u64::try_from(ctx.config.lease.as_millis()).unwrap_or(u64::MAX);
                ctx.streams.autoclaim(p, lease_ms, max).await?;
                let entries = ctx.streams.read(p, "0", max).await?;
                if entries.is_empty() {
                    if ctx.streams.pending_count(p).await? == 0 {
                        // Read new entries at once.
                        st.mode = Mode::Live;
                        continue;
                    }
                    break (entries, HashMap::new());
                }
                let first = &entries[0].id;
                let last = &entries[entries.len() - 1].id;
                let d = ctx
                    .streams
                    .deliveries(p, first, last, entries.len())
                    .await?;
                break (entries, d);
            }
            Mode::Live => break (ctx.streams.read(p, ">", max).await?, HashMap::new()),
        }
    };
    let redelivered = entries
        .iter()
        .filter(|e| deliveries.get(&e.id).copied().unwrap_or(1) > 1)
        .count();
    ctx.metrics.redeliveries.inc_by(redelivered as u64);
    let mut gone = Vec::new();
    let mut good = Vec::new();
    let mut bad = Vec::new();
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
    ctx.streams.ack(p, &gone).await?;
    Ok(Read {
        part: p.clone(),
        good,
        bad,
        deliveries,
    })
}

/// Groups the partitions' batches into jobs: a job is written one transaction (chunk) after
/// the other, jobs run concurrently. Whole batches are packed into shared chunks of at most
/// `max_events` entries and `max_bytes`; a batch bigger than that is a job of its own, cut
/// into consecutive chunks (an entry larger than `max_bytes` goes alone).
fn jobs(
    batches: Vec<(Partition, Vec<(Entry, ArchivedEvent)>)>,
    max_events: usize,
    max_bytes: usize,
) -> Vec<Vec<Vec<Item>>> {
    let max_events = max_events.max(1);
    let mut jobs: Vec<Vec<Vec<Item>>> = Vec::new();
    let mut packed: Vec<Item> = Vec::new();
    let mut packed_bytes = 0usize;
    for (part, batch) in batches {
        if batch.is_empty() {
            continue;
        }
        let bytes: usize = batch.iter().map(|(e, _)| e.size()).sum();
        if batch.len() > max_events || bytes > max_bytes {
            let mut chunks: Vec<Vec<Item>> = Vec::new();
            let mut size = 0usize;
            for (e, ev) in batch {
                let s = e.size();
                match chunks.last_mut() {
                    Some(run) if size + s <= max_bytes && run.len() < max_events => {
                        size += s;
                        run.push((part.clone(), e, ev));
                    }
                    _ => {
                        size = s;
                        chunks.push(vec![(part.clone(), e, ev)]);
                    }
                }
            }
            jobs.push(chunks);
            continue;
        }
        if packed.len() + batch.len() > max_events || packed_bytes + bytes > max_bytes {
            jobs.push(vec![std::mem::take(&mut packed)]);
            packed_bytes = 0;
        }
        packed_bytes += bytes;
        packed.extend(batch.into_iter().map(|(e, ev)| (part.clone(), e, ev)));
    }
    if !packed.is_empty() {
        jobs.push(vec![packed]);
    }
    jobs
}

/// Writes a job's chunks in order; stops at the first chunk that failed (its partitions and
/// those of the chunks after it are then failed: their entries stay pending).
async fn run_job(ctx: &Ctx, chunks: Vec<Vec<Item>>) -> Outcome {
    let mut out = Outcome::default();
    let mut chunks = chunks.into_iter();
    while let Some(chunk) = chunks.next() {
        let events: Vec<ArchivedEvent> = chunk.iter().map(|(_, _, ev)| ev.clone()).collect();
        let result = match write(ctx, &events).await {
            Ok(()) => {
                landed(ctx, chunk, &mut out).await;
                Ok(())
            }
            Err(e) if e.is_refusal() => one_by_one(ctx, chunk, &mut out).await,
            Err(e) => Err((chunk, e.into())),
        };
        if let Err((chunk, error)) = result {
            let mut parts: Vec<u32> = chunk.iter().map(|(p, _, _)| p.number).collect();
            parts.extend(chunks.flatten().map(|(p, _, _)| p.number));
            parts.sort_unstable();
            parts.dedup();
            let why = error.to_string();
            out.failed
                .extend(parts.into_iter().map(|n| (n, why.clone())));
            break;
        }
    }
    out
}

/// A chunk that PostgreSQL refused: one entry spoils it, found by writing each alone.
async fn one_by_one(
    ctx: &Ctx,
    chunk: Vec<Item>,
    out: &mut Outcome,
) -> Result<(), (Vec<Item>, WorkerError)> {
    let mut items = chunk.into_iter();
    while let Some(one) = items.next() {
        match write(ctx, std::slice::from_ref(&one.2)).await {
            Ok(()) => landed(ctx, vec![one], out).await,
            Err(e) if e.is_refusal() => {
                out.refused
                    .push((one.0.number, one.1, format!("refused: {e}")))
            }
            Err(e) => {
                let mut rest = vec![one];
                rest.extend(items);
                return Err((rest, e.into()));
            }
        }
    }
    Ok(())
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

/// After COMMIT: XACK (+XDEL) the chunk's entries, partition by partition, then the doc
/// snapshots due.
/// A partition whose acknowledgement failed fails (its entries are redelivered: writing them
/// again changes nothing).
async fn landed(ctx: &Ctx, chunk: Vec<Item>, out: &mut Outcome) {
    let mut by_part: BTreeMap<u32, (Partition, Vec<(Entry, ArchivedEvent)>)> = BTreeMap::new();
    for (p, e, ev) in chunk {
        by_part
            .entry(p.number)
            .or_insert_with(|| (p, Vec::new()))
            .1
            .push((e, ev));
    }
    let from = out.landed.len();
    let acks = by_part.values().map(|(p, items)| async move {
        let ids: Vec<String> = items.iter().map(|(e, _)| e.id.clone()).collect();
        (p.number, ctx.streams.ack(p, &ids).await)
    });
    let results = futures::future::join_all(acks).await;
    for (n, r) in results {
        let (_, items) = by_part
            .remove(&n)
            .unwrap_or_else(|| unreachable!("acked above"));
        match r {
            Ok(()) => out.landed.extend(items.into_iter().map(|(_, ev)| (n, ev))),
            Err(e) => out.failed.push((n, e.to_string())),
        }
    }
    super::snapshot::after_batch(ctx, out.landed[from..].iter().map(|(_, ev)| ev)).await;
}

/// Entries refused or malformed: counted, and dead-lettered after `max_deliveries`.
async fn refused(
    ctx: &Ctx,
    st: &mut PartState,
    bad: Vec<(Entry, String)>,
    deliveries: &HashMap<String, u64>,
) -> Result<(), WorkerError> {
    let p = st.part.clone();
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

/// Raises the Redis watermark of every room in `marks` (persisted, acknowledged, not yet
/// confirmed in Redis); those that fail stay for the next round, so a room that gets no more
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

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u32, seq: u64, bytes: usize) -> (Entry, ArchivedEvent) {
        let e = Entry {
            id: format!("{seq}-0"),
            fields: Some(vec![(b"d".to_vec(), vec![b'x'; bytes])]),
        };
        let ev = ArchivedEvent {
            partition: n,
            room: format!("r{n}"),
            kind: "stream".into(),
            epoch: "e".into(),
            seq,
            hlc: String::new(),
            from: "c".into(),
            op_id: None,
            data: "1".into(),
        };
        (e, ev)
    }

    fn part(n: u32) -> Partition {
        Partition {
            number: n,
            tag: format!("{{p{n}}}"),
        }
    }

    fn batch(n: u32, len: u64, bytes: usize) -> (Partition, Vec<(Entry, ArchivedEvent)>) {
        (part(n), (1..=len).map(|s| item(n, s, bytes)).collect())
    }

    /// (partition, seq) of every chunk of every job.
    fn shape(jobs: &[Vec<Vec<Item>>]) -> Vec<Vec<Vec<(u32, u64)>>> {
        jobs.iter()
            .map(|j| {
                j.iter()
                    .map(|c| c.iter().map(|(p, _, ev)| (p.number, ev.seq)).collect())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn small_batches_share_a_chunk_and_never_split() {
        // 3 + 3 fit in 7; the third batch of 3 would make 9: a new chunk.
        let j = jobs(
            vec![batch(1, 3, 1), batch(2, 3, 1), batch(3, 3, 1)],
            7,
            1 << 20,
        );
        assert_eq!(
            shape(&j),
            vec![
                vec![vec![(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]],
                vec![vec![(3, 1), (3, 2), (3, 3)]],
            ]
        );
    }

    #[test]
    fn a_batch_bigger_than_a_chunk_is_one_job_of_consecutive_chunks() {
        let j = jobs(
            vec![batch(1, 2, 1), batch(2, 5, 1), batch(3, 1, 1)],
            2,
            1 << 20,
        );
        assert_eq!(
            shape(&j),
            vec![
                vec![vec![(2, 1), (2, 2)], vec![(2, 3), (2, 4)], vec![(2, 5)]],
                vec![vec![(1, 1), (1, 2)]],
                vec![vec![(3, 1)]],
            ]
        );
    }

    #[test]
    fn bytes_bound_chunks_too_and_a_huge_entry_goes_alone() {
        // Entries of 11 bytes ("d" + 10): two fit in 25 bytes.
        let j = jobs(
            vec![batch(1, 1, 10), batch(2, 1, 10), batch(3, 1, 10)],
            100,
            25,
        );
        assert_eq!(
            shape(&j),
            vec![vec![vec![(1, 1), (2, 1)]], vec![vec![(3, 1)]]]
        );
        let j = jobs(
            vec![(part(4), vec![item(4, 1, 100), item(4, 2, 1)])],
            100,
            25,
        );
        assert_eq!(shape(&j), vec![vec![vec![(4, 1)], vec![(4, 2)]]]);
    }

    #[test]
    fn empty_batches_make_no_job() {
        assert!(jobs(vec![(part(1), Vec::new())], 10, 100).is_empty());
    }

    #[test]
    fn the_budget_is_shared_and_runs_out() {
        let b = AtomicUsize::new(5);
        assert_eq!(take_budget(&b, 3), Some(3));
        assert_eq!(take_budget(&b, 3), Some(2));
        assert_eq!(take_budget(&b, 3), None);
    }
}

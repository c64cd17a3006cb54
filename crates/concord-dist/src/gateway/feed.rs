//! `Notifier`: every room feed of one gateway over one Redis pub/sub connection. Notifications
//! of a commit (docs/distributed.md, "Redis keys") become `FeedItem::Events`. Pub/sub loses
//! messages only with its connection: when the connection drops, the notifier reconnects (on a
//! Redis Cluster, to any node: `PUBLISH` reaches every node), subscribes every channel again
//! and tells every feed `FeedItem::Lost`, so that each room reads its head and fills the gap.
//! A feed whose room is slower than its queue also gets `Lost` instead of the notifications
//! it could not take; a feed dropped by its room is unsubscribed. The same connection carries
//! the gateway's inbox (`subscribe_raw`: the payloads as they are, at most once).

use crate::RedisTarget;
use concord_core::{ClientId, Epoch, HlcText, OpId, Seq};
use concord_server::cluster::{Feed, FeedItem};
use concord_server::store::StoredEvent;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Notifications queued for one room before it is told it lost some.
const FEED_QUEUE: usize = 1024;

/// How long to wait between attempts to reconnect.
const RECONNECT: Duration = Duration::from_millis(200);

/// Longest wait for Redis to confirm a SUBSCRIBE or UNSUBSCRIBE: past it the subscriber
/// connection is taken for broken (dropped, connected again, every channel subscribed again and
/// every feed told `Lost`), so that a subscription that is never confirmed cannot hold every
/// room that waits for one.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// A handle on the gateway's subscriber task (clones share it).
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::UnboundedSender<Subscribe>,
}

struct Subscribe {
    channel: String,
    feed: Tx,
    /// Answered once Redis confirmed the subscription (or the connection is down: then the
    /// feed's first item is `Lost`).
    done: oneshot::Sender<()>,
}

/// Where a channel's messages go: a room's feed, or raw payloads.
enum Tx {
    Feed(mpsc::Sender<FeedItem>),
    Raw(mpsc::UnboundedSender<Vec<u8>>),
}

/// One subscriber of a channel: its queue, and whether it missed notifications.
struct Sub {
    tx: Tx,
    lagging: bool,
}

impl Sub {
    fn is_closed(&self) -> bool {
        match &self.tx {
            Tx::Feed(tx) => tx.is_closed(),
            Tx::Raw(tx) => tx.is_closed(),
        }
    }

    /// A message: parsed (once, by `item`) for a feed, as it is for a raw subscriber.
    fn deliver(&mut self, payload: &[u8], item: &mut Option<FeedItem>) {
        match &self.tx {
            Tx::Raw(tx) => {
                let _ = tx.send(payload.to_vec());
            }
            Tx::Feed(_) => {
                let item = item.get_or_insert_with(|| parse(payload).unwrap_or(FeedItem::Lost));
                self.send(item.clone());
            }
        }
    }

    fn send(&mut self, item: FeedItem) {
        let Tx::Feed(tx) = &self.tx else {
            return;
        };
        if self.lagging {
            if tx.try_send(FeedItem::Lost).is_err() {
                return;
            }
            self.lagging = false;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(item) {
            self.lagging = true;
        }
    }
}

/// Any kind of message on a room's channel, read in one pass: a commit's events (`epoch`,
/// `events`), a gateway's roster delta (`gw`, `roster`) or a worker's watermark (`epoch`,
/// `wm`).
#[derive(Deserialize)]
struct Note {
    epoch: Option<String>,
    events: Option<Vec<NoteEvent>>,
    wm: Option<u64>,
    gw: Option<String>,
    roster: Option<super::roster::Wire>,
}

#[derive(Deserialize)]
struct NoteEvent {
    seq: u64,
    hlc: String,
    from: String,
    op_id: Option<String>,
    data: Box<RawValue>,
}

/// A notification as the feed's item (`None` when it does not parse: then the room is told
/// it lost one, and reads the log).
fn parse(payload: &[u8]) -> Option<FeedItem> {
    let note: Note = serde_json::from_slice(payload).ok()?;
    if let (Some(gw), Some(roster)) = (note.gw, note.roster) {
        return Some(FeedItem::Roster {
            gw,
            delta: roster.delta(),
        });
    }
    if let (Some(epoch), Some(wm)) = (&note.epoch, note.wm) {
        return Some(FeedItem::Persisted {
            epoch: Epoch(epoch.clone()),
            seq: Seq(wm),
        });
    }
    let events = note
        .events?
        .into_iter()
        .map(|e| {
            Some(StoredEvent {
                seq: Seq(e.seq),
                hlc: HlcText::parse(&e.hlc)?,
                from: ClientId::new(&e.from).ok()?,
                op_id: match e.op_id {
                    Some(o) => Some(OpId::new(&o).ok()?),
                    None => None,
                },
                data: e.data,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(FeedItem::Events {
        epoch: Epoch(note.epoch?),
        events,
    })
}

impl Notifier {
    /// Starts the subscriber task (it connects in the background and keeps reconnecting).
    pub fn start(target: RedisTarget) -> Notifier {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(target, rx));
        Notifier { tx }
    }

    /// A feed of `channel`, subscribed when this returns (so a room that subscribes before it
    /// reads its head misses nothing).
    pub async fn subscribe(&self, channel: String) -> Feed {
        let (feed, rx) = mpsc::channel(FEED_QUEUE);
        self.add(channel, Tx::Feed(feed)).await;
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }))
    }

    /// The payloads published on `channel` from now on, as they are (none of those published
    /// while the connection is down).
    pub async fn subscribe_raw(&self, channel: String) -> mpsc::UnboundedReceiver<Vec<u8>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.add(channel, Tx::Raw(tx)).await;
        rx
    }

    async fn add(&self, channel: String, feed: Tx) {
        let (done, confirmed) = oneshot::channel();
        if self
            .tx
            .send(Subscribe {
                channel,
                feed,
                done,
            })
            .is_ok()
        {
            let _ = confirmed.await;
        }
    }
}

fn urls(target: &RedisTarget) -> Vec<String> {
    match target {
        RedisTarget::Single(url) => vec![url.clone()],
        RedisTarget::Cluster(urls) => urls.clone(),
    }
}

async fn connect(url: &str) -> redis::RedisResult<redis::aio::PubSub> {
    redis::Client::open(url)?.get_async_pubsub().await
}

/// The subscriber task: ends when every `Notifier` is dropped.
async fn run(target: RedisTarget, mut requests: mpsc::UnboundedReceiver<Subscribe>) {
    let urls = urls(&target);
    let mut subs: HashMap<String, Vec<Sub>> = HashMap::new();
    let mut attempt = 0usize;
    loop {
        let url = &urls[attempt % urls.len()];
        attempt += 1;
        let pubsub = match connect(url).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "the feed's Redis connection failed; retrying");
                // Subscriptions asked for meanwhile are answered (their feeds learn the head
                // when the connection is back and they are told `Lost`).
                let wait = tokio::time::sleep(RECONNECT);
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        _ = &mut wait => break,
                        req = requests.recv() => match req {
                            Some(r) => add(&mut subs, r),
                            None => return,
                        },
                    }
                }
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let channels: Vec<String> = subs.keys().cloned().collect();
        if !channels.is_empty() && !confirmed(sink.subscribe(&channels)).await {
            continue;
        }
        // Whatever was published while the connection was down is lost: every feed reads its
        // head again.
        for list in subs.values_mut() {
            for s in list.iter_mut() {
                s.send(FeedItem::Lost);
            }
        }
        loop {
            tokio::select! {
                req = requests.recv() => {
                    let Some(req) = req else { return };
                    let fresh = !subs.contains_key(&req.channel);
                    let channel = req.channel.clone();
                    if fresh && !confirmed(sink.subscribe(&channel)).await {
                        add(&mut subs, req);
                        break;
                    }
                    add(&mut subs, req);
                }
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        tracing::warn!("the feed's Redis connection dropped; resubscribing");
                        break;
                    };
                    let channel = msg.get_channel_name().to_string();
                    let Some(list) = subs.get_mut(&channel) else { continue };
                    let mut item = None;
                    for s in list.iter_mut() {
                        s.deliver(msg.get_payload_bytes(), &mut item);
                    }
                    list.retain(|s| !s.is_closed());
                    if list.is_empty() {
                        subs.remove(&channel);
                        if !confirmed(sink.unsubscribe(&channel)).await {
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// Whether Redis confirmed a (un)subscription within [`CONFIRM_TIMEOUT`].
async fn confirmed(call: impl std::future::Future<Output = redis::RedisResult<()>>) -> bool {
    match tokio::time::timeout(CONFIRM_TIMEOUT, call).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "the feed's (un)subscription failed; reconnecting");
            false
        }
        Err(_) => {
            tracing::warn!(timeout = ?CONFIRM_TIMEOUT, "the feed's (un)subscription was not confirmed; reconnecting");
            false
        }
    }
}

fn add(subs: &mut HashMap<String, Vec<Sub>>, req: Subscribe) {
    let list = subs.entry(req.channel).or_default();
    list.retain(|s| !s.is_closed());
    list.push(Sub {
        tx: req.feed,
        lagging: false,
    });
    let _ = req.done.send(());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_parses_into_its_events() {
        let payload = br#"{"room":"r","epoch":"e1","events":[
            {"seq":1,"hlc":"0000000000001-000000-gw","from":"c1","op_id":"m1","data":{"a":[1]}},
            {"seq":2,"hlc":"0000000000001-000001-gw","from":"c1","op_id":null,"data":"\u0000"}]}"#;
        let Some(FeedItem::Events { epoch, events }) = parse(payload) else {
            panic!("a notification")
        };
        assert_eq!(epoch.as_str(), "e1");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].data.get(), r#"{"a":[1]}"#);
        assert_eq!(events[1].op_id, None);
        assert_eq!(events[1].data.get(), r#""\u0000""#);
    }

    #[test]
    fn a_watermark_note_parses() {
        let Some(FeedItem::Persisted { epoch, seq }) =
            parse(br#"{"room":"r","epoch":"e1","wm":7}"#)
        else {
            panic!("a watermark")
        };
        assert_eq!((epoch.as_str(), seq), ("e1", Seq(7)));
    }

    #[test]
    fn a_notification_that_does_not_parse_is_none() {
        assert!(parse(b"{}").is_none());
        assert!(parse(
            br#"{"epoch":"e","events":[{"seq":1,"hlc":"bad","from":"c","op_id":null,"data":1}]}"#
        )
        .is_none());
    }
}

//! The background task: owns the WebSocket, reconnects with backoff, rejoins rooms from their
//! last seq, resends unacked publishes, and routes server frames to the handles. Doc rooms'
//! OT loop (sending, acks, events, drift, resync) is in [`docs`].

use crate::EventMsg;
use concord_protocol::{close, decode_server, ErrorCode, ServerMsg};
use futures::{SinkExt, StreamExt};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

use crate::backoff::Backoff;
use crate::client::{Ack, Counters};
use crate::config::{ClientConfig, JoinOptions};
use crate::conn::{self, Ws};
use crate::doc::{DocOptions, DocParts};
use crate::error::ClientError;
use crate::pending::{AckReply, PendingQueue};
use crate::room::{Delivery, Room, RoomUpdate};
use crate::track::SeqTracker;
use crate::wire;

mod docs;

use docs::JoinedDoc;

/// The room kind [`Client::join`](crate::Client::join) follows.
const STREAM_KIND: &str = "stream";
/// At most this many queued commands are handled before writing what they produced.
const COMMAND_BATCH: usize = 1024;

/// A request from a handle to the task.
#[derive(Debug)]
pub(crate) enum Command {
    Join {
        room: String,
        opts: JoinOptions,
        reply: oneshot::Sender<Result<Room, ClientError>>,
    },
    JoinDoc {
        room: String,
        opts: DocOptions,
        reply: oneshot::Sender<Result<DocParts, ClientError>>,
    },
    /// A doc handle queued edits: send them if nothing is in flight.
    DocKick {
        room: String,
    },
    Leave {
        room: String,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    Publish {
        room: String,
        id: String,
        frame: Utf8Bytes,
        deadline: Option<Instant>,
        reply: AckReply,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// A room with a live [`Room`] handle.
struct JoinedRoom {
    kind: String,
    tracker: SeqTracker,
    tx: mpsc::UnboundedSender<Delivery>,
}

/// Who waits for a first join's answer.
enum JoinReply {
    Room(oneshot::Sender<Result<Room, ClientError>>),
    Doc(oneshot::Sender<Result<DocParts, ClientError>>),
}

impl JoinReply {
    fn is_closed(&self) -> bool {
        match self {
            JoinReply::Room(tx) => tx.is_closed(),
            JoinReply::Doc(tx) => tx.is_closed(),
        }
    }

    fn fail(self, e: ClientError) {
        match self {
            JoinReply::Room(tx) => {
                let _ = tx.send(Err(e));
            }
            JoinReply::Doc(tx) => {
                let _ = tx.send(Err(e));
            }
        }
    }
}

/// A first join waiting for its `joined`.
struct JoinRequest {
    opts: JoinOptions,
    reply: JoinReply,
    /// Sent on the current connection (its answer is the next `joined`/`error` for the room).
    sent: bool,
}

/// The state of the current connection.
enum Link {
    /// No session (backoff, connecting, handshake).
    Offline,
    /// Welcome received; waiting for the `joined` of these rejoined rooms.
    Rejoining(HashSet<String>),
    /// Every room rejoined: publishes flow.
    Ready,
}

/// What to do after handling an input.
enum Step {
    Continue,
    /// Drop this connection and establish a new one.
    Reconnect(String),
    /// Stop for good with this error.
    Fatal(ClientError),
    /// Close gracefully and stop.
    Close,
}

enum Input {
    Cmd(Option<Command>),
    Frame(Option<Result<Message, tungstenite::Error>>),
    Timer,
}

pub(crate) struct Task {
    config: ClientConfig,
    cmds: mpsc::UnboundedReceiver<Command>,
    connected: watch::Sender<bool>,
    counters: Arc<Counters>,
    backoff: Backoff,
    /// Failed attempts since the last session that got every room rejoined.
    attempt: u32,
    /// Connection attempts so far: which of the configured URLs the next one uses.
    connections: usize,
    link: Link,
    rooms: HashMap<String, JoinedRoom>,
    /// Joined doc rooms (a room name is in `rooms` or in `docs`, never both).
    docs: HashMap<String, JoinedDoc>,
    joining: HashMap<String, JoinRequest>,
    /// Leaves sent and not answered; a new join of such a room waits for the answer.
    leaving: HashMap<String, Vec<oneshot::Sender<Result<(), ClientError>>>>,
    pending: PendingQueue,
    closers: Vec<oneshot::Sender<()>>,
    /// Doc op list ids are `d-<nonce>-<n>` (like publish ids, with the client's nonce).
    op_nonce: String,
    next_op: u64,
}

impl Task {
    /// The custom TLS configuration for `wss://`, if any.
    #[cfg(feature = "tls")]
    fn tls(&self) -> Option<conn::Tls> {
        self.config.tls.clone()
    }

    #[cfg(not(feature = "tls"))]
    fn tls(&self) -> Option<conn::Tls> {
        None
    }

    pub(crate) fn new(
        config: ClientConfig,
        cmds: mpsc::UnboundedReceiver<Command>,
        connected: watch::Sender<bool>,
        counters: Arc<Counters>,
        op_nonce: String,
    ) -> Self {
        Task {
            backoff: Backoff::new(config.backoff_initial, config.backoff_max),
            config,
            cmds,
            connected,
            counters,
            attempt: 0,
            connections: 0,
            link: Link::Offline,
            rooms: HashMap::new(),
            docs: HashMap::new(),
            joining: HashMap::new(),
            leaving: HashMap::new(),
            pending: PendingQueue::default(),
            closers: Vec::new(),
            op_nonce,
            next_op: 1,
        }
    }

    /// Runs until closed. `first` gets the outcome of the first connection; if that fails the
    /// task ends.
    pub(crate) async fn run(mut self, first: oneshot::Sender<Result<(), ClientError>>) {
        let mut first = Some(first);
        let reason = loop {
            if first.is_none() {
                let delay = self.backoff.delay(self.attempt, &mut rand::rng());
                self.attempt = self.attempt.saturating_add(1);
                tracing::debug!(?delay, attempt = self.attempt, "reconnecting after backoff");
                if self.wait_offline(tokio::time::sleep(delay)).await.is_none() {
                    break ClientError::Closed;
                }
            }
            let hello = wire::hello(&self.config.client_id, self.config.token.as_deref());
            let url = self.config.url_for(self.connections).to_string();
            self.connections += 1;
            let attempt = conn::establish(url, hello, self.config.connect_timeout, self.tls());
            let ws = match self.wait_offline(attempt).await {
                None => break ClientError::Closed,
                Some(Ok(ws)) => ws,
                Some(Err(e)) => {
                    // The first connection tries every URL once before it fails.
                    if first.is_some() && self.connections <= self.config.fallback_urls.len() {
                        tracing::warn!(error = %e, "connection failed; trying the next URL");
                        continue;
                    }
                    if let Some(first) = first.take() {
                        let _ = first.send(Err(e.clone()));
                        break e;
                    }
                    if e.is_fatal() {
                        tracing::error!(error = %e, "reconnect refused; giving up");
                        break e;
                    }
                    tracing::warn!(error = %e, "reconnect failed");
                    continue;
                }
            };
            match first.take() {
                Some(first) => {
                    let _ = first.send(Ok(()));
                }
                None => Counters::bump(&self.counters.reconnects, 1),
            }
            match self.session(ws).await {
                Step::Close => break ClientError::Closed,
                Step::Fatal(e) => break e,
                Step::Continue | Step::Reconnect(_) => {}
            }
        };
        self.finish(reason);
    }

    /// Drives `fut` while handling commands and timers offline. `None` if the client was
    /// closed meanwhile.
    async fn wait_offline<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            let wake = self.next_wakeup(Instant::now());
            tokio::select! {
                out = &mut fut => return Some(out),
                cmd = self.cmds.recv() => {
                    let step = match cmd {
                        None => Step::Close,
                        Some(cmd) => self.on_command(cmd, &mut Vec::new()),
                    };
                    if matches!(step, Step::Close) {
                        return None;
                    }
                }
                () = sleep_until(wake) => self.on_timer(&mut Vec::new()),
            }
        }
    }

    /// One connected session, from `welcome` until the connection is lost or closed.
    /// Returns `Close`, `Fatal` or `Reconnect`.
    async fn session(&mut self, mut ws: Ws) -> Step {
        let mut out = Vec::new();
        self.start_session(&mut out);
        let end = loop {
            if !out.is_empty() {
                if let Err(e) = write_all(&mut ws, &mut out).await {
                    break Step::Reconnect(format!("write failed: {e}"));
                }
            }
            let wake = self.next_wakeup(Instant::now());
            let input = tokio::select! {
                cmd = self.cmds.recv() => Input::Cmd(cmd),
                frame = ws.next() => Input::Frame(frame),
                () = sleep_until(wake) => Input::Timer,
            };
            let step = match input {
                Input::Cmd(None) => Step::Close,
                Input::Cmd(Some(cmd)) => self.on_commands(cmd, &mut out),
                Input::Frame(None) => Step::Reconnect("connection closed".into()),
                Input::Frame(Some(Err(e))) => Step::Reconnect(format!("read failed: {e}")),
                Input::Frame(Some(Ok(frame))) => self.on_frame(frame, &mut out),
                Input::Timer => {
                    self.on_timer(&mut out);
                    Step::Continue
                }
            };
            if !matches!(step, Step::Continue) {
                break step;
            }
        };
        self.end_session();
        match &end {
            Step::Close => {
                // Flush what the last commands produced, then the close handshake.
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let _ = write_all(&mut ws, &mut out).await;
                    let _ = ws.close(None).await;
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
            }
            Step::Reconnect(why) => {
                tracing::info!(reason = %why, "connection lost; reconnecting");
                let _ = tokio::time::timeout(Duration::from_millis(250), ws.close(None)).await;
            }
            Step::Fatal(e) => tracing::error!(error = %e, "connection refused; giving up"),
            Step::Continue => {}
        }
        end
    }

    fn online(&self) -> bool {
        !matches!(self.link, Link::Offline)
    }

    /// Welcome received: rejoin every room from its position, send pending first joins.
    fn start_session(&mut self, out: &mut Vec<Message>) {
        self.rooms.retain(|_, r| !r.tx.is_closed());
        self.docs.retain(|_, d| !d.tx.is_closed());
        let mut waiting = HashSet::new();
        for (name, room) in &self.rooms {
            let since = room.tracker.since();
            out.push(text(wire::join(name, Some(&room.kind), Some(&since), None)));
            waiting.insert(name.clone());
        }
        for (name, doc) in &self.docs {
            out.push(text(doc.rejoin_frame(name)));
            waiting.insert(name.clone());
        }
        for (name, req) in &mut self.joining {
            out.push(text(wire::join(
                name,
                req.opts.kind.as_deref(),
                None,
                req.opts.history,
            )));
            req.sent = true;
        }
        tracing::debug!(
            rooms = waiting.len(),
            docs = self.docs.len(),
            joins = self.joining.len(),
            publishes = self.pending.len(),
            "session started"
        );
        self.link = Link::Rejoining(waiting);
        self.check_ready(out);
    }

    /// Once every rejoin is answered: connected, and the pending publishes go out in order.
    fn check_ready(&mut self, out: &mut Vec<Message>) {
        if matches!(&self.link, Link::Rejoining(w) if w.is_empty()) {
            self.link = Link::Ready;
            self.attempt = 0;
            self.connected.send_replace(true);
            self.flush_pending(out);
            self.flush_docs(out);
        }
    }

    fn end_session(&mut self) {
        self.link = Link::Offline;
        self.connected.send_replace(false);
        self.pending.connection_lost();
        self.docs_connection_lost();
        for req in self.joining.values_mut() {
            req.sent = false;
        }
        // Not rejoined on the next connection: as good as left.
        for (_, waiters) in self.leaving.drain() {
            for w in waiters {
                let _ = w.send(Ok(()));
            }
        }
    }

    /// Stops for good: everything still waiting gets `reason`, rooms end.
    fn finish(&mut self, reason: ClientError) {
        tracing::debug!(reason = %reason, "client task stopping");
        self.connected.send_replace(false);
        self.cmds.close();
        while let Ok(cmd) = self.cmds.try_recv() {
            match cmd {
                Command::Join { reply, .. } => {
                    let _ = reply.send(Err(reason.clone()));
                }
                Command::JoinDoc { reply, .. } => {
                    let _ = reply.send(Err(reason.clone()));
                }
                Command::DocKick { .. } => {}
                Command::Leave { reply, .. } => {
                    let _ = reply.send(Ok(()));
                }
                Command::Publish { reply, .. } => {
                    let _ = reply.send(Err(reason.clone()));
                }
                Command::Close { reply } => self.closers.push(reply),
            }
        }
        for w in self.pending.drain() {
            let _ = w.send(Err(reason.clone()));
        }
        for (_, req) in self.joining.drain() {
            req.reply.fail(reason.clone());
        }
        for (_, waiters) in self.leaving.drain() {
            for w in waiters {
                let _ = w.send(Ok(()));
            }
        }
        for (_, room) in self.rooms.drain() {
            let _ = room.tx.send(Delivery::Ended(reason.clone()));
        }
        for (_, doc) in self.docs.drain() {
            doc.end_with(reason.clone());
        }
        for c in self.closers.drain(..) {
            let _ = c.send(());
        }
    }

    /// Handles `first` and whatever else is already queued, so that it is written in one flush.
    fn on_commands(&mut self, first: Command, out: &mut Vec<Message>) -> Step {
        let mut step = self.on_command(first, out);
        for _ in 0..COMMAND_BATCH {
            if !matches!(step, Step::Continue) {
                break;
            }
            match self.cmds.try_recv() {
                Ok(cmd) => step = self.on_command(cmd, out),
                Err(_) => break,
            }
        }
        step
    }

    fn on_command(&mut self, cmd: Command, out: &mut Vec<Message>) -> Step {
        match cmd {
            Command::Join { room, opts, reply } => {
                self.on_join(room, opts, JoinReply::Room(reply), out)
            }
            Command::JoinDoc { room, opts, reply } => {
                let opts = JoinOptions {
                    kind: opts.create.then(|| docs::DOC_KIND.to_string()),
                    history: None,
                };
                self.on_join(room, opts, JoinReply::Doc(reply), out)
            }
            Command::DocKick { room } => self.flush_doc(&room, out),
            Command::Leave { room, reply } => self.on_leave(room, reply, out),
            Command::Publish {
                room,
                id,
                frame,
                deadline,
                reply,
            } => {
                self.pending.push(room, id, frame, deadline, reply);
                self.flush_pending(out);
            }
            Command::Close { reply } => {
                self.closers.push(reply);
                return Step::Close;
            }
        }
        Step::Continue
    }

    fn on_join(
        &mut self,
        room: String,
        opts: JoinOptions,
        reply: JoinReply,
        out: &mut Vec<Message>,
    ) {
        let live = self.rooms.get(&room).map(|r| !r.tx.is_closed());
        let live_doc = self.docs.get(&room).map(|d| !d.tx.is_closed());
        if let Some(live) = live.or(live_doc) {
            if live {
                reply.fail(ClientError::AlreadyJoined(room));
                return;
            }
            // The previous handle was dropped: leave, then join afresh.
            self.drop_room(&room, out);
        }
        if let Some(req) = self.joining.get_mut(&room) {
            let same_kind = matches!(
                (&req.reply, &reply),
                (JoinReply::Room(_), JoinReply::Room(_)) | (JoinReply::Doc(_), JoinReply::Doc(_))
            );
            if req.reply.is_closed() && same_kind {
                req.reply = reply; // the earlier caller gave up; take over its join
            } else {
                reply.fail(ClientError::AlreadyJoined(room));
            }
            return;
        }
        let mut req = JoinRequest {
            opts,
            reply,
            sent: false,
        };
        if self.online() && !self.leaving.contains_key(&room) {
            out.push(text(wire::join(
                &room,
                req.opts.kind.as_deref(),
                None,
                req.opts.history,
            )));
            req.sent = true;
        }
        self.joining.insert(room, req);
    }

    fn on_leave(
        &mut self,
        room: String,
        reply: oneshot::Sender<Result<(), ClientError>>,
        out: &mut Vec<Message>,
    ) {
        let mut on_server = self.leaving.contains_key(&room);
        if self.rooms.remove(&room).is_some() || self.remove_doc(&room) {
            self.forget_rejoin(&room);
            on_server = true;
        }
        if let Some(req) = self.joining.remove(&room) {
            on_server |= req.sent;
            req.reply.fail(ClientError::Cancelled(room.clone()));
        }
        if on_server {
            self.send_leave(&room, Some(reply), out);
        } else {
            let _ = reply.send(Ok(()));
        }
        self.check_ready(out);
    }

    /// Sends `leave` (when online) and remembers it until `left`.
    fn send_leave(
        &mut self,
        room: &str,
        reply: Option<oneshot::Sender<Result<(), ClientError>>>,
        out: &mut Vec<Message>,
    ) {
        if !self.online() {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(()));
            }
            return;
        }
        let waiters = match self.leaving.get_mut(room) {
            Some(waiters) => waiters,
            None => {
                out.push(text(wire::leave(room)));
                self.leaving.entry(room.to_string()).or_default()
            }
        };
        waiters.extend(reply);
    }

    /// Forgets a room whose handle is gone (or that is being replaced), leaving it on the server.
    fn drop_room(&mut self, room: &str, out: &mut Vec<Message>) {
        if self.rooms.remove(room).is_some() || self.remove_doc(room) {
            tracing::debug!(room, "room handle dropped; leaving");
            self.forget_rejoin(room);
            self.send_leave(room, None, out);
        }
    }

    fn forget_rejoin(&mut self, room: &str) {
        if let Link::Rejoining(waiting) = &mut self.link {
            waiting.remove(room);
        }
    }

    /// Sends the queued publishes that may go now (only once every room is rejoined).
    fn flush_pending(&mut self, out: &mut Vec<Message>) {
        if !matches!(self.link, Link::Ready) {
            return;
        }
        let sends = self.pending.take_sendable(Instant::now());
        if !sends.is_empty() {
            tracing::trace!(client = %self.config.client_id, n = sends.len(), "publishes sent");
        }
        let resent = sends.iter().filter(|o| o.resend).count() as u64;
        if resent > 0 {
            Counters::bump(&self.counters.resent_publishes, resent);
        }
        out.extend(sends.into_iter().map(|o| {
            if o.resend {
                // Flagged, so a distributed server looks it up beyond its idempotency window.
                Message::Text(wire::as_resend(o.frame.as_str()).into())
            } else {
                Message::Text(o.frame)
            }
        }))
    }

    fn on_timer(&mut self, out: &mut Vec<Message>) {
        for w in self.pending.expire(Instant::now()) {
            let _ = w.send(Err(ClientError::Timeout));
        }
        self.flush_pending(out);
        self.flush_docs(out);
    }

    /// When the publishes or the docs next need attention.
    fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        self.pending
            .next_wakeup(now)
            .into_iter()
            .chain(self.docs_next_wakeup())
            .min()
    }

    fn on_frame(&mut self, frame: Message, out: &mut Vec<Message>) -> Step {
        match frame {
            Message::Text(text) => self.on_text(&text, out),
            Message::Close(frame) => {
                let code = frame.as_ref().map(|f| u16::from(f.code));
                let why = match code {
                    Some(close::LAGGING) => "lagging",
                    Some(close::GOING_AWAY) => "server going away",
                    Some(close::POLICY) => "policy",
                    Some(close::TOO_BIG) => "frame too big",
                    _ => "closed by server",
                };
                Step::Reconnect(format!("{why} (close code {code:?})"))
            }
            Message::Binary(_) => {
                tracing::warn!("ignoring binary frame");
                Step::Continue
            }
            _ => Step::Continue,
        }
    }

    fn on_text(&mut self, text: &str, out: &mut Vec<Message>) -> Step {
        let msg = match decode_server(text) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring undecodable server frame");
                return Step::Continue;
            }
        };
        match msg {
            ServerMsg::Joined(j) => {
                let joined = Joined {
                    room: j.room.into_owned(),
                    kind: j.kind.into_owned(),
                    epoch: j.epoch.into_owned(),
                    seq: j.seq,
                    recovered: j.recovered,
                    // Decoded messages hold values, never encoded parts.
                    events: j
                        .events
                        .into_iter()
                        .filter_map(|e| e.into_value().ok())
                        .collect(),
                    state: j.state.map(Cow::into_owned),
                    hash: j.hash.map(Cow::into_owned),
                };
                self.on_joined(joined, out)
            }
            ServerMsg::Left(l) => {
                self.on_left(&l.room, out);
                Step::Continue
            }
            ServerMsg::Ack(a) => {
                if self.docs.contains_key(&*a.room) {
                    return self.on_doc_ack(&a.room, &a.id, a.seq, &a.dropped, out);
                }
                match self.pending.complete(&a.id) {
                    Some(waiters) => {
                        let ack = Ack {
                            room: a.room.into_owned(),
                            id: a.id.into_owned(),
                            seq: a.seq,
                            hlc: a.hlc.into_owned(),
                        };
                        for w in waiters {
                            let _ = w.send(Ok(ack.clone()));
                        }
                    }
                    None => tracing::debug!(id = %a.id, "ack for no pending publish"),
                }
                Step::Continue
            }
            ServerMsg::Event(event) => self.on_event(event, out),
            ServerMsg::Error(e) => self.on_error(
                e.id.map(Cow::into_owned),
                e.room.map(Cow::into_owned),
                e.code.into_owned(),
                e.message.into_owned(),
                e.retry_after_ms,
                out,
            ),
            ServerMsg::Welcome(_) => Step::Continue,
            // Presence, membership and auth notices are not surfaced by this client yet.
            ServerMsg::Presence(_)
            | ServerMsg::MemberJoined(_)
            | ServerMsg::MemberLeft(_)
            | ServerMsg::AuthOk(_) => Step::Continue,
            ServerMsg::Other(other) => {
                tracing::debug!(ty = other.ty, "ignoring unknown message type");
                Step::Continue
            }
        }
    }

    fn on_joined(&mut self, j: Joined, out: &mut Vec<Message>) -> Step {
        let rejoin = match &mut self.link {
            Link::Rejoining(waiting) => waiting.remove(&j.room),
            _ => false,
        };
        if self.docs.contains_key(&j.room) {
            if rejoin || self.doc_awaits_state(&j.room) {
                let step = self.on_doc_rejoined(j, out);
                self.check_ready(out);
                return step;
            }
            tracing::debug!(room = j.room, "ignoring joined of a doc not rejoining");
            return Step::Continue;
        }
        let Joined {
            room,
            kind,
            epoch,
            seq,
            recovered,
            events,
            ..
        } = j;
        if rejoin {
            tracing::debug!(client = %self.config.client_id, room, epoch, seq, recovered, "rejoined");
            if let Some(joined) = self.rooms.get_mut(&room) {
                let result = joined.tracker.on_rejoined(epoch, seq, recovered, events);
                if result.violation {
                    Counters::bump(&self.counters.protocol_violations, 1);
                    tracing::warn!(
                        room,
                        seq,
                        "recovered events do not continue our position; delivering a reset"
                    );
                }
                joined.kind = kind;
                let alive = result
                    .updates
                    .into_iter()
                    .all(|u| joined.tx.send(Delivery::Update(u)).is_ok());
                if !alive {
                    self.drop_room(&room, out);
                }
            }
            self.check_ready(out);
            return Step::Continue;
        }
        if !self.joining.get(&room).is_some_and(|req| req.sent) {
            tracing::debug!(room, "ignoring joined answering an abandoned join");
            return Step::Continue;
        }
        let Some(req) = self.joining.remove(&room) else {
            return Step::Continue;
        };
        let reply = match req.reply {
            JoinReply::Room(reply) => reply,
            JoinReply::Doc(reply) => {
                let j = Joined {
                    room,
                    kind,
                    epoch,
                    seq,
                    recovered,
                    events,
                    state: j.state,
                    hash: j.hash,
                };
                self.on_doc_joined(j, req.opts.kind.is_some(), reply, out);
                return Step::Continue;
            }
        };
        if kind != STREAM_KIND {
            let _ = reply.send(Err(ClientError::UnsupportedKind(kind)));
            self.send_leave(&room, None, out);
            return Step::Continue;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let before_first = events.first().map_or(seq, |e| e.seq.saturating_sub(1));
        for event in events {
            let _ = tx.send(Delivery::Update(RoomUpdate::Event(event)));
        }
        let handle = Room::new(room.clone(), kind.clone(), epoch.clone(), before_first, rx);
        if reply.send(Ok(handle)).is_err() {
            self.send_leave(&room, None, out);
            return Step::Continue;
        }
        let joined = JoinedRoom {
            kind,
            tracker: SeqTracker::new(epoch, seq),
            tx,
        };
        self.rooms.insert(room, joined);
        Step::Continue
    }

    fn on_left(&mut self, room: &str, out: &mut Vec<Message>) {
        for w in self.leaving.remove(room).into_iter().flatten() {
            let _ = w.send(Ok(()));
        }
        self.send_deferred_join(room, out);
    }

    /// A join issued while a leave of the same room was unanswered goes out after the answer.
    fn send_deferred_join(&mut self, room: &str, out: &mut Vec<Message>) {
        if !self.online() {
            return;
        }
        if let Some(req) = self.joining.get_mut(room).filter(|req| !req.sent) {
            out.push(text(wire::join(
                room,
                req.opts.kind.as_deref(),
                None,
                req.opts.history,
            )));
            req.sent = true;
        }
    }

    fn on_event(&mut self, event: EventMsg, out: &mut Vec<Message>) -> Step {
        if matches!(&self.link, Link::Rejoining(waiting) if waiting.contains(&*event.room)) {
            tracing::debug!(room = %event.room, "ignoring event before rejoined");
            return Step::Continue;
        }
        if self.docs.contains_key(&*event.room) {
            return self.on_doc_event(event, out);
        }
        let Some(joined) = self.rooms.get_mut(&*event.room) else {
            tracing::debug!(room = %event.room, "ignoring event of a room not joined");
            return Step::Continue;
        };
        if let Err(gap) = joined.tracker.on_live(event.seq) {
            Counters::bump(&self.counters.protocol_violations, 1);
            tracing::warn!(
                room = %event.room,
                expected = gap.expected,
                got = gap.got,
                "event out of sequence; reconnecting to recover"
            );
            return Step::Reconnect(format!(
                "room {} expected seq {} got {}",
                event.room, gap.expected, gap.got
            ));
        }
        let room = event.room.clone();
        if joined
            .tx
            .send(Delivery::Update(RoomUpdate::Event(event)))
            .is_err()
        {
            self.drop_room(&room, out);
        }
        Step::Continue
    }

    fn on_error(
        &mut self,
        id: Option<String>,
        room: Option<String>,
        code: String,
        message: String,
        retry_after_ms: Option<u64>,
        out: &mut Vec<Message>,
    ) -> Step {
        let err = ClientError::server(code, message, retry_after_ms);
        if err.is_fatal() {
            return Step::Fatal(err);
        }
        if let Some(id) = &id {
            if let Some(step) = self.on_doc_op_error(id, room.as_deref(), &err, out) {
                return step;
            }
        }
        let retryable = err.code() == Some(ErrorCode::Unavailable.as_str());
        if let Some(id) = id {
            // An error about a publish (or about an id we no longer track).
            if retryable {
                let backoff = self.backoff;
                let at_least = Duration::from_millis(retry_after_ms.unwrap_or(0));
                let delay = |n| backoff.delay(n, &mut rand::rng()).max(at_least);
                if self.pending.retry_later(&id, Instant::now(), delay) {
                    tracing::debug!(client = %self.config.client_id, id, "publish unavailable; will resend");
                    return Step::Continue;
                }
            } else if let Some(waiters) = self.pending.complete(&id) {
                for w in waiters {
                    let _ = w.send(Err(err.clone()));
                }
                return Step::Continue;
            }
            tracing::debug!(id, error = %err, "error for no pending publish");
            return Step::Continue;
        }
        let Some(room) = room else {
            tracing::warn!(error = %err, "server error");
            return Step::Continue;
        };
        if self.joining.get(&room).is_some_and(|req| req.sent) {
            if let Some(req) = self.joining.remove(&room) {
                req.reply.fail(err);
            }
            return Step::Continue;
        }
        let rejoin = match &mut self.link {
            Link::Rejoining(waiting) => waiting.remove(&room),
            _ => false,
        };
        if rejoin || self.doc_awaits_state(&room) {
            let retry = retryable || err.code() == Some(ErrorCode::RateLimited.as_str());
            if retry {
                return Step::Reconnect(format!("rejoin of {room} failed: {err}"));
            }
            tracing::warn!(room, error = %err, "rejoin refused; the room ends");
            if let Some(joined) = self.rooms.remove(&room) {
                let _ = joined.tx.send(Delivery::Ended(err));
            } else if let Some(doc) = self.docs.remove(&room) {
                doc.end_with(err);
            }
            self.check_ready(out);
            return Step::Continue;
        }
        if self.leaving.contains_key(&room) {
            // e.g. "not a member": left all the same.
            self.on_left(&room, out);
            return Step::Continue;
        }
        if retryable && self.rejoin_room(&room, out) {
            // The server dropped the room (reloaded, reset): join it again from where we are.
            tracing::info!(room, error = %err, "room unavailable; joining it again");
            return Step::Continue;
        }
        tracing::warn!(room, error = %err, "server error");
        Step::Continue
    }

    /// Joins a joined room again within the session, from its position (a doc's list in
    /// flight is sent again after the answer). False if the room is not joined or offline.
    fn rejoin_room(&mut self, room: &str, out: &mut Vec<Message>) -> bool {
        let frame = if let Some(joined) = self.rooms.get(room) {
            let since = joined.tracker.since();
            wire::join(room, Some(&joined.kind), Some(&since), None)
        } else if let Some(doc) = self.docs.get(room) {
            doc.shared.lock().replica.connection_lost();
            doc.rejoin_frame(room)
        } else {
            return false;
        };
        match &mut self.link {
            Link::Offline => return false,
            Link::Rejoining(waiting) => {
                waiting.insert(room.to_string());
            }
            Link::Ready => self.link = Link::Rejoining(HashSet::from([room.to_string()])),
        }
        out.push(text(frame));
        true
    }
}

/// A `joined` message's fields.
struct Joined {
    room: String,
    kind: String,
    epoch: String,
    seq: u64,
    recovered: bool,
    events: Vec<EventMsg>,
    state: Option<serde_json::Value>,
    hash: Option<String>,
}

fn text(frame: String) -> Message {
    Message::Text(frame.into())
}

/// Writes everything queued with `feed`, then one `flush`.
async fn write_all(ws: &mut Ws, out: &mut Vec<Message>) -> Result<(), tungstenite::Error> {
    for frame in out.drain(..) {
        ws.feed(frame).await?;
    }
    ws.flush().await
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

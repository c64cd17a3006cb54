//! The application's handle on a joined room: a queue of gap-free updates.

use crate::EventMsg;
use tokio::sync::mpsc;

use crate::error::ClientError;

/// What a [`Room`] yields, in order.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum RoomUpdate {
    /// The next event of the room (seq = previous seq + 1, except for the `history` events of
    /// the first join, which are the room's latest events in order).
    Event(EventMsg),
    /// After a reconnect the missed events could not all be recovered (epoch changed, history
    /// trimmed): `events` (ending at `seq`) are the new truth; later `Event`s continue from
    /// `seq`.
    Reset {
        epoch: String,
        seq: u64,
        events: Vec<EventMsg>,
    },
}

/// What the background task sends to a [`Room`].
#[derive(Debug)]
pub(crate) enum Delivery {
    Update(RoomUpdate),
    /// The room ended (rejoin refused, client closed); nothing follows.
    Ended(ClientError),
}

/// A joined room. Updates are queued without bound by the client's task; read them with
/// [`Room::next`]. Dropping the `Room` leaves the room (lazily, at its next event).
#[derive(Debug)]
pub struct Room {
    name: String,
    kind: String,
    epoch: String,
    last_seq: u64,
    rx: mpsc::UnboundedReceiver<Delivery>,
    ended: Option<ClientError>,
}

impl Room {
    pub(crate) fn new(
        name: String,
        kind: String,
        epoch: String,
        last_seq: u64,
        rx: mpsc::UnboundedReceiver<Delivery>,
    ) -> Self {
        Room {
            name,
            kind,
            epoch,
            last_seq,
            rx,
            ended: None,
        }
    }

    /// The room's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The room's kind as the server reported it (`"stream"`).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The epoch of the updates returned so far (changes only through a `Reset`).
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The seq of the last update returned by [`next`](Room::next); before any, the seq just
    /// before the first queued history event (= the `joined` seq when no history was asked).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The next update; `None` once the room has ended: left, client closed, or rejoin refused
    /// (see [`end_reason`](Room::end_reason)).
    pub async fn next(&mut self) -> Option<RoomUpdate> {
        let delivery = self.rx.recv().await;
        self.accept(delivery)
    }

    /// The next update if one is already queued.
    pub fn try_next(&mut self) -> Option<RoomUpdate> {
        let delivery = self.rx.try_recv().ok();
        self.accept(delivery)
    }

    /// Why the room ended, if it ended with an error (e.g. a rejoin answered `not_found`,
    /// or [`ClientError::Closed`]). `None` while open or after a plain `leave`.
    pub fn end_reason(&self) -> Option<&ClientError> {
        self.ended.as_ref()
    }

    fn accept(&mut self, delivery: Option<Delivery>) -> Option<RoomUpdate> {
        match delivery? {
            Delivery::Update(update) => {
                match &update {
                    RoomUpdate::Event(e) => self.last_seq = e.seq,
                    RoomUpdate::Reset { epoch, seq, .. } => {
                        self.epoch.clone_from(epoch);
                        self.last_seq = *seq;
                    }
                }
                Some(update)
            }
            Delivery::Ended(e) => {
                self.ended = Some(e);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_protocol::Json;
    use serde_json::json;

    fn ev(seq: u64) -> EventMsg {
        EventMsg {
            room: "r".into(),
            seq,
            hlc: "h".into(),
            from: "c".into(),
            id: None,
            data: Some(Json::encode(&json!(seq)).unwrap()),
            ops: None,
            hash: None,
        }
    }

    #[test]
    fn position_follows_what_was_returned() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut room = Room::new("r".into(), "stream".into(), "e1".into(), 4, rx);
        tx.send(Delivery::Update(RoomUpdate::Event(ev(5)))).unwrap();
        tx.send(Delivery::Update(RoomUpdate::Reset {
            epoch: "e2".into(),
            seq: 9,
            events: vec![ev(9)],
        }))
        .unwrap();
        tx.send(Delivery::Ended(ClientError::Closed)).unwrap();
        drop(tx);
        assert_eq!((room.epoch(), room.last_seq()), ("e1", 4));
        assert!(matches!(room.try_next(), Some(RoomUpdate::Event(e)) if e.seq == 5));
        assert_eq!(room.last_seq(), 5);
        assert!(matches!(room.try_next(), Some(RoomUpdate::Reset { .. })));
        assert_eq!((room.epoch(), room.last_seq()), ("e2", 9));
        assert_eq!(room.try_next(), None);
        assert_eq!(room.end_reason(), Some(&ClientError::Closed));
        assert_eq!(room.try_next(), None);
    }
}

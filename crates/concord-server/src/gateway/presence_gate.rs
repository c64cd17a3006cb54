//! The presence rate of one connection: updates within `rate_presence_per_conn` go to their
//! room at once; updates beyond it are held, the latest per room replacing the one before, and
//! go out when the bucket refills; only updates beyond `rate_presence_flood_per_conn` are
//! refused.
//!
//! Invariant: the latest update a connection sent to a room (and was not refused) always
//! reaches the room — at once, or at the latest when the rate admits one more update — so the
//! other members never keep a stale cursor. Updates replaced while held never reach it.

use crate::config::Rate;
use crate::limiter::Bucket;
use concord_core::{Clock, RoomId};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What to do with one update.
#[derive(Debug)]
pub enum Offer {
    /// Send it to its room now.
    Send(Box<RawValue>),
    /// Held until the rate admits it; `replaced`: it took the place of an older held update.
    Held { replaced: bool },
    /// Refused: the connection floods; a token comes back in this many milliseconds.
    Refused(u64),
}

pub struct PresenceGate {
    clock: Arc<dyn Clock>,
    rate: Bucket,
    flood: Bucket,
    /// The latest held update of each room.
    held: BTreeMap<RoomId, Box<RawValue>>,
    /// When the rate admits the next held update (milliseconds on the server's clock); set
    /// exactly while `held` is not empty.
    due: Option<u64>,
}

impl PresenceGate {
    pub fn new(rate: Rate, flood: Rate, clock: &Arc<dyn Clock>) -> Self {
        PresenceGate {
            clock: clock.clone(),
            rate: Bucket::new(rate, clock),
            flood: Bucket::new(flood, clock),
            held: BTreeMap::new(),
            due: None,
        }
    }

    /// An update of `room`: sent at once while the rate admits it and nothing is held (a held
    /// update is replaced, not overtaken: its room never sees an older value after a newer).
    pub fn offer(&mut self, room: &RoomId, data: Box<RawValue>) -> Offer {
        if let Err(retry) = self.flood.check() {
            return Offer::Refused(retry);
        }
        if self.due.is_none() {
            match self.rate.check() {
                Ok(()) => return Offer::Send(data),
                Err(wait) => self.due = Some(self.clock.now_ms().saturating_add(wait)),
            }
        }
        let replaced = self.held.insert(room.clone(), data).is_some();
        Offer::Held { replaced }
    }

    /// When [`PresenceGate::release`] has something to send.
    pub fn due(&self) -> Option<u64> {
        self.due
    }

    /// The held updates the rate admits now (in room name order); the rest wait for the next
    /// [`PresenceGate::due`].
    pub fn release(&mut self) -> Vec<(RoomId, Box<RawValue>)> {
        let mut out = Vec::new();
        self.due = None;
        while let Some(entry) = self.held.first_entry() {
            if let Err(wait) = self.rate.check() {
                self.due = Some(self.clock.now_ms().saturating_add(wait));
                break;
            }
            out.push(entry.remove_entry());
        }
        out
    }

    /// The connection left `room`: its held update is dropped.
    pub fn forget(&mut self, room: &RoomId) {
        self.held.remove(room);
        if self.held.is_empty() {
            self.due = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_core::ManualClock;

    fn gate(rate: Rate, flood: Rate) -> (ManualClock, PresenceGate) {
        let time = ManualClock::new(1_000_000);
        let clock: Arc<dyn Clock> = Arc::new(time.clone());
        (time, PresenceGate::new(rate, flood, &clock))
    }

    fn raw(v: u32) -> Box<RawValue> {
        RawValue::from_string(v.to_string()).unwrap()
    }

    fn room(name: &str) -> RoomId {
        RoomId::new(name).unwrap()
    }

    /// An offer's outcome as text: `send N`, `held`, `replaced`, `refused MS`.
    fn shown(o: Offer) -> String {
        match o {
            Offer::Send(d) => format!("send {}", d.get()),
            Offer::Held { replaced: false } => "held".into(),
            Offer::Held { replaced: true } => "replaced".into(),
            Offer::Refused(ms) => format!("refused {ms}"),
        }
    }

    /// Released updates as `room=value`.
    fn released(g: &mut PresenceGate) -> Vec<String> {
        g.release()
            .into_iter()
            .map(|(r, d)| format!("{r}={}", d.get()))
            .collect()
    }

    #[test]
    fn within_the_rate_every_update_is_sent_at_once() {
        let (_, mut g) = gate(Rate::new(10, 3), Rate::UNLIMITED);
        for n in 0..3 {
            assert_eq!(shown(g.offer(&room("a"), raw(n))), format!("send {}", n));
        }
        assert_eq!(g.due(), None);
    }

    #[test]
    fn beyond_the_rate_the_latest_update_is_held_and_released_when_the_bucket_refills() {
        let (time, mut g) = gate(Rate::new(1, 1), Rate::UNLIMITED);
        assert_eq!(shown(g.offer(&room("a"), raw(0))), format!("send {}", 0));
        assert_eq!(shown(g.offer(&room("a"), raw(1))), "held");
        assert_eq!(shown(g.offer(&room("a"), raw(2))), "replaced");
        // 1 per second: the next token 1 s after the first was taken.
        assert_eq!(g.due(), Some(1_001_000));
        time.advance(999);
        assert_eq!(
            released(&mut g),
            Vec::<String>::new(),
            "released before the bucket refilled"
        );
        assert_eq!(g.due(), Some(1_001_000));
        time.advance(1);
        assert_eq!(released(&mut g), ["a=2"]);
        assert_eq!(g.due(), None);
    }

    #[test]
    fn while_an_update_is_held_a_newer_one_never_overtakes_it_to_the_room() {
        let (time, mut g) = gate(Rate::new(1, 1), Rate::UNLIMITED);
        assert_eq!(shown(g.offer(&room("a"), raw(0))), format!("send {}", 0));
        assert_eq!(shown(g.offer(&room("a"), raw(1))), "held");
        time.advance(2000);
        // A token is available again, but an update is held: the new one replaces it and goes
        // out at the release (so a room never sees 1 after 2).
        assert_eq!(shown(g.offer(&room("a"), raw(2))), "replaced");
        assert_eq!(released(&mut g), ["a=2"]);
    }

    #[test]
    fn held_updates_of_several_rooms_go_out_as_tokens_allow() {
        let (time, mut g) = gate(Rate::new(1, 1), Rate::UNLIMITED);
        assert_eq!(shown(g.offer(&room("a"), raw(0))), format!("send {}", 0));
        g.offer(&room("b"), raw(1));
        g.offer(&room("c"), raw(2));
        time.advance(1000);
        assert_eq!(released(&mut g), ["b=1"]);
        assert_eq!(g.due(), Some(1_002_000));
        time.advance(1000);
        assert_eq!(released(&mut g), ["c=2"]);
        assert_eq!(g.due(), None);
    }

    #[test]
    fn a_room_left_drops_its_held_update() {
        let (time, mut g) = gate(Rate::new(1, 1), Rate::UNLIMITED);
        g.offer(&room("a"), raw(0));
        g.offer(&room("a"), raw(1));
        g.forget(&room("a"));
        assert_eq!(g.due(), None);
        time.advance(1000);
        assert_eq!(released(&mut g), Vec::<String>::new());
    }

    #[test]
    fn beyond_the_flood_rate_updates_are_refused() {
        let (time, mut g) = gate(Rate::new(1, 1), Rate::new(2, 3));
        g.offer(&room("a"), raw(0));
        g.offer(&room("a"), raw(1));
        g.offer(&room("a"), raw(2));
        assert_eq!(shown(g.offer(&room("a"), raw(3))), "refused 500");
        time.advance(1000);
        // The held update is the last one admitted, not the refused one.
        assert_eq!(released(&mut g), ["a=2"]);
    }

    #[test]
    fn an_unlimited_rate_sends_everything() {
        let (_, mut g) = gate(Rate::UNLIMITED, Rate::UNLIMITED);
        for n in 0..1000 {
            assert_eq!(shown(g.offer(&room("a"), raw(n))), format!("send {}", n));
        }
    }
}

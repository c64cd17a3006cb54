//! Per-room sequence tracking: gap detection on live events, dedupe and checks on recovery.

use crate::EventMsg;
use concord_protocol::Since;

use crate::room::RoomUpdate;

/// A live event's seq was not `last + 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Gap {
    pub expected: u64,
    pub got: u64,
}

/// The result of a rejoin's `joined`.
#[derive(Debug, PartialEq)]
pub(crate) struct Rejoined {
    pub updates: Vec<RoomUpdate>,
    /// `recovered: true` but the events did not continue our position: delivered as a reset.
    pub violation: bool,
}

/// The position (epoch, last seq delivered) of one joined room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SeqTracker {
    epoch: String,
    last: u64,
}

impl SeqTracker {
    /// After a first `joined`: everything up to `seq` has been delivered.
    pub(crate) fn new(epoch: String, seq: u64) -> Self {
        SeqTracker { epoch, last: seq }
    }

    /// What to send as `since` on a rejoin.
    pub(crate) fn since(&self) -> Since {
        Since {
            epoch: self.epoch.clone(),
            seq: self.last,
        }
    }

    /// A live event: deliverable only if it is exactly the next seq.
    pub(crate) fn on_live(&mut self, seq: u64) -> Result<(), Gap> {
        let expected = self.last + 1;
        if seq != expected {
            return Err(Gap { expected, got: seq });
        }
        self.last = seq;
        Ok(())
    }

    /// The `joined` answering a rejoin with `since`. With `recovered: true` the events after our
    /// position are delivered as events (older ones skipped); if they do not lead, gap-free, from
    /// our position to `seq` in our epoch, the server broke its promise and we deliver a reset
    /// rather than a gap. With `recovered: false`, a reset.
    pub(crate) fn on_rejoined(
        &mut self,
        epoch: String,
        seq: u64,
        recovered: bool,
        events: Vec<EventMsg>,
    ) -> Rejoined {
        if recovered && epoch == self.epoch {
            let fresh: Vec<EventMsg> = events
                .iter()
                .filter(|e| e.seq > self.last)
                .cloned()
                .collect();
            let contiguous = fresh
                .iter()
                .enumerate()
                .all(|(i, e)| e.seq == self.last + 1 + i as u64);
            if contiguous && self.last + fresh.len() as u64 == seq {
                self.last = seq;
                return Rejoined {
                    updates: fresh.into_iter().map(RoomUpdate::Event).collect(),
                    violation: false,
                };
            }
        }
        let violation = recovered;
        self.epoch.clone_from(&epoch);
        self.last = seq;
        Rejoined {
            updates: vec![RoomUpdate::Reset { epoch, seq, events }],
            violation,
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
            hlc: format!("h{seq}").into(),
            from: "c".into(),
            id: None,
            data: Some(Json::encode(&json!({ "n": seq })).unwrap()),
            ops: None,
            hash: None,
        }
    }

    fn seqs(updates: &[RoomUpdate]) -> Vec<u64> {
        updates
            .iter()
            .map(|u| match u {
                RoomUpdate::Event(e) => e.seq,
                other => panic!("not an event: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn live_events_must_be_consecutive() {
        let mut t = SeqTracker::new("e1".into(), 10);
        assert_eq!(t.on_live(11), Ok(()));
        assert_eq!(t.on_live(12), Ok(()));
        assert_eq!(
            t.on_live(14),
            Err(Gap {
                expected: 13,
                got: 14
            })
        );
        assert_eq!(
            t.on_live(12),
            Err(Gap {
                expected: 13,
                got: 12
            })
        );
        assert_eq!(
            t.on_live(5),
            Err(Gap {
                expected: 13,
                got: 5
            })
        );
        // a rejected event does not move the position
        assert_eq!(
            t.since(),
            Since {
                epoch: "e1".into(),
                seq: 12
            }
        );
        assert_eq!(t.on_live(13), Ok(()));
    }

    #[test]
    fn recovery_delivers_exactly_the_missed_events() {
        let mut t = SeqTracker::new("e1".into(), 41);
        let r = t.on_rejoined("e1".into(), 44, true, vec![ev(42), ev(43), ev(44)]);
        assert!(!r.violation);
        assert_eq!(seqs(&r.updates), vec![42, 43, 44]);
        assert_eq!(t.since().seq, 44);
        assert_eq!(t.on_live(45), Ok(()));
    }

    #[test]
    fn recovery_skips_events_already_seen() {
        let mut t = SeqTracker::new("e1".into(), 43);
        let r = t.on_rejoined(
            "e1".into(),
            45,
            true,
            vec![ev(41), ev(42), ev(43), ev(44), ev(45)],
        );
        assert!(!r.violation);
        assert_eq!(seqs(&r.updates), vec![44, 45]);
        // nothing missed
        let r = t.on_rejoined("e1".into(), 45, true, vec![ev(45)]);
        assert!(r.updates.is_empty() && !r.violation);
        let r = t.on_rejoined("e1".into(), 45, true, vec![]);
        assert!(r.updates.is_empty() && !r.violation);
        assert_eq!(t.since().seq, 45);
    }

    #[test]
    fn broken_recovery_becomes_a_reset_never_a_gap() {
        // hole in the middle
        let mut t = SeqTracker::new("e1".into(), 41);
        let r = t.on_rejoined("e1".into(), 44, true, vec![ev(42), ev(44)]);
        assert!(r.violation);
        assert!(
            matches!(&r.updates[..], [RoomUpdate::Reset { seq: 44, events, .. }] if events.len() == 2)
        );
        assert_eq!(t.since().seq, 44);
        // events stop short of `seq`
        let mut t = SeqTracker::new("e1".into(), 41);
        let r = t.on_rejoined("e1".into(), 45, true, vec![ev(42), ev(43)]);
        assert!(r.violation);
        // seq went backwards
        let mut t = SeqTracker::new("e1".into(), 41);
        let r = t.on_rejoined("e1".into(), 30, true, vec![]);
        assert!(r.violation);
        assert_eq!(t.since().seq, 30);
        // "recovered" across an epoch change
        let mut t = SeqTracker::new("e1".into(), 41);
        let r = t.on_rejoined("e2".into(), 42, true, vec![ev(42)]);
        assert!(r.violation);
        assert_eq!(
            t.since(),
            Since {
                epoch: "e2".into(),
                seq: 42
            }
        );
    }

    #[test]
    fn unrecovered_rejoin_is_a_reset_and_the_new_position() {
        let mut t = SeqTracker::new("e1".into(), 41);
        let r = t.on_rejoined("e2".into(), 3, false, vec![ev(2), ev(3)]);
        assert!(!r.violation);
        assert_eq!(
            r.updates,
            vec![RoomUpdate::Reset {
                epoch: "e2".into(),
                seq: 3,
                events: vec![ev(2), ev(3)]
            }]
        );
        assert_eq!(
            t.since(),
            Since {
                epoch: "e2".into(),
                seq: 3
            }
        );
        assert_eq!(t.on_live(4), Ok(()));
    }
}

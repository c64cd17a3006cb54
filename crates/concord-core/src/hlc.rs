//! Hybrid logical clocks: wall-clock milliseconds + logical counter + node id, with an injected clock.
//!
//! Timestamps render as `WWWWWWWWWWWWW-LLLLLL-node` (13-digit wall ms, 6-digit logical counter),
//! so for one node their string order is their time order.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A source of physical time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to (tests, simulations).
#[derive(Debug, Default, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn new(ms: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(ms)))
    }
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst)
    }
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

const MAX_LOGICAL: u32 = 999_999;

/// One hybrid logical clock reading.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct HlcTimestamp {
    pub wall_ms: u64,
    pub logical: u32,
    pub node: Arc<str>,
}

impl HlcTimestamp {
    /// Parses the string form produced by `Display`.
    pub fn parse(s: &str) -> Option<HlcTimestamp> {
        let mut parts = s.splitn(3, '-');
        let wall = parts.next()?;
        let logical = parts.next()?;
        let node = parts.next()?;
        if wall.len() != 13 || logical.len() != 6 || node.is_empty() {
            return None;
        }
        Some(HlcTimestamp {
            wall_ms: wall.parse().ok()?,
            logical: logical.parse().ok()?,
            node: Arc::from(node),
        })
    }
}

impl fmt::Display for HlcTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:013}-{:06}-{}", self.wall_ms, self.logical, self.node)
    }
}

/// An HLC reading in its text form (as `Display` renders it, as events carry it on the wire and
/// in storage), checked once to parse. Cheap to clone; its order is the string order.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HlcText(Arc<str>);

impl HlcText {
    /// Checks that `s` is an HLC reading as `Display` renders it: 13 digits of wall time, `-`,
    /// 6 digits of logical counter, `-`, the node (any text, even empty: the node id is not
    /// validated, and what a node wrote must read back).
    pub fn parse(s: &str) -> Option<HlcText> {
        Self::parts(s).map(|_| HlcText(Arc::from(s)))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The reading it renders.
    pub fn timestamp(&self) -> HlcTimestamp {
        let (wall_ms, logical, node) = Self::parts(&self.0).expect("checked when built");
        HlcTimestamp {
            wall_ms,
            logical,
            node: Arc::from(node),
        }
    }

    fn parts(s: &str) -> Option<(u64, u32, &str)> {
        let b = s.as_bytes();
        let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        if b.len() < 21 || !digits(0..13) || b[13] != b'-' || !digits(14..20) || b[20] != b'-' {
            return None;
        }
        Some((s[..13].parse().ok()?, s[14..20].parse().ok()?, &s[21..]))
    }
}

impl From<&HlcTimestamp> for HlcText {
    fn from(ts: &HlcTimestamp) -> Self {
        HlcText(Arc::from(ts.to_string()))
    }
}
impl fmt::Debug for HlcText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}
impl fmt::Display for HlcText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The state machine of a hybrid logical clock for one node.
///
/// Every reading is strictly greater than the previous one, whatever the physical clock does
/// (stalls, jumps backwards); readings stay close to physical time when it behaves.
#[derive(Debug, Clone)]
pub struct HlcClock {
    node: Arc<str>,
    wall_ms: u64,
    logical: u32,
}

impl HlcClock {
    pub fn new(node: &str) -> Self {
        HlcClock {
            node: Arc::from(node),
            wall_ms: 0,
            logical: 0,
        }
    }

    fn bump(&mut self, wall: u64, logical: u32) {
        if logical > MAX_LOGICAL {
            self.wall_ms = wall + 1;
            self.logical = 0;
        } else {
            self.wall_ms = wall;
            self.logical = logical;
        }
    }

    fn reading(&self) -> HlcTimestamp {
        HlcTimestamp {
            wall_ms: self.wall_ms,
            logical: self.logical,
            node: self.node.clone(),
        }
    }

    /// A new local reading given the physical time `physical_ms`.
    pub fn now(&mut self, physical_ms: u64) -> HlcTimestamp {
        if physical_ms > self.wall_ms {
            self.bump(physical_ms, 0);
        } else {
            self.bump(self.wall_ms, self.logical + 1);
        }
        self.reading()
    }

    /// Merges a timestamp seen elsewhere (a message, or the last event stored for a room), so
    /// that every later reading is greater than it.
    pub fn observe(&mut self, remote: &HlcTimestamp, physical_ms: u64) {
        let wall = self.wall_ms.max(remote.wall_ms).max(physical_ms);
        let logical = if wall == self.wall_ms && wall == remote.wall_ms {
            self.logical.max(remote.logical) + 1
        } else if wall == self.wall_ms {
            self.logical + 1
        } else if wall == remote.wall_ms {
            remote.logical + 1
        } else {
            0
        };
        self.bump(wall, logical);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn string_form_round_trips_and_sorts() {
        let mut c = HlcClock::new("gw-1");
        let a = c.now(1_763_812_345_678);
        let b = c.now(1_763_812_345_678);
        assert_eq!(a.to_string(), "1763812345678-000000-gw-1");
        assert_eq!(HlcTimestamp::parse(&b.to_string()), Some(b.clone()));
        assert!(a.to_string() < b.to_string());
        assert_eq!(HlcTimestamp::parse("12-000000-x"), None);
    }

    #[test]
    fn text_form_keeps_the_text_and_refuses_what_does_not_parse() {
        let ts = HlcClock::new("gw-1").now(1_763_812_345_678);
        let t = HlcText::from(&ts);
        assert_eq!(t.as_str(), "1763812345678-000000-gw-1");
        assert_eq!(HlcText::parse(t.as_str()), Some(t.clone()));
        assert_eq!(t.timestamp(), ts);
        // A node id is not validated: an empty one still reads back.
        let empty = HlcText::parse("1763812345678-000001-").expect("an empty node");
        let ts = HlcTimestamp {
            wall_ms: 1_763_812_345_678,
            logical: 1,
            node: Arc::from(""),
        };
        assert_eq!(empty.timestamp(), ts);
        assert_eq!(HlcText::from(&ts), empty);
        assert_eq!(empty.to_string(), "1763812345678-000001-");
        for bad in [
            "not an hlc",
            "1763812345678-000000",
            "176381234567-0000000-n",
            "+763812345678-000000-n",
        ] {
            assert_eq!(HlcText::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn logical_overflow_moves_wall_forward() {
        let mut c = HlcClock::new("n");
        let mut prev = c.now(1000);
        for _ in 0..(MAX_LOGICAL as usize + 5) {
            let t = c.now(1000);
            assert!(t > prev);
            prev = t;
        }
        assert_eq!(prev.wall_ms, 1001);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Readings strictly increase, in struct order and string order, under any physical
        /// clock behaviour (skew, stalls, backwards jumps) and any observed remote timestamps.
        #[test]
        fn monotonic_under_skew(steps in proptest::collection::vec((0u64..5_000, proptest::option::of((0u64..6_000, 0u32..10))), 1..200)) {
            let mut c = HlcClock::new("n1");
            let base = 1_700_000_000_000u64;
            let mut prev: Option<HlcTimestamp> = None;
            for (phys, remote) in steps {
                if let Some((rw, rl)) = remote {
                    let r = HlcTimestamp { wall_ms: base + rw, logical: rl, node: Arc::from("n2") };
                    c.observe(&r, base + phys);
                    let t = c.now(base + phys);
                    prop_assert!((t.wall_ms, t.logical) > (r.wall_ms, r.logical));
                    if let Some(p) = &prev { prop_assert!(t > *p); }
                    prev = Some(t);
                }
                let t = c.now(base + phys);
                prop_assert!(t.wall_ms >= base + phys);
                if let Some(p) = &prev {
                    prop_assert!(t > *p);
                    prop_assert!(t.to_string() > p.to_string());
                }
                prev = Some(t);
            }
        }
    }
}

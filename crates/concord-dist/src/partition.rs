//! Virtual partitions: which partition a room lives in, and each partition's Redis hash tag.
//!
//! A room's partition is `fnv1a_64(name) mod P`. Partition `p`'s tag is `{pNNNN.k}` with the
//! smallest `k` such that Redis Cluster's slot of the tag text, `CRC16(text) mod 16384`, falls in
//! `[p·16384/P, (p+1)·16384/P)`: the tags cover the slots evenly and in order.

use std::sync::{Arc, OnceLock};

/// The number of Redis Cluster hash slots.
pub const SLOTS: u32 = 16384;
/// The fewest partitions a cluster may have.
pub const MIN_PARTITIONS: u32 = 1024;
/// The most partitions a cluster may have.
pub const MAX_PARTITIONS: u32 = 4096;

/// A partition number, `0..P`, as given by a `Partitions` (`of`, `get`, `iter`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Partition(u32);

impl Partition {
    /// Its number (`0..P`; PostgreSQL's shard is this mod K).
    pub fn number(self) -> u32 {
        self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartitionError {
    #[error("the partition count must be in {MIN_PARTITIONS}..={MAX_PARTITIONS}, not {0}")]
    Count(u32),
}

/// The partitions of a cluster with their hash tags (computed once; cheap to clone).
#[derive(Clone, Debug)]
pub struct Partitions {
    count: u32,
    tags: Arc<[String]>,
}

impl Partitions {
    /// The `count` partitions of a cluster and their tags.
    pub fn new(count: u32) -> Result<Self, PartitionError> {
        if !(MIN_PARTITIONS..=MAX_PARTITIONS).contains(&count) {
            return Err(PartitionError::Count(count));
        }
        let tags = (0..count)
            .map(|p| format!("{{{}}}", tag_text(p, count)))
            .collect();
        Ok(Partitions { count, tags })
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// The partition of a room (by its name's bytes).
    pub fn of(&self, room: &str) -> Partition {
        Partition((fnv1a_64(room.as_bytes()) % u64::from(self.count)) as u32)
    }

    /// Partition number `n`, if this cluster has it.
    pub fn get(&self, n: u32) -> Option<Partition> {
        (n < self.count).then_some(Partition(n))
    }

    /// Every partition, in order.
    pub fn iter(&self) -> impl Iterator<Item = Partition> + use<> {
        (0..self.count).map(Partition)
    }

    /// The hash tag of a partition, braces included (`{p0042.17}`).
    ///
    /// # Panics
    /// Only for a partition of another, larger `Partitions` (a `Partition` is made by this
    /// type only, and one process has one partition count).
    pub fn tag(&self, p: Partition) -> &str {
        &self.tags[p.0 as usize]
    }

    /// The slot range `[lo, hi)` whose slots partition `p`'s tag must hash to.
    pub fn slot_range(&self, p: Partition) -> (u32, u32) {
        slot_range(p.0, self.count)
    }
}

fn slot_range(p: u32, count: u32) -> (u32, u32) {
    (p * SLOTS / count, (p + 1) * SLOTS / count)
}

/// FNV-1a, 64 bits.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// CRC16/XMODEM (polynomial 0x1021, init 0), the checksum of Redis Cluster's key slots.
pub fn crc16(bytes: &[u8]) -> u16 {
    crc16_from(0, bytes)
}

fn crc16_from(mut crc: u16, bytes: &[u8]) -> u16 {
    let table = crc_table();
    for &b in bytes {
        crc = (crc << 8) ^ table[usize::from((crc >> 8) as u8 ^ b)];
    }
    crc
}

fn crc_table() -> &'static [u16; 256] {
    static TABLE: OnceLock<[u16; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [0u16; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = (i as u16) << 8;
            for _ in 0..8 {
                c = if c & 0x8000 != 0 {
                    (c << 1) ^ 0x1021
                } else {
                    c << 1
                };
            }
            *slot = c;
        }
        t
    })
}

/// Redis Cluster's slot of a key: the CRC16 of its hash tag (the text between the first `{`
/// and the next `}`, when not empty) or of the whole key, mod 16384.
pub fn key_slot(key: &[u8]) -> u32 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    u32::from(crc16(hashed)) % SLOTS
}

/// The digits of `k` written in decimal, for `k` below this bound, are searched with the
/// inverse tables; a partition with no fitting `k` below it (never seen: the odds are about
/// e^-24 at 4096 partitions) falls back to a linear search.
const TABLE_DIGITS: usize = 5;

/// For each digit count d (1..=TABLE_DIGITS) and each CRC value v, the smallest d-digit number
/// whose decimal text has CRC16 `v` from a zero start (u32::MAX: none).
fn inverse_tables() -> &'static [Vec<u32>] {
    static TABLES: OnceLock<Vec<Vec<u32>>> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut tables = vec![vec![u32::MAX; 1 << 16]; TABLE_DIGITS];
        let mut lo = 0u32;
        for (d, table) in tables.iter_mut().enumerate() {
            let hi = 10u32.pow(d as u32 + 1);
            for k in lo..hi {
                let v = usize::from(crc16(k.to_string().as_bytes()));
                if table[v] == u32::MAX {
                    table[v] = k;
                }
            }
            lo = hi;
        }
        tables
    })
}

/// The text of partition `p`'s tag (without braces): `pNNNN.k`, smallest fitting `k`.
///
/// CRC16 without reflection or final xor is linear, so `crc(prefix ‖ digits)` is
/// `crc_from(crc(prefix), d zero bytes) ^ crc(digits)`: for each digit count, the wanted CRC
/// values of the digits are known and the inverse tables give the smallest number having one.
fn tag_text(p: u32, count: u32) -> String {
    let prefix = format!("p{p:04}.");
    let (lo, hi) = slot_range(p, count);
    let base = crc16(prefix.as_bytes());
    for (d, table) in inverse_tables().iter().enumerate() {
        let shifted = crc16_from(base, &vec![0u8; d + 1]);
        let best = (lo..hi)
            .flat_map(|slot| (0..4u32).map(move |j| slot + j * SLOTS))
            .map(|v| table[usize::from(shifted ^ v as u16)])
            .min()
            .unwrap_or(u32::MAX);
        if best != u32::MAX {
            return format!("{prefix}{best}");
        }
    }
    let mut k = 10u64.pow(TABLE_DIGITS as u32);
    loop {
        let text = format!("{prefix}{k}");
        let slot = u32::from(crc16(text.as_bytes())) % SLOTS;
        if (lo..hi).contains(&slot) {
            return text;
        }
        k += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn crc16_matches_redis_test_vectors() {
        assert_eq!(crc16(b"123456789"), 0x31C3, "the XMODEM check value");
        assert_eq!(key_slot(b"foo"), 12182, "Redis: CLUSTER KEYSLOT foo");
        assert_eq!(key_slot(b"bar"), 5061, "Redis: CLUSTER KEYSLOT bar");
        assert_eq!(
            key_slot(b"{user1000}.following"),
            key_slot(b"{user1000}.followers"),
            "keys with one hash tag share a slot"
        );
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_ne!(
            key_slot(b"foo{}{bar}"),
            key_slot(b"bar"),
            "an empty tag hashes the whole key"
        );
    }

    #[test]
    fn fnv1a_matches_reference_values() {
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn partitions_are_numbered_in_range() {
        let parts = Partitions::new(1024).expect("a valid count");
        assert_eq!(parts.get(1023).map(Partition::number), Some(1023));
        assert_eq!(parts.get(1024), None);
        assert_eq!(parts.iter().count(), 1024);
        assert!(parts
            .iter()
            .all(|p| parts.of("x").number() < 1024 && p.number() < 1024));
    }

    #[test]
    fn counts_outside_the_range_are_refused() {
        assert_eq!(
            Partitions::new(1023).unwrap_err(),
            PartitionError::Count(1023)
        );
        assert_eq!(
            Partitions::new(4097).unwrap_err(),
            PartitionError::Count(4097)
        );
        assert!(Partitions::new(1024).is_ok());
        assert!(Partitions::new(4096).is_ok());
    }

    #[test]
    fn every_tag_hashes_into_its_partitions_slot_range() {
        for count in [1024, 1500, 3000, 4096] {
            let parts = Partitions::new(count).expect("a valid count");
            for p in 0..count {
                let part = parts.get(p).expect("in range");
                let tag = parts.tag(part);
                let (lo, hi) = parts.slot_range(part);
                let slot = key_slot(format!("concord:{tag}:m:room").as_bytes());
                assert!(
                    (lo..hi).contains(&slot),
                    "P={count}: tag {tag} of partition {p} hashes to slot {slot}, outside [{lo}, {hi})"
                );
                let want = format!("{{p{p:04}.");
                assert!(tag.starts_with(&want), "{tag} names its partition");
            }
        }
    }

    #[test]
    fn tags_take_the_smallest_fitting_k() {
        // A linear search from k = 0 is the definition; compare on a sample of partitions.
        for count in [1024u32, 4096] {
            let parts = Partitions::new(count).expect("a valid count");
            for p in (0..count).step_by(97) {
                let (lo, hi) = slot_range(p, count);
                let k = (0u64..)
                    .find(|k| {
                        let s = u32::from(crc16(format!("p{p:04}.{k}").as_bytes())) % SLOTS;
                        (lo..hi).contains(&s)
                    })
                    .expect("some k fits");
                assert_eq!(
                    parts.tag(parts.get(p).expect("in range")),
                    format!("{{p{p:04}.{k}}}")
                );
            }
        }
    }

    #[test]
    fn tags_for_4096_partitions_are_computed_quickly() {
        // The inverse tables are built once per process; measure that too.
        let start = Instant::now();
        let parts = Partitions::new(4096).expect("a valid count");
        let took = start.elapsed();
        assert_eq!(parts.count(), 4096);
        // A few ms in a release build; a debug build on a loaded 2-core machine is given more.
        assert!(
            took.as_millis() < 2_000,
            "4096 tags took {took:?}: a linear search would take seconds"
        );
        let again = Instant::now();
        Partitions::new(4096).expect("a valid count");
        assert!(
            again.elapsed().as_millis() < 500,
            "with the tables built, 4096 tags took {:?}",
            again.elapsed()
        );
    }

    #[test]
    fn rooms_spread_evenly_over_partitions() {
        let parts = Partitions::new(1024).expect("a valid count");
        let rooms = 1024 * 100;
        let mut counts = vec![0u32; 1024];
        for i in 0..rooms {
            counts[parts.of(&format!("room-{i}")).0 as usize] += 1;
        }
        let (min, max) = (
            *counts.iter().min().expect("counts"),
            *counts.iter().max().expect("counts"),
        );
        // Mean 100, sd 10: a uniform hash stays well within [50, 150] over 1024 partitions.
        assert!(
            min >= 50 && max <= 150,
            "rooms per partition ranged {min}..={max}, expected about 100 each"
        );
        let chi2: f64 = counts
            .iter()
            .map(|&c| (f64::from(c) - 100.0).powi(2) / 100.0)
            .sum();
        // 1023 degrees of freedom: chi-square mean 1023, sd ~45.
        assert!(
            chi2 < 1300.0,
            "chi-square {chi2} too high for a uniform spread"
        );
    }
}

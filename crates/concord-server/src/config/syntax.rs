//! The text forms of the settings that are not plain numbers or strings — rates
//! (`PER_SEC[:BURST]`), room kinds (`PATTERN=KIND`) and retention policies
//! (`PATTERN=max_events:N,max_age:AGE`) — shared by flags, environment variables and the config
//! file, which writes each value as its flag would.

use super::{duration, Rate, RetentionPolicy};
use concord_core::RoomKind;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// `PER_SEC[:BURST]`, e.g. `1000:2000`; without `:BURST` the burst is twice the rate; `0`
/// disables the limit.
impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Rate, String> {
        let (rate, burst) = s.split_once(':').unwrap_or((s, ""));
        let per_sec: u32 = rate
            .trim()
            .parse()
            .map_err(|_| format!("bad rate {s:?} (PER_SEC[:BURST], e.g. 1000:2000)"))?;
        let burst: u32 = if burst.is_empty() {
            per_sec.saturating_mul(2)
        } else {
            burst
                .trim()
                .parse()
                .map_err(|_| format!("bad burst in {s:?} (PER_SEC[:BURST], e.g. 1000:2000)"))?
        };
        Ok(Rate::new(per_sec, burst))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.per_sec, self.burst)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Read from its text form, or from a bare integer (`PER_SEC`) in the config file.
impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            PerSec(u32),
            Text(String),
        }
        match Text::deserialize(d)? {
            Text::PerSec(n) => Ok(n.to_string().parse().map_err(serde::de::Error::custom)?),
            Text::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// `PATTERN=KIND` (`chat:*=stream`), one entry of `room_kinds`.
pub fn parse_room_kind(s: &str) -> Result<(String, RoomKind), String> {
    let (pattern, kind) = s
        .split_once('=')
        .ok_or_else(|| format!("bad room kind {s:?} (PATTERN=stream|doc)"))?;
    let kind = RoomKind::parse(kind.trim()).map_err(|e| format!("{s:?}: {e}"))?;
    Ok((pattern.trim().to_string(), kind))
}

/// `PATTERN=KIND,…` (`,` or `;` between entries; empty entries are skipped), the flag's form
/// of `room_kinds`.
pub fn parse_room_kinds(s: &str) -> Result<super::RoomKinds, String> {
    s.split([',', ';'])
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(parse_room_kind)
        .collect()
}

/// `POLICY;…` (empty policies are skipped), the flag's form of `retention`.
pub fn parse_retention(s: &str) -> Result<super::RetentionPolicies, String> {
    s.split(';')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(str::parse)
        .collect()
}

/// `#[serde(with = "room_kinds")]`: a list of `PATTERN=KIND` strings.
pub mod room_kinds {
    use super::*;

    pub fn serialize<S: Serializer>(kinds: &[(String, RoomKind)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(kinds.iter().map(|(p, k)| format!("{p}={}", k.as_str())))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(String, RoomKind)>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| parse_room_kind(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// `PATTERN=max_events:N,max_age:AGE` (`chat:*=max_events:100000,max_age:30d`), one retention
/// policy; AGE is a duration ([`duration::parse`]).
impl FromStr for RetentionPolicy {
    type Err = String;

    fn from_str(item: &str) -> Result<Self, String> {
        let item = item.trim();
        let (pattern, rules) = item
            .split_once('=')
            .ok_or_else(|| format!("bad retention {item:?} (PATTERN=max_events:N,max_age:AGE)"))?;
        let mut policy = RetentionPolicy {
            pattern: pattern.trim().to_string(),
            max_events: None,
            max_age: None,
        };
        for rule in rules.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            match rule.split_once(':') {
                Some(("max_events", n)) => {
                    let n: u64 = n
                        .trim()
                        .parse()
                        .map_err(|_| format!("bad max_events in {item:?}"))?;
                    policy.max_events = Some(n.max(1));
                }
                Some(("max_age", age)) => {
                    policy.max_age =
                        Some(duration::parse(age).map_err(|e| format!("{item:?}: {e}"))?)
                }
                _ => {
                    return Err(format!(
                        "bad retention rule {rule:?} (max_events:N or max_age:AGE)"
                    ))
                }
            }
        }
        Ok(policy)
    }
}

impl fmt::Display for RetentionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=", self.pattern)?;
        let mut rules = Vec::new();
        if let Some(n) = self.max_events {
            rules.push(format!("max_events:{n}"));
        }
        if let Some(age) = self.max_age {
            rules.push(format!(
                "max_age:{}",
                duration::format(age).replace(' ', "")
            ));
        }
        f.write_str(&rules.join(","))
    }
}

impl Serialize for RetentionPolicy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RetentionPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rates_parse_and_print_back() {
        assert_eq!("1000:2000".parse(), Ok(Rate::new(1_000, 2_000)));
        assert_eq!("30".parse(), Ok(Rate::new(30, 60)));
        assert_eq!("0".parse(), Ok(Rate::UNLIMITED));
        assert!("fast".parse::<Rate>().is_err());
        assert!("1:x".parse::<Rate>().is_err());
        let r = Rate::new(7, 3);
        assert_eq!(r.to_string().parse(), Ok(r));
    }

    #[test]
    fn retention_and_room_kinds_parse() {
        let r: RetentionPolicy = "chat:*=max_events:100000,max_age:30d".parse().unwrap();
        assert_eq!(
            (r.pattern.as_str(), r.max_events, r.max_age),
            (
                "chat:*",
                Some(100_000),
                Some(Duration::from_secs(30 * 86_400))
            )
        );
        let r: RetentionPolicy = " log:*=max_age:12h".parse().unwrap();
        assert_eq!(
            (r.max_events, r.max_age),
            (None, Some(Duration::from_secs(12 * 3_600)))
        );
        assert!("chat:*".parse::<RetentionPolicy>().is_err());
        assert!("chat:*=max_rows:3".parse::<RetentionPolicy>().is_err());
        assert!("chat:*=max_age:3 fortnights"
            .parse::<RetentionPolicy>()
            .is_err());
        assert_eq!(
            parse_room_kind(" doc:* = doc"),
            Ok(("doc:*".to_string(), RoomKind::Doc))
        );
        assert!(parse_room_kind("chat:*=table").is_err());
        assert!(parse_room_kind("chat:*").is_err());
        assert_eq!(
            parse_room_kinds("chat:*=stream, doc:*=doc,").unwrap().len(),
            2
        );
        assert!(parse_room_kinds("").unwrap().is_empty());
        assert!(parse_room_kinds("chat:*=table").is_err());
        let r =
            parse_retention("chat:*=max_events:100000,max_age:30d; log:*=max_age:12h;").unwrap();
        assert_eq!(r.len(), 2);
        assert!(parse_retention(" ").unwrap().is_empty());
        assert!(parse_retention("chat:*=max_rows:3").is_err());
    }

    #[test]
    fn retention_prints_back() {
        for text in [
            "chat:*=max_events:100000,max_age:30days",
            "log:*=max_age:1h30m",
            "a=max_events:3",
            "b=",
        ] {
            let p: RetentionPolicy = text.parse().unwrap();
            assert_eq!(
                p.to_string().parse::<RetentionPolicy>(),
                Ok(p.clone()),
                "{text}"
            );
        }
    }
}

//! How durations are written in settings: humantime (`500ms`, `10s`, `2m`, `1h 30m`, `30d`), or a
//! plain number of seconds (`10`), as flags, environment variables and in the config file.

use serde::{Deserialize, Deserializer, Serializer};
use std::time::Duration;

/// Parses `10s`, `500ms`, `2m`, `1h 30m`, `30d`… (humantime) or a plain number of seconds.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|e| format!("bad duration {s:?}: {e}"));
    }
    humantime::parse_duration(s).map_err(|e| {
        format!("bad duration {s:?}: {e} (e.g. 500ms, 10s, 2m, 1h, 30d; a plain number is seconds)")
    })
}

/// The humantime form (`10s`, `50ms`, `1m 30s`, `0s`), which [`parse`] reads back exactly.
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// `#[serde(with = "duration")]`: written as [`format`]; read as a string ([`parse`]) or an
/// integer number of seconds.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Seconds(u64),
        Text(String),
    }
    match Text::deserialize(d)? {
        Text::Seconds(n) => Ok(Duration::from_secs(n)),
        Text::Text(s) => parse(&s).map_err(serde::de::Error::custom),
    }
}

/// The same for an optional duration (`None` is left out of the file).
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_old_forms_and_humantime_parse() {
        assert_eq!(parse("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("12h"), Ok(Duration::from_secs(12 * 3_600)));
        assert_eq!(parse("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5_400)));
        assert!(parse("").is_err());
        assert!(parse("3w").is_ok(), "humantime knows weeks");
        assert!(parse("ten seconds").is_err());
        assert!(parse("-1s").is_err());
    }

    #[test]
    fn format_reads_back_exactly() {
        for d in [
            Duration::ZERO,
            Duration::from_millis(50),
            Duration::from_millis(1_500),
            Duration::from_secs(10),
            Duration::from_secs(90),
            Duration::from_secs(30 * 86_400),
            Duration::new(3, 7),
        ] {
            assert_eq!(parse(&format(d)), Ok(d), "{}", format(d));
        }
    }
}

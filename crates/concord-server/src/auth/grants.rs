//! Room grants: room-name patterns with `*` wildcards mapped to rights.

use serde_json::Value;

/// A right in a room.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Right {
    /// Join and read history.
    Read,
    /// Publish / send ops.
    Write,
    /// Send presence.
    Presence,
    /// Restore and other room administration.
    Admin,
}

impl Right {
    fn bit(self) -> u8 {
        match self {
            Right::Read => 1,
            Right::Write => 2,
            Right::Presence => 4,
            Right::Admin => 8,
        }
    }
    pub fn parse(s: &str) -> Option<Right> {
        Some(match s {
            "read" => Right::Read,
            "write" => Right::Write,
            "presence" => Right::Presence,
            "admin" => Right::Admin,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Right::Read => "read",
            Right::Write => "write",
            Right::Presence => "presence",
            Right::Admin => "admin",
        }
    }
}

/// The rights of one principal, by room-name pattern.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants(Vec<(String, u8)>);

impl Grants {
    /// Every right in every room.
    pub fn all() -> Self {
        Grants(vec![("*".to_string(), 0xf)])
    }

    /// Parses the `rooms` claim: `{"pattern": ["read", "write", …], …}`. Unknown rights are an error.
    pub fn from_claim(v: &Value) -> Result<Self, String> {
        let obj = v
            .as_object()
            .ok_or("rooms must be an object of pattern → rights")?;
        let mut out = Vec::with_capacity(obj.len());
        for (pattern, rights) in obj {
            let list = rights
                .as_array()
                .ok_or_else(|| format!("rights of {pattern:?} must be an array"))?;
            let mut bits = 0u8;
            for r in list {
                let r = r
                    .as_str()
                    .and_then(Right::parse)
                    .ok_or_else(|| format!("unknown right {r} for {pattern:?}"))?;
                bits |= r.bit();
            }
            out.push((pattern.clone(), bits));
        }
        Ok(Grants(out))
    }

    pub fn allows(&self, room: &str, right: Right) -> bool {
        self.0
            .iter()
            .any(|(p, bits)| bits & right.bit() != 0 && glob(p, room))
    }
}

/// `*` matches any run of characters (including none); everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    glob_bytes(pattern.as_bytes(), text.as_bytes())
}

fn glob_bytes(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patterns() {
        assert!(glob("chat:*", "chat:lobby"));
        assert!(glob("chat:*", "chat:"));
        assert!(!glob("chat:*", "chatx"));
        assert!(glob("doc:team-42:*", "doc:team-42:spec"));
        assert!(!glob("doc:team-42:*", "doc:team-4:spec"));
        assert!(glob("*", "anything"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exact2"));
    }

    #[test]
    fn grants_from_claims() {
        let g = Grants::from_claim(
            &json!({"chat:*":["read","write","presence"],"doc:team-42:*":["read"]}),
        )
        .unwrap();
        assert!(g.allows("chat:lobby", Right::Write));
        assert!(g.allows("doc:team-42:x", Right::Read));
        assert!(!g.allows("doc:team-42:x", Right::Write));
        assert!(!g.allows("other", Right::Read));
        assert!(!g.allows("chat:lobby", Right::Admin));
        assert!(Grants::from_claim(&json!({"x":["fly"]})).is_err());
        assert!(Grants::from_claim(&json!(["read"])).is_err());
    }
}

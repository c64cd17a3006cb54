//! The admin key: a shared secret that grants every right over HTTP, checked in constant time.

use subtle::ConstantTimeEq;

/// The shortest admin key accepted (bytes).
pub const MIN_ADMIN_KEY_BYTES: usize = 16;

/// A key that grants every right over HTTP (`Authorization: Bearer <key>`).
#[derive(Clone)]
pub struct AdminKey(Vec<u8>);

impl AdminKey {
    /// Refuses keys shorter than [`MIN_ADMIN_KEY_BYTES`] (an empty or 1-byte key file is a
    /// misconfiguration, not a key).
    pub fn new(key: impl Into<Vec<u8>>) -> Result<AdminKey, String> {
        let key = key.into();
        if key.len() < MIN_ADMIN_KEY_BYTES {
            return Err(format!(
                "the admin key must be at least {MIN_ADMIN_KEY_BYTES} bytes (got {})",
                key.len()
            ));
        }
        Ok(AdminKey(key))
    }

    /// Whether `token` is the key; the comparison takes the same time wherever they differ.
    pub fn matches(&self, token: &str) -> bool {
        self.0.ct_eq(token.as_bytes()).into()
    }
}

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKey(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_are_refused() {
        assert!(AdminKey::new("").is_err());
        assert!(AdminKey::new("x").is_err());
        assert!(AdminKey::new("0123456789abcde").is_err());
        assert!(AdminKey::new("0123456789abcdef").is_ok());
    }

    #[test]
    fn only_the_exact_key_matches() {
        let k = AdminKey::new("0123456789abcdef").unwrap();
        assert!(k.matches("0123456789abcdef"));
        for other in [
            "",
            "0123456789abcde",
            "0123456789abcdeF",
            "0123456789abcdef0",
        ] {
            assert!(!k.matches(other), "{other:?}");
        }
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let k = AdminKey::new("0123456789abcdef").unwrap();
        assert!(!format!("{k:?}").contains("0123"));
    }
}

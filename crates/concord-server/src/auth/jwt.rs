//! JWT verification: HS256 with a shared secret, RS256/ES256 with a public key (PEM).

use super::{Grants, Identity};
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use std::sync::Arc;

use crate::metrics::AuthFailure;

/// Why a token was refused (its [`AuthError::reason`] labels `concord_auth_failures_total`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token lacks a required claim: {0}")]
    MissingClaim(&'static str),
    #[error("invalid claim: {0}")]
    BadClaim(String),
    #[error("token algorithm not accepted")]
    WrongAlgorithm,
}

impl AuthError {
    pub fn reason(&self) -> AuthFailure {
        match self {
            AuthError::Missing => AuthFailure::Missing,
            AuthError::Malformed(_) => AuthFailure::Malformed,
            AuthError::BadSignature => AuthFailure::BadSignature,
            AuthError::Expired => AuthFailure::Expired,
            AuthError::NotYetValid => AuthFailure::NotYetValid,
            AuthError::MissingClaim(_) => AuthFailure::MissingClaim,
            AuthError::BadClaim(_) => AuthFailure::BadClaim,
            AuthError::WrongAlgorithm => AuthFailure::WrongAlgorithm,
        }
    }
}

/// Verification keys.
#[derive(Clone)]
pub enum JwtKeys {
    /// HS256 with a shared secret.
    Secret(Vec<u8>),
    /// RS256 (RSA) or ES256 (P-256) with a PEM public key.
    PublicPem(Vec<u8>),
}

/// The smallest RSA modulus accepted for RS256, in bits.
const MIN_RSA_BITS: usize = 2048;

/// The decoding key and algorithm of a PEM public key: a P-256 key (ES256) or an RSA key of at
/// least 2048 bits (RS256). Anything else — a private key, another curve, a short RSA key — is
/// refused here, at start, rather than refusing every token later.
fn public_key(pem: &[u8]) -> Result<(DecodingKey, Algorithm), String> {
    use p256::pkcs8::DecodePublicKey;
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::traits::PublicKeyParts;
    let text = std::str::from_utf8(pem).map_err(|_| "the public key file is not PEM text")?;
    if text.contains("PRIVATE KEY") {
        return Err("the public key file holds a private key: give the public key only".into());
    }
    if p256::PublicKey::from_public_key_pem(text).is_ok() {
        let key = DecodingKey::from_ec_pem(pem).map_err(|e| format!("EC public key: {e}"))?;
        return Ok((key, Algorithm::ES256));
    }
    let rsa = rsa::RsaPublicKey::from_public_key_pem(text)
        .or_else(|_| rsa::RsaPublicKey::from_pkcs1_pem(text))
        .map_err(|_| {
            "the public key must be a P-256 (ES256) or RSA (RS256) public key in PEM; \
             other curves and formats are not accepted"
                .to_string()
        })?;
    let bits = rsa.n().bits();
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "the RSA public key has {bits} bits; at least {MIN_RSA_BITS} are required"
        ));
    }
    let key = DecodingKey::from_rsa_pem(pem).map_err(|e| format!("RSA public key: {e}"))?;
    Ok((key, Algorithm::RS256))
}

/// Verifies tokens; cheap to clone.
#[derive(Clone)]
pub struct JwtVerifier {
    key: Arc<DecodingKey>,
    algorithm: Algorithm,
    leeway_secs: u64,
}

impl JwtVerifier {
    pub fn new(keys: JwtKeys, leeway_secs: u64) -> Result<Self, String> {
        let (key, algorithm) = match keys {
            JwtKeys::Secret(s) => {
                if s.len() < 16 {
                    return Err("the JWT secret must be at least 16 bytes".into());
                }
                (DecodingKey::from_secret(&s), Algorithm::HS256)
            }
            JwtKeys::PublicPem(pem) => public_key(&pem)?,
        };
        Ok(JwtVerifier {
            key: Arc::new(key),
            algorithm,
            leeway_secs,
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Clock skew tolerated on `exp` and `nbf`.
    pub fn leeway_secs(&self) -> u64 {
        self.leeway_secs
    }

    /// Verifies signature, `exp` (required), `nbf` (if present) against `now_ms` (the server's
    /// clock, millisecond precision), then reads `sub` (required), `rooms` (required) and the
    /// optional claims as metadata.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<Identity, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        if header.alg != self.algorithm {
            return Err(AuthError::WrongAlgorithm);
        }
        let mut v = Validation::new(self.algorithm);
        // Time claims are checked below against the injected clock.
        v.validate_exp = false;
        v.validate_nbf = false;
        // No audience is configured: `aud` is carried, not checked.
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let data = decode::<Map<String, Value>>(token, &self.key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => AuthError::BadSignature,
                K::InvalidAlgorithm => AuthError::WrongAlgorithm,
                _ => AuthError::Malformed(e.to_string()),
            }
        })?;
        let mut claims = data.claims;
        let exp = claims
            .get("exp")
            .ok_or(AuthError::MissingClaim("exp"))?
            .as_u64()
            .ok_or_else(|| AuthError::BadClaim("exp must be a number".into()))?;
        if now_ms >= expires_at_ms(exp, self.leeway_secs) {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf
                .as_u64()
                .ok_or_else(|| AuthError::BadClaim("nbf must be a number".into()))?;
            if now_ms.saturating_add(self.leeway_secs.saturating_mul(1000))
                < nbf.saturating_mul(1000)
            {
                return Err(AuthError::NotYetValid);
            }
        }
        let user = match claims.remove("sub") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => s,
            Some(_) => return Err(AuthError::BadClaim("sub must be a non-empty string".into())),
            None => return Err(AuthError::MissingClaim("sub")),
        };
        let grants = Grants::from_claim(
            claims
                .get("rooms")
                .ok_or(AuthError::MissingClaim("rooms"))?,
        )
        .map_err(AuthError::BadClaim)?;
        for k in ["rooms", "exp", "nbf", "iat", "iss", "aud", "jti"] {
            claims.remove(k);
        }
        Ok(Identity {
            user,
            meta: claims,
            grants,
            exp: Some(exp),
        })
    }
}

/// The first millisecond at which a token with this `exp` is refused: it is expired when
/// `now > exp + leeway` (in seconds, at millisecond precision). The connection's expiry timer
/// fires at this same moment (`gateway/session.rs`), so the notice never comes while the token
/// would still be accepted, nor later than the first moment it would be refused.
pub fn expires_at_ms(exp: u64, leeway_secs: u64) -> u64 {
    exp.saturating_add(leeway_secs)
        .saturating_mul(1000)
        .saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Right;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"a-test-secret-of-32-bytes-length";

    fn token(claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    #[test]
    fn a_token_is_refused_from_its_expiry_timer_on_and_accepted_before() {
        for leeway in [0, 5] {
            let v = JwtVerifier::new(JwtKeys::Secret(SECRET.to_vec()), leeway).unwrap();
            let exp = 1_800_000_000;
            let t = token(json!({"sub":"u","exp":exp,"rooms":{}}));
            let at = expires_at_ms(exp, leeway);
            assert_eq!(at, (exp + leeway) * 1000 + 1);
            for now_ms in at - 1_500..at + 1_500 {
                let refused = v.verify(&t, now_ms).is_err();
                assert_eq!(refused, now_ms >= at, "now_ms {now_ms}, leeway {leeway}");
            }
        }
        assert_eq!(expires_at_ms(u64::MAX, 10), u64::MAX);
    }

    #[test]
    fn hs256_claims_and_failures() {
        let v = JwtVerifier::new(JwtKeys::Secret(SECRET.to_vec()), 0).unwrap();
        let now = 1_800_000_000;
        let ok = token(json!({"sub":"u1","exp":now+60,"name":"Ada","rooms":{"chat:*":["read"]}}));
        let id = v.verify(&ok, now * 1000).unwrap();
        assert_eq!(id.user, "u1");
        assert_eq!(id.meta.get("name"), Some(&json!("Ada")));
        assert!(id.may("chat:x", Right::Read));
        assert!(!id.may("chat:x", Right::Write));
        let cases = [
            (token(json!({"sub":"u","exp":now-1,"rooms":{}})), "expired"),
            (
                token(json!({"sub":"u","exp":now+60,"nbf":now+30,"rooms":{}})),
                "not_yet_valid",
            ),
            (token(json!({"exp":now+60,"rooms":{}})), "missing_claim"),
            (token(json!({"sub":"u","rooms":{}})), "missing_claim"),
            (token(json!({"sub":"u","exp":now+60})), "missing_claim"),
            (
                token(json!({"sub":"u","exp":now+60,"rooms":{"x":["fly"]}})),
                "bad_claim",
            ),
            ("not.a.token".to_string(), "malformed"),
        ];
        for (t, reason) in cases {
            assert_eq!(
                v.verify(&t, now * 1000).unwrap_err().reason().as_str(),
                reason,
                "{t}"
            );
        }
        let other = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub":"u","exp":now+60,"rooms":{}}),
            &EncodingKey::from_secret(b"another-secret-of-enough-length!"),
        )
        .unwrap();
        assert_eq!(
            v.verify(&other, now * 1000).unwrap_err().reason().as_str(),
            "bad_signature"
        );
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &json!({"sub":"u","exp":now+60,"rooms":{}}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(
            v.verify(&hs384, now * 1000).unwrap_err().reason().as_str(),
            "wrong_algorithm"
        );
    }
}

#[cfg(test)]
mod public_key_tests {
    //! RS256 and ES256 with test-only key pairs (generated for these tests, used nowhere else).
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const EC_PRIVATE: &[u8] = include_bytes!("testkeys/ec_private.pem");
    const EC_PUBLIC: &[u8] = include_bytes!("testkeys/ec_public.pem");
    const RSA_PRIVATE: &[u8] = include_bytes!("testkeys/rsa_private.pem");
    const RSA_PUBLIC: &[u8] = include_bytes!("testkeys/rsa_public.pem");

    #[test]
    fn keys_that_cannot_verify_es256_or_rs256_are_refused_at_start() {
        let refused: [(&str, &[u8]); 5] = [
            ("EC private key", EC_PRIVATE),
            ("RSA private key", RSA_PRIVATE),
            (
                "P-384 public key",
                include_bytes!("testkeys/p384_public.pem"),
            ),
            (
                "1024-bit RSA key",
                include_bytes!("testkeys/rsa1024_public.pem"),
            ),
            ("not PEM", b"\xff\x00 not a key"),
        ];
        for (what, pem) in refused {
            assert!(
                JwtVerifier::new(JwtKeys::PublicPem(pem.to_vec()), 0).is_err(),
                "{what} was accepted"
            );
        }
        let pkcs1 = include_bytes!("testkeys/rsa_public_pkcs1.pem").to_vec();
        let v = JwtVerifier::new(JwtKeys::PublicPem(pkcs1), 0).unwrap();
        assert_eq!(v.algorithm(), Algorithm::RS256);
    }

    #[test]
    fn es256_and_rs256_tokens_verify_with_their_public_keys_only() {
        let now = 1_800_000_000u64;
        let claims = json!({"sub":"u","exp":now+60,"rooms":{"*":["read"]}});
        let es = encode(
            &Header::new(Algorithm::ES256),
            &claims,
            &EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
        )
        .unwrap();
        let rs = encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
        )
        .unwrap();
        let ev = JwtVerifier::new(JwtKeys::PublicPem(EC_PUBLIC.to_vec()), 0).unwrap();
        let rv = JwtVerifier::new(JwtKeys::PublicPem(RSA_PUBLIC.to_vec()), 0).unwrap();
        assert_eq!(ev.algorithm(), Algorithm::ES256);
        assert_eq!(rv.algorithm(), Algorithm::RS256);
        assert_eq!(ev.verify(&es, now * 1000).unwrap().user, "u");
        assert_eq!(rv.verify(&rs, now * 1000).unwrap().user, "u");
        assert_eq!(
            ev.verify(&rs, now * 1000).unwrap_err().reason().as_str(),
            "wrong_algorithm"
        );
        assert_eq!(
            rv.verify(&es, now * 1000).unwrap_err().reason().as_str(),
            "wrong_algorithm"
        );
        // An HS256 token signed with the public key as secret (key confusion) is refused.
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(RSA_PUBLIC),
        )
        .unwrap();
        assert_eq!(
            rv.verify(&confused, now * 1000)
                .unwrap_err()
                .reason()
                .as_str(),
            "wrong_algorithm"
        );
        assert!(JwtVerifier::new(JwtKeys::PublicPem(b"not a key".to_vec()), 0).is_err());
        assert!(JwtVerifier::new(JwtKeys::Secret(b"short".to_vec()), 0).is_err());
    }
}

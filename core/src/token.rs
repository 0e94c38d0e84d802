//! Login tokens and passwords.
//!
//! - A token is a JWT signed with HMAC-SHA256 (`alg` must be exactly `HS256`: `none` and every other
//!   algorithm are refused) carrying the user, the one tenant it is bound to, the role there, and an expiry
//!   (15 minutes). The signing key lives in the database (`core.token_keys`), so every gateway process
//!   accepts every other's tokens. A valid signature is not enough on its own: each request also checks that
//!   the membership still exists (`core.authenticate_member`).
//! - Passwords are hashed with Argon2id (memory-hard), with a random salt per password.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

/// How long a token is valid, in seconds.
pub const TOKEN_TTL_SECONDS: i64 = 15 * 60;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub sub: Uuid,
    /// The tenant the token is bound to.
    pub tid: Uuid,
    pub role: String,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's algorithm is not HS256")]
    Algorithm,
    #[error("the token's signature does not match")]
    Signature,
    #[error("the token has expired")]
    Expired,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

/// Whether a bearer credential is shaped like a token (three base64url parts, a JSON header).
pub fn looks_like_token(credential: &str) -> bool {
    credential.starts_with("eyJ")
        && credential.split('.').count() == 3
        && credential.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub fn sign(secret: &[u8], claims: &Claims) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signing_input = format!("{header}.{payload}");
    let mut mac = mac(secret);
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// Checks the header, the signature (in constant time) and the expiry, at time `now` (Unix seconds).
pub fn verify(secret: &[u8], token: &str, now: i64) -> Result<Claims, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let decoded = URL_SAFE_NO_PAD.decode(header).map_err(|_| TokenError::Malformed)?;
    let header: Header = serde_json::from_slice(&decoded).map_err(|_| TokenError::Malformed)?;
    if header.alg != "HS256" {
        return Err(TokenError::Algorithm);
    }
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed)?;
    let mut mac = mac(secret);
    mac.update(header_and_payload(token).as_bytes());
    mac.verify_slice(&signature).map_err(|_| TokenError::Signature)?;
    let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
    if claims.exp <= now {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

fn header_and_payload(token: &str) -> &str {
    token.rsplit_once('.').map_or("", |(signed, _)| signed)
}

/// Hashes a password with Argon2id and a random salt (PHC string).
pub fn hash_password(password: &str) -> Result<String, crate::apikey::RandomUnavailable> {
    let mut salt = [0u8; 16];
    crate::apikey::fill_random(&mut salt)?;
    let salt = SaltString::encode_b64(&salt).unwrap_or_else(|_| unreachable!("16 bytes encode"));
    Ok(argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .unwrap_or_else(|_| unreachable!("the default parameters hash any password")))
}

/// Whether `password` matches the stored hash. Slow by design: run it off the async threads.
pub fn verify_password(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .is_ok_and(|hash| argon2::Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
}

/// A hash that matches no password, verified when a login names no user, so that the answer takes as long
/// as for a wrong password.
pub const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$AAAAAAAAAAAAAAAAAAAAAA$7ZzO9h7ObhOq7VkY4iR1lKfB3xqFn5dOBWJ/Hm5L0Ko";

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims { sub: Uuid::nil(), tid: Uuid::from_u128(7), role: "member".into(), iat: 0, exp }
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let token = sign(b"secret", &claims(100));
        assert!(looks_like_token(&token));
        assert_eq!(verify(b"secret", &token, 99), Ok(claims(100)));
        assert_eq!(verify(b"secret", &token, 100), Err(TokenError::Expired));
        assert_eq!(verify(b"another key", &token, 99), Err(TokenError::Signature));
    }

    #[test]
    fn tampered_none_and_other_algorithms_are_refused() {
        let token = sign(b"secret", &claims(100));
        let (header, rest) = token.split_once('.').expect("parts");
        let (payload, signature) = rest.split_once('.').expect("parts");
        // Another tenant in the payload, the old signature.
        let forged = URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&Claims { tid: Uuid::from_u128(8), ..claims(100) }).expect("json"));
        assert_eq!(
            verify(b"secret", &format!("{header}.{forged}.{signature}"), 1),
            Err(TokenError::Signature)
        );
        for alg in ["none", "HS512", "RS256", "hs256"] {
            let h = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
            assert_eq!(
                verify(b"secret", &format!("{h}.{payload}.{signature}"), 1),
                Err(TokenError::Algorithm),
                "{alg}"
            );
            assert_eq!(verify(b"secret", &format!("{h}.{payload}."), 1), Err(TokenError::Algorithm), "{alg}");
        }
        for bad in ["", "a.b", "a.b.c.d", "eyJ.eyJ.!!"] {
            assert!(verify(b"secret", bad, 1).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_verify_against_their_hash_only() {
        let hash = hash_password("correct horse").expect("random");
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("Correct horse", &hash));
        assert!(!verify_password("correct horse", DUMMY_HASH));
        assert!(!verify_password("x", "not a hash"));
        assert_ne!(hash_password("correct horse").expect("random"), hash, "salted");
    }
}

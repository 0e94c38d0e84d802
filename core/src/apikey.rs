//! API keys: `tsk_<prefix>_<secret>`.
//!
//! The 12-character prefix is stored in clear and is how a key is looked up; the whole key is stored only as
//! its SHA-256 hash (the secret carries 192 random bits, so a fast hash is the right tool, as for GitHub and
//! Stripe tokens). The key is shown once, when it is created.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::problem::ApiError;

const PREFIX_LEN: usize = 12;
const SECRET_LEN: usize = 48;
const MARK: &str = "tsk_";

/// A presented credential, well-formed but not yet verified: an API key, or a login token (see
/// [`crate::token`]). Either way `hash` is the SHA-256 of the whole credential, which caches key on.
#[derive(Clone)]
pub struct PresentedKey {
    prefix: String,
    hash: [u8; 32],
    token: Option<std::sync::Arc<str>>,
}

impl PresentedKey {
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn hash(&self) -> &[u8] {
        &self.hash
    }

    /// The login token, when the credential is one (not an API key).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }
}

impl fmt::Debug for PresentedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresentedKey").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("an API key looks like tsk_<12 hex digits>_<48 hex digits>")]
pub struct MalformedKey;

/// Checks the shape of a presented credential (an API key or a login token) and hashes it.
pub fn parse(token: &str) -> Result<PresentedKey, MalformedKey> {
    if crate::token::looks_like_token(token) && token.len() <= 4096 {
        return Ok(PresentedKey { prefix: String::new(), hash: hash(token), token: Some(token.into()) });
    }
    let rest = token.strip_prefix(MARK).ok_or(MalformedKey)?;
    let (prefix, secret) = rest.split_once('_').ok_or(MalformedKey)?;
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hex(prefix, PREFIX_LEN) || !hex(secret, SECRET_LEN) {
        return Err(MalformedKey);
    }
    Ok(PresentedKey { prefix: prefix.to_owned(), hash: hash(token), token: None })
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A freshly minted key: `token` is shown once and never stored.
pub struct NewKey {
    pub token: String,
    pub prefix: String,
    pub hash: [u8; 32],
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewKey").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the operating system's random source failed")]
pub struct RandomUnavailable(#[source] getrandom::Error);

/// Fills `bytes` from the operating system's random source.
pub fn fill_random(bytes: &mut [u8]) -> Result<(), RandomUnavailable> {
    getrandom::fill(bytes).map_err(RandomUnavailable)
}

/// `len` random bytes from the operating system, as lowercase hex.
pub fn random_hex(len: usize) -> Result<String, RandomUnavailable> {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes).map_err(RandomUnavailable)?;
    Ok(hex::encode(bytes))
}

pub fn generate() -> Result<NewKey, RandomUnavailable> {
    let prefix = random_hex(PREFIX_LEN / 2)?;
    let secret = random_hex(SECRET_LEN / 2)?;
    let token = format!("{MARK}{prefix}_{secret}");
    let hash = hash(&token);
    Ok(NewKey { token, prefix, hash })
}

/// What a key may do in one module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Read,
    Write,
}

/// A scope such as `crm:read` or `crm:write` (write includes read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub module: String,
    pub access: Access,
}

#[derive(Debug, thiserror::Error)]
#[error("a scope looks like <module>:read or <module>:write, got {0:?}")]
pub struct InvalidScope(String);

impl Scope {
    pub fn parse(s: &str) -> Result<Self, InvalidScope> {
        let (module, access) = s.split_once(':').ok_or_else(|| InvalidScope(s.to_owned()))?;
        let access = match access {
            "read" => Access::Read,
            "write" => Access::Write,
            _ => return Err(InvalidScope(s.to_owned())),
        };
        let valid_module = !module.is_empty() && module.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        if !valid_module {
            return Err(InvalidScope(s.to_owned()));
        }
        Ok(Self { module: module.to_owned(), access })
    }

    /// Whether a set of scope strings (as stored) grants `access` to `module`.
    pub fn allows(scopes: &[String], module: &str, access: Access) -> bool {
        scopes.iter().filter_map(|s| Scope::parse(s).ok()).any(|s| s.module == module && s.access >= access)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let access = match self.access {
            Access::Read => "read",
            Access::Write => "write",
        };
        write!(f, "{}:{access}", self.module)
    }
}

/// The credential of an `Authorization: Bearer …` header, checked for shape (the scheme in any case, as
/// HTTP has it). Verification happens in the request's transaction (see [`crate::db`]).
pub fn from_authorization(value: Option<&axum::http::HeaderValue>) -> Result<PresentedKey, ApiError> {
    let Some(value) = value else {
        return Err(ApiError::unauthenticated(
            "missing_api_key",
            "send an API key as Authorization: Bearer <key>",
        ));
    };
    let malformed = || {
        ApiError::unauthenticated(
            "malformed_api_key",
            "the Authorization header does not hold a Tessera API key",
        )
    };
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(malformed());
    }
    parse(token.trim()).map_err(|_| malformed())
}

/// The request's credential, parsed and hashed once: kept in the request's extensions for the gateway's
/// layers and the handler that come after.
pub fn presented(
    authorization: Option<&axum::http::HeaderValue>,
    extensions: &mut axum::http::Extensions,
) -> Result<PresentedKey, ApiError> {
    if let Some(key) = extensions.get::<PresentedKey>() {
        return Ok(key.clone());
    }
    let key = from_authorization(authorization)?;
    extensions.insert(key.clone());
    Ok(key)
}

/// [`presented`] for a whole request.
pub fn presented_in<B>(request: &mut axum::http::Request<B>) -> Result<PresentedKey, ApiError> {
    let authorization = request.headers().get(axum::http::header::AUTHORIZATION).cloned();
    presented(authorization.as_ref(), request.extensions_mut())
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PresentedKey {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        presented(parts.headers.get(axum::http::header::AUTHORIZATION), &mut parts.extensions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_hash_to_the_same_value() {
        let key = generate().expect("random");
        let parsed = parse(&key.token).expect("well-formed");
        assert_eq!(parsed.prefix(), key.prefix);
        assert_eq!(parsed.hash(), key.hash);
        assert_ne!(generate().expect("random").token, key.token);
    }

    #[test]
    fn malformed_keys_are_refused() {
        let good = generate().expect("random").token;
        for bad in [
            "",
            "tsk_",
            "sk_live_abc",
            &good[..good.len() - 1],
            &format!("{good}0"),
            &good.to_uppercase(),
            &good.replacen('_', "-", 2),
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be malformed");
        }
    }

    #[test]
    fn write_scope_includes_read_and_scopes_are_per_module() {
        let scopes = vec!["crm:write".to_owned(), "hr:read".to_owned()];
        assert!(Scope::allows(&scopes, "crm", Access::Read));
        assert!(Scope::allows(&scopes, "crm", Access::Write));
        assert!(Scope::allows(&scopes, "hr", Access::Read));
        assert!(!Scope::allows(&scopes, "hr", Access::Write));
        assert!(!Scope::allows(&scopes, "invoicing", Access::Read));
        assert!(Scope::parse("crm:admin").is_err());
        assert!(Scope::parse("CRM:read").is_err());
    }
}

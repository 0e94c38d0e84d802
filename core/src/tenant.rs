//! Tenant identity. A tenant id is parsed once at the edge and trusted inside.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The identifier of a tenant: the `tenant_id` that leads every primary key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(Uuid);

impl TenantId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for TenantId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A tenant's slug: 2 to 63 characters of lowercase ASCII letters, digits and inner hyphens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSlug(String);

#[derive(Debug, thiserror::Error)]
#[error("a tenant slug is 2 to 63 characters of a-z, 0-9 and inner hyphens, got {0:?}")]
pub struct InvalidSlug(String);

impl TenantSlug {
    pub fn parse(s: &str) -> Result<Self, InvalidSlug> {
        let ok = (2..=63).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok { Ok(Self(s.to_owned())) } else { Err(InvalidSlug(s.to_owned())) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_validated() {
        assert!(TenantSlug::parse("acme").is_ok());
        assert!(TenantSlug::parse("acme-2").is_ok());
        for bad in ["", "a", "Acme", "-acme", "acme-", "ac me", "acme_x", &"a".repeat(64)] {
            assert!(TenantSlug::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}

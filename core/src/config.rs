//! Configuration: a TOML file (optional), then `TESSERA_*` environment variables, then command-line flags,
//! validated once at start and passed explicitly. Secrets are wrapped so they never print.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A value that must not appear in logs or debug output.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// What a configuration file may set. Every key is optional; unknown keys are refused.
/// A plan's rate limits, requests per second (absent or 0: no limit).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanLimits {
    pub key: Option<u32>,
    pub tenant: Option<u32>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Where `tessera up` keeps its PostgreSQL cluster (`<data_dir>/pg`) and lock file.
    pub data_dir: Option<PathBuf>,
    /// The gateway's listen address.
    pub listen: Option<SocketAddr>,
    /// An existing server to use instead of the embedded one (DBA mode).
    pub database_url: Option<Secret>,
    /// The folder holding initdb, pg_ctl and postgres.
    pub pg_bindir: Option<PathBuf>,
    /// Connections in the gateway's pool.
    pub pool_size: Option<usize>,
    /// The largest request body accepted, in bytes.
    pub body_limit_bytes: Option<usize>,
    /// Whether the gateway caches GET answers [default: true].
    pub response_cache: Option<bool>,
    /// Requests per second per client address, per API key and per tenant (0: no limit).
    pub rate_limit_ip: Option<u32>,
    pub rate_limit_key: Option<u32>,
    pub rate_limit_tenant: Option<u32>,
    /// Requests the gateway runs at once before it sheds load (0: no shedding) [default: 2 × pool_size].
    pub max_in_flight: Option<usize>,
    /// How long a request may wait for a place before it is refused with 503 [default: 50].
    pub queue_timeout_ms: Option<u64>,
    /// Proxies whose X-Forwarded-For names the client.
    pub trusted_proxies: Option<Vec<std::net::IpAddr>>,
    /// Rate limits per plan (`[rate_limit_plans.gold]` with `key` and `tenant` requests per second).
    pub rate_limit_plans: Option<std::collections::BTreeMap<String, PlanLimits>>,
    /// Days an event stays in `events.log` once every subscriber is past it [default: 30; 0 keeps events
    /// forever].
    pub event_retention_days: Option<u32>,
    /// The SQL endpoint (see [`SqlSettings`]).
    pub sql: Option<SqlFileConfig>,
}

/// The `[sql]` table of the configuration file: the SQL endpoint for reporting tools.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlFileConfig {
    pub listen: Option<SocketAddr>,
    /// Where tenants' SQL runs, as tessera_sql: a hot standby, say [default: the platform's database].
    pub upstream_url: Option<Secret>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub require_tls: Option<bool>,
    pub statement_timeout_ms: Option<u64>,
    pub max_rows: Option<u64>,
    pub max_bytes: Option<u64>,
    pub pool_size: Option<usize>,
    pub max_sessions_per_tenant: Option<usize>,
    pub idle_timeout_ms: Option<u64>,
    pub threads: Option<usize>,
}

/// The SQL endpoint's validated settings.
#[derive(Debug, Clone)]
pub struct SqlSettings {
    pub listen: SocketAddr,
    pub upstream_url: Option<Secret>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub require_tls: bool,
    pub statement_timeout_ms: u64,
    pub max_rows: u64,
    pub max_bytes: u64,
    pub pool_size: usize,
    pub max_sessions_per_tenant: usize,
    pub idle_timeout_ms: u64,
    /// `None`: half the machine's cores, at least one.
    pub threads: Option<usize>,
}

pub const DEFAULT_SQL_LISTEN: &str = "127.0.0.1:6543";

impl SqlSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid("sql.tls_cert and sql.tls_key go together".into()));
        }
        if self.require_tls && self.tls_cert.is_none() {
            return Err(ConfigError::Invalid("sql.require_tls needs sql.tls_cert and sql.tls_key".into()));
        }
        // API keys travel as cleartext password messages: beyond this machine, only inside TLS.
        if !self.listen.ip().is_loopback() && !self.require_tls {
            return Err(ConfigError::Invalid(format!(
                "the SQL endpoint listens on {} beyond this machine: configure sql.tls_cert and sql.tls_key \
                 (TLS is then required)",
                self.listen
            )));
        }
        if self.max_sessions_per_tenant == 0 || self.idle_timeout_ms == 0 || self.threads == Some(0) {
            return Err(ConfigError::Invalid(
                "sql.max_sessions_per_tenant, sql.idle_timeout_ms and sql.threads must be positive".into(),
            ));
        }
        if !(1..=1000).contains(&self.pool_size) {
            return Err(ConfigError::Invalid(format!(
                "sql.pool_size must be 1 to 1000, got {}",
                self.pool_size
            )));
        }
        if self.statement_timeout_ms == 0 || self.max_rows == 0 || self.max_bytes == 0 {
            return Err(ConfigError::Invalid(
                "sql.statement_timeout_ms, sql.max_rows and sql.max_bytes must be positive".into(),
            ));
        }
        if let Some(url) = &self.upstream_url {
            url.expose().parse::<tokio_postgres::Config>().map_err(|e| {
                ConfigError::Invalid(format!("sql.upstream_url is not a valid connection string: {e}"))
            })?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read the configuration file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the configuration file {path} is not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl FileConfig {
    /// Reads `path` when given; otherwise `./tessera.toml` when it exists; otherwise nothing.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => {
                let default = PathBuf::from("tessera.toml");
                if !default.exists() {
                    return Ok(Self::default());
                }
                default
            }
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path, source })
    }
}

/// The validated settings the components run with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub database_url: Option<Secret>,
    pub pg_bindir: Option<PathBuf>,
    pub pool_size: usize,
    pub body_limit_bytes: usize,
    pub response_cache: bool,
    /// Requests per second per client address, per key and per tenant; 0 is no limit.
    pub rate_limit_ip: u32,
    pub rate_limit_key: u32,
    pub rate_limit_tenant: u32,
    /// Requests run at once before load is shed; 0 is no shedding.
    pub max_in_flight: usize,
    pub queue_timeout_ms: u64,
    pub trusted_proxies: Vec<std::net::IpAddr>,
    pub rate_limit_plans: std::collections::BTreeMap<String, PlanLimits>,
    /// `None` keeps events forever.
    pub event_retention_days: Option<u32>,
}

pub const DEFAULT_EVENT_RETENTION_DAYS: u32 = 30;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_POOL_SIZE: usize = 16;
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;
pub const DEFAULT_QUEUE_TIMEOUT_MS: u64 = 50;

impl Settings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=1000).contains(&self.pool_size) {
            return Err(ConfigError::Invalid(format!("pool_size must be 1 to 1000, got {}", self.pool_size)));
        }
        if self.max_in_flight > 100_000 {
            return Err(ConfigError::Invalid(format!(
                "max_in_flight must be 0 (no shedding) to 100000, got {}",
                self.max_in_flight
            )));
        }
        if !(1..=60_000).contains(&self.queue_timeout_ms) {
            return Err(ConfigError::Invalid(format!(
                "queue_timeout_ms must be 1 to 60000, got {}",
                self.queue_timeout_ms
            )));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.body_limit_bytes) {
            return Err(ConfigError::Invalid(format!(
                "body_limit_bytes must be 1 KiB to 64 MiB, got {}",
                self.body_limit_bytes
            )));
        }
        if let Some(url) = &self.database_url {
            url.expose().parse::<tokio_postgres::Config>().map_err(|e| {
                ConfigError::Invalid(format!("database_url is not a valid connection string: {e}"))
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("postgres://u:hunter2@h/db".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<FileConfig>("listen = \"127.0.0.1:1\"\nbogus = 1").is_err());
        let ok: FileConfig = toml::from_str("listen = \"127.0.0.1:1\"\npool_size = 4").expect("valid");
        let plans: FileConfig =
            toml::from_str("[rate_limit_plans.gold]\nkey = 500\ntenant = 2000").expect("plans");
        let gold = &plans.rate_limit_plans.expect("plans")["gold"];
        assert_eq!((gold.key, gold.tenant), (Some(500), Some(2000)));
        assert!(
            toml::from_str::<FileConfig>("[rate_limit_plans.gold]\nkeys = 1").is_err(),
            "unknown keys refused"
        );
        assert_eq!(ok.pool_size, Some(4));
        let sql: FileConfig =
            toml::from_str("[sql]\nlisten = \"127.0.0.1:6000\"\nmax_rows = 10").expect("sql");
        assert_eq!(sql.sql.expect("sql").max_rows, Some(10));
        assert!(toml::from_str::<FileConfig>("[sql]\nmax_row = 1").is_err(), "unknown keys refused");
    }
}

//! The SQL endpoint: a PostgreSQL-wire door for tenants' reporting tools (psql, DBeaver, Metabase,
//! Grafana, Power BI, psycopg …), read-only, each tenant seeing only its own rows.
//!
//! A tenant logs in with its slug (or id) as the user name and an API key with the `reporting:read` scope as
//! the password. The endpoint checks the key (through the gateway's own database login), takes an upstream
//! connection as `tessera_sql` from its pool (session pooling: the connection is the client's until it
//! leaves), binds it to the tenant with a signed claim (`tessera.sql_claim`, verified inside Postgres by the
//! row policies: see core's V13 migration), and from then on relays the protocol.
//!
//! The layers, each of which holds on its own:
//! 1. the claim: no SQL can forge another tenant's, and without a valid one no rows are visible;
//! 2. the role: `tessera_sql` has SELECT on the module tables and reporting views only, no CREATE, no TEMP,
//!    no large objects, no advisory locks, no other sessions' activity, and read-only transactions;
//! 3. the statement check ([`check`]): only queries, COPY … TO STDOUT, EXPLAIN without ANALYZE, SHOW and a
//!    few harmless SETs pass;
//! 4. limits enforced here: a statement deadline and row and byte caps, each cancelling the upstream query;
//! 5. `DISCARD ALL` before a connection serves another client, and cancel keys that die with the session.

pub mod check;
mod session;
mod upstream;
mod wire;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_core::db::Database;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use tokio_rustls::TlsAcceptor;
pub use upstream::UpstreamConfig;

/// How the SQL endpoint listens and what it allows.
#[derive(Debug, Clone)]
pub struct SqlConfig {
    pub listen: SocketAddr,
    /// Refuse clients that do not negotiate TLS.
    pub require_tls: bool,
    /// How long one request (a Query, or an extended-protocol batch up to its Sync) may run.
    pub statement_timeout: Duration,
    /// The most rows one statement may return (COPY rows count too).
    pub max_rows: u64,
    /// The most bytes one statement may return.
    pub max_bytes: u64,
    /// Upstream connections, which is also how many clients can be connected at once.
    pub pool_size: usize,
    /// How long a new client waits for a free upstream connection before it is refused.
    pub pool_wait: Duration,
}

impl SqlConfig {
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            require_tls: false,
            statement_timeout: Duration::from_secs(60),
            max_rows: 1_000_000,
            max_bytes: 256 * 1024 * 1024,
            pool_size: 20,
            pool_wait: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    #[error("a lock was poisoned")]
    Poisoned,
    #[error("could not read the TLS certificate or key: {0}")]
    Tls(String),
    #[error("could not build the upstream pool: {0}")]
    Pool(String),
}

/// What every session shares.
pub(crate) struct Shared {
    config: SqlConfig,
    /// The gateway's database (as tessera_app), to check logins.
    auth: Database,
    pool: upstream::Pool,
    tls: Option<tokio_rustls::TlsAcceptor>,
    cancels: session::Cancels,
}

/// A bound SQL endpoint, ready to serve.
pub struct SqlEndpoint {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// A TLS server configuration from PEM files (a certificate chain and its private key).
pub fn tls_from_pem(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, SqlError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| SqlError::Tls(format!("{}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| SqlError::Tls(format!("{}: {e}", cert.display())))?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| SqlError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SqlError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| SqlError::Tls(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

impl SqlEndpoint {
    /// Binds the listener. `upstream` is where tenants' SQL runs (the primary or a hot standby), as
    /// tessera_sql; `auth` checks logins.
    pub async fn bind(
        config: SqlConfig,
        auth: Database,
        upstream: UpstreamConfig,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Result<Self, SqlError> {
        if config.require_tls && tls.is_none() {
            return Err(SqlError::Tls("TLS is required but no certificate is configured".into()));
        }
        let listener = TcpListener::bind(config.listen).await?;
        let pool = upstream::Pool::builder(upstream::Manager { config: upstream })
            .max_size(config.pool_size)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| SqlError::Pool(e.to_string()))?;
        let shared = Arc::new(Shared { config, auth, pool, tls, cancels: Mutex::default() });
        Ok(Self { listener, shared })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes; then stops accepting and closes the sessions.
    pub async fn run_until_stopped(self, shutdown: impl std::future::Future<Output = ()>) {
        let mut sessions = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        sessions.spawn(session::serve(Arc::clone(&self.shared), tcp, peer));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "SQL endpoint accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
        sessions.abort_all();
        while sessions.join_next().await.is_some() {}
    }
}

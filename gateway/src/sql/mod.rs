//! The SQL endpoint: a PostgreSQL-wire door for tenants' reporting tools (psql, DBeaver, Metabase,
//! Grafana, Power BI, psycopg …), read-only, each tenant seeing only its own rows.
//!
//! A tenant logs in with its slug (or id) as the user name and an API key with the `reporting:read` scope as
//! the password. The endpoint checks the key (through the gateway's own database login), takes an upstream
//! connection as `tessera_sql` from its pool (session pooling: the connection is the client's until it
//! leaves), binds it to the tenant (a row in `core.sql_sessions` for that server session, written through the
//! gateway's login, and the session's token in `tessera.sql_session`, checked inside Postgres by the row
//! policies: see core's V13 migration), and from then on relays the protocol.
//!
//! The layers, each of which holds on its own:
//! 1. the binding: no SQL the session sends can bind it to another tenant, and unbound it sees no rows;
//! 2. the role: `tessera_sql` has SELECT on the module tables and reporting views only, no CREATE, no TEMP,
//!    no large objects, no advisory locks, no other sessions' activity, and read-only transactions;
//! 3. the statement check ([`check`]): only queries, COPY … TO STDOUT, EXPLAIN without ANALYZE, SHOW and a
//!    few harmless SETs pass;
//! 4. limits enforced here: a statement deadline and row and byte caps, each cancelling the upstream query;
//! 5. `DISCARD ALL` before a connection serves another client, and cancel keys that die with the session.

pub mod check;
mod session;
mod statements;
mod upstream;
mod wire;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tessera_core::db::Database;
use tokio::net::TcpListener;

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
    /// Everything before a session is logged in (SSL, startup, password, the upstream binding) must finish
    /// within this, or the connection is closed.
    pub auth_timeout: Duration,
    /// A session with nothing running that hears nothing from its client for this long is closed, freeing
    /// its upstream connection.
    pub idle_timeout: Duration,
    /// Sessions one tenant may hold at once, so that no tenant can take the whole upstream pool.
    pub max_sessions_per_tenant: usize,
    /// Client connections at once, logged in or not; more are refused at once.
    pub max_connections: usize,
    /// Threads that relay sessions, each with its own event loop and its own share of the upstream pool
    /// (like PgBouncer's single-threaded loop, once per thread): a session stays on one thread, so relaying
    /// a message wakes no other thread.
    pub threads: usize,
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
            auth_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(15 * 60),
            max_sessions_per_tenant: 10,
            max_connections: 1000,
            threads: std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
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
    #[error("{0}")]
    Upstream(String),
}

/// What the sessions of one relay thread share.
pub(crate) struct Shared {
    config: SqlConfig,
    /// The gateway's database (as tessera_app), to check logins; used on the runtime `main`.
    auth: Database,
    main: tokio::runtime::Handle,
    /// This thread's upstream connections (their sockets belong to its event loop).
    pool: upstream::Pool,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Every thread's live cancel keys: a cancel request may arrive on any thread.
    cancels: Arc<session::Cancels>,
    /// Every thread's sessions per tenant.
    tenant_sessions: Arc<session::TenantSessions>,
}

/// A bound SQL endpoint, ready to serve.
pub struct SqlEndpoint {
    listener: TcpListener,
    config: SqlConfig,
    auth: Database,
    upstream: UpstreamConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
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
        // Fail at start, not at the first login, when the upstream is unreachable or its login could bypass
        // row-level security.
        upstream::Upstream::connect_checked(&upstream)
            .await
            .map_err(|e| SqlError::Upstream(e.to_string()))?;
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Self { listener, config, auth, upstream, tls })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes; then stops accepting and closes the sessions.
    pub async fn run_until_stopped(self, shutdown: impl std::future::Future<Output = ()>) {
        let threads = self.config.threads.max(1);
        let cancels = Arc::new(session::Cancels::default());
        let tenant_sessions = Arc::new(session::TenantSessions::default());
        let connections = Arc::new(tokio::sync::Semaphore::new(self.config.max_connections.max(1)));
        let mut shards = Vec::with_capacity(threads);
        for index in 0..threads {
            let pool_size = self.config.pool_size.div_ceil(threads);
            let pool = match upstream::Pool::builder(upstream::Manager { config: self.upstream.clone() })
                .max_size(pool_size)
                .runtime(deadpool::Runtime::Tokio1)
                .build()
            {
                Ok(pool) => pool,
                Err(e) => {
                    tracing::error!(error = %e, "could not build the SQL endpoint's upstream pool");
                    return;
                }
            };
            let shared = Arc::new(Shared {
                config: self.config.clone(),
                auth: self.auth.clone(),
                main: tokio::runtime::Handle::current(),
                pool,
                tls: self.tls.clone(),
                cancels: Arc::clone(&cancels),
                tenant_sessions: Arc::clone(&tenant_sessions),
            });
            match spawn_shard(index, shared) {
                Ok(shard) => shards.push(shard),
                Err(e) => {
                    tracing::error!(error = %e, "could not start a SQL endpoint thread");
                    return;
                }
            }
        }
        tokio::pin!(shutdown);
        let mut next = 0usize;
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                            tokio::spawn(refuse_busy(tcp));
                            continue;
                        };
                        let Ok(std_stream) = tcp.into_std() else { continue };
                        let (sender, _) = &shards[next % shards.len()];
                        next = next.wrapping_add(1);
                        if sender.send((std_stream, peer, permit)).is_err() {
                            tracing::error!("a SQL endpoint thread stopped");
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "SQL endpoint accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        // Closing the queues ends each thread's loop; its runtime then drops its sessions.
        let handles: Vec<_> = shards.into_iter().map(|(_, handle)| handle).collect();
        let _ = tokio::task::spawn_blocking(move || {
            for handle in handles {
                let _ = handle.join();
            }
        })
        .await;
    }
}

type Accepted = (std::net::TcpStream, SocketAddr, tokio::sync::OwnedSemaphorePermit);

/// Tells a client over the connection limit so, as PostgreSQL does, and closes.
async fn refuse_busy(mut tcp: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let mut out = bytes::BytesMut::new();
    wire::error(&mut out, true, "53300", "sorry, too many clients already");
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(&out)).await;
}

/// One relay thread: a single-threaded runtime serving the connections it is handed.
fn spawn_shard(
    index: usize,
    shared: Arc<Shared>,
) -> std::io::Result<(tokio::sync::mpsc::UnboundedSender<Accepted>, std::thread::JoinHandle<()>)> {
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<Accepted>();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let handle = std::thread::Builder::new().name(format!("tessera-sql-{index}")).spawn(move || {
        relay_without_wakeup_preemption();
        runtime.block_on(async move {
            while let Some((std_stream, peer, permit)) = receiver.recv().await {
                match tokio::net::TcpStream::from_std(std_stream) {
                    Ok(tcp) => {
                        tokio::spawn(session::serve(Arc::clone(&shared), tcp, peer, permit));
                    }
                    Err(e) => tracing::warn!(error = %e, "could not adopt a SQL connection"),
                }
            }
        });
    })?;
    Ok((sender, handle))
}

/// Puts the calling relay thread in the SCHED_BATCH policy: same nice value and the same weight in the
/// scheduler, but the thread is treated as CPU-bound in wake-up decisions, so that its waking up does not
/// preempt the task running on the CPU (sched(7) calls this "a small scheduling penalty with respect to
/// wakeup behavior").
///
/// Under load every message the relay forwards wakes it, and with the default policy the woken relay at
/// once preempted a PostgreSQL backend still working on another session's statement: extra context switches
/// on both sides, each costing them cache and CPU. With SCHED_BATCH the relay runs when a backend blocks (it
/// has sent its result and waits for the next statement, which is the relay's to bring) and then finds
/// several sessions' messages ready. Measured with `bench/sql_endpoint.sh` (the `endpoint-default` target
/// runs the same endpoint with the default policy): in the simple protocol the endpoint's CPU per transaction
/// stopped switching between about 15 and about 35 µs from one run to the next; see BENCHMARKS.md. An idle
/// CPU still runs the woken relay at once; when every CPU is busy with other work, a wake-up can wait for the
/// running task to block or for the scheduler's next tick: `bench/sql_relay_latency.sh` measured one client's
/// p99.9 at 8 ms instead of 5 ms with a busy loop on every CPU, and no difference with the CPUs idle.
/// SCHED_RESET_ON_FORK: threads this thread starts get the default policy.
fn relay_without_wakeup_preemption() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // The system call itself: musl's sched_setscheduler() is a stub that fails with ENOSYS. For the
        // kernel, pid 0 is the calling thread, whose policy is all it changes.
        // SAFETY: the kernel reads `param` only during the call and keeps no pointer to it; the other
        // arguments are integers. SCHED_BATCH at priority 0 needs no privilege.
        #[allow(unsafe_code)]
        let result = unsafe {
            libc::syscall(
                libc::SYS_sched_setscheduler,
                0 as libc::c_long,
                libc::c_long::from(libc::SCHED_BATCH | libc::SCHED_RESET_ON_FORK),
                &raw const param,
            )
        };
        if result != 0 {
            let error = std::io::Error::last_os_error();
            tracing::info!(%error, "the SQL relay thread keeps the default scheduling policy");
        }
    }
}

//! One client connection: SSL negotiation, startup, login, then the relay.
//!
//! The relay forwards the client's messages upstream and the server's messages back, byte for byte, so
//! results (text or binary), errors and COPY data are what a direct connection gives. It steps in at five
//! places:
//! - every SQL text (Query, Parse) passes the statement check first; a refused one is replaced upstream by
//!   a statement that fails to parse (`tessera_refused_<n>`), so the server itself fails it at the right
//!   place in the conversation (skipping the rest of the batch up to Sync, as after any error), and the
//!   relay swaps that syntax error for the refusal on the way back;
//! - the server's answers are counted against the row and byte limits (a row over the byte budget is
//!   dropped as it streams, never buffered);
//! - everything the client started has a deadline, and so has every write to a client that stops reading;
//! - an idle session ends after the idle timeout, freeing its upstream connection;
//! - a text the client parses again and again as its unnamed statement is prepared upstream once, under a
//!   name of the relay's ([`super::statements`]), so the server does not parse and plan it each time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use pgwire::messages::startup::Startup;
use pgwire::messages::{DecodeContext, PgWireFrontendMessage};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::check::{self, Refusal};
use super::statements::{self, Statements, Unnamed};
use super::upstream::{self, CancelKey, Pooled, Upstream};
use super::wire::{self, MAX_CLIENT_MESSAGE};
use super::{Shared, SqlError};

/// A client's cancel key, pointing at the upstream session while the client holds it.
pub(crate) struct CancelSlot {
    key: CancelKey,
    /// `true` while the client's session owns the upstream connection. Cancels take this lock and send only
    /// while it is `true`; the session sets it to `false` (under the lock) before the connection goes back to
    /// the pool, so a late cancel can never reach the next tenant's query.
    active: tokio::sync::Mutex<bool>,
}

impl CancelSlot {
    pub(crate) async fn cancel(&self) {
        let active = self.active.lock().await;
        if *active && let Err(e) = upstream::cancel(&self.key).await {
            tracing::warn!(error = %e, "could not send a cancel request upstream");
        }
        drop(active);
    }
}

/// The registry of live cancel keys: (pid, secret) as the client knows them.
pub(crate) type Cancels = Mutex<HashMap<(i32, i32), Arc<CancelSlot>>>;

/// Open sessions per tenant, across every relay thread.
pub(crate) type TenantSessions = Mutex<HashMap<String, usize>>;

/// One of a tenant's session seats, given back when dropped.
struct Seat {
    sessions: Arc<TenantSessions>,
    tenant: String,
}

impl Seat {
    fn take(sessions: &Arc<TenantSessions>, tenant: &str, cap: usize) -> Option<Self> {
        let mut open = sessions.lock().ok()?;
        let count = open.entry(tenant.to_owned()).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(Self { sessions: Arc::clone(sessions), tenant: tenant.to_owned() })
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Ok(mut open) = self.sessions.lock()
            && let Some(count) = open.get_mut(&self.tenant)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

/// Settings a client may choose at startup (and with SET during the session).
const CLIENT_SETTINGS: &[&str] = &[
    "application_name",
    "datestyle",
    "intervalstyle",
    "timezone",
    "extra_float_digits",
    "search_path",
    "bytea_output",
    "client_min_messages",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
];

/// What a refused statement is replaced with upstream: an identifier alone, which fails to parse with
/// "syntax error at or near "tessera_refused_<n>"".
const REFUSED_MARKER: &str = "tessera_refused_";

/// Why a Query or FunctionCall inside an unsynced extended-protocol batch ends the session: after an error in
/// the batch the server would skip it and its ReadyForQuery, and the relay could no longer tell which
/// answer belongs to which request. No driver sends one (libpq refuses to).
const IN_BATCH: &str = "a Query or FunctionCall message inside an extended-protocol batch (before its Sync) is not \
                        supported by the SQL endpoint";

/// How many bytes for the client the relay gathers before it writes them.
const OUT_CHUNK: usize = 64 * 1024;

/// The largest message other than a data row the endpoint takes from upstream.
const MAX_UPSTREAM_OTHER: usize = 64 * 1024 * 1024;

/// Runs `work` until `deadline`; `None` when it passed.
async fn within<T>(deadline: Instant, work: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout_at(deadline, work).await.ok()
}

/// Serves one accepted TCP connection. `_permit` counts it against the endpoint's connection limit.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    let _ = tcp.set_nodelay(true);
    // Everything up to a logged-in session must be done by then.
    let deadline = Instant::now() + shared.config.auth_timeout;
    let Some(first) = within(deadline, wire::read_startup_packet(&mut tcp)).await else { return };
    let mut packet = match first {
        Ok(p) => p,
        Err(e) => return refuse_startup(&mut tcp, &e.to_string()).await,
    };
    if wire::startup_code(&packet) == wire::GSSENC_REQUEST {
        if tcp.write_all(b"N").await.is_err() {
            return;
        }
        let Some(next) = within(deadline, wire::read_startup_packet(&mut tcp)).await else { return };
        packet = match next {
            Ok(p) => p,
            Err(e) => return refuse_startup(&mut tcp, &e.to_string()).await,
        };
    }
    if wire::startup_code(&packet) == wire::SSL_REQUEST {
        // CVE-2021-23214: bytes sent after SSLRequest, before the handshake, are plaintext an attacker may
        // have injected; they must never be read as if they came through TLS. PostgreSQL refuses them.
        let mut probe = [0u8; 1];
        match tcp.try_read(&mut probe) {
            Ok(0) => return,
            Ok(_) => {
                return fatal(&mut tcp, "08P01", "received unencrypted data after SSL request").await;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        match shared.tls.clone() {
            Some(acceptor) => {
                if tcp.write_all(b"S").await.is_err() {
                    return;
                }
                match within(deadline, acceptor.accept(tcp)).await {
                    Some(Ok(tls)) => after_ssl(shared, tls, true, peer, deadline).await,
                    Some(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    None => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            }
            None => {
                if tcp.write_all(b"N").await.is_err() {
                    return;
                }
                after_ssl(shared, tcp, false, peer, deadline).await;
            }
        }
        return;
    }
    startup(shared, tcp, packet, false, peer, deadline).await;
}

async fn after_ssl<S>(shared: Arc<Shared>, mut stream: S, tls: bool, peer: SocketAddr, deadline: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Some(packet) = within(deadline, wire::read_startup_packet(&mut stream)).await else { return };
    match packet {
        Ok(packet) if wire::startup_code(&packet) == wire::SSL_REQUEST => {
            fatal(&mut stream, "08P01", "SSL negotiation was already done").await;
        }
        Ok(packet) => startup(shared, stream, packet, tls, peer, deadline).await,
        Err(e) => refuse_startup(&mut stream, &e.to_string()).await,
    }
}

async fn refuse_startup<S: AsyncWrite + Unpin>(stream: &mut S, why: &str) {
    fatal(stream, "08P01", &format!("invalid startup packet: {why}")).await;
}

/// Writes a FATAL error (giving up after a second on a client that does not read); the caller then drops
/// the connection.
async fn fatal<S: AsyncWrite + Unpin>(stream: &mut S, sqlstate: &str, message: &str) {
    let mut out = BytesMut::new();
    wire::error(&mut out, true, sqlstate, message);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(&out).await;
        let _ = stream.flush().await;
    })
    .await;
}

fn decode_startup(packet: BytesMut) -> Result<PgWireFrontendMessage, String> {
    let mut ctx = DecodeContext::default();
    ctx.awaiting_frontend_ssl = false;
    let mut buf = packet;
    match PgWireFrontendMessage::decode(&mut buf, &ctx) {
        Ok(Some(message)) => Ok(message),
        Ok(None) => Err("incomplete".into()),
        Err(e) => Err(e.to_string()),
    }
}

async fn startup<S>(
    shared: Arc<Shared>,
    mut stream: S,
    packet: BytesMut,
    tls: bool,
    peer: SocketAddr,
    deadline: Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let startup = match decode_startup(packet) {
        Ok(PgWireFrontendMessage::CancelRequest(request)) => {
            let secret = match request.secret_key.to_bytes().as_ref() {
                [a, b, c, d] => i32::from_be_bytes([*a, *b, *c, *d]),
                _ => return,
            };
            let slot = shared.cancels.lock().ok().and_then(|c| c.get(&(request.pid, secret)).cloned());
            if let Some(slot) = slot {
                slot.cancel().await;
            }
            return;
        }
        Ok(PgWireFrontendMessage::Startup(startup)) => startup,
        Ok(_) => return refuse_startup(&mut stream, "unexpected message").await,
        Err(e) => return refuse_startup(&mut stream, &e).await,
    };
    let session = match within(deadline, login(&shared, &mut stream, &startup, tls)).await {
        Some(Ok(Some(session))) => session,
        Some(Ok(None)) => return,
        Some(Err(e)) => return tracing::warn!(%peer, error = %e, "SQL login failed"),
        None => return fatal(&mut stream, "08006", "the login did not finish in time").await,
    };
    let user = startup.parameters.get("user").cloned().unwrap_or_default();
    tracing::info!(%peer, tenant = %user, "SQL session started");
    match relay(&shared, &mut stream, session).await {
        Ended::Client => tracing::info!(%peer, tenant = %user, "SQL session ended"),
        Ended::Upstream(why) => tracing::warn!(%peer, tenant = %user, %why, "SQL session ended upstream"),
        other => tracing::info!(%peer, tenant = %user, why = ?other, "SQL session ended by the endpoint"),
    }
}

/// A logged-in session: its upstream connection and what dies with it.
struct Session {
    conn: Pooled,
    slot: Arc<CancelSlot>,
    client_key: (i32, i32),
    binding: Binding,
    _seat: Seat,
}

/// Startup checks, authentication and the upstream binding. `Ok(None)` when the client was refused (it has
/// been told why).
async fn login<S>(
    shared: &Shared,
    stream: &mut S,
    startup: &Startup,
    tls: bool,
) -> Result<Option<Session>, SqlError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut out = BytesMut::new();
    if startup.protocol_number_major != 3 {
        fatal(stream, "0A000", "unsupported frontend protocol: this endpoint speaks protocol 3.0").await;
        return Ok(None);
    }
    let mut settings: Vec<(&'static str, String)> = Vec::new();
    let mut unsupported_options = Vec::new();
    for (name, value) in &startup.parameters {
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "user" | "database" => {}
            // The statement check reads SQL as UTF-8, as the server must: other encodings could split a
            // multibyte character into a quote the check never saw.
            "client_encoding" => {
                let normalized: String = value
                    .chars()
                    .filter(|c| !matches!(c, '-' | '_'))
                    .collect::<String>()
                    .to_ascii_uppercase();
                if !matches!(normalized.as_str(), "UTF8" | "UNICODE" | "SQLASCII" | "AUTO") {
                    let message =
                        format!("client_encoding \"{value}\" is not supported: the SQL endpoint speaks UTF8");
                    fatal(stream, "22023", &message).await;
                    return Ok(None);
                }
            }
            "options" if value.trim().is_empty() => {}
            "options" => {
                fatal(stream, "42501", "startup options are not allowed on the SQL endpoint").await;
                return Ok(None);
            }
            "replication" => {
                fatal(stream, "42501", "replication connections are not allowed on the SQL endpoint").await;
                return Ok(None);
            }
            _ if lower.starts_with("_pq_.") => unsupported_options.push(name.clone()),
            _ => match CLIENT_SETTINGS.iter().find(|s| **s == lower) {
                Some(setting) => settings.push((setting, value.clone())),
                None => {
                    let message = format!(
                        "unrecognized configuration parameter \"{name}\" (or not allowed on the SQL endpoint)"
                    );
                    fatal(stream, "42704", &message).await;
                    return Ok(None);
                }
            },
        }
    }
    if startup.protocol_number_minor > 0 || !unsupported_options.is_empty() {
        use pgwire::messages::startup::NegotiateProtocolVersion;
        let negotiate = NegotiateProtocolVersion::new(0, unsupported_options);
        if let Err(e) =
            pgwire::messages::PgWireBackendMessage::NegotiateProtocolVersion(negotiate).encode(&mut out)
        {
            tracing::error!(error = %e, "could not encode NegotiateProtocolVersion");
        }
    }
    if shared.config.require_tls && !tls {
        fatal(stream, "28000", "the SQL endpoint requires SSL: connect with sslmode=require").await;
        return Ok(None);
    }
    let user = startup.parameters.get("user").cloned().unwrap_or_default();
    if user.is_empty() {
        fatal(stream, "28000", "no user name given: the user name names the tenant").await;
        return Ok(None);
    }

    // The password is an API key with the reporting:read scope.
    wire::ask_password(&mut out);
    stream.write_all(&out).await?;
    stream.flush().await?;
    out.clear();
    let password = match wire::read_frame(stream, 10_000).await {
        Ok(Some(frame)) if frame.tag() == b'p' => wire::cstr(frame.body()).map(|(p, _)| p.to_owned()),
        Ok(None) => return Ok(None),
        _ => None,
    };
    let Some(password) = password else {
        fatal(stream, "08P01", "expected a password message").await;
        return Ok(None);
    };
    let failed = format!("password authentication failed for user \"{user}\"");
    let key = match tessera_core::apikey::parse(&password) {
        Ok(key) if key.token().is_none() => key,
        _ => {
            fatal(stream, "28P01", &failed).await;
            return Ok(None);
        }
    };

    // An upstream session, its binding (made for that server session), then the session's token and settings.
    // A pooled connection may have died while idle (a restarted server): then another one.
    for _ in 0..3 {
        let conn = match tokio::time::timeout(shared.config.pool_wait, shared.pool.get()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "could not open an upstream connection");
                fatal(stream, "08006", "the SQL endpoint cannot reach the database; try again").await;
                return Ok(None);
            }
            Err(_) => {
                fatal(
                    stream,
                    "53300",
                    "too many connections: the SQL endpoint has no free upstream connection",
                )
                .await;
                return Ok(None);
            }
        };
        // On the runtime that owns the gateway's database connections.
        let mut conn = conn;
        conn.clean = false;
        let (auth, tenant, presented, pid, started) =
            (shared.auth.clone(), user.clone(), key.clone(), conn.key.pid, conn.server_started.clone());
        let checked = shared
            .main
            .spawn(async move { auth.bind_sql_session(&tenant, &presented, pid, &started).await })
            .await;
        let (tenant_id, token) = match checked {
            Ok(Ok(Some(bound))) => bound,
            Ok(Ok(None)) => {
                // Nothing ran on the connection: it is still clean.
                conn.clean = true;
                fatal(stream, "28P01", &failed).await;
                return Ok(None);
            }
            // The database failed, or the check's task did.
            failure => {
                tracing::error!(error = ?failure.map(|r| r.map(|_| ())), "could not check a SQL login");
                fatal(stream, "57P03", "the SQL endpoint cannot check credentials right now; try again")
                    .await;
                return Ok(None);
            }
        };
        let binding = Binding { token };
        stamp_key(shared, key.prefix()).await;
        let Some(seat) = Seat::take(
            &shared.tenant_sessions,
            &tenant_id.to_string(),
            shared.config.max_sessions_per_tenant,
        ) else {
            unbind(shared, &binding).await;
            let message = format!(
                "too many connections for this tenant: at most {} at once",
                shared.config.max_sessions_per_tenant
            );
            fatal(stream, "53300", &message).await;
            return Ok(None);
        };
        match conn.bind_session(&binding.token, &settings).await {
            Ok(outcome) => match outcome.error {
                None => {
                    apply(&mut conn.params, outcome.changed);
                    if !binding_visible(&mut conn, tenant_id).await {
                        unbind(shared, &binding).await;
                        reset_and_return(conn).await;
                        let message =
                            "the SQL endpoint's database has not caught up with the login; try again";
                        fatal(stream, "57P03", message).await;
                        return Ok(None);
                    }
                    return finish_login(shared, stream, conn, seat, binding, &user).await.map(Some);
                }
                // The client's own settings were refused (an unknown time zone, say): its error, verbatim.
                Some((code, message)) => {
                    unbind(shared, &binding).await;
                    reset_and_return(conn).await;
                    fatal(stream, &code, &message).await;
                    return Ok(None);
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "dropping a dead upstream connection");
                unbind(shared, &binding).await;
                drop(Pooled::take(conn));
            }
        }
    }
    fatal(stream, "08006", "the SQL endpoint cannot reach the database; try again").await;
    Ok(None)
}

/// A session's row in core.sql_sessions, by its token.
struct Binding {
    token: String,
}

/// Notes the key's use (its last-used time), best effort.
async fn stamp_key(shared: &Shared, prefix: &str) {
    let (auth, prefixes) = (shared.auth.clone(), vec![prefix.to_owned()]);
    let now = [time::OffsetDateTime::now_utc()];
    best_effort(
        shared,
        "note an API key's last use",
        async move { auth.touch_api_keys(&prefixes, &now).await },
    )
    .await;
}

/// Ends a binding, best effort: a row left behind binds nothing (no later session knows its token).
async fn unbind(shared: &Shared, binding: &Binding) {
    let (auth, token) = (shared.auth.clone(), binding.token.clone());
    best_effort(shared, "end a SQL binding", async move { auth.unbind_sql_session(&token).await }).await;
}

/// Runs a write on the gateway's database (on the runtime that owns its connections), giving up after two
/// seconds; a failure is logged, not returned.
async fn best_effort<F>(shared: &Shared, what: &str, work: F)
where
    F: std::future::Future<Output = Result<(), tessera_core::ApiError>> + Send + 'static,
{
    match tokio::time::timeout(Duration::from_secs(2), shared.main.spawn(work)).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = ?e, "could not {what}"),
        Ok(Err(e)) => tracing::warn!(error = %e, "could not {what}"),
        Err(_) => tracing::warn!("could not {what}: timed out"),
    }
}

/// Whether the upstream session sees its binding: at once on the primary; on a hot standby once the login's
/// row has replicated (waiting up to two seconds).
async fn binding_visible(conn: &mut Pooled, tenant: uuid::Uuid) -> bool {
    let expected = tenant.to_string();
    for _ in 0..100 {
        match conn
            .run(
                "select s.tenant_id::text from core.sql_sessions s \
             where s.pid = pg_backend_pid() and s.server_started = pg_postmaster_start_time() \
               and s.token_hash = sha256(convert_to(current_setting('tessera.sql_session', true), 'UTF8'))",
            )
            .await
        {
            Ok(outcome) if outcome.first.as_deref() == Some(expected.as_str()) => return true,
            Ok(outcome) if outcome.error.is_none() => tokio::time::sleep(Duration::from_millis(20)).await,
            _ => return false,
        }
    }
    false
}

/// The client's cancel key, then AuthenticationOk, the parameters, BackendKeyData and ReadyForQuery.
async fn finish_login<S>(
    shared: &Shared,
    stream: &mut S,
    conn: Pooled,
    seat: Seat,
    binding: Binding,
    user: &str,
) -> Result<Session, SqlError>
where
    S: AsyncWrite + Unpin,
{
    let slot = Arc::new(CancelSlot { key: conn.key.clone(), active: tokio::sync::Mutex::new(true) });
    let client_key = loop {
        let mut bytes = [0u8; 8];
        tessera_core::apikey::fill_random(&mut bytes).map_err(|e| SqlError::Random(e.to_string()))?;
        let pid = i32::from_be_bytes([bytes[0] & 0x7f, bytes[1], bytes[2], bytes[3]]);
        let secret = i32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let mut cancels = shared.cancels.lock().map_err(|_| SqlError::Poisoned)?;
        if pid != 0 && !cancels.contains_key(&(pid, secret)) {
            cancels.insert((pid, secret), Arc::clone(&slot));
            break (pid, secret);
        }
    };
    let mut out = BytesMut::new();
    wire::authentication_ok(&mut out);
    for (name, value) in &conn.params {
        let value = match name.as_str() {
            "is_superuser" => "off",
            "session_authorization" => user,
            _ => value.as_str(),
        };
        wire::parameter_status(&mut out, name, value);
    }
    wire::backend_key_data(&mut out, client_key.0, client_key.1);
    wire::ready_for_query(&mut out);
    let written = async {
        stream.write_all(&out).await?;
        stream.flush().await
    }
    .await;
    if let Err(e) = written {
        // The client is gone before its session began: its cancel key goes with it.
        if let Ok(mut cancels) = shared.cancels.lock() {
            cancels.remove(&client_key);
        }
        *slot.active.lock().await = false;
        unbind(shared, &binding).await;
        return Err(e.into());
    }
    Ok(Session { conn, slot, client_key, binding, _seat: seat })
}

/// Folds ParameterStatus changes into the connection's known values.
fn apply(params: &mut Vec<(String, String)>, changed: Vec<(String, String)>) {
    for (name, value) in changed {
        match params.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = value,
            None => params.push((name, value)),
        }
    }
}

/// Resets an upstream session (`DISCARD ALL`: settings, the session's token, prepared statements, cursors, temporary
/// objects) and gives it back to the pool; a connection that cannot be reset is closed instead.
async fn reset_and_return(mut conn: Pooled) {
    match conn.run("discard all").await {
        Ok(outcome) if outcome.error.is_none() => {
            apply(&mut conn.params, outcome.changed);
            conn.clean = true;
        }
        _ => drop(Pooled::take(conn)),
    }
}

/// How the relay ended.
#[derive(Debug)]
enum Ended {
    /// The client said goodbye or went away between messages.
    Client,
    /// The client broke the protocol.
    ClientError(String),
    /// The session sat idle past the idle timeout.
    Idle,
    /// The client left an extended-protocol batch without Sync past the statement timeout.
    Stalled,
    Upstream(String),
}

/// What the two directions of a relay share.
struct Flow {
    /// Requests (Query, Sync) the server has not answered with ReadyForQuery yet.
    outstanding: AtomicUsize,
    /// Extended-protocol messages were forwarded since the last Sync.
    unsynced: AtomicBool,
    /// When the client last started work from idle (microseconds after `epoch`; 0: idle).
    busy_since: AtomicU64,
    epoch: Instant,
    /// Refusals by marker number, until the server's syntax error for the marker comes back.
    refusals: Mutex<HashMap<u64, Refusal>>,
    /// The relay's prepared statements for the client's unnamed ones, and the requests in flight.
    statements: Mutex<Statements>,
}

impl Flow {
    fn new() -> Self {
        Self {
            outstanding: AtomicUsize::new(0),
            unsynced: AtomicBool::new(false),
            busy_since: AtomicU64::new(0),
            epoch: Instant::now(),
            refusals: Mutex::new(HashMap::new()),
            statements: Mutex::new(Statements::default()),
        }
    }

    fn mark_busy(&self) {
        if self.busy_since.load(Ordering::SeqCst) == 0 {
            let micros = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
            self.busy_since.store(micros, Ordering::SeqCst);
        }
    }

    fn busy_since(&self) -> Option<Instant> {
        match self.busy_since.load(Ordering::SeqCst) {
            0 => None,
            micros => Some(self.epoch + Duration::from_micros(micros)),
        }
    }

    fn idle(&self) -> bool {
        self.outstanding.load(Ordering::SeqCst) == 0 && !self.unsynced.load(Ordering::SeqCst)
    }
}

async fn relay<S>(shared: &Shared, stream: &mut S, session: Session) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Session { mut conn, slot, client_key, binding, _seat } = session;
    let flow = Flow::new();
    let ended = {
        let (client_read, client_write) = tokio::io::split(&mut *stream);
        let Upstream { reader, writer, params, .. } = &mut *conn;
        // The relay reads the server into its own buffer: what the login's reader holds comes first, and the
        // socket is read directly from then on (no copy through the reader's buffer).
        let buffered = BytesMut::from(reader.buffer());
        Pin::new(&mut *reader).consume(buffered.len());
        let to_upstream = client_to_upstream(shared, client_read, writer, &flow);
        let to_client =
            upstream_to_client(shared, reader.get_mut(), buffered, client_write, &flow, &slot, params);
        tokio::select! {
            ended = to_upstream => ended,
            ended = to_client => ended,
        }
    };
    match &ended {
        Ended::ClientError(message) => fatal(stream, "08P01", message).await,
        Ended::Idle => fatal(stream, "57P05", "terminating connection due to idle-session timeout").await,
        Ended::Stalled => {
            let message = "terminating connection: an extended-protocol batch was left without Sync past \
                           the statement timeout";
            fatal(stream, "57014", message).await;
        }
        Ended::Upstream(_) => {
            fatal(stream, "08006", "the SQL endpoint lost its connection to the database").await;
        }
        Ended::Client => {}
    }
    // The client's cancel key dies with its session.
    if let Ok(mut cancels) = shared.cancels.lock() {
        cancels.remove(&client_key);
    }
    let reusable = matches!(ended, Ended::Client | Ended::Idle) && flow.idle();
    if !flow.idle() {
        // Stop whatever the client left running before the connection is closed.
        slot.cancel().await;
    }
    *slot.active.lock().await = false;
    unbind(shared, &binding).await;
    if reusable {
        reset_and_return(conn).await;
    } else {
        drop(Pooled::take(conn));
    }
    ended
}

/// The client's messages, checked and forwarded upstream.
async fn client_to_upstream<R, W>(shared: &Shared, reader: R, writer: &mut W, flow: &Flow) -> Ended
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut reader = reader;
    let mut upstream = BufWriter::with_capacity(64 * 1024, writer);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut replacement = BytesMut::new();
    let mut next_marker = 0u64;
    // The idle timeout, measured from the last read. The timer is not moved on every read (that would touch
    // the timer wheel twice per message): it fires at the first instant the session could be idle and is
    // moved on from there.
    let idle_timeout = shared.config.idle_timeout;
    let mut last_read = Instant::now();
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    loop {
        loop {
            let frame = match wire::split_frame(&mut buf, MAX_CLIENT_MESSAGE) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return Ended::ClientError(format!("invalid message: {e}")),
            };
            // A refused statement goes upstream as one that fails to parse, under this marker.
            let mut refuse = |refusal: Refusal| {
                next_marker += 1;
                if let Ok(mut refusals) = flow.refusals.lock() {
                    refusals.insert(next_marker, refusal);
                }
                format!("{REFUSED_MARKER}{next_marker}")
            };
            replacement.clear();
            let forward: Option<&[u8]> = match frame.tag() {
                b'Q' => {
                    let Some(sql) = wire::query_text(&frame) else {
                        return Ended::ClientError("invalid Query message".into());
                    };
                    if flow.unsynced.load(Ordering::SeqCst) {
                        return Ended::ClientError(IN_BATCH.into());
                    }
                    flow.outstanding.fetch_add(1, Ordering::SeqCst);
                    flow.mark_busy();
                    let mut statements = lock(&flow.statements);
                    statements.sent_query();
                    match check::inspect(sql) {
                        Ok(facts) => {
                            if facts.settings {
                                statements.settings_changed();
                            }
                            Some(frame.bytes())
                        }
                        Err(refusal) => {
                            wire::frontend(
                                b'Q',
                                format!("{}\0", refuse(refusal)).as_bytes(),
                                &mut replacement,
                            );
                            Some(&replacement[..])
                        }
                    }
                }
                b'P' => {
                    let Some((name, sql)) = wire::parse_parts(&frame) else {
                        return Ended::ClientError("invalid Parse message".into());
                    };
                    flow.unsynced.store(true, Ordering::SeqCst);
                    flow.mark_busy();
                    let mut statements = lock(&flow.statements);
                    // Past the name: the text and the parameter types.
                    let text = &frame.body()[name.len() + 1..];
                    let how = if name.is_empty() { statements.unnamed(text) } else { Unnamed::AsIs };
                    let checked = match how {
                        // Prepared, so checked before: the check is a function of the text alone.
                        Unnamed::Prepared(_) => Ok(None),
                        _ if name.starts_with(statements::PREFIX) => Err(Refusal {
                            sqlstate: "42501",
                            message: format!(
                                "statement names starting with {} are reserved by the SQL endpoint",
                                statements::PREFIX
                            ),
                        }),
                        _ => check::inspect(sql).map(Some),
                    };
                    match checked {
                        Err(refusal) => {
                            if name.is_empty() {
                                statements.sent_unnamed(text, &Unnamed::AsIs);
                            }
                            let body = format!("{name}\0{}\0\0\0", refuse(refusal));
                            wire::frontend(b'P', body.as_bytes(), &mut replacement);
                            Some(&replacement[..])
                        }
                        Ok(_) if !name.is_empty() => Some(frame.bytes()),
                        Ok(facts) => {
                            // A string constant's value is fixed when the server analyses the text, and a
                            // setting changed makes every kept plan stale: such texts are parsed each time.
                            if facts.is_some_and(|f| f.settings) {
                                statements.settings_changed();
                            }
                            let how = match how {
                                Unnamed::Prepare(_)
                                    if facts.is_some_and(|f| f.string_constants || f.settings) =>
                                {
                                    Unnamed::AsIs
                                }
                                how => how,
                            };
                            statements.sent_unnamed(text, &how);
                            match how {
                                Unnamed::Prepared(_) => {
                                    // The empty statement: ParseComplete in the text's place.
                                    wire::frontend(b'P', b"\0\0\0\0", &mut replacement);
                                    Some(&replacement[..])
                                }
                                Unnamed::Prepare(n) => {
                                    let mut body = statements::name(n).into_bytes();
                                    body.push(0);
                                    body.extend_from_slice(text);
                                    wire::frontend(b'P', &body, &mut replacement);
                                    Some(&replacement[..])
                                }
                                Unnamed::AsIs => Some(frame.bytes()),
                            }
                        }
                    }
                }
                b'B' | b'D' | b'C' => {
                    flow.unsynced.store(true, Ordering::SeqCst);
                    flow.mark_busy();
                    let mut statements = lock(&flow.statements);
                    // The same message naming another statement.
                    let mut rename = |offset: usize, old: &str, new: &str| {
                        let body = frame.body();
                        let mut renamed = Vec::with_capacity(body.len() + new.len());
                        renamed.extend_from_slice(&body[..offset]);
                        renamed.extend_from_slice(new.as_bytes());
                        renamed.extend_from_slice(&body[offset + old.len()..]);
                        wire::frontend(frame.tag(), &renamed, &mut replacement);
                    };
                    match statement_reference(frame.tag(), frame.body()) {
                        // Malformed, or a portal: the server answers it.
                        None => Some(frame.bytes()),
                        Some((_, "")) if frame.tag() == b'C' => {
                            statements.closed_unnamed();
                            Some(frame.bytes())
                        }
                        Some((offset, "")) => match statements.for_unnamed() {
                            Some(upstream) => {
                                rename(offset, "", &upstream);
                                Some(&replacement[..])
                            }
                            None => Some(frame.bytes()),
                        },
                        // The relay's names are not the client's to use: one that is never prepared instead.
                        Some((offset, name)) if name.starts_with(statements::PREFIX) => {
                            rename(offset, name, statements::RESERVED);
                            Some(&replacement[..])
                        }
                        Some(_) => Some(frame.bytes()),
                    }
                }
                b'E' => {
                    flow.unsynced.store(true, Ordering::SeqCst);
                    flow.mark_busy();
                    Some(frame.bytes())
                }
                b'H' => Some(frame.bytes()),
                b'S' => {
                    flow.outstanding.fetch_add(1, Ordering::SeqCst);
                    flow.unsynced.store(false, Ordering::SeqCst);
                    flow.mark_busy();
                    lock(&flow.statements).sent_sync();
                    Some(frame.bytes())
                }
                b'F' => {
                    if flow.unsynced.load(Ordering::SeqCst) {
                        return Ended::ClientError(IN_BATCH.into());
                    }
                    flow.outstanding.fetch_add(1, Ordering::SeqCst);
                    flow.mark_busy();
                    // Sent as a Query (a refused one).
                    lock(&flow.statements).sent_query();
                    let refusal = Refusal {
                        sqlstate: "42501",
                        message: "function calls over the protocol are not allowed on the SQL endpoint"
                            .into(),
                    };
                    wire::frontend(b'Q', format!("{}\0", refuse(refusal)).as_bytes(), &mut replacement);
                    Some(&replacement[..])
                }
                b'X' => return Ended::Client,
                // No COPY FROM ever starts upstream, so copy data from the client goes nowhere.
                b'd' | b'c' | b'f' => None,
                other => {
                    return Ended::ClientError(format!("invalid frontend message type {}", other as char));
                }
            };
            if let Some(bytes) = forward
                && let Err(e) = upstream.write_all(bytes).await
            {
                return Ended::Upstream(e.to_string());
            }
        }
        if let Err(e) = upstream.flush().await {
            return Ended::Upstream(e.to_string());
        }
        buf.reserve(8 * 1024);
        tokio::select! {
            biased;
            read = reader.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => return Ended::Client,
                Ok(_) => last_read = Instant::now(),
            },
            () = &mut idle => {
                // Armed lazily: it may fire before the client has been silent for the whole timeout.
                let now = Instant::now();
                if now >= last_read + idle_timeout {
                    if flow.idle() {
                        return Ended::Idle;
                    }
                    // Busy past the timeout: work counts as activity, so the session gets a whole idle
                    // timeout from here.
                    last_read = now;
                }
                idle.as_mut().reset(last_read + idle_timeout);
            }
        }
    }
}

/// The server's messages, counted against the limits and relayed to the client.
async fn upstream_to_client<R, W>(
    shared: &Shared,
    reader: &mut R,
    mut buf: BytesMut,
    mut client: W,
    flow: &Flow,
    slot: &Arc<CancelSlot>,
    params: &mut Vec<(String, String)>,
) -> Ended
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let limits = &shared.config;
    buf.reserve(64 * 1024);
    // Set when the endpoint stopped a statement (a limit, the deadline): everything up to the next
    // ReadyForQuery is dropped (but settings changes and notices) and this error sent in its place.
    let mut stopped: Option<Refusal> = None;
    // Past this instant after stopping a statement, an upstream that still has not answered is given up.
    let mut give_up: Option<Instant> = None;
    // The cancel request sent when stopping a statement. The client hears ReadyForQuery only once the server
    // has received it: a late cancel would otherwise hit the client's next statement.
    let mut cancelling: Option<tokio::task::JoinHandle<()>> = None;
    // Bytes of an oversized row still to be dropped as they stream in.
    let mut skip = 0usize;
    let (mut rows, mut bytes) = (0u64, 0u64);
    // What goes to the client, written when it holds OUT_CHUNK bytes and when the server's bytes at hand
    // are relayed.
    let mut out = BytesMut::with_capacity(OUT_CHUNK);
    // The deadlines (the statement's, giving up on a cancelled one) on one timer that is moved only when a
    // deadline comes earlier than it is set for; when it fires early, it is set again for the real one.
    // While nothing runs it fires every statement timeout, so work that starts in between is caught by
    // the timeout after it starts at the latest.
    let timer = tokio::time::sleep(limits.statement_timeout);
    tokio::pin!(timer);
    let stop = |stopped: &mut Option<Refusal>,
                give_up: &mut Option<Instant>,
                cancelling: &mut Option<tokio::task::JoinHandle<()>>,
                refusal: Refusal| {
        if stopped.is_none() {
            *stopped = Some(refusal);
            *give_up = Some(Instant::now() + Duration::from_secs(5));
            let slot = Arc::clone(slot);
            *cancelling = Some(tokio::spawn(async move { slot.cancel().await }));
        }
    };
    let too_big = || Refusal {
        sqlstate: "54000",
        message: format!(
            "the result is larger than {} bytes, the SQL endpoint's limit: select fewer rows or columns",
            limits.max_bytes
        ),
    };
    // A client that stops reading must not hold the server (blocked in send, deaf to cancels) forever.
    let write_deadline = || flow.busy_since().unwrap_or_else(Instant::now) + limits.statement_timeout;
    loop {
        loop {
            if skip > 0 {
                let n = skip.min(buf.len());
                buf.advance(n);
                skip -= n;
                if skip > 0 {
                    break;
                }
            }
            match wire::frame_header(&buf, usize::MAX) {
                Err(e) => return Ended::Upstream(e.to_string()),
                Ok(None) => {}
                Ok(Some((tag, total))) => {
                    let row = matches!(tag, b'D' | b'd');
                    if row && (stopped.is_some() || bytes + total as u64 > limits.max_bytes) {
                        stop(&mut stopped, &mut give_up, &mut cancelling, too_big());
                        skip = total;
                        continue;
                    }
                    if !row && total > MAX_UPSTREAM_OTHER {
                        return Ended::Upstream(format!("an oversized message ({total} bytes)"));
                    }
                }
            }
            let frame = match wire::split_frame(&mut buf, usize::MAX) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return Ended::Upstream(e.to_string()),
            };
            match frame.tag() {
                b'E' => {
                    let code = wire::error_field(frame.body(), b'C').unwrap_or_default();
                    lock(&flow.statements).error(code);
                }
                b'Z' => lock(&flow.statements).ready(),
                _ => {}
            }
            match frame.tag() {
                b'Z' => {
                    if flow.outstanding.load(Ordering::SeqCst) > 0 {
                        flow.outstanding.fetch_sub(1, Ordering::SeqCst);
                    }
                    if let Some(cancel) = cancelling.take() {
                        let _ = cancel.await;
                    }
                    if let Some(refusal) = stopped.take() {
                        wire::error(&mut out, false, refusal.sqlstate, &refusal.message);
                    }
                    out.extend_from_slice(frame.bytes());
                    give_up = None;
                    (rows, bytes) = (0, 0);
                    if flow.idle() {
                        flow.busy_since.store(0, Ordering::SeqCst);
                        if let Ok(mut refusals) = flow.refusals.lock() {
                            refusals.clear();
                        }
                    }
                }
                // Settings changes, notices and notifications pass even while a statement is being stopped.
                b'S' => {
                    apply(params, wire::parameter_status_of(frame.body()).into_iter().collect());
                    out.extend_from_slice(frame.bytes());
                }
                b'N' | b'A' => out.extend_from_slice(frame.bytes()),
                _ if stopped.is_some() => {}
                b'E' => {
                    (rows, bytes) = (0, 0);
                    match refusal_for(flow, frame.body()) {
                        Some(refusal) => wire::error(&mut out, false, refusal.sqlstate, &refusal.message),
                        None => out.extend_from_slice(frame.bytes()),
                    }
                }
                b'D' | b'd' => {
                    rows += 1;
                    bytes += frame.wire_len() as u64;
                    if rows > limits.max_rows {
                        let message = format!(
                            "the result has more than {} rows, the SQL endpoint's limit: add a LIMIT or a filter",
                            limits.max_rows
                        );
                        stop(
                            &mut stopped,
                            &mut give_up,
                            &mut cancelling,
                            Refusal { sqlstate: "54000", message },
                        );
                    } else {
                        out.extend_from_slice(frame.bytes());
                    }
                }
                b'C' | b'I' => {
                    (rows, bytes) = (0, 0);
                    out.extend_from_slice(frame.bytes());
                }
                // COPY FROM or replication never pass the statement check; if one ever started, the session
                // ends rather than feed it.
                b'G' | b'W' => {
                    return Ended::Upstream("the server started a COPY FROM or a replication stream".into());
                }
                _ => out.extend_from_slice(frame.bytes()),
            }
            if out.len() >= OUT_CHUNK
                && let Err(ended) = write_out(&mut client, &mut out, write_deadline()).await
            {
                return ended;
            }
        }
        if !out.is_empty()
            && let Err(ended) = write_out(&mut client, &mut out, write_deadline()).await
        {
            return ended;
        }
        // Work the client starts while this side waits has its deadline a statement timeout after it
        // starts: while idle the timer is set no later than a statement timeout from now.
        let deadline = step_in_at(give_up, flow, limits.statement_timeout)
            .unwrap_or_else(|| Instant::now() + limits.statement_timeout);
        if deadline < timer.deadline() {
            timer.as_mut().reset(deadline);
        }
        buf.reserve(16 * 1024);
        // Not biased: a server that keeps sending must not keep the deadline from being looked at.
        tokio::select! {
            read = reader.read_buf(&mut buf) => match read {
                Ok(0) => return Ended::Upstream("the server closed the connection".into()),
                Ok(_) => {}
                Err(e) => return Ended::Upstream(e.to_string()),
            },
            () = &mut timer => {
                let now = Instant::now();
                match step_in_at(give_up, flow, limits.statement_timeout) {
                    Some(at) if at <= now => {}
                    // Early: set for the real deadline, or for a statement timeout from now while idle.
                    Some(at) => {
                        timer.as_mut().reset(at);
                        continue;
                    }
                    None => {
                        timer.as_mut().reset(now + limits.statement_timeout);
                        continue;
                    }
                }
                if give_up.is_some() {
                    return Ended::Upstream("the server did not answer a cancel request".into());
                }
                if flow.outstanding.load(Ordering::SeqCst) == 0 {
                    // Nothing was sent for the server to finish: the client holds a batch (and perhaps a
                    // transaction) open without Sync.
                    return Ended::Stalled;
                }
                let message = format!(
                    "canceling statement due to the SQL endpoint's statement timeout ({} ms)",
                    limits.statement_timeout.as_millis()
                );
                stop(&mut stopped, &mut give_up, &mut cancelling, Refusal { sqlstate: "57014", message });
                if let Some(at) = give_up {
                    timer.as_mut().reset(at);
                }
            }
        }
    }
}

/// When the relay steps in: when it gives up on a cancelled statement, else a statement timeout after the
/// client started its work; `None` while nothing runs.
fn step_in_at(give_up: Option<Instant>, flow: &Flow, statement_timeout: Duration) -> Option<Instant> {
    give_up.or_else(|| flow.busy_since().map(|since| since + statement_timeout))
}

/// Writes what was gathered for the client by `deadline`, and empties it.
async fn write_out<W: AsyncWrite + Unpin>(
    client: &mut W,
    out: &mut BytesMut,
    deadline: Instant,
) -> Result<(), Ended> {
    let written = async {
        client.write_all(out).await?;
        client.flush().await
    };
    match tokio::time::timeout_at(deadline, written).await {
        Ok(Ok(())) => {
            out.clear();
            Ok(())
        }
        Ok(Err(e)) => Err(Ended::Upstream(format!("client write: {e}"))),
        Err(_) => Err(Ended::Upstream("the client stopped reading".into())),
    }
}

/// Locks a mutex of the relay's own (held only within one step of one session's relay).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The statement a Bind (portal, then statement), Describe or Close (`S`, then the name) names: where its
/// name starts in the body, and the name. `None` for a portal's Describe or Close, or a malformed message.
fn statement_reference(tag: u8, body: &[u8]) -> Option<(usize, &str)> {
    let (offset, rest) = match tag {
        b'B' => {
            let (portal, rest) = wire::cstr(body)?;
            (portal.len() + 1, rest)
        }
        _ => match body.split_first()? {
            (b'S', rest) => (1, rest),
            _ => return None,
        },
    };
    let (name, _) = wire::cstr(rest)?;
    Some((offset, name))
}

/// The refusal behind a server error, when the error is exactly the syntax error of a refused statement's
/// marker (so a client's own `select tessera_refused_3` cannot take another statement's refusal).
fn refusal_for(flow: &Flow, body: &[u8]) -> Option<Refusal> {
    let (code, message) = wire::error_code_and_message(body);
    // The marker is the whole statement, so its syntax error is at position 1; a client's text that starts
    // with it never reaches the server (the check refuses it). The message names the marker in whatever
    // language the server speaks ("syntax error at or near \"…\"", "Syntaxfehler bei »…«").
    if code != "42601" || wire::error_field(body, b'P') != Some("1") {
        return None;
    }
    let (_, after) = message.split_once(REFUSED_MARKER)?;
    let digits = after.find(|c: char| !c.is_ascii_digit()).map_or(after, |end| &after[..end]);
    let marker: u64 = digits.parse().ok()?;
    flow.refusals.lock().ok()?.remove(&marker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_changes_replace_known_values() {
        let mut params = vec![("DateStyle".to_owned(), "ISO, MDY".to_owned())];
        apply(&mut params, vec![("DateStyle".into(), "ISO, DMY".into()), ("TimeZone".into(), "UTC".into())]);
        assert_eq!(params, vec![("DateStyle".into(), "ISO, DMY".into()), ("TimeZone".into(), "UTC".into())]);
    }

    #[test]
    fn tenant_seats_are_capped_and_given_back() {
        let sessions = Arc::new(TenantSessions::default());
        let first = Seat::take(&sessions, "t", 2).expect("first");
        let second = Seat::take(&sessions, "t", 2).expect("second");
        assert!(Seat::take(&sessions, "t", 2).is_none(), "over the cap");
        assert!(Seat::take(&sessions, "u", 2).is_some(), "another tenant has its own seats");
        drop(first);
        assert!(Seat::take(&sessions, "t", 2).is_some(), "a seat given back");
        drop(second);
    }

    #[test]
    fn a_marker_error_maps_back_to_its_refusal() {
        let flow = Flow::new();
        flow.refusals.lock().expect("lock").insert(7, Refusal { sqlstate: "42501", message: "no".into() });
        let body = b"SERROR\0C42601\0Msyntax error at or near \"tessera_refused_7\"\0P1\0\0";
        assert_eq!(refusal_for(&flow, body).map(|r| r.message), Some("no".to_owned()));
        assert_eq!(refusal_for(&flow, body), None, "used once");
        let other = b"SERROR\0C42601\0Msyntax error at or near \"selec\"\0P1\0\0";
        assert_eq!(refusal_for(&flow, other), None);
        // A server speaking another language names the marker all the same.
        flow.refusals.lock().expect("lock").insert(9, Refusal { sqlstate: "42501", message: "nein".into() });
        let german = "SFEHLER\0C42601\0MSyntaxfehler bei \u{bb}tessera_refused_9\u{ab}\0P1\0\0";
        assert_eq!(refusal_for(&flow, german.as_bytes()).map(|r| r.message), Some("nein".to_owned()));
        // Not at the start of the statement: not the marker's own error.
        flow.refusals.lock().expect("lock").insert(10, Refusal { sqlstate: "42501", message: "no".into() });
        let later = b"SERROR\0C42601\0Msyntax error at or near \"tessera_refused_10\"\0P8\0\0";
        assert_eq!(refusal_for(&flow, later), None);
        flow.refusals.lock().expect("lock").insert(8, Refusal { sqlstate: "42501", message: "no".into() });
        let elsewhere = b"SERROR\0C42703\0Mcolumn \"tessera_refused_8\" does not exist\0\0";
        assert_eq!(refusal_for(&flow, elsewhere), None, "only the marker's own syntax error");
    }
}

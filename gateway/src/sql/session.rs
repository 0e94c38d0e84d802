//! One client connection: SSL negotiation, startup, login, then the relay.
//!
//! The relay forwards the client's messages upstream and the server's messages back, byte for byte, so
//! results (text or binary), errors and COPY data are what a direct connection gives. It stops at three
//! places: every SQL text (Query, Parse) passes the statement check first; the server's answers are counted
//! against the row and byte limits; and every request has a deadline. Where the endpoint refuses or stops
//! something, it answers with an ErrorResponse at the point the server would have, followed by the
//! server's own ReadyForQuery, so the conversation stays in step.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use pgwire::messages::startup::Startup;
use pgwire::messages::{DecodeContext, PgWireFrontendMessage};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::check::{self, Refusal};
use super::upstream::{self, CancelKey, Pooled, Upstream};
use super::wire::{self, MAX_CLIENT_MESSAGE, MAX_UPSTREAM_MESSAGE};
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

/// Serves one accepted TCP connection.
pub(crate) async fn serve(shared: Arc<Shared>, mut tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let mut packet = match wire::read_startup_packet(&mut tcp).await {
        Ok(p) => p,
        Err(e) => return refuse_startup(&mut tcp, &e.to_string()).await,
    };
    if wire::startup_code(&packet) == wire::GSSENC_REQUEST {
        if tcp.write_all(b"N").await.is_err() {
            return;
        }
        packet = match wire::read_startup_packet(&mut tcp).await {
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
                match acceptor.accept(tcp).await {
                    Ok(tls) => after_ssl(shared, tls, true, peer).await,
                    Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                }
            }
            None => {
                if tcp.write_all(b"N").await.is_err() {
                    return;
                }
                after_ssl(shared, tcp, false, peer).await;
            }
        }
        return;
    }
    startup(shared, tcp, packet, false, peer).await;
}

async fn after_ssl<S>(shared: Arc<Shared>, mut stream: S, tls: bool, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    match wire::read_startup_packet(&mut stream).await {
        Ok(packet) if wire::startup_code(&packet) == wire::SSL_REQUEST => {
            fatal(&mut stream, "08P01", "SSL negotiation was already done").await;
        }
        Ok(packet) => startup(shared, stream, packet, tls, peer).await,
        Err(e) => refuse_startup(&mut stream, &e.to_string()).await,
    }
}

async fn refuse_startup<S: AsyncWrite + Unpin>(stream: &mut S, why: &str) {
    fatal(stream, "08P01", &format!("invalid startup packet: {why}")).await;
}

/// Writes a FATAL error; the caller then drops the connection.
async fn fatal<S: AsyncWrite + Unpin>(stream: &mut S, sqlstate: &str, message: &str) {
    let mut out = BytesMut::new();
    wire::error(&mut out, true, sqlstate, message);
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
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

async fn startup<S>(shared: Arc<Shared>, mut stream: S, packet: BytesMut, tls: bool, peer: SocketAddr)
where
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
    match login(&shared, &mut stream, &startup, tls).await {
        Ok(Some((conn, slot, client_key))) => {
            let user = startup.parameters.get("user").cloned().unwrap_or_default();
            tracing::info!(%peer, tenant = %user, "SQL session started");
            match relay(&shared, &mut stream, conn, slot, client_key).await {
                Ended::Client => tracing::info!(%peer, tenant = %user, "SQL session ended"),
                Ended::ClientError(why) => {
                    tracing::info!(%peer, tenant = %user, %why, "SQL session ended: the client broke the protocol")
                }
                Ended::Upstream(why) => {
                    tracing::warn!(%peer, tenant = %user, %why, "SQL session ended upstream")
                }
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(%peer, error = %e, "SQL login failed");
        }
    }
}

/// Startup checks, authentication and the upstream binding. `Ok(None)` when the client was refused (it has
/// been told why).
async fn login<S>(
    shared: &Shared,
    stream: &mut S,
    startup: &Startup,
    tls: bool,
) -> Result<Option<(Pooled, Arc<CancelSlot>, (i32, i32))>, SqlError>
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
    let failed = format!("password authentication failed for user \"{user}\"");
    let Some(password) = password else {
        fatal(stream, "08P01", "expected a password message").await;
        return Ok(None);
    };
    let claim = match tessera_core::apikey::parse(&password) {
        Ok(key) if key.token().is_none() => shared.auth.authenticate_sql(&user, &key).await,
        _ => Ok(None),
    };
    let claim = match claim {
        Ok(Some(claim)) => claim,
        Ok(None) => {
            fatal(stream, "28P01", &failed).await;
            return Ok(None);
        }
        Err(e) => {
            tracing::error!(error = ?e, "could not check a SQL login");
            fatal(stream, "57P03", "the SQL endpoint cannot check credentials right now; try again").await;
            return Ok(None);
        }
    };

    // An upstream session, bound to the tenant's claim and the client's settings in one statement.
    let mut bind = format!(
        "select pg_catalog.set_config('tessera.sql_claim', {}, false)",
        tessera_core::roles::quote_literal(&claim)
    );
    for (name, value) in &settings {
        bind.push_str(&format!(
            ", pg_catalog.set_config('{name}', {}, false)",
            tessera_core::roles::quote_literal(value)
        ));
    }
    let mut conn = None;
    // A pooled connection may have died while idle (a restarted server): then another one.
    for _ in 0..3 {
        let mut candidate = match tokio::time::timeout(shared.config.pool_wait, shared.pool.get()).await {
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
        match candidate.run(&bind).await {
            Ok(Ok(changed)) => {
                apply(&mut candidate.params, changed);
                conn = Some(candidate);
                break;
            }
            Ok(Err((code, message))) => {
                // The client's own settings were refused (an unknown time zone, say): its error, verbatim.
                reset_and_return(candidate).await;
                fatal(stream, &code, &message).await;
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!(error = %e, "dropping a dead upstream connection");
                drop(Pooled::take(candidate));
            }
        }
    }
    let Some(conn) = conn else {
        fatal(stream, "08006", "the SQL endpoint cannot reach the database; try again").await;
        return Ok(None);
    };

    let client_key = loop {
        let mut bytes = [0u8; 8];
        tessera_core::apikey::fill_random(&mut bytes).map_err(|e| SqlError::Random(e.to_string()))?;
        let pid = i32::from_be_bytes([bytes[0] & 0x7f, bytes[1], bytes[2], bytes[3]]);
        let secret = i32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let mut cancels = shared.cancels.lock().map_err(|_| SqlError::Poisoned)?;
        if pid != 0 && !cancels.contains_key(&(pid, secret)) {
            let slot = Arc::new(CancelSlot { key: conn.key.clone(), active: tokio::sync::Mutex::new(true) });
            cancels.insert((pid, secret), slot);
            break (pid, secret);
        }
    };
    let slot = shared.cancels.lock().map_err(|_| SqlError::Poisoned)?.get(&client_key).cloned();
    let Some(slot) = slot else { return Err(SqlError::Poisoned) };

    wire::authentication_ok(&mut out);
    for (name, value) in &conn.params {
        let value = match name.as_str() {
            "is_superuser" => "off",
            "session_authorization" => user.as_str(),
            _ => value.as_str(),
        };
        wire::parameter_status(&mut out, name, value);
    }
    wire::backend_key_data(&mut out, client_key.0, client_key.1);
    wire::ready_for_query(&mut out);
    stream.write_all(&out).await?;
    stream.flush().await?;
    Ok(Some((conn, slot, client_key)))
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

/// Resets an upstream session (`DISCARD ALL`: settings, the claim, prepared statements, cursors, temporary
/// objects) and gives it back to the pool; a connection that cannot be reset is closed instead.
async fn reset_and_return(mut conn: Pooled) {
    match conn.run("discard all").await {
        Ok(Ok(changed)) => apply(&mut conn.params, changed),
        _ => drop(Pooled::take(conn)),
    }
}

/// Something the client asked for that ends in a ReadyForQuery from upstream (a Query or a Sync).
struct Pending {
    /// The endpoint's own error to send just before that ReadyForQuery (a refused statement).
    refusal: Option<Refusal>,
    started: Instant,
}

/// How the relay ended.
#[derive(Debug)]
enum Ended {
    /// The client said goodbye or went away between messages.
    Client,
    /// The client broke the protocol; it has been told.
    ClientError(String),
    Upstream(String),
}

async fn relay<S>(
    shared: &Shared,
    stream: &mut S,
    mut conn: Pooled,
    slot: Arc<CancelSlot>,
    client_key: (i32, i32),
) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (client_read, client_write) = tokio::io::split(&mut *stream);
    let (tx, rx) = mpsc::unbounded_channel::<Pending>();
    let outstanding = AtomicUsize::new(0);
    let mut unsynced = false;
    let Upstream { reader, writer, params, .. } = &mut *conn;
    let ended = {
        let to_upstream = client_to_upstream(client_read, writer, &tx, &outstanding, &mut unsynced);
        let to_client = upstream_to_client(shared, reader, client_write, rx, &outstanding, &slot, params);
        tokio::select! {
            ended = to_upstream => ended,
            ended = to_client => ended,
        }
    };
    if let Ended::ClientError(message) = &ended {
        fatal(stream, "08P01", message).await;
    }
    // The client's cancel key dies with its session.
    if let Ok(mut cancels) = shared.cancels.lock() {
        cancels.remove(&client_key);
    }
    let busy = outstanding.load(Ordering::SeqCst) > 0 || unsynced;
    let reusable = matches!(ended, Ended::Client) && !busy;
    if busy {
        // Stop whatever the client left running before the connection is closed.
        slot.cancel().await;
    }
    *slot.active.lock().await = false;
    if reusable {
        reset_and_return(conn).await;
    } else {
        drop(Pooled::take(conn));
    }
    ended
}

/// The client's messages, checked and forwarded upstream.
async fn client_to_upstream<R, W>(
    reader: R,
    writer: &mut W,
    pending: &mpsc::UnboundedSender<Pending>,
    outstanding: &AtomicUsize,
    unsynced: &mut bool,
) -> Ended
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut reader = reader;
    let mut upstream = BufWriter::with_capacity(64 * 1024, writer);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    // Set by a refused Parse: the rest of that extended-protocol batch is skipped until Sync, as the
    // server itself does after an error.
    let mut batch_refusal: Option<Refusal> = None;
    let mut sync = BytesMut::new();
    wire::frontend(b'S', b"", &mut sync);
    loop {
        loop {
            let frame = match wire::split_frame(&mut buf, MAX_CLIENT_MESSAGE) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return Ended::ClientError(format!("invalid message: {e}")),
            };
            let push = |refusal: Option<Refusal>| {
                outstanding.fetch_add(1, Ordering::SeqCst);
                pending.send(Pending { refusal, started: Instant::now() }).is_ok()
            };
            let forward: Option<&[u8]> = match frame.tag() {
                b'Q' => {
                    let Some(sql) = wire::query_text(&frame) else {
                        return Ended::ClientError("invalid Query message".into());
                    };
                    match check::check(sql) {
                        Ok(()) => {
                            if !push(None) {
                                return Ended::Upstream("the relay stopped".into());
                            }
                            Some(frame.bytes())
                        }
                        // The server answers a bare Sync with ReadyForQuery: the refusal goes out just before.
                        Err(refusal) => {
                            if !push(Some(refusal)) {
                                return Ended::Upstream("the relay stopped".into());
                            }
                            Some(&sync[..])
                        }
                    }
                }
                b'P' => {
                    let Some(sql) = wire::parse_text(&frame) else {
                        return Ended::ClientError("invalid Parse message".into());
                    };
                    if batch_refusal.is_some() {
                        None
                    } else if let Err(refusal) = check::check(sql) {
                        batch_refusal = Some(refusal);
                        None
                    } else {
                        *unsynced = true;
                        Some(frame.bytes())
                    }
                }
                b'B' | b'E' | b'D' | b'C' => {
                    if batch_refusal.is_some() {
                        None
                    } else {
                        *unsynced = true;
                        Some(frame.bytes())
                    }
                }
                b'H' => Some(frame.bytes()),
                b'S' => {
                    if !push(batch_refusal.take()) {
                        return Ended::Upstream("the relay stopped".into());
                    }
                    *unsynced = false;
                    Some(frame.bytes())
                }
                b'F' => {
                    let refusal = Refusal {
                        sqlstate: "42501",
                        message: "function calls over the protocol are not allowed on the SQL endpoint"
                            .into(),
                    };
                    if !push(Some(refusal)) {
                        return Ended::Upstream("the relay stopped".into());
                    }
                    Some(&sync[..])
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
        match reader.read_buf(&mut buf).await {
            Ok(0) => return Ended::Client,
            Ok(_) => {}
            Err(_) => return Ended::Client,
        }
    }
}

/// The server's messages, counted against the limits and relayed to the client.
#[allow(clippy::too_many_arguments)]
async fn upstream_to_client<R, W>(
    shared: &Shared,
    reader: &mut R,
    writer: W,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    outstanding: &AtomicUsize,
    slot: &Arc<CancelSlot>,
    params: &mut Vec<(String, String)>,
) -> Ended
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let limits = &shared.config;
    let mut client = BufWriter::with_capacity(64 * 1024, writer);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut queue: VecDeque<Pending> = VecDeque::new();
    // Set when the endpoint stopped a statement (a limit, the deadline): everything up to the next
    // ReadyForQuery is dropped and this error sent in its place.
    let mut stopped: Option<Refusal> = None;
    // Past this instant after stopping a statement, an upstream that still has not answered is given up.
    let mut give_up: Option<Instant> = None;
    // The cancel request sent when stopping a statement. The client hears ReadyForQuery only once the server
    // has received it: a late cancel would otherwise hit the client's next statement.
    let mut cancelling: Option<tokio::task::JoinHandle<()>> = None;
    let (mut rows, mut bytes) = (0u64, 0u64);
    let mut out = BytesMut::new();
    loop {
        loop {
            let frame = match wire::split_frame(&mut buf, MAX_UPSTREAM_MESSAGE) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return Ended::Upstream(e.to_string()),
            };
            let tag = frame.tag();
            if tag == b'Z' {
                while let Ok(p) = rx.try_recv() {
                    queue.push_back(p);
                }
                let request = queue.pop_front();
                if request.is_some() {
                    outstanding.fetch_sub(1, Ordering::SeqCst);
                }
                if let Some(cancel) = cancelling.take() {
                    let _ = cancel.await;
                }
                out.clear();
                if let Some(refusal) = stopped.take().or(request.and_then(|r| r.refusal)) {
                    wire::error(&mut out, false, refusal.sqlstate, &refusal.message);
                }
                out.extend_from_slice(frame.bytes());
                give_up = None;
                rows = 0;
                bytes = 0;
                if let Err(e) = client.write_all(&out).await {
                    return Ended::Upstream(format!("client write: {e}"));
                }
                continue;
            }
            if stopped.is_some() {
                continue;
            }
            match tag {
                b'D' | b'd' => {
                    rows += 1;
                    bytes += frame.wire_len() as u64;
                    if rows > limits.max_rows || bytes > limits.max_bytes {
                        let message = if rows > limits.max_rows {
                            format!(
                                "the result has more than {} rows, the SQL endpoint's limit: add a LIMIT or a filter",
                                limits.max_rows
                            )
                        } else {
                            format!(
                                "the result is larger than {} bytes, the SQL endpoint's limit: select fewer rows or columns",
                                limits.max_bytes
                            )
                        };
                        stopped = Some(Refusal { sqlstate: "54000", message });
                        give_up = Some(Instant::now() + Duration::from_secs(5));
                        let slot = Arc::clone(slot);
                        cancelling = Some(tokio::spawn(async move { slot.cancel().await }));
                        continue;
                    }
                }
                b'C' | b'E' | b's' | b'I' => {
                    rows = 0;
                    bytes = 0;
                }
                b'S' => {
                    if let Some((name, rest)) = wire::cstr(frame.body())
                        && let Some((value, _)) = wire::cstr(rest)
                    {
                        apply(params, vec![(name.to_owned(), value.to_owned())]);
                    }
                }
                // COPY FROM or replication never pass the statement check; if one ever started, the session
                // ends rather than feed it.
                b'G' | b'W' => {
                    return Ended::Upstream("the server started a COPY FROM or a replication stream".into());
                }
                _ => {}
            }
            if let Err(e) = client.write_all(frame.bytes()).await {
                return Ended::Upstream(format!("client write: {e}"));
            }
        }
        if let Err(e) = client.flush().await {
            return Ended::Upstream(format!("client write: {e}"));
        }
        while let Ok(p) = rx.try_recv() {
            queue.push_back(p);
        }
        let deadline = match (give_up, queue.front()) {
            (Some(at), _) => Some(at),
            (None, Some(front)) => Some(front.started + limits.statement_timeout),
            (None, None) => None,
        };
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = reader.read_buf(&mut buf) => match read {
                Ok(0) => return Ended::Upstream("the server closed the connection".into()),
                Ok(_) => {}
                Err(e) => return Ended::Upstream(e.to_string()),
            },
            received = rx.recv() => match received {
                Some(p) => queue.push_back(p),
                // The client side is gone; the session ends there.
                None => std::future::pending::<()>().await,
            },
            () = sleep => {
                if give_up.is_some() {
                    return Ended::Upstream("the server did not answer a cancel request".into());
                }
                let message = format!(
                    "canceling statement due to the SQL endpoint's statement timeout ({} ms)",
                    limits.statement_timeout.as_millis()
                );
                stopped = Some(Refusal { sqlstate: "57014", message });
                give_up = Some(Instant::now() + Duration::from_secs(5));
                let slot = Arc::clone(slot);
                cancelling = Some(tokio::spawn(async move { slot.cancel().await }));
            }
        }
    }
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
    fn frames_are_the_unit_of_relay() {
        // A refused Query is answered through a bare Sync; make sure it frames as one.
        let mut sync = BytesMut::new();
        wire::frontend(b'S', b"", &mut sync);
        let frame: wire::Frame = wire::split_frame(&mut sync, 10).expect("ok").expect("frame");
        assert_eq!(frame.tag(), b'S');
        assert!(frame.body().is_empty());
    }
}

//! Connections to the upstream PostgreSQL (the primary or a hot standby) as `tessera_sql`, pooled.
//!
//! The endpoint relays the protocol itself, message by message, so a client gets exactly what a direct
//! connection would send: text and binary results, error fields, COPY data. tokio-postgres has no way to hand
//! over its socket or to ask for text results, so these connections speak the protocol directly (startup
//! and authentication with postgres-protocol's SCRAM), and deadpool keeps the pool.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::wire::{self, FrameError, MAX_UPSTREAM_MESSAGE};

/// Where the upstream server listens.
#[derive(Debug, Clone)]
pub enum Address {
    Tcp {
        host: String,
        port: u16,
    },
    /// The socket file itself (`<dir>/.s.PGSQL.<port>`).
    Unix(PathBuf),
}

/// How to reach and log in to the upstream server.
#[derive(Clone)]
pub struct UpstreamConfig {
    pub address: Address,
    pub user: String,
    pub password: Option<Vec<u8>>,
    pub database: String,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("address", &self.address)
            .field("user", &self.user)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl UpstreamConfig {
    /// From a connection config (its first host; the user should be tessera_sql).
    pub fn from_pg_config(config: &tokio_postgres::Config) -> Result<Self, UpstreamError> {
        use tokio_postgres::config::Host;
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let address = match config.get_hosts().first() {
            Some(Host::Tcp(host)) => Address::Tcp { host: host.clone(), port },
            Some(Host::Unix(dir)) => Address::Unix(dir.join(format!(".s.PGSQL.{port}"))),
            None => Address::Tcp { host: "localhost".into(), port },
        };
        let user = config.get_user().ok_or(UpstreamError::Config("the upstream URL names no user"))?;
        if matches!(config.get_ssl_mode(), tokio_postgres::config::SslMode::Require) {
            return Err(UpstreamError::Config(
                "TLS to the upstream server is not supported: reach it over a local socket, a private network or \
                 a tunnel, and leave sslmode unset or at prefer/disable",
            ));
        }
        Ok(Self {
            address,
            user: user.to_owned(),
            password: config.get_password().map(<[u8]>::to_vec),
            database: config.get_dbname().unwrap_or(user).to_owned(),
            connect_timeout: config.get_connect_timeout().copied().unwrap_or(Duration::from_secs(5)),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not reach the upstream server: {0}")]
    Io(#[from] io::Error),
    #[error("the upstream server sent a bad message: {0}")]
    Protocol(String),
    #[error("the upstream server refused the connection: {message} ({code})")]
    Refused { code: String, message: String },
    #[error("{0}")]
    Config(&'static str),
    #[error("connecting to the upstream server timed out")]
    Timeout,
    #[error(
        "the upstream login {0} can bypass row-level security (a superuser, BYPASSRLS, an owner of tables, or \
         one of Tessera's own roles): tenants' SQL must run as tessera_sql"
    )]
    Privileged(String),
}

impl From<FrameError> for UpstreamError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(e) => Self::Io(e),
            other => Self::Protocol(other.to_string()),
        }
    }
}

type Reader = BufReader<Box<dyn AsyncRead + Send + Unpin>>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// What a cancel request for an upstream session needs.
#[derive(Debug, Clone)]
pub struct CancelKey {
    pub address: Address,
    pub pid: i32,
    pub secret: i32,
}

/// One logged-in upstream session, idle.
pub struct Upstream {
    pub reader: Reader,
    pub writer: Writer,
    pub key: CancelKey,
    /// The server's ParameterStatus values after login (server_version, server_encoding, …).
    pub params: Vec<(String, String)>,
    /// When the server started (`pg_postmaster_start_time()`, ISO 8601 in UTC): with the pid, names this
    /// server session.
    pub server_started: String,
    /// Whether the session is idle and reset, fit for the next client. Cleared when a client takes it, set
    /// again only by a successful reset; the pool drops a connection that comes back without it.
    pub clean: bool,
    user: String,
}

async fn open(address: &Address) -> io::Result<(Reader, Writer)> {
    Ok(match address {
        Address::Tcp { host, port } => {
            let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            stream.set_nodelay(true)?;
            let (r, w) = stream.into_split();
            (BufReader::with_capacity(64 * 1024, Box::new(r) as Box<_>), Box::new(w) as Writer)
        }
        Address::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path).await?;
            let (r, w) = stream.into_split();
            (BufReader::with_capacity(64 * 1024, Box::new(r) as Box<_>), Box::new(w) as Writer)
        }
    })
}

impl Upstream {
    /// A new session whose login is checked to be one row-level security holds (see [`Self::check_role`]).
    pub async fn connect_checked(config: &UpstreamConfig) -> Result<Self, UpstreamError> {
        let mut upstream = Self::connect(config).await?;
        upstream.check_role().await?;
        let started = upstream
            .run("select to_char(pg_postmaster_start_time() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
            .await?;
        upstream.server_started =
            started.first.ok_or_else(|| UpstreamError::Protocol("no server start time".into()))?;
        Ok(upstream)
    }

    pub async fn connect(config: &UpstreamConfig) -> Result<Self, UpstreamError> {
        tokio::time::timeout(config.connect_timeout, Self::login(config))
            .await
            .map_err(|_| UpstreamError::Timeout)?
    }

    async fn login(config: &UpstreamConfig) -> Result<Self, UpstreamError> {
        let (mut reader, mut writer) = open(&config.address).await?;
        let mut out = BytesMut::new();
        let params = [
            ("user", config.user.as_str()),
            ("database", config.database.as_str()),
            ("application_name", "tessera-sql"),
            ("client_encoding", "UTF8"),
        ];
        postgres_protocol::message::frontend::startup_message(params.iter().copied(), &mut out)?;
        writer.write_all(&out).await?;
        writer.flush().await?;

        let mut scram: Option<ScramSha256> = None;
        let mut server_params = Vec::new();
        let mut key = None;
        let password =
            || config.password.as_deref().ok_or(UpstreamError::Config("the upstream asks for a password"));
        loop {
            let frame = wire::read_frame(&mut reader, MAX_UPSTREAM_MESSAGE)
                .await?
                .ok_or_else(|| UpstreamError::Protocol("the server closed the connection".into()))?;
            let body = frame.body();
            out.clear();
            match frame.tag() {
                b'R' => {
                    let code = body.get(..4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    match code {
                        Some(0) => {}
                        Some(3) => {
                            postgres_protocol::message::frontend::password_message(password()?, &mut out)?
                        }
                        Some(5) => {
                            let salt: [u8; 4] = body
                                .get(4..8)
                                .and_then(|s| s.try_into().ok())
                                .ok_or_else(|| UpstreamError::Protocol("short MD5 request".into()))?;
                            let hash = postgres_protocol::authentication::md5_hash(
                                config.user.as_bytes(),
                                password()?,
                                salt,
                            );
                            postgres_protocol::message::frontend::password_message(
                                hash.as_bytes(),
                                &mut out,
                            )?;
                        }
                        Some(10) => {
                            let offers_scram =
                                body[4..].split(|b| *b == 0).any(|m| m == SCRAM_SHA_256.as_bytes());
                            if !offers_scram {
                                return Err(UpstreamError::Protocol("no supported SASL mechanism".into()));
                            }
                            let s = ScramSha256::new(password()?, ChannelBinding::unsupported());
                            postgres_protocol::message::frontend::sasl_initial_response(
                                SCRAM_SHA_256,
                                s.message(),
                                &mut out,
                            )?;
                            scram = Some(s);
                        }
                        Some(11) => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| UpstreamError::Protocol("SASL out of order".into()))?;
                            s.update(&body[4..])?;
                            postgres_protocol::message::frontend::sasl_response(s.message(), &mut out)?;
                        }
                        Some(12) => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| UpstreamError::Protocol("SASL out of order".into()))?;
                            s.finish(&body[4..])?;
                        }
                        _ => {
                            return Err(UpstreamError::Protocol(format!(
                                "unsupported authentication {code:?}"
                            )));
                        }
                    }
                    if !out.is_empty() {
                        writer.write_all(&out).await?;
                        writer.flush().await?;
                    }
                }
                b'S' => server_params.extend(wire::parameter_status_of(body)),
                b'K' if body.len() == 8 => {
                    let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    let secret = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                    key = Some(CancelKey { address: config.address.clone(), pid, secret });
                }
                b'E' => {
                    let (code, message) = wire::error_code_and_message(body);
                    return Err(UpstreamError::Refused { code, message });
                }
                b'Z' => {
                    let key = key.ok_or_else(|| UpstreamError::Protocol("no BackendKeyData".into()))?;
                    return Ok(Self {
                        reader,
                        writer,
                        key,
                        params: server_params,
                        server_started: String::new(),
                        clean: true,
                        user: config.user.clone(),
                    });
                }
                // Notices and anything else harmless before ReadyForQuery.
                _ => {}
            }
        }
    }

    /// Runs one simple query of the endpoint's own and waits for its end.
    pub async fn run(&mut self, sql: &str) -> Result<Outcome, UpstreamError> {
        let mut out = BytesMut::new();
        postgres_protocol::message::frontend::query(sql, &mut out)?;
        self.exchange(&out).await
    }

    /// Binds the session to its tenant (the token of its row in core.sql_sessions) and the client's settings,
    /// in one extended-protocol round trip with every value a bind parameter (so no value is ever spliced into
    /// SQL text).
    pub async fn bind_session(
        &mut self,
        token: &str,
        settings: &[(&str, String)],
    ) -> Result<Outcome, UpstreamError> {
        use postgres_protocol::IsNull;
        use postgres_protocol::message::frontend;
        let mut sql = String::from("select pg_catalog.set_config('tessera.sql_session', $1, false)");
        for (i, (name, _)) in settings.iter().enumerate() {
            // `name` comes from the endpoint's own list of settings, never from the client.
            sql.push_str(&format!(", pg_catalog.set_config('{name}', ${}, false)", i + 2));
        }
        let values: Vec<&str> =
            std::iter::once(token).chain(settings.iter().map(|(_, v)| v.as_str())).collect();
        let mut out = BytesMut::new();
        frontend::parse("", &sql, std::iter::empty(), &mut out)?;
        frontend::bind(
            "",
            "",
            std::iter::empty(),
            values,
            |value: &str, buf: &mut BytesMut| {
                buf.put_slice(value.as_bytes());
                Ok(IsNull::No)
            },
            std::iter::empty(),
            &mut out,
        )
        .map_err(|_| UpstreamError::Protocol("could not encode the session binding".into()))?;
        frontend::execute("", 0, &mut out)?;
        frontend::sync(&mut out);
        self.exchange(&out).await
    }

    /// Sends messages of the endpoint's own and reads the answers up to ReadyForQuery.
    async fn exchange(&mut self, out: &[u8]) -> Result<Outcome, UpstreamError> {
        let work = async {
            self.writer.write_all(out).await?;
            self.writer.flush().await?;
            let mut outcome = Outcome::default();
            loop {
                let frame = wire::read_frame(&mut self.reader, MAX_UPSTREAM_MESSAGE)
                    .await?
                    .ok_or_else(|| UpstreamError::Protocol("the server closed the connection".into()))?;
                match frame.tag() {
                    b'S' => outcome.changed.extend(wire::parameter_status_of(frame.body())),
                    b'D' if outcome.first.is_none() => {
                        let body = frame.body();
                        // One or more columns; the first one's length, then its bytes.
                        if body.len() >= 6 {
                            let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
                            if len >= 0 {
                                let value = body.get(6..6 + len as usize).unwrap_or_default();
                                outcome.first = Some(String::from_utf8_lossy(value).into_owned());
                            }
                        }
                    }
                    b'E' => outcome.error = Some(wire::error_code_and_message(frame.body())),
                    b'Z' => {
                        // Idle, not in a (failed) transaction block.
                        if frame.body() != b"I" {
                            return Err(UpstreamError::Protocol(
                                "the session is inside a transaction".into(),
                            ));
                        }
                        return Ok(outcome);
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(EXCHANGE_TIMEOUT, work).await.map_err(|_| UpstreamError::Timeout)?
    }

    /// Refuses a login that row-level security would not hold: a superuser, BYPASSRLS, an owner of tables,
    /// or a member of the roles the plain tenant setting is trusted for (see core's V13 migration).
    async fn check_role(&mut self) -> Result<(), UpstreamError> {
        let outcome = self
            .run(
                "select (r.rolsuper or r.rolbypassrls \
                   or pg_catalog.pg_has_role(session_user, 'tessera_runtime', 'MEMBER') \
                   or pg_catalog.pg_has_role(session_user, 'tessera_owner', 'MEMBER') \
                   or exists (select 1 from pg_catalog.pg_class c \
                               where pg_catalog.pg_has_role(session_user, c.relowner, 'MEMBER') \
                                 and c.relnamespace not in ('pg_catalog'::regnamespace, \
                                                            'information_schema'::regnamespace)))::text \
                   from pg_catalog.pg_roles r where r.rolname = session_user",
            )
            .await?;
        match (outcome.error, outcome.first.as_deref()) {
            (None, Some("false")) => Ok(()),
            (Some((code, message)), _) => Err(UpstreamError::Refused { code, message }),
            _ => Err(UpstreamError::Privileged(self.user.clone())),
        }
    }
}

/// How long one of the endpoint's own exchanges with the upstream may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// What came back from one of the endpoint's own statements.
#[derive(Debug, Default)]
pub struct Outcome {
    /// ParameterStatus changes it caused.
    pub changed: Vec<(String, String)>,
    /// The first column of the first row, as text.
    pub first: Option<String>,
    /// The server's error (SQLSTATE, message).
    pub error: Option<(String, String)>,
}

/// Asks the upstream server to cancel whatever the session with `key` is running, and waits until the
/// server has acted on it (it closes the connection once the signal is sent).
pub async fn cancel(key: &CancelKey) -> io::Result<()> {
    let send = async {
        let (mut reader, mut writer) = open(&key.address).await?;
        let mut out = BytesMut::with_capacity(16);
        out.put_i32(16);
        out.put_i32(wire::CANCEL_REQUEST);
        out.put_i32(key.pid);
        out.put_i32(key.secret);
        writer.write_all(&out).await?;
        writer.flush().await?;
        let mut sink = [0u8; 64];
        while reader.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(2), send)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the cancel request was not answered"))?
}

/// The pool's manager: new connections log in and are checked; a connection is handed out again only if the
/// session that used it reset it (a login abandoned half way, say, leaves it unclean, and it is closed).
pub struct Manager {
    pub config: UpstreamConfig,
}

impl deadpool::managed::Manager for Manager {
    type Type = Upstream;
    type Error = UpstreamError;

    async fn create(&self) -> Result<Upstream, UpstreamError> {
        Upstream::connect_checked(&self.config).await
    }

    async fn recycle(
        &self,
        conn: &mut Upstream,
        _metrics: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<UpstreamError> {
        if conn.clean {
            Ok(())
        } else {
            Err(deadpool::managed::RecycleError::message("returned without a reset"))
        }
    }
}

pub type Pool = deadpool::managed::Pool<Manager>;
pub type Pooled = deadpool::managed::Object<Manager>;

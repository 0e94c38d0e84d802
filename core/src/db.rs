//! Database access for request handlers.
//!
//! One pool of connections as the runtime login role (`tessera_app`: NOINHERIT, no privileges of its own).
//! Each request runs in one transaction that
//! 1. begins (read-only for reads) and switches to the module's role with `SET LOCAL ROLE`, so the
//!    database itself confines the request to that module's schema;
//! 2. calls `core.authenticate_api_key`, a SECURITY DEFINER function that checks the presented key's hash
//!    and, only for an active tenant that has the module enabled, binds the key's tenant with a
//!    transaction-local setting that every row policy reads;
//! 3. runs the module's SQL, then commits.
//!
//! Steps 1 and 2 (and, for reads, the first statement of step 3) are pipelined: sent together, answered
//! together, so a read costs two round trips to Postgres (this, and the commit); a single-row read
//! ([`ModuleDb::read_row`]) sends its commit along too, and costs one.
//!
//! The tenant therefore always comes from the credential, never from the request, and a transaction with no
//! tenant bound sees no rows and may write none (the policies fail closed). Nothing outlives the transaction
//! on the pooled connection: every setting is `LOCAL`.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::apikey::{Access, PresentedKey, Scope};
use crate::problem::ApiError;
use crate::roles::{module_role, quote_ident};

/// The connection pool shared by all modules.
#[derive(Clone)]
pub struct Database {
    pool: Pool,
    config: tokio_postgres::Config,
    /// The key login tokens are signed with (`core.token_keys`), read once.
    signing: Arc<tokio::sync::OnceCell<Vec<u8>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DbSetupError {
    #[error("could not build the connection pool")]
    Pool(#[from] deadpool_postgres::BuildError),
    #[error("could not connect to the database")]
    Connect(#[source] deadpool_postgres::PoolError),
    #[error("could not inspect the runtime role")]
    Inspect(#[from] tokio_postgres::Error),
    #[error(
        "refusing to serve as role {role:?}: it is a superuser, can bypass row-level security or owns tables; \
         connect as the runtime role (tessera_app)"
    )]
    PrivilegedRole { role: String },
}

impl Database {
    pub fn new(config: tokio_postgres::Config, max_size: usize) -> Result<Self, DbSetupError> {
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(max_size)
            .runtime(Runtime::Tokio1)
            // An exhausted pool answers 503 quickly instead of queueing requests until they time out.
            .wait_timeout(Some(Duration::from_millis(250)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()?;
        Ok(Self { pool, config, signing: Arc::default() })
    }

    /// Adds request counts to `core.usage` (see `sql/core/V8__usage.sql`).
    pub async fn record_usage(
        &self,
        tenants: &[uuid::Uuid],
        apis: &[&str],
        days: &[time::Date],
        counts: &[i64],
    ) -> Result<(), ApiError> {
        let client = checkout(&self.pool).await?;
        let statement = client.prepare_cached("select core.record_usage($1, $2, $3, $4)").await?;
        client.query_one(&statement, &[&tenants, &apis, &days, &counts]).await?;
        Ok(())
    }

    /// Notes when API keys (by prefix) were last used; an older time never replaces a newer one.
    pub async fn touch_api_keys(
        &self,
        prefixes: &[String],
        used_at: &[time::OffsetDateTime],
    ) -> Result<(), ApiError> {
        let client = checkout(&self.pool).await?;
        let statement = client.prepare_cached("select core.touch_api_keys($1, $2)").await?;
        client.query_one(&statement, &[&prefixes, &used_at]).await?;
        Ok(())
    }

    /// Deletes every tenant's idempotency keys older than a day; returns how many.
    pub async fn prune_idempotency_keys(&self) -> Result<i64, ApiError> {
        let client = checkout(&self.pool).await?;
        Ok(client.query_one("select core.prune_idempotency_keys()", &[]).await?.get(0))
    }

    /// The tenant's plan (`standard` unless set), or `None` for no such tenant.
    pub async fn tenant_plan(&self, tenant: uuid::Uuid) -> Result<Option<String>, ApiError> {
        let client = checkout(&self.pool).await?;
        let statement = client.prepare_cached("select core.tenant_plan($1)").await?;
        Ok(client.query_one(&statement, &[&tenant]).await?.get(0))
    }

    /// The pool's size and use: (connections, idle, requests waiting).
    pub fn pool_status(&self) -> (usize, usize, usize) {
        let status = self.pool.status();
        (status.size, status.available, status.waiting)
    }

    /// How the pool connects: for a connection of its own (one that listens for notifications).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// What `key` may do in `module`, outside any request's transaction: for a cache of key checks. `None`
    /// when the key is unknown or revoked.
    pub async fn key_grant(&self, key: &PresentedKey, module: &str) -> Result<Option<KeyGrant>, ApiError> {
        let claims = match key.token() {
            Some(token) => match verify_token(&self.pool, &self.signing, token).await? {
                Some(claims) => Some(claims),
                None => return Ok(None),
            },
            None => None,
        };
        let client = checkout(&self.pool).await?;
        let row = match &claims {
            Some(claims) => {
                let authenticate = client.prepare_cached(AUTHENTICATE_MEMBER).await?;
                client.query_opt(&authenticate, &[&claims.sub, &claims.tid, &module]).await?
            }
            None => {
                let authenticate = client.prepare_cached(AUTHENTICATE).await?;
                let (prefix, hash) = (key.prefix(), key.hash());
                client.query_opt(&authenticate, &[&prefix, &hash, &module]).await?
            }
        };
        Ok(row.map(|row| grant_of(&row, claims.is_some(), module)))
    }

    /// The key login tokens are signed with.
    pub async fn token_signing_key(&self) -> Result<Vec<u8>, ApiError> {
        signing_key(&self.pool, &self.signing).await
    }

    /// For a login: the user with this e-mail, its password hash, and its role in the tenant with this slug.
    pub async fn login_lookup(
        &self,
        email: &str,
        tenant_slug: &str,
    ) -> Result<Option<LoginRecord>, ApiError> {
        let client = checkout(&self.pool).await?;
        let statement = client
            .prepare_cached(
                "select user_id, password_hash, tenant_id, role, tenant_status from core.login_lookup($1, $2)",
            )
            .await?;
        let row = client.query_opt(&statement, &[&email, &tenant_slug]).await?;
        Ok(row.map(|r| LoginRecord {
            user_id: r.get(0),
            password_hash: r.get(1),
            tenant_id: r.get(2),
            role: r.get(3),
            tenant_active: r.get::<_, Option<String>>(4).as_deref() == Some("active"),
        }))
    }

    /// For the SQL endpoint: binds the upstream server session with backend pid `pid` to a reporting login
    /// (the tenant's slug or id, and an API key with the `reporting:read` scope). `server_started` is that
    /// server's `pg_postmaster_start_time()` in ISO 8601 (a pid is unique only within one run of one server).
    /// Returns the tenant and the token the session must hold in `tessera.sql_session`, or `None` when
    /// anything about the login is wrong.
    pub async fn bind_sql_session(
        &self,
        tenant: &str,
        key: &PresentedKey,
        pid: i32,
        server_started: &str,
    ) -> Result<Option<(uuid::Uuid, String)>, ApiError> {
        let client = checkout(&self.pool).await?;
        let statement = client
            .prepare_cached(
                "select tenant_id, token from core.bind_sql_session($1, $2, $3, $4, $5::text::timestamptz)",
            )
            .await?;
        let row = client
            .query_opt(&statement, &[&tenant, &key.prefix(), &key.hash(), &pid, &server_started])
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Ends a binding made by [`Self::bind_sql_session`], by its token.
    pub async fn unbind_sql_session(&self, token: &str) -> Result<(), ApiError> {
        let client = checkout(&self.pool).await?;
        let statement = client.prepare_cached("select core.unbind_sql_session($1)").await?;
        client.execute(&statement, &[&token]).await?;
        Ok(())
    }

    /// Refuses a login role that would defeat row-level security: a superuser, a BYPASSRLS role, or one
    /// that owns (or is a member of a role that owns) tables. Run once at start.
    pub async fn ensure_unprivileged(&self) -> Result<(), DbSetupError> {
        let client = self.pool.get().await.map_err(DbSetupError::Connect)?;
        let row = client
            .query_one(
                "select current_user::text,
                        r.rolsuper or r.rolbypassrls or exists (
                            select 1 from pg_class c
                            where pg_has_role(current_user, c.relowner, 'USAGE') and c.relkind in ('r', 'p')
                              and c.relnamespace not in ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
                        )
                 from pg_roles r where r.rolname = current_user",
                &[],
            )
            .await?;
        let (role, privileged): (String, bool) = (row.get(0), row.get(1));
        if privileged {
            return Err(DbSetupError::PrivilegedRole { role });
        }
        Ok(())
    }

    /// Whether the database answers within a second: the readiness check.
    pub async fn is_ready(&self) -> bool {
        let probe = async {
            let client = self.pool.get().await.ok()?;
            client.simple_query("select 1").await.ok()
        };
        matches!(tokio::time::timeout(Duration::from_secs(1), probe).await, Ok(Some(_)))
    }

    /// The handle a module's handlers use.
    pub fn for_module(&self, module: &'static str) -> ModuleDb {
        self.for_api(module, &module_role(module))
    }

    /// The handle for an API that is not a module's (the event feed): scopes `<api>:read`/`write`, run as
    /// `role`.
    pub fn for_api(&self, api: &'static str, role: &str) -> ModuleDb {
        let module = api;
        let role = quote_ident(role);
        ModuleDb {
            pool: self.pool.clone(),
            signing: self.signing.clone(),
            module,
            begin_read: format!("begin read only; set local role {role}").into(),
            begin_write: format!("begin; set local role {role}").into(),
        }
    }
}

/// The `Idempotency-Key` a request holds, and the claim that proves it holds it.
#[derive(Debug, Clone)]
pub struct IdempotentRequest {
    pub key: Arc<str>,
    pub claim: uuid::Uuid,
}

tokio::task_local! {
    /// Set by the gateway around a request that carries an `Idempotency-Key` (see [`ModuleDb::write`]).
    pub static IDEMPOTENCY_KEY: IdempotentRequest;
}

/// A key check's answer (see [`Database::key_grant`]).
#[derive(Debug, Clone)]
pub struct KeyGrant {
    pub tenant_id: uuid::Uuid,
    pub scopes: Vec<String>,
    /// The tenant is active (not suspended).
    pub active: bool,
    pub module_enabled: bool,
}

impl KeyGrant {
    /// Whether a request with this key gets past the checks for `access` to `module`.
    pub fn allows(&self, module: &str, access: Access) -> bool {
        self.active && self.module_enabled && Scope::allows(&self.scopes, module, access)
    }
}

/// Database access for one module's request handlers.
#[derive(Clone)]
pub struct ModuleDb {
    pool: Pool,
    signing: Arc<tokio::sync::OnceCell<Vec<u8>>>,
    module: &'static str,
    // Shared, not copied: the router clones its handlers' state for every request.
    begin_read: Arc<str>,
    begin_write: Arc<str>,
}

const AUTHENTICATE: &str = "select tenant_id, scopes, tenant_status, module_enabled \
                            from core.authenticate_api_key($1, $2, $3)";
const AUTHENTICATE_MEMBER: &str = "select tenant_id, role, tenant_status, module_enabled \
                                   from core.authenticate_member($1, $2, $3)";

/// The user of a login (see [`Database::login_lookup`]).
#[derive(Debug, Clone)]
pub struct LoginRecord {
    pub user_id: uuid::Uuid,
    pub password_hash: String,
    /// `None` when the tenant does not exist.
    pub tenant_id: Option<uuid::Uuid>,
    /// `None` when the user is not a member of the tenant.
    pub role: Option<String>,
    pub tenant_active: bool,
}

/// What a role lets a user do in `module`: every module the tenant has, read and write, and the event feed;
/// the usage of the tenant for owners and admins only.
fn role_scopes(role: &str, module: &str) -> Vec<String> {
    let mut scopes = vec![format!("{}:write", crate::module::EVENT_FEED_API)];
    if module != crate::module::USAGE_API || matches!(role, "owner" | "admin") {
        scopes.push(format!("{module}:write"));
    }
    scopes
}

/// A key check's or a membership check's row as one grant.
fn grant_of(row: &Row, member: bool, module: &str) -> KeyGrant {
    KeyGrant {
        tenant_id: row.get(0),
        scopes: if member { role_scopes(row.get::<_, &str>(1), module) } else { row.get(1) },
        active: row.get::<_, &str>(2) == "active",
        module_enabled: row.get(3),
    }
}

/// A connection from the pool, or 503. A pool still exhausted after its wait is logged once every ten
/// seconds (and shows in the pool metrics), not once per request: under load that would add to the load.
/// Any other failure to get a connection is logged with its cause.
async fn checkout(pool: &Pool) -> Result<Object, ApiError> {
    static EXHAUSTED: crate::problem::LogThrottle = crate::problem::LogThrottle::new();
    pool.get().await.map_err(|e| match e {
        deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {
            // Saturation, or connections stuck (a hung database, a pile-up on a lock): worth a line, not
            // one per request.
            if EXHAUSTED.allow(Duration::from_secs(10)) {
                let status = pool.status();
                tracing::warn!(
                    size = status.size,
                    waiting = status.waiting,
                    "database pool exhausted: answering 503"
                );
            }
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "the service is temporarily unavailable; retry later",
            )
        }
        e => ApiError::unavailable(&e),
    })
}

async fn signing_key(pool: &Pool, cell: &tokio::sync::OnceCell<Vec<u8>>) -> Result<Vec<u8>, ApiError> {
    let key = cell
        .get_or_try_init(|| async {
            let client = checkout(pool).await?;
            let row = client.query_one("select core.token_signing_key()", &[]).await?;
            Ok::<_, ApiError>(row.get::<_, Vec<u8>>(0))
        })
        .await?;
    Ok(key.clone())
}

/// The token's claims if its signature, algorithm and expiry hold; `None` if not.
async fn verify_token(
    pool: &Pool,
    cell: &tokio::sync::OnceCell<Vec<u8>>,
    token: &str,
) -> Result<Option<crate::token::Claims>, ApiError> {
    let secret = signing_key(pool, cell).await?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Ok(crate::token::verify(&secret, token, now).ok())
}

impl ModuleDb {
    pub fn module(&self) -> &'static str {
        self.module
    }

    /// Runs `body` in a read-only transaction as the key's tenant and returns what it returns.
    ///
    /// `begin`, the key check and `body`'s first statement go out together, before any answer comes back:
    /// a read needs one round trip, plus the commit. That is safe because `body` reads in a read-only
    /// transaction whose tenant only a valid key binds (the policies show nothing without one), and its result
    /// is returned only after the key, tenant, module and scope checks have passed.
    pub async fn read<T>(
        &self,
        key: &PresentedKey,
        body: impl AsyncFnOnce(&TenantTx) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let tx = self.connect().await?;
        let (auth, value) = self.authenticate_alongside(&tx, &self.begin_read, key, body(&tx)).await?;
        self.check(auth, Access::Read)?;
        let value = value?;
        tx.commit().await?;
        Ok(value)
    }

    /// Reads at most one row with one statement, in a read-only transaction as the key's tenant: like
    /// [`ModuleDb::read`], but the commit goes out with the rest, so the whole read is one round trip
    /// (`begin`, the key check, the statement and `commit` are sent together). The row is returned only after
    /// the key, tenant, module and scope checks have passed.
    pub async fn read_row(
        &self,
        key: &PresentedKey,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, ApiError> {
        let tx = self.connect().await?;
        let client = tx.client();
        let (auth, read) = self
            .authenticate_alongside(&tx, &self.begin_read, key, async {
                // Prepared (once per connection) inside the transaction, as the module's role: the login
                // role may not even look up the module's tables.
                let statement = match client.prepare_cached(sql).await {
                    Ok(statement) => statement,
                    Err(e) => return (Err(e), client.batch_execute("commit").await),
                };
                tokio::join!(biased; client.query_opt(&statement, params), client.batch_execute("commit"))
            })
            .await?;
        let (row, committed) = read;
        // Whatever happened, the commit ended the transaction (a failed one rolls back on `commit`).
        committed?;
        tx.ended();
        self.check(auth, Access::Read)?;
        Ok(row?)
    }

    /// Runs `body` in a transaction as the key's tenant and commits it when `body` succeeds. Nothing of
    /// `body` runs before the key, tenant, module and scope checks have passed.
    pub async fn write<T>(
        &self,
        key: &PresentedKey,
        body: impl AsyncFnOnce(&TenantTx) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let tx = self.connect().await?;
        let (auth, ()) =
            self.authenticate_alongside(&tx, &self.begin_write, key, std::future::ready(())).await?;
        self.check(auth, Access::Write)?;
        let value = body(&tx).await?;
        // A request under an Idempotency-Key: its key is marked as having taken effect in this same
        // transaction, so it can never run twice, whatever happens before its response is recorded.
        // A request whose claim was taken over (it ran longer than its hold) takes no effect at all.
        if let Ok(held) = IDEMPOTENCY_KEY.try_with(Clone::clone) {
            let marked = tx
                .execute(
                    "update core.idempotency_keys set committed = true where key = $1 and claim = $2",
                    &[&&*held.key, &held.claim],
                )
                .await?;
            if marked == 0 {
                return Err(ApiError::new(
                    axum::http::StatusCode::CONFLICT,
                    "idempotency_key_in_flight",
                    "another request took this Idempotency-Key over; nothing was done",
                ));
            }
        }
        tx.commit().await?;
        Ok(value)
    }

    /// Like [`ModuleDb::read`], but `body` runs only after the checks and learns the key's scopes (as
    /// stored, e.g. `crm:read`), for an API whose answer depends on them.
    pub async fn read_with_scopes<T>(
        &self,
        key: &PresentedKey,
        body: impl AsyncFnOnce(&TenantTx, &[String]) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let tx = self.connect().await?;
        let (auth, ()) =
            self.authenticate_alongside(&tx, &self.begin_read, key, std::future::ready(())).await?;
        let scopes: Vec<String> = auth.as_ref().map(|grant| grant.scopes.clone()).unwrap_or_default();
        self.check(auth, Access::Read)?;
        let value = body(&tx, &scopes).await?;
        tx.commit().await?;
        Ok(value)
    }

    /// Sends `begin`, the key check and whatever `alongside` sends, in that order and without waiting
    /// between them, and returns the key check's answer with `alongside`'s output.
    async fn authenticate_alongside<T>(
        &self,
        tx: &TenantTx,
        begin: &str,
        key: &PresentedKey,
        alongside: impl Future<Output = T>,
    ) -> Result<(Option<KeyGrant>, T), ApiError> {
        let client = tx.client();
        let claims = match key.token() {
            Some(token) => match verify_token(&self.pool, &self.signing, token).await? {
                Some(claims) => Some(claims),
                None => {
                    return Err(ApiError::unauthenticated(
                        "invalid_token",
                        "the token is not valid or has expired; log in again",
                    ));
                }
            },
            None => None,
        };
        // Cached after the first request on a connection; the login role may prepare it.
        let authenticate =
            client.prepare_cached(if claims.is_some() { AUTHENTICATE_MEMBER } else { AUTHENTICATE }).await?;
        let (prefix, hash) = (key.prefix(), key.hash());
        let key_params: [&(dyn ToSql + Sync); 3] = [&prefix, &hash, &self.module];
        let member_params: [&(dyn ToSql + Sync); 3];
        let params: &[&(dyn ToSql + Sync)] = match &claims {
            Some(claims) => {
                member_params = [&claims.sub, &claims.tid, &self.module];
                &member_params
            }
            None => &key_params,
        };
        // `biased`: polled, and so sent, strictly in this order.
        let (began, auth, other) = tokio::join!(
            biased;
            client.batch_execute(begin),
            client.query_opt(&authenticate, params),
            alongside
        );
        began?;
        let grant = auth?.map(|row| grant_of(&row, claims.is_some(), self.module));
        if claims.is_some() && grant.is_none() {
            return Err(ApiError::unauthenticated(
                "invalid_token",
                "the user is no longer a member of this tenant",
            ));
        }
        Ok((grant, other))
    }

    async fn connect(&self) -> Result<TenantTx, ApiError> {
        let client = checkout(&self.pool).await?;
        Ok(TenantTx { client: Some(client) })
    }

    /// Turns the key check's answer into the reason the request is refused, if it is. (The tenant itself is
    /// bound inside Postgres by the check; nothing here needs it.)
    fn check(&self, auth: Option<KeyGrant>, access: Access) -> Result<(), ApiError> {
        let Some(grant) = auth else {
            return Err(ApiError::unauthenticated(
                "invalid_api_key",
                "the API key is not valid or has been revoked",
            ));
        };
        if !grant.active {
            return Err(ApiError::forbidden("tenant_suspended", "this tenant is suspended"));
        }
        if !grant.module_enabled {
            return Err(ApiError::forbidden(
                "module_not_enabled",
                format!("the {} module is not enabled for this tenant", self.module),
            ));
        }
        if !Scope::allows(&grant.scopes, self.module, access) {
            let needed = Scope { module: self.module.to_owned(), access };
            return Err(ApiError::forbidden(
                "insufficient_scope",
                format!("this API key lacks the {needed} scope"),
            ));
        }
        Ok(())
    }
}

/// A request's transaction with its tenant bound; [`ModuleDb::read`] and [`ModuleDb::write`] open and end it.
/// Dropped without being committed (a failed body, a cancelled request), it rolls back.
///
/// It deliberately does not expose the tenant: a read's body runs before the key check's answer is known.
pub struct TenantTx {
    client: Option<Object>,
}

impl TenantTx {
    fn client(&self) -> &Object {
        // Only `commit` and `drop` take the client, and both consume the transaction.
        #[allow(clippy::unwrap_used)]
        self.client.as_ref().unwrap()
    }

    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let client = self.client();
        let statement = client.prepare_cached(sql).await?;
        client.query(&statement, params).await
    }

    pub async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        let client = self.client();
        let statement = client.prepare_cached(sql).await?;
        client.query_opt(&statement, params).await
    }

    pub async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, tokio_postgres::Error> {
        let client = self.client();
        let statement = client.prepare_cached(sql).await?;
        client.query_one(&statement, params).await
    }

    pub async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let client = self.client();
        let statement = client.prepare_cached(sql).await?;
        client.execute(&statement, params).await
    }

    /// The transaction was ended by a statement sent along with the others: the connection goes back to the
    /// pool as it is.
    fn ended(mut self) {
        self.client.take();
    }

    async fn commit(mut self) -> Result<(), ApiError> {
        if let Some(client) = self.client.take() {
            client.batch_execute("commit").await?;
        }
        Ok(())
    }
}

/// Ends the connection's transaction before it goes back to the pool; a connection that cannot is discarded,
/// and so is one when there is no runtime to do it on.
fn end_in_background(client: Object, statement: &'static str) {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(async move {
                if client.batch_execute(statement).await.is_err() {
                    drop(Object::take(client));
                }
            });
        }
        Err(_) => drop(Object::take(client)),
    }
}

impl Drop for TenantTx {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            end_in_background(client, "rollback");
        }
    }
}

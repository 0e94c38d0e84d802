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
//! together, so a read costs two round trips to Postgres (this, and the commit).
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
        Ok(Self { pool, config })
    }

    /// Adds request counts to `core.usage` (see `sql/core/V8__usage.sql`).
    pub async fn record_usage(
        &self,
        tenants: &[uuid::Uuid],
        apis: &[&str],
        days: &[time::Date],
        counts: &[i64],
    ) -> Result<(), ApiError> {
        let client = self.pool.get().await.map_err(|e| ApiError::unavailable(&e))?;
        let statement = client.prepare_cached("select core.record_usage($1, $2, $3, $4)").await?;
        client.query_one(&statement, &[&tenants, &apis, &days, &counts]).await?;
        Ok(())
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
        let client = self.pool.get().await.map_err(|e| ApiError::unavailable(&e))?;
        let authenticate = client.prepare_cached(AUTHENTICATE).await?;
        let (prefix, hash) = (key.prefix(), key.hash());
        let row = client.query_opt(&authenticate, &[&prefix, &hash, &module]).await?;
        Ok(row.map(|row| KeyGrant {
            tenant_id: row.get(0),
            scopes: row.get(1),
            active: row.get::<_, String>(2) == "active",
            module_enabled: row.get(3),
        }))
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
            module,
            begin_read: format!("begin read only; set local role {role}").into(),
            begin_write: format!("begin; set local role {role}").into(),
        }
    }
}

tokio::task_local! {
    /// Set by the gateway around a request that carries an `Idempotency-Key` (see [`ModuleDb::write`]).
    pub static IDEMPOTENCY_KEY: Arc<str>;
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
    module: &'static str,
    // Shared, not copied: the router clones its handlers' state for every request.
    begin_read: Arc<str>,
    begin_write: Arc<str>,
}

const AUTHENTICATE: &str = "select tenant_id, scopes, tenant_status, module_enabled \
                            from core.authenticate_api_key($1, $2, $3)";

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
        if let Ok(idempotency_key) = IDEMPOTENCY_KEY.try_with(Arc::clone) {
            tx.execute(
                "update core.idempotency_keys set committed = true where key = $1",
                &[&&*idempotency_key],
            )
            .await?;
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
        let scopes: Vec<String> = auth.as_ref().map(|row| row.get(1)).unwrap_or_default();
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
    ) -> Result<(Option<Row>, T), ApiError> {
        let client = tx.client();
        // Cached after the first request on a connection; the login role may prepare it.
        let authenticate = client.prepare_cached(AUTHENTICATE).await?;
        let (prefix, hash) = (key.prefix(), key.hash());
        let params: [&(dyn ToSql + Sync); 3] = [&prefix, &hash, &self.module];
        // `biased`: polled, and so sent, strictly in this order.
        let (began, auth, other) = tokio::join!(
            biased;
            client.batch_execute(begin),
            client.query_opt(&authenticate, &params),
            alongside
        );
        began?;
        Ok((auth?, other))
    }

    async fn connect(&self) -> Result<TenantTx, ApiError> {
        let client = self.pool.get().await.map_err(|e| ApiError::unavailable(&e))?;
        Ok(TenantTx { client: Some(client) })
    }

    /// Turns the key check's answer into the reason the request is refused, if it is. (The tenant itself is
    /// bound inside Postgres by the check; nothing here needs it.)
    fn check(&self, auth: Option<Row>, access: Access) -> Result<(), ApiError> {
        let Some(row) = auth else {
            return Err(ApiError::unauthenticated(
                "invalid_api_key",
                "the API key is not valid or has been revoked",
            ));
        };
        let status: String = row.get(2);
        if status != "active" {
            return Err(ApiError::forbidden("tenant_suspended", "this tenant is suspended"));
        }
        if !row.get::<_, bool>(3) {
            return Err(ApiError::forbidden(
                "module_not_enabled",
                format!("the {} module is not enabled for this tenant", self.module),
            ));
        }
        let scopes: Vec<String> = row.get(1);
        if !Scope::allows(&scopes, self.module, access) {
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

//! The contract a business module fulfils. Adding a module touches no other module: the binary lists the
//! compiled-in modules, and the migrator, the role script and the gateway take them from that list.

use crate::ApiError;
use crate::apikey::PresentedKey;
use crate::db::ModuleDb;

/// A module's part of a dashboard: JSON, or why it has none.
pub type DashboardPart<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<serde_json::Value, ApiError>> + Send + 'a>>;

pub trait Module: Send + Sync + 'static {
    /// The module's name, which is also its Postgres schema, its URL segment (`/v1/<name>/…`) and the first
    /// part of its scopes (`<name>:read`).
    fn name(&self) -> &'static str;

    /// The module's migrations (plain SQL under `sql/<name>/`), applied with their own history table.
    fn migrations(&self) -> refinery::Runner;

    /// The module's REST routes, mounted under `/v1/<name>`, each documented for the OpenAPI document
    /// (see [`crate::openapi`]).
    fn routes(&self, db: ModuleDb) -> crate::openapi::ApiRouter;

    /// SQL that fills the demo tenant with sample data; it runs with the demo tenant bound.
    fn demo_data(&self) -> Option<&'static str> {
        None
    }

    /// The domain events this module derives from its committed changes.
    fn event_rules(&self) -> Vec<EventRule> {
        Vec::new()
    }

    /// The events this module reacts to. Handlers run as the module's role with the event's tenant bound.
    fn subscriptions(&self) -> Vec<Subscription> {
        Vec::new()
    }

    /// This module's part of a CRM company's dashboard (`GET /v1/dashboard/companies/{id}`), read through
    /// `db` with the caller's key, so the key's scope and tenant checks apply as for any route; `None` when
    /// the module has nothing to say about companies. `not_found` means the company does not exist.
    fn company_dashboard<'a>(
        &'a self,
        _db: &'a ModuleDb,
        _key: &'a PresentedKey,
        _company: uuid::Uuid,
    ) -> Option<DashboardPart<'a>> {
        None
    }
}

/// A committed change as event rules see it: table, operation and rows.
#[derive(Clone, Copy)]
pub struct ChangeView<'a> {
    /// `schema.table`
    pub table: &'a str,
    /// `insert`, `update` or `delete`
    pub op: &'a str,
    pub new: Option<&'a dyn RowText>,
    /// The whole old row where the table has REPLICA IDENTITY FULL, else its key (or nothing).
    pub old: Option<&'a dyn RowText>,
}

impl ChangeView<'_> {
    /// A column of the new row as text.
    pub fn new_text(&self, column: &str) -> Option<&str> {
        self.new?.text(column)
    }

    /// A column of the old row as text.
    pub fn old_text(&self, column: &str) -> Option<&str> {
        self.old?.text(column)
    }
}

impl std::fmt::Debug for ChangeView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeView").field("table", &self.table).field("op", &self.op).finish_non_exhaustive()
    }
}

/// A row as event rules read it: the CDC worker's decoded tuple, or the row of an event as JSON.
pub trait RowText {
    /// A column whose value is a string in the event's JSON (text, enums, uuids, dates, …), as that string;
    /// `None` for a missing or null column and for numbers, booleans, arrays and JSON.
    fn text(&self, column: &str) -> Option<&str>;
}

impl RowText for serde_json::Map<String, serde_json::Value> {
    fn text(&self, column: &str) -> Option<&str> {
        self.get(column)?.as_str()
    }
}

/// A domain event a module derives from its own committed changes, e.g. `deal.closed.won`.
#[derive(Debug, Clone, Copy)]
pub struct EventRule {
    /// The event's type.
    pub name: &'static str,
    /// The `schema.table` whose changes it looks at.
    pub table: &'static str,
    /// Whether it reads old values: the table must then have REPLICA IDENTITY FULL (checked at start).
    pub needs_old: bool,
    pub matches: fn(&ChangeView<'_>) -> bool,
}

/// The scope prefix of the event feed (`GET /v1/events`, scope `events:read`): a platform API, not a module.
pub const EVENT_FEED_API: &str = "events";

/// The tenant's usage (`GET /v1/usage`), another platform API.
pub const USAGE_API: &str = "usage";

/// The platform's own APIs: every tenant has them, whatever modules it bought (a key still needs their
/// scope). `core.authenticate_api_key` and `core.authenticate_member` list the same names.
pub const PLATFORM_APIS: &[&str] = &[EVENT_FEED_API, USAGE_API];

/// The SQL endpoint's scope prefix (`reporting:read`). Not a REST API: `core.authenticate_sql` checks it.
pub const REPORTING_API: &str = "reporting";

/// Whether a scope prefix names something every tenant has (a platform API or the SQL endpoint) rather
/// than a module it must have bought.
pub fn is_platform_scope(api: &str) -> bool {
    PLATFORM_APIS.contains(&api) || api == REPORTING_API
}

/// An event from `events.log` as a subscriber's handler sees it.
#[derive(Debug, Clone)]
pub struct Event {
    /// The event's place in the log: the order every subscriber sees events in (commit order).
    pub seq: i64,
    /// Deterministic (from the source commit's LSN and position), so the same change has the same id.
    pub id: uuid::Uuid,
    pub tenant_id: uuid::Uuid,
    /// `deal.closed.won`, `crm.companies.insert`, …
    pub kind: String,
    pub commit_time: time::OffsetDateTime,
    /// For change events and the domain events derived from them: `table`, `op`, `new`, `old`.
    pub data: serde_json::Value,
}

impl Event {
    /// A column of the new row (`data.new.<column>`).
    pub fn new_value(&self, column: &str) -> Option<&serde_json::Value> {
        self.data.get("new")?.get(column).filter(|v| !v.is_null())
    }

    /// A text column of the new row.
    pub fn new_text(&self, column: &str) -> Option<&str> {
        self.new_value(column)?.as_str()
    }

    /// A uuid column of the new row.
    pub fn new_uuid(&self, column: &str) -> Option<uuid::Uuid> {
        uuid::Uuid::parse_str(self.new_text(column)?).ok()
    }
}

/// What a handler may do: run SQL in the dispatcher's transaction, as the module's role, with the event's
/// tenant bound (row-level security applies). Its writes commit together with the subscriber's cursor, so
/// they happen exactly once; an error rolls them back and the event is retried.
pub struct EffectTx<'a> {
    client: &'a tokio_postgres::Client,
    /// Statements already prepared on this connection, by SQL text.
    cache: Option<&'a StatementCache>,
}

/// Prepared statements of one connection, for [`EffectTx::with_cache`].
pub type StatementCache = std::sync::Mutex<std::collections::HashMap<String, tokio_postgres::Statement>>;

impl<'a> EffectTx<'a> {
    /// For the dispatcher, which opens and ends the transaction.
    pub fn new(client: &'a tokio_postgres::Client) -> Self {
        Self { client, cache: None }
    }

    /// The same, preparing each statement once per connection.
    pub fn with_cache(client: &'a tokio_postgres::Client, cache: &'a StatementCache) -> Self {
        Self { client, cache: Some(cache) }
    }

    /// The statement, prepared on first use (once per connection with a cache).
    pub async fn prepare(&self, sql: &str) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
        let Some(cache) = self.cache else { return self.client.prepare(sql).await };
        if let Some(statement) = cache.lock().ok().and_then(|c| c.get(sql).cloned()) {
            return Ok(statement);
        }
        let statement = self.client.prepare(sql).await?;
        if let Ok(mut c) = cache.lock() {
            c.insert(sql.to_owned(), statement.clone());
        }
        Ok(statement)
    }

    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        let statement = self.prepare(sql).await?;
        self.client.query(&statement, params).await
    }

    pub async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, tokio_postgres::Error> {
        let statement = self.prepare(sql).await?;
        self.client.query_opt(&statement, params).await
    }

    pub async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.prepare(sql).await?;
        self.client.execute(&statement, params).await
    }

    /// Two statements in one round trip: both are prepared first, then sent together; the second runs after
    /// the first (a connection runs its requests in the order they are sent), and fails when the first did
    /// (the transaction is then aborted). Returns both row counts.
    pub async fn execute_pair(
        &self,
        (first, first_params): (&str, &[&(dyn tokio_postgres::types::ToSql + Sync)]),
        (second, second_params): (&str, &[&(dyn tokio_postgres::types::ToSql + Sync)]),
    ) -> Result<(u64, u64), tokio_postgres::Error> {
        let (a, b) = (self.prepare(first).await?, self.prepare(second).await?);
        // `join` polls its first future first, and a request is sent when its future is first polled.
        let (a, b) = futures_util::future::join(
            self.client.execute(&a, first_params),
            self.client.execute(&b, second_params),
        )
        .await;
        Ok((a?, b?))
    }
}

/// Why a handler failed; recorded with a dead-lettered event.
///
/// A transient failure (a lost connection, a serialization failure, a lock or statement timeout, the server
/// shutting down) is retried for as long as it lasts; any other is retried a few times, then the event is
/// parked as a dead letter so that the subscriber can go on.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    pub message: String,
    pub transient: bool,
}

impl HandlerError {
    /// A failure that retrying will not cure by itself (bad data, a violated rule).
    pub fn definite(message: impl Into<String>) -> Self {
        Self { message: message.into(), transient: false }
    }
}

impl From<tokio_postgres::Error> for HandlerError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => {
                let code = db.code().code();
                // 08 connection, 40 rollback (serialization, deadlock), 53 resources, 57 operator
                // intervention (shutdown, statement timeout), 55P03 lock not available.
                let transient =
                    ["08", "40", "53", "57"].iter().any(|class| code.starts_with(class)) || code == "55P03";
                Self { message: format!("{} ({code})", db.message()), transient }
            }
            None => Self { message: e.to_string(), transient: true },
        }
    }
}

/// The future a handler returns.
pub type Effect<'a> = std::pin::Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send + 'a>>;

/// A module's subscription: the events it wants, in log order, and what it does with each.
#[derive(Clone, Copy)]
pub struct Subscription {
    /// Stable and unique (`invoicing.deal_won`): the subscriber's cursor and dead letters are kept under it.
    pub name: &'static str,
    /// The event types it receives; others pass it by.
    pub types: &'static [&'static str],
    pub handle: for<'a> fn(&'a EffectTx<'a>, &'a Event) -> Effect<'a>,
    /// Optionally, the same for several consecutive events of one tenant at once (in log order), with the
    /// same effects as `handle` on each in turn: a module whose per-event statements cost more than the
    /// work itself does them set-wise. When it fails, the dispatcher falls back to `handle`, event by event,
    /// to find the failing one.
    pub handle_many: Option<for<'a> fn(&'a EffectTx<'a>, &'a [Event]) -> Effect<'a>>,
}

impl Subscription {
    pub fn new(
        name: &'static str,
        types: &'static [&'static str],
        handle: for<'a> fn(&'a EffectTx<'a>, &'a Event) -> Effect<'a>,
    ) -> Self {
        Self { name, types, handle, handle_many: None }
    }

    /// With a handler for runs of events (see [`Subscription::handle_many`]).
    pub fn with_many(self, handle_many: for<'a> fn(&'a EffectTx<'a>, &'a [Event]) -> Effect<'a>) -> Self {
        Self { handle_many: Some(handle_many), ..self }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("name", &self.name).field("types", &self.types).finish()
    }
}

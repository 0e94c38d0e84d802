//! Schema migrations: refinery runners over plain SQL under `sql/<schema>/`, one history table per schema
//! (`migrations.<schema>_history`) so that modules migrate independently. A session advisory lock makes
//! concurrent runs safe: the second waits, then finds nothing left to do.

use tokio_postgres::Client;

use crate::module::Module;
use crate::roles::quote_ident;

mod embedded {
    refinery::embed_migrations!("../sql/core");
}

mod events {
    refinery::embed_migrations!("../sql/events");
}

/// Arbitrary but fixed: the advisory lock key that serialises migration runs.
const MIGRATION_LOCK: i64 = 0x7465_7373_6572_6131;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("could not talk to the database")]
    Db(#[from] tokio_postgres::Error),
    #[error("migrating schema {schema} failed")]
    Migration {
        schema: String,
        #[source]
        source: refinery::Error,
    },
    #[error(
        "role {0} does not exist: create the roles first (`tessera roles --print` prints the script for a superuser)"
    )]
    MissingRole(String),
}

/// One schema and its migrations.
pub struct SchemaMigrations {
    pub schema: &'static str,
    runner: refinery::Runner,
}

impl SchemaMigrations {
    /// How many migrations the schema has.
    pub fn len(&self) -> usize {
        self.runner.get_migrations().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn history_table(&self) -> String {
        format!("migrations.{}", quote_ident(&format!("{}_history", self.schema)))
    }
}

/// `core` first, then the event log, then every module in order.
pub fn plan(modules: &[&dyn Module]) -> Vec<SchemaMigrations> {
    let mut plan = vec![
        SchemaMigrations { schema: "core", runner: embedded::migrations::runner() },
        SchemaMigrations { schema: "events", runner: events::migrations::runner() },
    ];
    plan.extend(modules.iter().map(|m| SchemaMigrations { schema: m.name(), runner: m.migrations() }));
    plan
}

/// A migration applied by [`run`].
#[derive(Debug, Clone)]
pub struct Applied {
    pub schema: &'static str,
    pub version: i32,
    pub name: String,
}

/// Applies every pending migration. `client` must be connected as the owner role.
pub async fn run(client: &mut Client, modules: &[&dyn Module]) -> Result<Vec<Applied>, MigrateError> {
    check_roles(client, modules).await?;
    client.execute("select pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await?;
    let result = run_locked(client, modules).await;
    let unlock = client.execute("select pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await;
    let applied = result?;
    unlock?;
    Ok(applied)
}

async fn run_locked(client: &mut Client, modules: &[&dyn Module]) -> Result<Vec<Applied>, MigrateError> {
    client.batch_execute("create schema if not exists migrations").await?;
    let mut applied = Vec::new();
    for mut step in plan(modules) {
        let table = step.history_table();
        step.runner.set_migration_table_name(&table);
        let report = step
            .runner
            .run_async(client)
            .await
            .map_err(|source| MigrateError::Migration { schema: step.schema.to_owned(), source })?;
        for m in report.applied_migrations() {
            tracing::info!(schema = step.schema, version = m.version(), name = m.name(), "migration applied");
            applied.push(Applied { schema: step.schema, version: m.version(), name: m.name().to_owned() });
        }
    }
    Ok(applied)
}

async fn check_roles(client: &Client, modules: &[&dyn Module]) -> Result<(), MigrateError> {
    use crate::roles::{APP, AUTH, EVENT_FEED, EVENTS, OWNER, REPLICATION, REPORTING, RUNTIME, module_role};
    let mut needed: Vec<String> = [OWNER, AUTH, RUNTIME, APP, REPORTING, EVENTS, EVENT_FEED, REPLICATION]
        .iter()
        .map(|r| r.to_string())
        .collect();
    needed.extend(modules.iter().map(|m| module_role(m.name())));
    for role in needed {
        let exists = client.query_opt("select 1 from pg_roles where rolname = $1", &[&role]).await?.is_some();
        if !exists {
            return Err(MigrateError::MissingRole(role));
        }
    }
    Ok(())
}

/// The SQL that [`run`] would apply, with a header per migration, for a DBA to review. Reads the history
/// tables without creating anything.
pub async fn pending_sql(client: &Client, modules: &[&dyn Module]) -> Result<String, MigrateError> {
    let mut out = String::new();
    for step in plan(modules) {
        let table = format!("migrations.{}_history", step.schema);
        let exists: bool = client.query_one("select to_regclass($1) is not null", &[&table]).await?.get(0);
        let applied: Vec<i32> = if exists {
            let sql = format!("select version from {} order by version", step.history_table());
            client.query(&sql, &[]).await?.iter().map(|r| r.get(0)).collect()
        } else {
            Vec::new()
        };
        for m in step.runner.get_migrations() {
            if applied.contains(&m.version()) {
                continue;
            }
            out.push_str(&format!("-- {}: V{}__{}\n", step.schema, m.version(), m.name()));
            out.push_str(m.sql().unwrap_or_default());
            out.push_str("\n\n");
        }
    }
    Ok(out)
}

/// Every migration's SQL, whatever has been applied (for `tessera migrate --print` without a database).
pub fn all_sql(modules: &[&dyn Module]) -> String {
    let mut out = String::new();
    for step in plan(modules) {
        for m in step.runner.get_migrations() {
            out.push_str(&format!("-- {}: V{}__{}\n", step.schema, m.version(), m.name()));
            out.push_str(m.sql().unwrap_or_default());
            out.push_str("\n\n");
        }
    }
    out
}

//! The contract a business module fulfils. Adding a module touches no other module: the binary lists the
//! compiled-in modules, and the migrator, the role script and the gateway take them from that list.

use crate::db::ModuleDb;

pub trait Module: Send + Sync + 'static {
    /// The module's name, which is also its Postgres schema, its URL segment (`/v1/<name>/…`) and the first
    /// part of its scopes (`<name>:read`).
    fn name(&self) -> &'static str;

    /// The module's migrations (plain SQL under `sql/<name>/`), applied with their own history table.
    fn migrations(&self) -> refinery::Runner;

    /// The module's REST routes, mounted under `/v1/<name>`.
    fn routes(&self, db: ModuleDb) -> axum::Router;

    /// SQL that fills the demo tenant with sample data; it runs with the demo tenant bound.
    fn demo_data(&self) -> Option<&'static str> {
        None
    }

    /// The domain events this module derives from its committed changes.
    fn event_rules(&self) -> Vec<EventRule> {
        Vec::new()
    }
}

/// A committed change as event rules see it: table, operation and rows as JSON.
#[derive(Debug, Clone, Copy)]
pub struct ChangeView<'a> {
    /// `schema.table`
    pub table: &'a str,
    /// `insert`, `update` or `delete`
    pub op: &'a str,
    pub new: Option<&'a serde_json::Map<String, serde_json::Value>>,
    /// The whole old row where the table has REPLICA IDENTITY FULL, else its key (or nothing).
    pub old: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

impl ChangeView<'_> {
    /// A column of the new row as text.
    pub fn new_text(&self, column: &str) -> Option<&str> {
        self.new?.get(column)?.as_str()
    }

    /// A column of the old row as text.
    pub fn old_text(&self, column: &str) -> Option<&str> {
        self.old?.get(column)?.as_str()
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

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
}

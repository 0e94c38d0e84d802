//! The CRM module: companies, their contacts, and deals moving through a pipeline
//! (`lead → qualified → proposal → negotiation → won | lost`).
//!
//! It owns the `crm` schema (migrations in `sql/crm/`), runs its requests as the `tessera_crm` role, and
//! serves `/v1/crm/{companies,contacts,deals}`. Its SQL lives in [`store`], its wire types in [`model`],
//! its HTTP handlers in [`routes`].

mod dashboard;
mod model;
mod routes;
mod store;

use tessera_core::db::ModuleDb;
use tessera_core::{ChangeView, EventRule, Module};

mod embedded {
    refinery::embed_migrations!("../../sql/crm");
}

/// The CRM module, as the binary registers it.
pub struct Crm;

impl Module for Crm {
    fn name(&self) -> &'static str {
        "crm"
    }

    fn migrations(&self) -> refinery::Runner {
        embedded::migrations::runner()
    }

    fn routes(&self, db: ModuleDb) -> tessera_core::openapi::ApiRouter {
        routes::router(db)
    }

    fn company_dashboard<'a>(
        &'a self,
        db: &'a ModuleDb,
        key: &'a tessera_core::apikey::PresentedKey,
        company: uuid::Uuid,
    ) -> Option<tessera_core::module::DashboardPart<'a>> {
        Some(Box::pin(dashboard::company(db, key, company)))
    }

    fn demo_data(&self) -> Option<&'static str> {
        Some(include_str!("../../../sql/crm/demo.sql"))
    }

    fn event_rules(&self) -> Vec<EventRule> {
        vec![EventRule { name: "deal.closed.won", table: "crm.deals", needs_old: true, matches: deal_won }]
    }
}

/// A deal reaching `won`: inserted as won, or moved to won from another stage. Editing a won deal's other
/// fields is not a new win; won → lost → won is two.
fn deal_won(change: &ChangeView<'_>) -> bool {
    let won_now = change.new_text("stage") == Some("won");
    match change.op {
        "insert" => won_now,
        "update" => won_now && change.old_text("stage") != Some("won"),
        _ => false,
    }
}

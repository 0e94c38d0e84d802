//! The invoicing module: customers, invoices with their lines, and the payments that settle them.
//!
//! An invoice is born a draft, which may be edited freely; issuing it assigns the tenant's next number
//! (`INV-000001`, gapless), dates it and freezes it; payments that reach its total mark it paid; a draft or
//! an unpaid issued invoice may be voided (`draft → issued → paid`, `draft | issued → void`). Those rules,
//! the total (always the sum of the lines) and the numbering live in Postgres (`sql/invoicing/`), so direct
//! SQL and imports obey them as the API does; the API checks the same rules first to answer clearly.
//!
//! It owns the `invoicing` schema, runs its requests as the `tessera_invoicing` role, and serves
//! `/v1/invoicing/{customers,invoices}` ([`routes`]). Its SQL lives in [`store`], its wire types in
//! [`model`]. It announces `invoice.issued` and `invoice.paid`, and it listens to the CRM's events to keep
//! customers in step with CRM companies and to draft an invoice for every won deal ([`crm_events`]).

mod crm_events;
mod dashboard;
mod model;
mod routes;
mod store;

use tessera_core::db::ModuleDb;
use tessera_core::{ChangeView, EventRule, Module, Subscription};

mod embedded {
    refinery::embed_migrations!("../../sql/invoicing");
}

/// The invoicing module, as the binary registers it.
pub struct Invoicing;

impl Module for Invoicing {
    fn name(&self) -> &'static str {
        "invoicing"
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
        Some(include_str!("../../../sql/invoicing/demo.sql"))
    }

    fn event_rules(&self) -> Vec<EventRule> {
        vec![
            EventRule {
                name: "invoice.issued",
                table: "invoicing.invoices",
                needs_old: true,
                matches: issued,
            },
            EventRule { name: "invoice.paid", table: "invoicing.invoices", needs_old: true, matches: paid },
        ]
    }

    fn subscriptions(&self) -> Vec<Subscription> {
        vec![
            Subscription::new("invoicing.deals", crm_events::TYPES, crm_events::handle)
                .with_many(crm_events::handle_many),
        ]
    }
}

/// An invoice's status moving to `status` (invoices are inserted as drafts, so only updates can).
fn status_became(change: &ChangeView<'_>, status: &str) -> bool {
    change.op == "update"
        && change.new_text("status") == Some(status)
        && change.old_text("status") != Some(status)
}

/// `invoice.issued`: a draft was issued (and so numbered).
fn issued(change: &ChangeView<'_>) -> bool {
    status_became(change, "issued")
}

/// `invoice.paid`: the payments reached the total.
fn paid(change: &ChangeView<'_>) -> bool {
    status_became(change, "paid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value, json};
    use tessera_core::RowText;

    fn row(status: &str) -> Map<String, Value> {
        match json!({"status": status}) {
            Value::Object(m) => m,
            _ => unreachable!("an object literal"),
        }
    }

    fn view<'a>(
        op: &'a str,
        new: &'a Map<String, Value>,
        old: Option<&'a Map<String, Value>>,
    ) -> ChangeView<'a> {
        ChangeView { table: "invoicing.invoices", op, new: Some(new), old: old.map(|o| o as &dyn RowText) }
    }

    #[test]
    fn status_moves_become_domain_events_once() {
        let (draft, issued_row, paid_row) = (row("draft"), row("issued"), row("paid"));
        assert!(issued(&view("update", &issued_row, Some(&draft))));
        assert!(!issued(&view("update", &issued_row, Some(&issued_row))), "editing an issued invoice");
        assert!(!issued(&view("insert", &issued_row, None)));
        assert!(paid(&view("update", &paid_row, Some(&issued_row))));
        assert!(!paid(&view("update", &paid_row, Some(&paid_row))));
        assert!(!paid(&view("delete", &paid_row, Some(&issued_row))));
    }
}

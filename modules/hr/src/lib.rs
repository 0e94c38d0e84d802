//! The HR module: employees, their commission plans, and the commissions booked for them when a CRM deal
//! they own is won.
//!
//! It owns the `hr` schema (migrations in `sql/hr/`), runs its requests and its event handler as the
//! `tessera_hr` role, and serves `/v1/hr/{employees,commission-plans,commissions}`. It never reads the CRM's
//! tables: it learns of won deals through the `deal.closed.won` event ([`booking`]), and announces each
//! commission it books as `commission.booked`. Its SQL lives in [`store`], its wire types in [`model`], its
//! HTTP handlers in [`routes`].

mod booking;
mod model;
mod routes;
mod store;

use tessera_core::db::ModuleDb;
use tessera_core::{ChangeView, EventRule, Module, Subscription};

mod embedded {
    refinery::embed_migrations!("../../sql/hr");
}

/// The HR module, as the binary registers it.
pub struct Hr;

impl Module for Hr {
    fn name(&self) -> &'static str {
        "hr"
    }

    fn migrations(&self) -> refinery::Runner {
        embedded::migrations::runner()
    }

    fn routes(&self, db: ModuleDb) -> tessera_core::openapi::ApiRouter {
        routes::router(db)
    }

    fn demo_data(&self) -> Option<&'static str> {
        Some(include_str!("../../../sql/hr/demo.sql"))
    }

    fn event_rules(&self) -> Vec<EventRule> {
        vec![EventRule {
            name: "commission.booked",
            table: "hr.commissions",
            needs_old: false,
            matches: commission_booked,
        }]
    }

    fn subscriptions(&self) -> Vec<Subscription> {
        vec![
            Subscription::new("hr.commissions", &["deal.closed.won"], booking::handle)
                .with_many(booking::handle_many),
        ]
    }
}

/// A commission being booked: a new row in `hr.commissions` (only the deal.closed.won handler writes them).
fn commission_booked(change: &ChangeView<'_>) -> bool {
    change.op == "insert"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_new_commission_is_a_booking() {
        let row = serde_json::Map::new();
        let view = |op| ChangeView { table: "hr.commissions", op, new: Some(&row), old: None };
        assert!(commission_booked(&view("insert")));
        assert!(!commission_booked(&view("update")));
        assert!(!commission_booked(&view("delete")));
    }
}

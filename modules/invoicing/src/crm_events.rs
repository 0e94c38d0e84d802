//! What invoicing does with the CRM's events (subscription `invoicing.deals`).
//!
//! The invoicing module never reads the CRM's tables; it keeps its own copy of what it needs, built from the
//! event log in commit order by the dispatcher:
//!
//! - `crm.companies.insert` / `crm.companies.update`: the customer linked to the company (by
//!   `crm_company_id`) is created or renamed. A linked customer mirrors its company's name.
//! - `deal.closed.won`: one draft invoice for the deal, with one line (the deal's title, quantity 1, the
//!   deal's amount) in the deal's currency, `deal_id` set and `source_event_id` = the event's id. The
//!   customer is the one linked to the deal's company, created if the company is not known yet (named
//!   "Company <id>" until the CRM's next change to that company renames it).
//!
//! Decisions:
//! - A won deal without a company is still invoiced — a win that is silently not billed is the worse
//!   failure — to a new, unlinked customer named after the deal's title. The invoice is a draft: someone
//!   will point it at the right customer (or delete it) before issuing.
//! - One draft per win, as the CRM counts wins: a deal won, lost and won again is two `deal.closed.won`
//!   events and two drafts (`deal_id` tells them apart from the rest; a draft billed twice is deleted by
//!   hand, which is cheaper than a win never billed). Editing a won deal is not a win and bills nothing.
//! - Idempotent by event id on top of the dispatcher's exactly-once delivery: the unique index on
//!   `(tenant_id, source_event_id)` and `on conflict do nothing`, plus, for a deal without a company, a check
//!   before its placeholder customer is made.
//! - Amounts arrive as JSON strings (the CDC worker keeps numeric exact, so that is the normal case) or as
//!   JSON numbers; either way their decimal text goes to Postgres as `$n::text::numeric`. A string is
//!   exact whatever its length; a number is as exact as serde_json kept it (its shortest round-trip form).
//!
//! A malformed event (no id, an amount that is not a decimal) fails the handler: the dispatcher retries it
//! and then parks it for an operator.

use serde_json::Value;
use tessera_core::{Effect, EffectTx, Event, HandlerError};

use uuid::Uuid;

use crate::store::{self, Billed, DealInvoice};

/// The event types of the subscription.
pub const TYPES: &[&str] = &["deal.closed.won", "crm.companies.insert", "crm.companies.update"];

/// The subscription's handler: runs in the dispatcher's transaction, as `tessera_invoicing`, with the
/// event's tenant bound.
pub fn handle<'a>(tx: &'a EffectTx<'a>, event: &'a Event) -> Effect<'a> {
    Box::pin(async move {
        match event.kind.as_str() {
            "crm.companies.insert" | "crm.companies.update" => mirror_company(tx, event).await,
            "deal.closed.won" => invoice_won_deal(tx, event).await,
            // Not subscribed: nothing to do.
            _ => Ok(()),
        }
    })
}

async fn mirror_company(tx: &EffectTx<'_>, event: &Event) -> Result<(), HandlerError> {
    let company = event.new_uuid("id").ok_or_else(|| malformed(event, "the company's id"))?;
    let name = event.new_text("name").map(|n| clip(n, 200)).filter(|n| !n.is_empty());
    store::mirror_company(tx, company, name, event.seq).await?;
    Ok(())
}

/// Several events of one tenant, in log order (see `Subscription::handle_many`): a run of won deals with a
/// company is invoiced in one round trip; anything else goes one by one, in order.
pub fn handle_many<'a>(tx: &'a EffectTx<'a>, events: &'a [Event]) -> Effect<'a> {
    Box::pin(async move {
        let mut rest = events;
        while let Some(first) = rest.first() {
            let companies: Vec<Uuid> = rest
                .iter()
                .map_while(|e| (e.kind == "deal.closed.won").then(|| e.new_uuid("company_id")).flatten())
                .collect();
            let run = companies.len();
            if run > 1 {
                let invoices = rest[..run]
                    .iter()
                    .zip(companies)
                    .map(|(event, company)| won_deal(event, Billed::Company(company)))
                    .collect::<Result<Vec<_>, _>>()?;
                invoice_won_deals(tx, &invoices).await?;
                rest = &rest[run..];
            } else {
                handle(tx, first).await?;
                rest = &rest[1..];
            }
        }
        Ok(())
    })
}

/// The invoice a `deal.closed.won` event asks for, billed as given.
fn won_deal(event: &Event, billed: Billed) -> Result<DealInvoice, HandlerError> {
    let deal = event.new_uuid("id").ok_or_else(|| malformed(event, "the deal's id"))?;
    let amount =
        event.new_value("amount").and_then(decimal_text).ok_or_else(|| malformed(event, "an amount"))?;
    let currency = event.new_text("currency").unwrap_or("USD").to_owned();
    Ok(DealInvoice { billed, currency, deal_id: deal, event_id: event.id, title: deal_title(event)?, amount })
}

/// The deal's title, or "Deal <id>" when it has none.
fn deal_title(event: &Event) -> Result<String, HandlerError> {
    let deal = event.new_uuid("id").ok_or_else(|| malformed(event, "the deal's id"))?;
    Ok(match event.new_text("title").map(|t| clip(t, 200)).filter(|t| !t.is_empty()) {
        Some(t) => t.to_owned(),
        None => format!("Deal {deal}"),
    })
}

async fn invoice_won_deal(tx: &EffectTx<'_>, event: &Event) -> Result<(), HandlerError> {
    let billed = match event.new_uuid("company_id") {
        Some(company) => Billed::Company(company),
        None => {
            // A redelivered event must not leave a second placeholder behind (a company's customer is
            // found again instead).
            if store::event_invoiced(tx, event.id).await? {
                return Ok(());
            }
            Billed::Customer(store::placeholder_customer(tx, &deal_title(event)?).await?)
        }
    };
    invoice_won_deals(tx, &[won_deal(event, billed)?]).await
}

async fn invoice_won_deals(tx: &EffectTx<'_>, invoices: &[DealInvoice]) -> Result<(), HandlerError> {
    let inserted = match store::insert_deal_invoices(tx, invoices).await {
        Ok(n) => n,
        // No customer found for a company (one inserted concurrently, committed after the statement's
        // snapshot, leaves customer_id null): a retry sees it.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::NOT_NULL_VIOLATION) => {
            return Err(HandlerError {
                message: format!("no customer yet for a won deal's company: {e}"),
                transient: true,
            });
        }
        Err(e) => return Err(e.into()),
    };
    if inserted < invoices.len() as u64 {
        // Those not inserted must have been there before; otherwise a company's customer was not found (a
        // concurrent insert of it, committed after the statement's snapshot), and a retry sees it.
        let events: Vec<Uuid> = invoices.iter().map(|i| i.event_id).collect();
        if store::events_invoiced(tx, &events).await? < invoices.len() as i64 {
            return Err(HandlerError {
                message: format!("no customer yet for the company of a won deal (events {events:?})"),
                transient: true,
            });
        }
    }
    Ok(())
}

/// A numeric column as decimal text: the CDC worker sends a string, kept as is; a JSON number is written
/// out in its shortest round-trip form. Postgres parses (and, if need be, refuses) it.
fn decimal_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// At most `max` characters (on a character boundary), trimmed.
fn clip(text: &str, max: usize) -> &str {
    let text = text.trim();
    match text.char_indices().nth(max) {
        Some((end, _)) => text[..end].trim_end(),
        None => text,
    }
}

fn malformed(event: &Event, missing: &str) -> HandlerError {
    HandlerError::definite(format!("{} event {} has no usable {missing}", event.kind, event.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_keep_their_digits() {
        assert_eq!(decimal_text(&serde_json::json!("87500.50")).as_deref(), Some("87500.50"));
        assert_eq!(decimal_text(&serde_json::json!(12000)).as_deref(), Some("12000"));
        assert_eq!(decimal_text(&serde_json::json!(12.5)).as_deref(), Some("12.5"));
        assert_eq!(decimal_text(&serde_json::json!(null)), None);
    }

    #[test]
    fn clipping_respects_characters() {
        assert_eq!(clip("  héllo  ", 3), "hél");
        assert_eq!(clip("ab", 3), "ab");
        assert_eq!(clip("a  b", 2), "a");
    }
}

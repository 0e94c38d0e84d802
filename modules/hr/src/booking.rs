//! Booking commissions when a CRM deal is won.
//!
//! HR never reads the CRM's tables: it subscribes to `deal.closed.won`, whose `data.new` is the deal row as
//! the CDC worker decoded it (`id`, `amount`, `currency`, `owner_email`, …). The dispatcher calls
//! [`handle`] in its own transaction, as `tessera_hr` with the event's tenant bound, and commits the
//! handler's writes together with the subscriber's cursor, so a commission is booked exactly once per event;
//! the unique `source_event_id` makes a redelivery harmless all the same.
//!
//! ```text
//! deal.closed.won ─▶ owner_email ─▶ active employee (same e-mail, case-insensitive)
//!                                     └─▶ plan in force on the commit date (UTC)
//!                                           └─▶ hr.commissions: amount = round(deal amount × rate, 2)
//!                                                 └─(CDC)─▶ commission.booked
//! ```
//!
//! A deal nobody owns, an owner who is not an active employee, or an employee with no plan in force is not
//! an error: nothing is booked, it is logged at info, and the event is done. A malformed event (no deal id,
//! an amount or currency that is missing or not what the CRM writes) is an error, so the dispatcher retries
//! it and then parks it where an operator sees it.

use serde_json::Value;
use tessera_core::{Effect, EffectTx, Event, HandlerError};
use time::{Date, OffsetDateTime, UtcOffset};
use uuid::Uuid;

use crate::store::{self, NewCommission, WonDealBooking};

/// The subscription's handler (see [`crate::Hr`]'s `subscriptions`).
pub fn handle<'a>(tx: &'a EffectTx<'a>, event: &'a Event) -> Effect<'a> {
    Box::pin(async move { book(tx, event).await })
}

/// Several events of one tenant at once (see `Subscription::handle_many`): one statement books them all,
/// with the same effects as [`handle`] on each in turn.
pub fn handle_many<'a>(tx: &'a EffectTx<'a>, events: &'a [Event]) -> Effect<'a> {
    Box::pin(async move {
        let deals = events
            .iter()
            .map(|e| WonDeal::from_event(e).map(|deal| (e, deal)))
            .collect::<Result<Vec<_>, _>>()?;
        let bookings: Vec<WonDealBooking<'_>> = deals
            .iter()
            .filter_map(|(event, deal)| {
                Some(WonDealBooking {
                    deal_id: deal.id,
                    deal_amount: &deal.amount,
                    currency: &deal.currency,
                    owner_email: deal.owner_email.as_deref()?,
                    day: deal.day,
                    source_event_id: event.id,
                    booked_at: event.commit_time,
                })
            })
            .collect();
        let booked = store::book_commissions(tx, &bookings).await?;
        tracing::info!(events = events.len(), booked, "commissions booked for won deals");
        Ok(())
    })
}

async fn book(tx: &EffectTx<'_>, event: &Event) -> Result<(), HandlerError> {
    let deal = WonDeal::from_event(event)?;
    let Some(owner) = deal.owner_email else {
        tracing::info!(event = %event.id, deal = %deal.id, "won deal has no owner; no commission");
        return Ok(());
    };
    let Some(employee_id) = store::active_employee_by_email(tx, &owner).await? else {
        tracing::info!(
            event = %event.id, deal = %deal.id, owner = %owner,
            "won deal's owner is not an active employee; no commission"
        );
        return Ok(());
    };
    let Some(plan) = store::plan_in_force(tx, employee_id, deal.day).await? else {
        tracing::info!(
            event = %event.id, deal = %deal.id, employee = %employee_id, day = %deal.day,
            "no commission plan in force; no commission"
        );
        return Ok(());
    };
    let new = NewCommission {
        employee_id,
        plan: &plan,
        deal_id: deal.id,
        deal_amount: &deal.amount,
        currency: &deal.currency,
        source_event_id: event.id,
        booked_at: event.commit_time,
    };
    match store::book_commission(tx, &new).await? {
        Some(id) => tracing::info!(
            event = %event.id, deal = %deal.id, employee = %employee_id, commission = %id, "commission booked"
        ),
        None => {
            tracing::info!(event = %event.id, deal = %deal.id, "commission already booked for this event")
        }
    }
    Ok(())
}

/// What HR takes from a `deal.closed.won` event.
#[derive(Debug)]
struct WonDeal {
    id: Uuid,
    /// Exact decimal text: never through a float.
    amount: String,
    currency: String,
    /// Lowercased, as employees' e-mail addresses are compared.
    owner_email: Option<String>,
    /// The day the deal was won (the commit's date in UTC): it picks the plan in force.
    day: Date,
}

impl WonDeal {
    fn from_event(event: &Event) -> Result<Self, HandlerError> {
        let bad = |what: &str| HandlerError::definite(format!("{} event {}: {what}", event.kind, event.id));
        let id = event.new_uuid("id").ok_or_else(|| bad("the deal has no id"))?;
        let amount = event
            .new_value("amount")
            .and_then(decimal_text)
            .ok_or_else(|| bad("the deal's amount is missing or not a decimal"))?;
        let currency = event
            .new_text("currency")
            .filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()))
            .ok_or_else(|| bad("the deal's currency is missing or not an ISO 4217 code"))?
            .to_owned();
        let owner_email = event.new_text("owner_email").map(str::trim).filter(|e| !e.is_empty());
        Ok(Self {
            id,
            amount,
            currency,
            owner_email: owner_email.map(str::to_owned),
            day: utc_date(event.commit_time),
        })
    }
}

/// A numeric column's value as exact decimal text. The CDC worker sends numerics as strings; a JSON number
/// is accepted too and kept as written (its text, not a float). Anything but plain decimal digits (NaN,
/// Infinity, exponents) is refused.
fn decimal_text(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let unsigned = text.strip_prefix('-').unwrap_or(&text);
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let ok = !int.is_empty() && digits(int) && digits(frac) && !(unsigned.contains('.') && frac.is_empty());
    ok.then_some(text)
}

fn utc_date(t: OffsetDateTime) -> Date {
    t.to_offset(UtcOffset::UTC).date()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(new: Value) -> Event {
        Event {
            seq: 1,
            id: Uuid::nil(),
            tenant_id: Uuid::nil(),
            kind: "deal.closed.won".into(),
            commit_time: time::macros::datetime!(2025-06-30 23:30 -02:00),
            data: json!({"table": "crm.deals", "op": "update", "new": new, "old": null}),
        }
    }

    #[test]
    fn amounts_keep_every_digit_whether_string_or_number() {
        assert_eq!(decimal_text(&json!("12345.67")).as_deref(), Some("12345.67"));
        assert_eq!(decimal_text(&json!(12345.67)).as_deref(), Some("12345.67"));
        assert_eq!(decimal_text(&json!(100)).as_deref(), Some("100"));
        assert_eq!(decimal_text(&json!("9999999999999999.99")).as_deref(), Some("9999999999999999.99"));
        for bad in [json!("NaN"), json!("Infinity"), json!("1e5"), json!("1."), json!(""), json!(true)] {
            assert_eq!(decimal_text(&bad), None, "{bad}");
        }
    }

    #[test]
    fn a_won_deal_is_read_from_the_event_row() {
        let id = Uuid::now_v7();
        let deal = WonDeal::from_event(&event(json!({
            "id": id.to_string(), "amount": "12345.67", "currency": "EUR", "owner_email": " Ana@Demo.example "
        })))
        .expect("valid");
        assert_eq!(deal.id, id);
        assert_eq!(deal.amount, "12345.67");
        assert_eq!(deal.currency, "EUR");
        assert_eq!(deal.owner_email.as_deref(), Some("Ana@Demo.example"), "trimmed; SQL folds the case");
        // 23:30 at UTC-2 is already the next day in UTC.
        assert_eq!(deal.day, time::macros::date!(2025 - 07 - 01));

        let unowned = WonDeal::from_event(&event(json!({
            "id": id.to_string(), "amount": "1.00", "currency": "USD", "owner_email": null
        })))
        .expect("valid");
        assert_eq!(unowned.owner_email, None);
    }

    #[test]
    fn malformed_events_are_errors_not_silent_skips() {
        for new in [
            json!({"amount": "1.00", "currency": "USD"}),
            json!({"id": "not-a-uuid", "amount": "1.00", "currency": "USD"}),
            json!({"id": Uuid::nil().to_string(), "currency": "USD"}),
            json!({"id": Uuid::nil().to_string(), "amount": "NaN", "currency": "USD"}),
            json!({"id": Uuid::nil().to_string(), "amount": "1.00", "currency": "usd"}),
        ] {
            assert!(WonDeal::from_event(&event(new.clone())).is_err(), "{new}");
        }
    }
}

//! HR's wire types: what the API returns, and request bodies parsed into typed input.

use serde::Serialize;
use tessera_core::ApiError;
use tessera_core::input::{Cursor, Fields, JsonObject, Patch};
use time::{Date, OffsetDateTime};
use tokio_postgres::Row;
use uuid::Uuid;

pub const EMPLOYEE_STATUSES: &[&str] = &["active", "inactive"];
pub const COMMISSION_STATUSES: &[&str] = &["booked", "paid"];

#[derive(Debug, Serialize)]
pub struct Employee {
    pub object: &'static str,
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub title: Option<String>,
    pub status: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Employee {
    pub const COLUMNS: &str = "id, name, email, title, status, created_at, updated_at";

    pub fn from_row(row: &Row) -> Self {
        Self {
            object: "employee",
            id: row.get(0),
            name: row.get(1),
            email: row.get(2),
            title: row.get(3),
            status: row.get(4),
            created_at: row.get(5),
            updated_at: row.get(6),
        }
    }

    pub fn cursor(&self) -> Cursor {
        Cursor { created_at: self.created_at, id: self.id }
    }
}

#[derive(Debug, Serialize)]
pub struct CommissionPlan {
    pub object: &'static str,
    pub id: Uuid,
    pub employee_id: Uuid,
    /// A decimal string with four places ("0.1000"): 0.1 is 10 %.
    pub rate: String,
    pub effective_from: Date,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl CommissionPlan {
    pub const COLUMNS: &str = "id, employee_id, rate::text, effective_from, created_at";

    pub fn from_row(row: &Row) -> Self {
        Self {
            object: "commission_plan",
            id: row.get(0),
            employee_id: row.get(1),
            rate: row.get(2),
            effective_from: row.get(3),
            created_at: row.get(4),
        }
    }

    pub fn cursor(&self) -> Cursor {
        Cursor { created_at: self.created_at, id: self.id }
    }
}

#[derive(Debug, Serialize)]
pub struct Commission {
    pub object: &'static str,
    pub id: Uuid,
    pub employee_id: Uuid,
    /// The plan the rate came from; null once that plan has been deleted (the rate stays).
    pub plan_id: Option<Uuid>,
    pub deal_id: Uuid,
    /// Decimal strings, exact: the deal's amount when it was won, the rate then in force, and
    /// `round(deal_amount * rate, 2)`.
    pub deal_amount: String,
    pub currency: String,
    pub rate: String,
    pub amount: String,
    pub status: String,
    /// The `deal.closed.won` event that booked it.
    pub source_event_id: Uuid,
    /// When the deal was won.
    #[serde(with = "time::serde::rfc3339")]
    pub booked_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Commission {
    pub const COLUMNS: &str = "id, employee_id, plan_id, deal_id, deal_amount::text, currency, rate::text, \
                               amount::text, status, source_event_id, booked_at, created_at, updated_at";

    pub fn from_row(row: &Row) -> Self {
        Self {
            object: "commission",
            id: row.get(0),
            employee_id: row.get(1),
            plan_id: row.get(2),
            deal_id: row.get(3),
            deal_amount: row.get(4),
            currency: row.get(5),
            rate: row.get(6),
            amount: row.get(7),
            status: row.get(8),
            source_event_id: row.get(9),
            booked_at: row.get(10),
            created_at: row.get(11),
            updated_at: row.get(12),
        }
    }

    pub fn cursor(&self) -> Cursor {
        Cursor { created_at: self.created_at, id: self.id }
    }
}

/// The members of an employee body, each as sent.
pub struct EmployeeInput {
    pub name: Patch<String>,
    pub email: Patch<String>,
    pub title: Patch<String>,
    pub status: Patch<String>,
}

impl EmployeeInput {
    pub fn parse(body: JsonObject) -> Result<Self, ApiError> {
        let f = Fields::new(body, &["name", "email", "title", "status"])?;
        Ok(Self {
            name: f.text("name", 200)?,
            email: f.email("email")?,
            title: f.text("title", 200)?,
            status: f.one_of("status", EMPLOYEE_STATUSES)?,
        })
    }

    /// Columns that have a value in every row: a body may leave them out but may not send null.
    pub fn check_nulls(&self) -> Result<(), ApiError> {
        for (name, is_null) in [
            ("name", self.name == Patch::Null),
            ("email", self.email == Patch::Null),
            ("status", self.status == Patch::Null),
        ] {
            if is_null {
                return Err(ApiError::invalid_field("missing_field", name, format!("{name} cannot be null")));
            }
        }
        Ok(())
    }
}

/// A new commission plan: every member is required (plans are not edited; a new rate is a new plan).
pub struct PlanInput {
    pub employee_id: Uuid,
    /// Exact decimal text, 0 to 1 with at most four places.
    pub rate: String,
    pub effective_from: Date,
}

impl PlanInput {
    pub fn parse(body: JsonObject) -> Result<Self, ApiError> {
        let f = Fields::new(body, &["employee_id", "rate", "effective_from"])?;
        let employee_id = f.uuid("employee_id")?.required("employee_id")?;
        let rate = f.decimal("rate", 1, 4)?.required("rate")?;
        if !rate_at_most_one(&rate) {
            return Err(ApiError::invalid_field(
                "invalid_value",
                "rate",
                "rate must be between 0 and 1 (0.1 is 10 %)",
            ));
        }
        let effective_from = f.date("effective_from")?.required("effective_from")?;
        Ok(Self { employee_id, rate, effective_from })
    }
}

/// Whether a decimal already checked to be non-negative with one digit before the point is at most 1.
fn rate_at_most_one(rate: &str) -> bool {
    let (int, frac) = rate.split_once('.').unwrap_or((rate, ""));
    match int {
        "0" => true,
        "1" => frac.bytes().all(|b| b == b'0'),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_above_one_are_told_apart() {
        for ok in ["0", "1", "0.1", "0.9999", "1.0", "1.0000"] {
            assert!(rate_at_most_one(ok), "{ok}");
        }
        for bad in ["2", "1.0001", "1.5", "9.9"] {
            assert!(!rate_at_most_one(bad), "{bad}");
        }
    }
}

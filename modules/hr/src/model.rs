//! HR's wire types: what the API returns, and request bodies parsed into typed input.

use serde::Serialize;
use tessera_core::ApiError;
use tessera_core::input::{Cursor, Fields, JsonObject, Patch};
use tessera_core::openapi::ToSchema;
use time::{Date, OffsetDateTime};
use tokio_postgres::Row;
use uuid::Uuid;

pub const EMPLOYEE_STATUSES: &[&str] = &["active", "inactive"];
pub const COMMISSION_STATUSES: &[&str] = &["booked", "paid"];

#[derive(Debug, Serialize, ToSchema)]
pub struct Employee {
    /// Always `employee`.
    #[schema(value_type = String)]
    pub object: &'static str,
    pub id: Uuid,
    pub name: String,
    /// Unique within the tenant (case-insensitively); matched against a CRM deal's `owner_email`.
    pub email: String,
    pub title: Option<String>,
    /// An inactive employee keeps their history but earns no new commissions.
    #[schema(value_type = EmployeeStatus)]
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

#[derive(Debug, Serialize, ToSchema)]
pub struct CommissionPlan {
    /// Always `commission_plan`.
    #[schema(value_type = String)]
    pub object: &'static str,
    pub id: Uuid,
    pub employee_id: Uuid,
    /// A decimal string with four places ("0.1000"): 0.1 is 10 %.
    pub rate: String,
    /// The first day the plan is in force (until the employee's next plan takes effect).
    #[schema(value_type = String, format = Date)]
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

#[derive(Debug, Serialize, ToSchema)]
pub struct Commission {
    /// Always `commission`.
    #[schema(value_type = String)]
    pub object: &'static str,
    pub id: Uuid,
    pub employee_id: Uuid,
    /// The plan the rate came from; null once that plan has been deleted (the rate stays).
    pub plan_id: Option<Uuid>,
    pub deal_id: Uuid,
    /// Decimal strings, exact: the deal's amount when it was won, the rate then in force, and
    /// `round(deal_amount * rate, 2)`.
    pub deal_amount: String,
    /// The deal's ISO 4217 currency code; `amount` is in it too.
    pub currency: String,
    pub rate: String,
    pub amount: String,
    #[schema(value_type = CommissionStatus)]
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

// The request bodies, as the OpenAPI document describes them. `EmployeeInput::parse` and `PlanInput::parse`
// are what enforce them; the contract test (tests/api/contract.rs) sends bodies generated from these schemas
// and checks the two agree.

tessera_core::string_enum_schema!(
    /// An employee's status.
    EmployeeStatus = EMPLOYEE_STATUSES
);

tessera_core::string_enum_schema!(
    /// A commission's status.
    CommissionStatus = COMMISSION_STATUSES
);

/// A new employee. `status` defaults to `active`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewEmployee {
    /// 1 to 200 characters (trimmed).
    #[schema(max_length = 200, pattern = r"^[^\u0000]*\S[^\u0000]*$")]
    name: String,
    /// Unique within the tenant (case-insensitively); stored lowercased.
    #[schema(max_length = 254, format = Email)]
    email: String,
    /// 1 to 200 characters (trimmed).
    #[schema(max_length = 200, pattern = r"^[^\u0000]*\S[^\u0000]*$")]
    title: Option<String>,
    #[schema(required = false)]
    status: EmployeeStatus,
}

/// Changes to an employee: only the members sent change; `null` clears an optional member.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EmployeeChanges {
    #[schema(max_length = 200, pattern = r"^[^\u0000]*\S[^\u0000]*$", required = false)]
    name: String,
    /// Unique within the tenant (case-insensitively); stored lowercased.
    #[schema(max_length = 254, format = Email, required = false)]
    email: String,
    #[schema(max_length = 200, pattern = r"^[^\u0000]*\S[^\u0000]*$", required = false)]
    title: Option<String>,
    #[schema(required = false)]
    status: EmployeeStatus,
}

/// A commission rate: 0 to 1, up to four places.
fn rate() -> tessera_core::openapi::Schema {
    tessera_core::openapi::decimal_matching(
        r"^(0(\.[0-9]{1,4})?|1(\.0{1,4})?)$".to_owned(),
        false,
        tessera_core::openapi::Maximum::AtMost(1.0),
        "A rate from 0 to 1 with up to four places (0.1 is 10 %), as a string (exact) or a number".to_owned(),
    )
}

/// A new commission plan: every member is required. Plans are never edited; a new rate is a new plan.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewCommissionPlan {
    /// An existing employee of the tenant.
    employee_id: Uuid,
    /// From 0 to 1 with up to four places ("0.1" is 10 %).
    #[schema(schema_with = rate)]
    rate: String,
    /// The first day the plan is in force; at most one plan per employee and day.
    #[schema(value_type = String, format = Date)]
    effective_from: Date,
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

//! The CRM's wire types: what the API returns, and request bodies parsed into typed input.

use serde::Serialize;
use tessera_core::ApiError;
use tessera_core::input::{Cursor, Fields, JsonObject, Patch};
use time::{Date, OffsetDateTime};
use tokio_postgres::Row;
use uuid::Uuid;

pub const STAGES: &[&str] = &["lead", "qualified", "proposal", "negotiation", "won", "lost"];

#[derive(Debug, Serialize)]
pub struct Company {
    pub object: &'static str,
    pub id: Uuid,
    pub name: String,
    pub domain: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Company {
    pub const COLUMNS: &str = "id, name, domain, created_at, updated_at";

    pub fn from_row(row: &Row) -> Self {
        Self {
            object: "company",
            id: row.get(0),
            name: row.get(1),
            domain: row.get(2),
            created_at: row.get(3),
            updated_at: row.get(4),
        }
    }

    pub fn cursor(&self) -> Cursor {
        Cursor { created_at: self.created_at, id: self.id }
    }
}

#[derive(Debug, Serialize)]
pub struct Contact {
    pub object: &'static str,
    pub id: Uuid,
    pub company_id: Option<Uuid>,
    pub first_name: String,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Contact {
    pub const COLUMNS: &str = "id, company_id, first_name, last_name, email, phone, created_at, updated_at";

    pub fn from_row(row: &Row) -> Self {
        Self {
            object: "contact",
            id: row.get(0),
            company_id: row.get(1),
            first_name: row.get(2),
            last_name: row.get(3),
            email: row.get(4),
            phone: row.get(5),
            created_at: row.get(6),
            updated_at: row.get(7),
        }
    }

    pub fn cursor(&self) -> Cursor {
        Cursor { created_at: self.created_at, id: self.id }
    }
}

#[derive(Debug, Serialize)]
pub struct Deal {
    pub object: &'static str,
    pub id: Uuid,
    pub company_id: Option<Uuid>,
    pub contact_id: Option<Uuid>,
    pub title: String,
    pub stage: String,
    /// A decimal string ("12000.00"): exact, unlike a JSON number.
    pub amount: String,
    pub currency: String,
    pub owner_email: Option<String>,
    pub expected_close_date: Option<Date>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Deal {
    pub const COLUMNS: &str = "id, company_id, contact_id, title, stage, amount::text, currency, owner_email, \
                               expected_close_date, created_at, updated_at";

    pub fn from_row(row: &Row) -> Self {
        Self {
            object: "deal",
            id: row.get(0),
            company_id: row.get(1),
            contact_id: row.get(2),
            title: row.get(3),
            stage: row.get(4),
            amount: row.get(5),
            currency: row.get(6),
            owner_email: row.get(7),
            expected_close_date: row.get(8),
            created_at: row.get(9),
            updated_at: row.get(10),
        }
    }

    pub fn cursor(&self) -> Cursor {
        Cursor { created_at: self.created_at, id: self.id }
    }
}

/// The members of a company body, each as sent.
pub struct CompanyInput {
    pub name: Patch<String>,
    pub domain: Patch<String>,
}

impl CompanyInput {
    pub fn parse(body: JsonObject) -> Result<Self, ApiError> {
        let f = Fields::new(body, &["name", "domain"])?;
        let domain = match f.text("domain", 253)? {
            Patch::Value(d) => {
                let d = d.to_ascii_lowercase();
                let ok = d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                    && !d.starts_with(['.', '-'])
                    && !d.ends_with(['.', '-']);
                if !ok {
                    return Err(ApiError::invalid_field(
                        "invalid_value",
                        "domain",
                        "domain must be a host name",
                    ));
                }
                Patch::Value(d)
            }
            other => other,
        };
        Ok(Self { name: f.text("name", 200)?, domain })
    }
}

pub struct ContactInput {
    pub company_id: Patch<Uuid>,
    pub first_name: Patch<String>,
    pub last_name: Patch<String>,
    pub email: Patch<String>,
    pub phone: Patch<String>,
}

impl ContactInput {
    pub fn parse(body: JsonObject) -> Result<Self, ApiError> {
        let f = Fields::new(body, &["company_id", "first_name", "last_name", "email", "phone"])?;
        Ok(Self {
            company_id: f.uuid("company_id")?,
            first_name: f.text("first_name", 100)?,
            last_name: f.text("last_name", 100)?,
            email: f.email("email")?,
            phone: f.text("phone", 50)?,
        })
    }
}

pub struct DealInput {
    pub company_id: Patch<Uuid>,
    pub contact_id: Patch<Uuid>,
    pub title: Patch<String>,
    pub stage: Patch<String>,
    pub amount: Patch<String>,
    pub currency: Patch<String>,
    pub owner_email: Patch<String>,
    pub expected_close_date: Patch<Date>,
}

impl DealInput {
    pub fn parse(body: JsonObject) -> Result<Self, ApiError> {
        let f = Fields::new(
            body,
            &[
                "company_id",
                "contact_id",
                "title",
                "stage",
                "amount",
                "currency",
                "owner_email",
                "expected_close_date",
            ],
        )?;
        let currency = match f.text("currency", 3)? {
            Patch::Value(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) => Patch::Value(c),
            Patch::Value(_) => {
                return Err(ApiError::invalid_field(
                    "invalid_value",
                    "currency",
                    "currency must be an ISO 4217 code such as USD",
                ));
            }
            other => other,
        };
        Ok(Self {
            company_id: f.uuid("company_id")?,
            contact_id: f.uuid("contact_id")?,
            title: f.text("title", 200)?,
            stage: f.one_of("stage", STAGES)?,
            amount: f.decimal("amount", 16, 2)?,
            currency,
            owner_email: f.email("owner_email")?,
            expected_close_date: f.date("expected_close_date")?,
        })
    }
}

/// Columns that have a value in every row: a body may leave them out but may not send null.
fn refuse_nulls(fields: &[(&str, bool)]) -> Result<(), ApiError> {
    match fields.iter().find(|(_, is_null)| *is_null) {
        Some((name, _)) => {
            Err(ApiError::invalid_field("missing_field", name, format!("{name} cannot be null")))
        }
        None => Ok(()),
    }
}

impl CompanyInput {
    pub fn check_nulls(&self) -> Result<(), ApiError> {
        refuse_nulls(&[("name", self.name == Patch::Null)])
    }
}

impl ContactInput {
    pub fn check_nulls(&self) -> Result<(), ApiError> {
        refuse_nulls(&[("first_name", self.first_name == Patch::Null)])
    }
}

impl DealInput {
    pub fn check_nulls(&self) -> Result<(), ApiError> {
        refuse_nulls(&[
            ("title", self.title == Patch::Null),
            ("stage", self.stage == Patch::Null),
            ("amount", self.amount == Patch::Null),
            ("currency", self.currency == Patch::Null),
        ])
    }
}

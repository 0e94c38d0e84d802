//! The CRM's wire types: what the API returns, and request bodies parsed into typed input.

use serde::Serialize;
use tessera_core::ApiError;
use tessera_core::input::{Cursor, Fields, JsonObject, Patch};
use tessera_core::openapi::ToSchema;
use time::{Date, OffsetDateTime};
use tokio_postgres::Row;
use uuid::Uuid;

pub const STAGES: &[&str] = &["lead", "qualified", "proposal", "negotiation", "won", "lost"];

#[derive(Debug, Serialize, ToSchema)]
pub struct Company {
    /// Always `company`.
    #[schema(value_type = String)]
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

#[derive(Debug, Serialize, ToSchema)]
pub struct Contact {
    /// Always `contact`.
    #[schema(value_type = String)]
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

#[derive(Debug, Serialize, ToSchema)]
pub struct Deal {
    /// Always `deal`.
    #[schema(value_type = String)]
    pub object: &'static str,
    pub id: Uuid,
    pub company_id: Option<Uuid>,
    pub contact_id: Option<Uuid>,
    pub title: String,
    #[schema(value_type = DealStage)]
    pub stage: String,
    /// A decimal string ("12000.00"): exact, unlike a JSON number.
    pub amount: String,
    pub currency: String,
    pub owner_email: Option<String>,
    #[schema(value_type = Option<String>, format = Date)]
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

// The request bodies, as the OpenAPI document describes them. `*Input::parse` is what enforces them; the
// contract test (tests/api/contract.rs) sends bodies generated from these schemas and checks the two agree.

/// An amount of money: up to 16 digits before the point and 2 after.
fn money() -> tessera_core::openapi::Schema {
    tessera_core::openapi::decimal(16, 2)
}

tessera_core::string_enum_schema!(
    /// A deal's pipeline stage.
    DealStage = STAGES
);

/// A new company.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewCompany {
    /// The company's name, 1 to 200 characters (trimmed).
    #[schema(max_length = 200, pattern = r"^[^\u0000]*\S[^\u0000]*$")]
    name: String,
    /// Its web domain (a host name, stored lowercased); unique within the tenant.
    #[schema(max_length = 253, pattern = r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")]
    domain: Option<String>,
}

/// Changes to a company: only the members sent change; `null` clears an optional member.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CompanyChanges {
    #[schema(max_length = 200, pattern = r"^[^\u0000]*\S[^\u0000]*$", required = false)]
    name: String,
    #[schema(max_length = 253, pattern = r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$", required = false)]
    domain: Option<String>,
}

/// A new contact.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewContact {
    /// The company the contact works for.
    company_id: Option<uuid::Uuid>,
    #[schema(max_length = 100, pattern = r"^[^\u0000]*\S[^\u0000]*$")]
    first_name: String,
    #[schema(max_length = 100, pattern = r"^[^\u0000]*\S[^\u0000]*$")]
    last_name: Option<String>,
    /// Unique within the tenant; stored lowercased.
    #[schema(max_length = 254, format = Email)]
    email: Option<String>,
    #[schema(max_length = 50, pattern = r"^[^\u0000]*\S[^\u0000]*$")]
    phone: Option<String>,
}

/// Changes to a contact: only the members sent change; `null` clears an optional member.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ContactChanges {
    #[schema(required = false)]
    company_id: Option<uuid::Uuid>,
    #[schema(max_length = 100, pattern = r"^[^\u0000]*\S[^\u0000]*$", required = false)]
    first_name: String,
    #[schema(max_length = 100, pattern = r"^[^\u0000]*\S[^\u0000]*$", required = false)]
    last_name: Option<String>,
    #[schema(max_length = 254, format = Email, required = false)]
    email: Option<String>,
    #[schema(max_length = 50, pattern = r"^[^\u0000]*\S[^\u0000]*$", required = false)]
    phone: Option<String>,
}

/// A new deal. `stage` defaults to `lead`, `amount` to 0 and `currency` to `USD`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewDeal {
    company_id: Option<uuid::Uuid>,
    contact_id: Option<uuid::Uuid>,
    #[schema(max_length = 200, pattern = r"^[^\u0000]*\S[^\u0000]*$")]
    title: String,
    #[schema(required = false)]
    stage: DealStage,
    #[schema(schema_with = money, required = false)]
    amount: String,
    /// An ISO 4217 code.
    #[schema(pattern = "^[A-Z]{3}$", required = false)]
    currency: String,
    #[schema(max_length = 254, format = Email)]
    owner_email: Option<String>,
    #[schema(value_type = Option<String>, format = Date)]
    expected_close_date: Option<Date>,
}

/// Changes to a deal: only the members sent change; `null` clears an optional member.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DealChanges {
    #[schema(required = false)]
    company_id: Option<uuid::Uuid>,
    #[schema(required = false)]
    contact_id: Option<uuid::Uuid>,
    #[schema(max_length = 200, pattern = r"^[^\u0000]*\S[^\u0000]*$", required = false)]
    title: String,
    #[schema(required = false)]
    stage: DealStage,
    #[schema(schema_with = money, required = false)]
    amount: String,
    #[schema(pattern = "^[A-Z]{3}$", required = false)]
    currency: String,
    #[schema(max_length = 254, format = Email, required = false)]
    owner_email: Option<String>,
    #[schema(value_type = Option<String>, format = Date, required = false)]
    expected_close_date: Option<Date>,
}

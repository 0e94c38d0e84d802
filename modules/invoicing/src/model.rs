//! The invoicing module's wire types: what the API returns, and request bodies parsed into typed input.
//! Amounts travel as decimal strings ("1200.50"): exact, unlike JSON numbers; bodies may send them as
//! strings or numbers (the OpenAPI document describes both).

use serde::Serialize;
use serde_json::Value;
use tessera_core::ApiError;
use tessera_core::input::{Cursor, Fields, JsonObject, Patch};
use tessera_core::openapi::ToSchema;
use time::{Date, OffsetDateTime};
use tokio_postgres::Row;
use uuid::Uuid;

pub const STATUSES: &[&str] = &["draft", "issued", "paid", "void"];

/// The most lines a draft may be created with in one request (more can be added one by one).
pub const MAX_LINES_PER_REQUEST: usize = 100;

#[derive(Debug, Serialize, ToSchema)]
pub struct Customer {
    /// Always `customer`.
    #[schema(value_type = String)]
    pub object: &'static str,
    pub id: Uuid,
    pub name: String,
    /// Stored lowercased.
    pub email: Option<String>,
    /// The CRM company this customer mirrors, if any.
    pub crm_company_id: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Customer {
    pub const COLUMNS: &str = "id, name, email, crm_company_id, created_at, updated_at";

    pub fn from_row(row: &Row) -> Self {
        Self {
            object: "customer",
            id: row.get(0),
            name: row.get(1),
            email: row.get(2),
            crm_company_id: row.get(3),
            created_at: row.get(4),
            updated_at: row.get(5),
        }
    }

    pub fn cursor(&self) -> Cursor {
        Cursor { created_at: self.created_at, id: self.id }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Invoice {
    /// Always `invoice`.
    #[schema(value_type = String)]
    pub object: &'static str,
    pub id: Uuid,
    pub customer_id: Uuid,
    /// `draft`, `issued`, `paid` or `void`.
    #[schema(value_type = InvoiceStatus)]
    pub status: String,
    /// `INV-000001`…, assigned when issued.
    pub number: Option<String>,
    /// The customer's name as billed, fixed when issued.
    pub customer_name: Option<String>,
    /// An ISO 4217 code.
    pub currency: String,
    /// Set when issued, if the draft did not set it.
    #[schema(value_type = Option<String>, format = Date)]
    pub issue_date: Option<Date>,
    /// Set when issued (30 days after `issue_date`), if the draft did not set it.
    #[schema(value_type = Option<String>, format = Date)]
    pub due_date: Option<Date>,
    /// The sum of the lines' amounts, a decimal string ("1200.50").
    pub total: String,
    /// The sum of the payments recorded.
    pub amount_paid: String,
    /// What is left to pay (zero once paid or void).
    pub amount_due: String,
    pub memo: Option<String>,
    /// The CRM deal this invoice bills, if any.
    pub deal_id: Option<Uuid>,
    /// The event this invoice was drafted from (a won CRM deal), if any.
    pub source_event_id: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub issued_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub paid_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub voided_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// The lines, in the order they were added: present on a single invoice, left out of lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Vec<InvoiceLine>)]
    pub lines: Option<Vec<InvoiceLine>>,
}

impl Invoice {
    /// Over `invoicing.invoices i`: the payments are summed per invoice (lists hold at most 100).
    pub const COLUMNS: &str = "i.id, i.customer_id, i.status, i.number, i.customer_name, i.currency, \
        i.issue_date, i.due_date, i.total::text, paid.amount::text, \
        (case when i.status in ('paid', 'void') then 0 else i.total - paid.amount end)::numeric(18, 2)::text, \
        i.memo, i.deal_id, i.source_event_id, i.issued_at, i.paid_at, i.voided_at, i.created_at, i.updated_at";

    /// What [`Self::COLUMNS`] needs after `from invoicing.invoices i`.
    pub const PAID: &str = "cross join lateral (select coalesce(sum(p.amount), 0)::numeric(18, 2) as amount \
        from invoicing.payments p where p.tenant_id = i.tenant_id and p.invoice_id = i.id) paid";

    pub fn from_row(row: &Row) -> Self {
        Self {
            object: "invoice",
            id: row.get(0),
            customer_id: row.get(1),
            status: row.get(2),
            number: row.get(3),
            customer_name: row.get(4),
            currency: row.get(5),
            issue_date: row.get(6),
            due_date: row.get(7),
            total: row.get(8),
            amount_paid: row.get(9),
            amount_due: row.get(10),
            memo: row.get(11),
            deal_id: row.get(12),
            source_event_id: row.get(13),
            issued_at: row.get(14),
            paid_at: row.get(15),
            voided_at: row.get(16),
            created_at: row.get(17),
            updated_at: row.get(18),
            lines: None,
        }
    }

    pub fn cursor(&self) -> Cursor {
        Cursor { created_at: self.created_at, id: self.id }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InvoiceLine {
    /// Always `invoice_line`.
    #[schema(value_type = String)]
    pub object: &'static str,
    pub id: Uuid,
    pub invoice_id: Uuid,
    pub description: String,
    /// A decimal string without trailing zeros ("2", "1.5").
    pub quantity: String,
    /// A decimal string ("99.90").
    pub unit_price: String,
    /// quantity × unit_price, rounded to the cent (a decimal string).
    pub amount: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl InvoiceLine {
    pub const COLUMNS: &str =
        "id, invoice_id, description, trim_scale(quantity)::text, unit_price::text, amount::text, created_at";

    pub fn from_row(row: &Row) -> Self {
        Self {
            object: "invoice_line",
            id: row.get(0),
            invoice_id: row.get(1),
            description: row.get(2),
            quantity: row.get(3),
            unit_price: row.get(4),
            amount: row.get(5),
            created_at: row.get(6),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Payment {
    /// Always `payment`.
    #[schema(value_type = String)]
    pub object: &'static str,
    pub id: Uuid,
    pub invoice_id: Uuid,
    /// A decimal string ("1200.50"), above zero.
    pub amount: String,
    /// When the money was received (the time it was recorded, unless the body said otherwise).
    #[serde(with = "time::serde::rfc3339")]
    pub paid_at: OffsetDateTime,
    pub reference: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Payment {
    pub const COLUMNS: &str = "id, invoice_id, amount::text, paid_at, reference, created_at";

    pub fn from_row(row: &Row) -> Self {
        Self {
            object: "payment",
            id: row.get(0),
            invoice_id: row.get(1),
            amount: row.get(2),
            paid_at: row.get(3),
            reference: row.get(4),
            created_at: row.get(5),
        }
    }

    pub fn cursor(&self) -> Cursor {
        Cursor { created_at: self.created_at, id: self.id }
    }
}

/// The members of a customer body, each as sent.
pub struct CustomerInput {
    pub name: Patch<String>,
    pub email: Patch<String>,
    pub crm_company_id: Patch<Uuid>,
}

impl CustomerInput {
    pub fn parse(body: JsonObject) -> Result<Self, ApiError> {
        let f = Fields::new(body, &["name", "email", "crm_company_id"])?;
        Ok(Self {
            name: f.text("name", 200)?,
            email: f.email("email")?,
            crm_company_id: f.uuid("crm_company_id")?,
        })
    }

    pub fn check_nulls(&self) -> Result<(), ApiError> {
        refuse_nulls(&[("name", self.name == Patch::Null)])
    }
}

/// The members of an invoice body. Only drafts take them; `lines` only on create.
pub struct InvoiceInput {
    pub customer_id: Patch<Uuid>,
    pub currency: Patch<String>,
    pub issue_date: Patch<Date>,
    pub due_date: Patch<Date>,
    pub memo: Patch<String>,
    pub deal_id: Patch<Uuid>,
}

const INVOICE_FIELDS: &[&str] = &["customer_id", "currency", "issue_date", "due_date", "memo", "deal_id"];

impl InvoiceInput {
    /// A new draft, with the lines it starts with.
    pub fn parse_new(mut body: JsonObject) -> Result<(Self, Vec<LineInput>), ApiError> {
        let lines = body.0.remove("lines");
        let mut allowed = INVOICE_FIELDS.to_vec();
        allowed.push("lines");
        let input = Self::from_fields(&Fields::new(body, &allowed)?)?;
        input.check_nulls()?;
        let lines = match lines {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) if items.len() > MAX_LINES_PER_REQUEST => {
                return Err(ApiError::invalid_field(
                    "too_long",
                    "lines",
                    format!("lines may hold at most {MAX_LINES_PER_REQUEST} lines; add more one by one"),
                ));
            }
            Some(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    let field = format!("lines[{i}]");
                    match item {
                        Value::Object(map) => {
                            LineInput::parse(JsonObject(map)).map_err(|e| nested(e, &field))
                        }
                        _ => Err(ApiError::invalid_field(
                            "invalid_type",
                            &field,
                            format!("{field} must be an object with description, quantity and unit_price"),
                        )),
                    }
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(ApiError::invalid_field("invalid_type", "lines", "lines must be an array"));
            }
        };
        Ok((input, lines))
    }

    /// Changes to a draft.
    pub fn parse_patch(body: JsonObject) -> Result<Self, ApiError> {
        let input = Self::from_fields(&Fields::new(body, INVOICE_FIELDS)?)?;
        input.check_nulls()?;
        Ok(input)
    }

    fn from_fields(f: &Fields) -> Result<Self, ApiError> {
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
            customer_id: f.uuid("customer_id")?,
            currency,
            issue_date: f.date("issue_date")?,
            due_date: f.date("due_date")?,
            memo: f.text("memo", 2000)?,
            deal_id: f.uuid("deal_id")?,
        })
    }

    fn check_nulls(&self) -> Result<(), ApiError> {
        refuse_nulls(&[
            ("customer_id", self.customer_id == Patch::Null),
            ("currency", self.currency == Patch::Null),
        ])
    }
}

/// One line of a draft.
pub struct LineInput {
    pub description: String,
    /// Exact decimal text, above zero.
    pub quantity: String,
    pub unit_price: String,
}

impl LineInput {
    pub fn parse(body: JsonObject) -> Result<Self, ApiError> {
        let f = Fields::new(body, &["description", "quantity", "unit_price"])?;
        let description = f.text("description", 500)?.required("description")?;
        let quantity = f.decimal("quantity", 9, 3)?.not_null("quantity")?.unwrap_or_else(|| "1".to_owned());
        if is_zero(&quantity) {
            return Err(ApiError::invalid_field("invalid_value", "quantity", "quantity must be above zero"));
        }
        let unit_price = f.decimal("unit_price", 16, 2)?.required("unit_price")?;
        Ok(Self { description, quantity, unit_price })
    }
}

/// A payment received against an issued invoice.
pub struct PaymentInput {
    pub amount: String,
    pub paid_at: Option<OffsetDateTime>,
    pub reference: Option<String>,
}

impl PaymentInput {
    pub fn parse(body: JsonObject) -> Result<Self, ApiError> {
        // `paid_at` is taken out first: `Fields` has no timestamp type.
        let mut body = body;
        let paid_at = body.0.remove("paid_at");
        let f = Fields::new(body, &["amount", "paid_at", "reference"])?;
        let amount = f.decimal("amount", 16, 2)?.required("amount")?;
        if is_zero(&amount) {
            return Err(ApiError::invalid_field("invalid_value", "amount", "amount must be above zero"));
        }
        let paid_at = match paid_at {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(parse_timestamp(&s).ok_or_else(|| {
                ApiError::invalid_field(
                    "invalid_value",
                    "paid_at",
                    "paid_at must be an RFC 3339 timestamp such as 2027-01-31T12:00:00Z",
                )
            })?),
            Some(_) => {
                return Err(ApiError::invalid_field(
                    "invalid_type",
                    "paid_at",
                    "paid_at must be an RFC 3339 timestamp string",
                ));
            }
        };
        Ok(Self { amount, paid_at, reference: f.text("reference", 200)?.optional() })
    }
}

/// An RFC 3339 timestamp whose year is 1 to 9999 as written and in UTC (Postgres and clients agree on those;
/// `9999-12-31T23:00:00-02:00` is in year 10000 in UTC).
fn parse_timestamp(s: &str) -> Option<OffsetDateTime> {
    let in_range = |t: &OffsetDateTime| (1..=9999).contains(&t.year());
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .filter(in_range)
        .filter(|t| t.checked_to_offset(time::UtcOffset::UTC).as_ref().is_some_and(in_range))
}

/// Whether a decimal text that [`Fields::decimal`] accepted is zero ("0", "0.00").
fn is_zero(decimal: &str) -> bool {
    decimal.bytes().all(|b| b == b'0' || b == b'.')
}

/// An error about a member of a nested object, renamed to its path (`lines[2].unit_price`).
pub fn nested(err: ApiError, parent: &str) -> ApiError {
    let path = match err.field() {
        Some(field) => format!("{parent}.{field}"),
        None => parent.to_owned(),
    };
    err.with_field(path)
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

// The request bodies, as the OpenAPI document describes them. The parsers above are what enforce them; the
// contract test sends bodies generated from these schemas and checks the two agree.

/// An amount of money: up to 16 digits before the point and 2 after.
fn money() -> tessera_core::openapi::Schema {
    tessera_core::openapi::decimal(16, 2)
}

/// A line's quantity: above zero, up to 9 digits before the point and 3 after.
fn quantity() -> tessera_core::openapi::Schema {
    tessera_core::openapi::positive_decimal(9, 3)
}

/// A payment: above zero, up to 16 digits before the point and 2 after.
fn payment() -> tessera_core::openapi::Schema {
    tessera_core::openapi::positive_decimal(16, 2)
}

tessera_core::string_enum_schema!(
    /// An invoice's status: `draft → issued → paid`, `draft | issued → void`.
    InvoiceStatus = STATUSES
);

const _: () = assert!(MAX_LINES_PER_REQUEST == 100, "NewInvoice documents this limit");

/// A new customer.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewCustomer {
    /// The customer's name, 1 to 200 characters (trimmed).
    #[schema(max_length = 200, pattern = r"^[^\u0000]*\S[^\u0000]*$")]
    name: String,
    /// Stored lowercased.
    #[schema(max_length = 254, format = Email)]
    email: Option<String>,
    /// The CRM company this customer mirrors; at most one customer per company.
    crm_company_id: Option<uuid::Uuid>,
}

/// Changes to a customer: only the members sent change; `null` clears an optional member.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CustomerChanges {
    #[schema(max_length = 200, pattern = r"^[^\u0000]*\S[^\u0000]*$", required = false)]
    name: String,
    #[schema(max_length = 254, format = Email, required = false)]
    email: Option<String>,
    #[schema(required = false)]
    crm_company_id: Option<uuid::Uuid>,
}

/// A new draft invoice, with the lines it starts with (if any). `currency` defaults to `USD`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewInvoice {
    /// The customer billed.
    customer_id: uuid::Uuid,
    /// An ISO 4217 code.
    #[schema(pattern = "^[A-Z]{3}$", required = false)]
    currency: String,
    /// Left empty, it becomes the day of issue when the invoice is issued.
    #[schema(value_type = Option<String>, format = Date)]
    issue_date: Option<Date>,
    /// Not before `issue_date`. Left empty, it becomes 30 days after `issue_date` when the invoice is
    /// issued.
    #[schema(value_type = Option<String>, format = Date)]
    due_date: Option<Date>,
    #[schema(max_length = 2000, pattern = r"^[^\u0000]*\S[^\u0000]*$")]
    memo: Option<String>,
    /// The CRM deal this invoice bills.
    deal_id: Option<uuid::Uuid>,
    /// The draft's first lines, at most 100 (more can be added one by one). The lines' amounts and the
    /// invoice's total must each stay below 10^16.
    #[schema(max_items = 100)]
    lines: Option<Vec<NewInvoiceLine>>,
}

/// Changes to a draft: only the members sent change; `null` clears an optional member.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct InvoiceChanges {
    #[schema(required = false)]
    customer_id: uuid::Uuid,
    /// An ISO 4217 code.
    #[schema(pattern = "^[A-Z]{3}$", required = false)]
    currency: String,
    #[schema(value_type = Option<String>, format = Date, required = false)]
    issue_date: Option<Date>,
    /// Not before `issue_date`.
    #[schema(value_type = Option<String>, format = Date, required = false)]
    due_date: Option<Date>,
    #[schema(max_length = 2000, pattern = r"^[^\u0000]*\S[^\u0000]*$", required = false)]
    memo: Option<String>,
    #[schema(required = false)]
    deal_id: Option<uuid::Uuid>,
}

/// A line of a draft. Its amount (quantity × unit_price, rounded to the cent) and the invoice's total must
/// stay below 10^16.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewInvoiceLine {
    /// 1 to 500 characters (trimmed).
    #[schema(max_length = 500, pattern = r"^[^\u0000]*\S[^\u0000]*$")]
    description: String,
    /// Above zero, with up to 9 digits before the point and 3 after ("1.5"); defaults to 1.
    #[schema(schema_with = quantity, required = false)]
    quantity: String,
    /// Up to 16 digits before the point and 2 after ("99.90").
    #[schema(schema_with = money)]
    unit_price: String,
}

/// A payment received against an issued invoice.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewPayment {
    /// Above zero, with up to 16 digits before the point and 2 after ("1200.50"); at most what is left to
    /// pay on the invoice.
    #[schema(schema_with = payment)]
    amount: String,
    /// When the money was received, an RFC 3339 timestamp ("2027-01-31T12:00:00Z") in the years 1 to 9999
    /// (in UTC too); defaults to now.
    #[schema(value_type = Option<String>, format = DateTime)]
    paid_at: Option<OffsetDateTime>,
    /// 1 to 200 characters (trimmed), such as a bank transfer's reference.
    #[schema(max_length = 200, pattern = r"^[^\u0000]*\S[^\u0000]*$")]
    reference: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> JsonObject {
        match serde_json::from_str::<Value>(json).expect("test json") {
            Value::Object(map) => JsonObject(map),
            _ => panic!("test json must be an object"),
        }
    }

    #[test]
    fn nested_line_errors_name_their_path() {
        let err = InvoiceInput::parse_new(body(
            r#"{"customer_id":"0190a000-0000-7000-8000-000000000001","lines":[{"description":"a","unit_price":"1"},{"description":"b","unit_price":"x"}]}"#,
        ))
        .err()
        .expect("refused");
        assert_eq!((err.code(), err.field()), ("invalid_value", Some("lines[1].unit_price")));
        let err = InvoiceInput::parse_new(body(
            r#"{"customer_id":"0190a000-0000-7000-8000-000000000001","lines":[5]}"#,
        ))
        .err()
        .expect("refused");
        assert_eq!((err.code(), err.field()), ("invalid_type", Some("lines[0]")));
        let err = InvoiceInput::parse_new(body(
            r#"{"customer_id":"0190a000-0000-7000-8000-000000000001","lines":{}}"#,
        ))
        .err()
        .expect("refused");
        assert_eq!((err.code(), err.field()), ("invalid_type", Some("lines")));
    }

    #[test]
    fn zero_quantities_and_payments_are_refused() {
        let err = LineInput::parse(body(r#"{"description":"a","unit_price":"1","quantity":"0.000"}"#))
            .err()
            .expect("refused");
        assert_eq!((err.code(), err.field()), ("invalid_value", Some("quantity")));
        let line =
            LineInput::parse(body(r#"{"description":"a","unit_price":0}"#)).expect("free lines are fine");
        assert_eq!(line.quantity, "1");
        let err = PaymentInput::parse(body(r#"{"amount":"0.00"}"#)).err().expect("refused");
        assert_eq!((err.code(), err.field()), ("invalid_value", Some("amount")));
        let err =
            PaymentInput::parse(body(r#"{"amount":"1","paid_at":"yesterday"}"#)).err().expect("refused");
        assert_eq!((err.code(), err.field()), ("invalid_value", Some("paid_at")));
        let ok =
            PaymentInput::parse(body(r#"{"amount":"1","paid_at":"2027-01-31T12:00:00+01:00"}"#)).expect("ok");
        assert!(ok.paid_at.is_some());
    }
}

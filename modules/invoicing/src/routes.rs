//! `/v1/invoicing/…`: customers (list, get, create, partial update, delete), invoices (list, get with their
//! lines, create a draft with or without lines, change or delete a draft), a draft's lines, issuing and
//! voiding, and payments. Each handler parses its input strictly and runs store functions inside
//! `ModuleDb::read` or `ModuleDb::write`, which authenticate the key and bind its tenant in the same
//! transaction (see `tessera_core::db`). Writes check the key before they parse the body.
//!
//! Writes to an invoice first lock it and read its status, so they answer 404 or a clear 409 before
//! trying; the triggers in `sql/invoicing/V1__invoicing.sql` hold the same rules for every other writer,
//! and their refusals map to the same codes (see [`db_error`]):
//!
//! | problem | status | code |
//! |---|---|---|
//! | changing, deleting, issuing a non-draft, or changing its lines | 409 | `invoice_not_draft` |
//! | voiding a paid or void invoice; any other move off the lifecycle | 409 | `invalid_transition` |
//! | voiding an invoice that has payments | 409 | `invoice_has_payments` |
//! | issuing an invoice without lines or with a zero total | 422 | `invoice_empty` |
//! | paying an invoice that is not issued | 409 | `invoice_not_issued` |
//! | paying more than the balance | 422 | `payment_exceeds_balance` (field `amount`) |
//! | deleting a customer that has invoices | 409 | `still_referenced` |

use axum::Json;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tessera_core::ApiError;
use tessera_core::apikey::PresentedKey;
use tessera_core::db::{ModuleDb, TenantTx};
use tessera_core::input::{IdPath, JsonObject, Page, QueryParams};
use tessera_core::openapi::{ApiRouter, IdParam, PageParams, routes};
use tessera_core::problem::Constraint;
use uuid::Uuid;

use crate::model::{
    Customer, CustomerChanges, CustomerInput, Invoice, InvoiceChanges, InvoiceInput, InvoiceLine,
    InvoiceStatus, LineInput, NewCustomer, NewInvoice, NewInvoiceLine, NewPayment, Payment, PaymentInput,
    STATUSES, nested,
};
use crate::store::{self, InvoiceFilter, Window};

pub fn router(db: ModuleDb) -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(list_customers, create_customer))
        .routes(routes!(get_customer, update_customer, delete_customer))
        .routes(routes!(list_invoices, create_invoice))
        .routes(routes!(get_invoice, update_invoice, delete_invoice))
        .routes(routes!(add_line))
        .routes(routes!(delete_line))
        .routes(routes!(issue_invoice))
        .routes(routes!(void_invoice))
        .routes(routes!(list_payments, record_payment))
        .with_state(db)
}

/// Which request field each constraint guards, so a violation names the field and nothing else.
const CONSTRAINTS: &[Constraint] = &[
    Constraint::field("customers_name_length", "name"),
    Constraint::field("customers_email_format", "email"),
    Constraint::field("customers_crm_company_key", "crm_company_id"),
    Constraint::reference("invoices_customer_fk", "customer_id", "customer"),
    Constraint::field("invoices_currency_format", "currency"),
    Constraint::field("invoices_due_after_issue", "due_date"),
    // Only a due date computed on issue can pass 9999: every date a body sends is at most 9999-12-31.
    Constraint::field("invoices_dates_in_range", "due_date"),
    Constraint::field("invoices_memo_length", "memo"),
    Constraint::field("invoice_lines_description_length", "description"),
    Constraint::field("invoice_lines_quantity_positive", "quantity"),
    Constraint::field("invoice_lines_unit_price_nonnegative", "unit_price"),
    Constraint::field("payments_amount_positive", "amount"),
    Constraint::field("payments_reference_length", "reference"),
];

/// Deleting a customer that invoices still refer to.
const DELETE_CUSTOMER_CONSTRAINTS: &[Constraint] =
    &[Constraint::referenced_by("invoices_customer_fk", "invoices.customer_id")];

/// The lifecycle rules the database enforces, by the constraint name its triggers raise with.
fn lifecycle_error(constraint: &str) -> Option<ApiError> {
    let error = match constraint {
        "invoice_not_draft" => not_draft(),
        "invoice_invalid_transition" => ApiError::new(
            StatusCode::CONFLICT,
            "invalid_transition",
            "an invoice goes from draft to issued to paid, or from draft or issued to void",
        ),
        "invoice_has_payments" => ApiError::new(
            StatusCode::CONFLICT,
            "invoice_has_payments",
            "the invoice has payments and cannot be voided",
        ),
        "invoice_empty" => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invoice_empty",
            "an invoice needs at least one line and a total above zero to be issued",
        ),
        "invoice_not_issued" => not_issued(),
        "payments_within_balance" => ApiError::invalid_field(
            "payment_exceeds_balance",
            "amount",
            "amount exceeds what is left to pay on the invoice",
        ),
        "invoice_lines_amount_range" => ApiError::invalid_field(
            "invalid_value",
            "unit_price",
            "quantity times unit_price exceeds the largest amount an invoice can hold",
        ),
        "invoices_total_range" => ApiError::invalid_field(
            "invalid_value",
            "unit_price",
            "with this line the invoice total would exceed the largest amount an invoice can hold",
        ),
        _ => return None,
    };
    Some(error)
}

fn db_error(err: tokio_postgres::Error) -> ApiError {
    if let Some(error) = err.as_db_error().and_then(|db| db.constraint()).and_then(lifecycle_error) {
        return error;
    }
    ApiError::from_db(err, CONSTRAINTS)
}

fn not_draft() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "invoice_not_draft",
        "only draft invoices can be changed; this one has been issued, paid or voided",
    )
}

fn not_issued() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "invoice_not_issued",
        "payments can be recorded only against an issued invoice",
    )
}

fn created<T: Serialize>(location: Option<String>, body: T) -> Response {
    match location {
        Some(location) => tessera_core::input::created(&location, body),
        None => (StatusCode::CREATED, Json(body)).into_response(),
    }
}

/// Locks the invoice and requires it to be a draft: 404 when there is none, 409 when it is not a draft.
async fn lock_draft(tx: &TenantTx, id: Uuid) -> Result<(), ApiError> {
    match store::lock_invoice(tx, id).await.map_err(db_error)? {
        None => Err(ApiError::not_found("invoice")),
        Some(status) if status == "draft" => Ok(()),
        Some(_) => Err(not_draft()),
    }
}

async fn invoice_or_404(tx: &TenantTx, id: Uuid) -> Result<Invoice, ApiError> {
    store::get_invoice(tx, id).await.map_err(db_error)?.ok_or_else(|| ApiError::not_found("invoice"))
}

/// `/invoices/{id}/lines/{line_id}`: two UUIDs, or 400 `invalid_parameter` naming the one that is not.
struct LinePath {
    invoice: Uuid,
    line: Uuid,
}

impl<S: Send + Sync> FromRequestParts<S> for LinePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path((invoice, line)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid_parameter("id", "id and line_id must be UUIDs"))?;
        let invoice =
            Uuid::parse_str(&invoice).map_err(|_| ApiError::invalid_parameter("id", "id must be a UUID"))?;
        let line = Uuid::parse_str(&line)
            .map_err(|_| ApiError::invalid_parameter("line_id", "line_id must be a UUID"))?;
        Ok(Self { invoice, line })
    }
}

// Customers

/// Lists customers, oldest first.
#[utoipa::path(get, path = "/customers", tag = "invoicing", params(PageParams,
        ("crm_company_id" = Option<uuid::Uuid>, Query,
            description = "Only the customer mirroring this CRM company")),
    responses((status = 200, description = "A page of customers", body = Page<Customer>)))]
async fn list_customers(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    RawQuery(query): RawQuery,
) -> Result<Json<Page<Customer>>, ApiError> {
    let mut q = QueryParams::parse(query.as_deref())?;
    let crm_company_id = q.uuid("crm_company_id")?;
    let window = Window { limit: q.limit()?, after: q.cursor()? };
    q.finish()?;
    let items = db
        .read(&key, async |tx| store::list_customers(tx, crm_company_id, &window).await.map_err(db_error))
        .await?;
    Ok(Json(Page::from_items(items, window.limit, Customer::cursor)))
}

/// Gets a customer.
#[utoipa::path(get, path = "/customers/{id}", tag = "invoicing", params(IdParam),
    responses((status = 200, description = "The customer", body = Customer)))]
async fn get_customer(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
) -> Result<Json<Customer>, ApiError> {
    let customer = store::get_customer(&db, &key, id).await?;
    Ok(Json(customer.ok_or_else(|| ApiError::not_found("customer"))?))
}

/// Creates a customer.
#[utoipa::path(post, path = "/customers", tag = "invoicing", request_body = NewCustomer,
    responses((status = 201, description = "The new customer", body = Customer,
        headers(("Location" = String, description = "The new customer's URL")))))]
async fn create_customer(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let customer = db
        .write(&key, async |tx| {
            let input = CustomerInput::parse(body)?;
            let name = input.name.clone().required("name")?;
            store::insert_customer(tx, &name, &input).await.map_err(db_error)
        })
        .await?;
    Ok(created(Some(format!("/v1/invoicing/customers/{}", customer.id)), customer))
}

/// Changes a customer's members that the body names.
#[utoipa::path(patch, path = "/customers/{id}", tag = "invoicing", params(IdParam),
    request_body = CustomerChanges,
    responses((status = 200, description = "The changed customer", body = Customer)))]
async fn update_customer(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
    body: JsonObject,
) -> Result<Json<Customer>, ApiError> {
    let customer = db
        .write(&key, async |tx| {
            let input = CustomerInput::parse(body)?;
            input.check_nulls()?;
            store::update_customer(tx, id, &input)
                .await
                .map_err(db_error)?
                .ok_or_else(|| ApiError::not_found("customer"))
        })
        .await?;
    Ok(Json(customer))
}

/// Deletes a customer that no invoice bills.
#[utoipa::path(delete, path = "/customers/{id}", tag = "invoicing", params(IdParam),
    responses((status = 204, description = "Deleted")))]
async fn delete_customer(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
) -> Result<StatusCode, ApiError> {
    db.write(&key, async |tx| {
        let deleted = store::delete_customer(tx, id)
            .await
            .map_err(|e| ApiError::from_db(e, DELETE_CUSTOMER_CONSTRAINTS))?;
        if deleted { Ok(StatusCode::NO_CONTENT) } else { Err(ApiError::not_found("customer")) }
    })
    .await
}

// Invoices

/// Lists invoices, oldest first, without their lines.
#[utoipa::path(get, path = "/invoices", tag = "invoicing", params(PageParams,
        ("status" = Option<InvoiceStatus>, Query, description = "Only invoices in this status"),
        ("customer_id" = Option<uuid::Uuid>, Query, description = "Only invoices billing this customer"),
        ("deal_id" = Option<uuid::Uuid>, Query, description = "Only invoices billing this CRM deal")),
    responses((status = 200, description = "A page of invoices (without `lines`)", body = Page<Invoice>)))]
async fn list_invoices(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    RawQuery(query): RawQuery,
) -> Result<Json<Page<Invoice>>, ApiError> {
    let mut q = QueryParams::parse(query.as_deref())?;
    let filter = InvoiceFilter {
        status: q.one_of("status", STATUSES)?,
        customer_id: q.uuid("customer_id")?,
        deal_id: q.uuid("deal_id")?,
    };
    let window = Window { limit: q.limit()?, after: q.cursor()? };
    q.finish()?;
    let items =
        db.read(&key, async |tx| store::list_invoices(tx, &filter, &window).await.map_err(db_error)).await?;
    Ok(Json(Page::from_items(items, window.limit, Invoice::cursor)))
}

/// Gets an invoice with its lines.
#[utoipa::path(get, path = "/invoices/{id}", tag = "invoicing", params(IdParam),
    responses((status = 200, description = "The invoice, with its lines", body = Invoice)))]
async fn get_invoice(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
) -> Result<Json<Invoice>, ApiError> {
    Ok(Json(db.read(&key, async |tx| invoice_or_404(tx, id).await).await?))
}

/// Creates a draft invoice, with or without lines.
#[utoipa::path(post, path = "/invoices", tag = "invoicing", request_body = NewInvoice,
    responses((status = 201, description = "The new draft, with its lines", body = Invoice,
        headers(("Location" = String, description = "The new invoice's URL")))))]
async fn create_invoice(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let invoice = db
        .write(&key, async |tx| {
            let (input, lines) = InvoiceInput::parse_new(body)?;
            let customer_id = input.customer_id.clone().required("customer_id")?;
            let id = store::insert_invoice(tx, customer_id, &input).await.map_err(db_error)?;
            for (i, line) in lines.iter().enumerate() {
                store::insert_line(tx, id, line)
                    .await
                    .map_err(|e| nested(db_error(e), &format!("lines[{i}]")))?;
            }
            invoice_or_404(tx, id).await
        })
        .await?;
    Ok(created(Some(format!("/v1/invoicing/invoices/{}", invoice.id)), invoice))
}

/// Changes a draft's members that the body names.
#[utoipa::path(patch, path = "/invoices/{id}", tag = "invoicing", params(IdParam),
    request_body = InvoiceChanges,
    responses((status = 200, description = "The changed draft, with its lines", body = Invoice)))]
async fn update_invoice(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
    body: JsonObject,
) -> Result<Json<Invoice>, ApiError> {
    let invoice = db
        .write(&key, async |tx| {
            let input = InvoiceInput::parse_patch(body)?;
            lock_draft(tx, id).await?;
            store::update_invoice(tx, id, &input).await.map_err(db_error)?;
            invoice_or_404(tx, id).await
        })
        .await?;
    Ok(Json(invoice))
}

/// Deletes a draft.
#[utoipa::path(delete, path = "/invoices/{id}", tag = "invoicing", params(IdParam),
    responses((status = 204, description = "Deleted")))]
async fn delete_invoice(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
) -> Result<StatusCode, ApiError> {
    db.write(&key, async |tx| {
        lock_draft(tx, id).await?;
        store::delete_invoice(tx, id).await.map_err(db_error)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// Adds a line to a draft.
#[utoipa::path(post, path = "/invoices/{id}/lines", tag = "invoicing", params(IdParam),
    request_body = NewInvoiceLine,
    responses((status = 201, description = "The new line", body = InvoiceLine)))]
async fn add_line(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let line = db
        .write(&key, async |tx| {
            let line = LineInput::parse(body)?;
            lock_draft(tx, id).await?;
            store::insert_line(tx, id, &line).await.map_err(db_error)
        })
        .await?;
    Ok(created(None, line))
}

/// Removes a line from a draft.
#[utoipa::path(delete, path = "/invoices/{id}/lines/{line_id}", tag = "invoicing",
    params(("id" = uuid::Uuid, Path, description = "The invoice's id"),
        ("line_id" = uuid::Uuid, Path, description = "The line's id")),
    responses((status = 204, description = "Deleted")))]
async fn delete_line(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    path: LinePath,
) -> Result<StatusCode, ApiError> {
    db.write(&key, async |tx| {
        lock_draft(tx, path.invoice).await?;
        let deleted = store::delete_line(tx, path.invoice, path.line).await.map_err(db_error)?;
        if deleted { Ok(StatusCode::NO_CONTENT) } else { Err(ApiError::not_found("invoice line")) }
    })
    .await
}

/// Issues a draft: the database numbers it, dates it and freezes it.
#[utoipa::path(post, path = "/invoices/{id}/issue", tag = "invoicing", params(IdParam),
    responses((status = 200, description = "The issued invoice, with its lines", body = Invoice)))]
async fn issue_invoice(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
) -> Result<Json<Invoice>, ApiError> {
    let invoice = db
        .write(&key, async |tx| {
            lock_draft(tx, id).await?;
            store::set_status(tx, id, "issued").await.map_err(db_error)?;
            invoice_or_404(tx, id).await
        })
        .await?;
    Ok(Json(invoice))
}

/// Voids a draft, or an issued invoice that has no payments.
#[utoipa::path(post, path = "/invoices/{id}/void", tag = "invoicing", params(IdParam),
    responses((status = 200, description = "The voided invoice, with its lines", body = Invoice)))]
async fn void_invoice(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
) -> Result<Json<Invoice>, ApiError> {
    let invoice = db
        .write(&key, async |tx| {
            match store::lock_invoice(tx, id).await.map_err(db_error)?.as_deref() {
                None => return Err(ApiError::not_found("invoice")),
                Some("draft" | "issued") => {}
                Some(status) => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "invalid_transition",
                        format!("a {status} invoice cannot be voided"),
                    ));
                }
            }
            store::set_status(tx, id, "void").await.map_err(db_error)?;
            invoice_or_404(tx, id).await
        })
        .await?;
    Ok(Json(invoice))
}

// Payments

/// Lists an invoice's payments, oldest first.
#[utoipa::path(get, path = "/invoices/{id}/payments", tag = "invoicing", params(IdParam, PageParams),
    responses((status = 200, description = "A page of the invoice's payments", body = Page<Payment>)))]
async fn list_payments(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
    RawQuery(query): RawQuery,
) -> Result<Json<Page<Payment>>, ApiError> {
    let mut q = QueryParams::parse(query.as_deref())?;
    let window = Window { limit: q.limit()?, after: q.cursor()? };
    q.finish()?;
    let items = db
        .read(&key, async |tx| {
            if !store::invoice_exists(tx, id).await.map_err(db_error)? {
                return Err(ApiError::not_found("invoice"));
            }
            store::list_payments(tx, id, &window).await.map_err(db_error)
        })
        .await?;
    Ok(Json(Page::from_items(items, window.limit, Payment::cursor)))
}

/// Records a payment; the one that completes the total marks the invoice paid in the same transaction.
#[utoipa::path(post, path = "/invoices/{id}/payments", tag = "invoicing", params(IdParam),
    request_body = NewPayment,
    responses((status = 201, description = "The recorded payment", body = Payment)))]
async fn record_payment(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let payment = db
        .write(&key, async |tx| {
            let input = PaymentInput::parse(body)?;
            match store::lock_invoice(tx, id).await.map_err(db_error)?.as_deref() {
                None => return Err(ApiError::not_found("invoice")),
                Some("issued") => {}
                Some(_) => return Err(not_issued()),
            }
            store::insert_payment(tx, id, &input).await.map_err(db_error)
        })
        .await?;
    Ok(created(None, payment))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lifecycle_constraint_has_a_stable_code() {
        for (name, status, code) in [
            ("invoice_not_draft", 409, "invoice_not_draft"),
            ("invoice_invalid_transition", 409, "invalid_transition"),
            ("invoice_has_payments", 409, "invoice_has_payments"),
            ("invoice_empty", 422, "invoice_empty"),
            ("invoice_not_issued", 409, "invoice_not_issued"),
            ("payments_within_balance", 422, "payment_exceeds_balance"),
            ("invoice_lines_amount_range", 422, "invalid_value"),
            ("invoices_total_range", 422, "invalid_value"),
        ] {
            let e = lifecycle_error(name).expect(name);
            assert_eq!((e.status().as_u16(), e.code()), (status, code), "{name}");
        }
        assert!(lifecycle_error("customers_name_length").is_none());
    }
}

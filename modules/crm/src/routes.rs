//! `/v1/crm/…`: list (cursor pagination and filters), get, create, partial update and delete for companies,
//! contacts and deals. Each handler parses its input strictly and runs one store function inside
//! `ModuleDb::read` or `ModuleDb::write`, which authenticate the key and bind its tenant in the same
//! transaction (see `tessera_core::db`). Writes check the key before they parse the body.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use tessera_core::ApiError;
use tessera_core::apikey::PresentedKey;
use tessera_core::db::ModuleDb;
use tessera_core::input::{IdPath, JsonObject, Page, QueryParams};
use tessera_core::openapi::{ApiRouter, IdParam, PageParams, routes};
use tessera_core::problem::Constraint;
use uuid::Uuid;

use crate::model::{
    Company, CompanyChanges, CompanyInput, Contact, ContactChanges, ContactInput, Deal, DealChanges,
    DealInput, DealStage, NewCompany, NewContact, NewDeal, STAGES,
};
use crate::store::{self, DealFilter, Window};

pub fn router(db: ModuleDb) -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(list_companies, create_company))
        .routes(routes!(get_company, update_company, delete_company))
        .routes(routes!(list_contacts, create_contact))
        .routes(routes!(get_contact, update_contact, delete_contact))
        .routes(routes!(list_deals, create_deal))
        .routes(routes!(get_deal, update_deal, delete_deal))
        .with_state(db)
}

/// Which request field each constraint guards, so a violation names the field and nothing else.
const CONSTRAINTS: &[Constraint] = &[
    Constraint::field("companies_domain_key", "domain"),
    Constraint::field("companies_name_length", "name"),
    Constraint::field("companies_domain_format", "domain"),
    Constraint::field("contacts_email_key", "email"),
    Constraint::field("contacts_email_format", "email"),
    Constraint::field("contacts_first_name_length", "first_name"),
    Constraint::field("contacts_last_name_length", "last_name"),
    Constraint::field("contacts_phone_length", "phone"),
    Constraint::reference("contacts_company_fk", "company_id", "company"),
    Constraint::reference("deals_company_fk", "company_id", "company"),
    Constraint::reference("deals_contact_fk", "contact_id", "contact"),
    Constraint::field("deals_title_length", "title"),
    Constraint::field("deals_stage_valid", "stage"),
    Constraint::field("deals_amount_nonnegative", "amount"),
    Constraint::field("deals_currency_format", "currency"),
    Constraint::field("deals_owner_email_format", "owner_email"),
];

/// Deleting a company that deals still refer to.
const DELETE_COMPANY_CONSTRAINTS: &[Constraint] =
    &[Constraint::referenced_by("deals_company_fk", "deals.company_id")];

fn db_error(err: tokio_postgres::Error) -> ApiError {
    ApiError::from_db(err, CONSTRAINTS)
}

fn created<T: Serialize>(collection: &str, id: Uuid, body: T) -> Response {
    tessera_core::input::created(&format!("/v1/crm/{collection}/{id}"), body)
}

// Companies

/// Lists companies, oldest first.
#[utoipa::path(get, path = "/companies", tag = "crm", params(PageParams,
        ("domain" = Option<String>, Query, min_length = 1, max_length = 253, pattern = r"^[^\u0000]*$",
            description = "Only the company with this domain")),
    responses((status = 200, description = "A page of companies", body = Page<Company>)))]
async fn list_companies(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    RawQuery(query): RawQuery,
) -> Result<Json<Page<Company>>, ApiError> {
    let mut q = QueryParams::parse(query.as_deref())?;
    let domain = q.text("domain", 253)?;
    let window = Window { limit: q.limit()?, after: q.cursor()? };
    q.finish()?;
    let items = db
        .read(&key, async |tx| store::list_companies(tx, domain.as_deref(), &window).await.map_err(db_error))
        .await?;
    Ok(Json(Page::from_items(items, window.limit, Company::cursor)))
}

/// Gets a company.
#[utoipa::path(get, path = "/companies/{id}", tag = "crm", params(IdParam),
    responses((status = 200, description = "The company", body = Company)))]
async fn get_company(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
) -> Result<Json<Company>, ApiError> {
    let company = store::get_company(&db, &key, id).await?;
    Ok(Json(company.ok_or_else(|| ApiError::not_found("company"))?))
}

/// Creates a company.
#[utoipa::path(post, path = "/companies", tag = "crm", request_body = NewCompany,
    responses((status = 201, description = "The new company", body = Company,
        headers(("Location" = String, description = "The new company's URL")))))]
async fn create_company(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let company = db
        .write(&key, async |tx| {
            let input = CompanyInput::parse(body)?;
            let name = input.name.clone().required("name")?;
            store::insert_company(tx, &name, &input).await.map_err(db_error)
        })
        .await?;
    Ok(created("companies", company.id, company))
}

/// Changes a company's members that the body names.
#[utoipa::path(patch, path = "/companies/{id}", tag = "crm", params(IdParam), request_body = CompanyChanges,
    responses((status = 200, description = "The changed company", body = Company)))]
async fn update_company(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
    body: JsonObject,
) -> Result<Json<Company>, ApiError> {
    let company = db
        .write(&key, async |tx| {
            let input = CompanyInput::parse(body)?;
            input.check_nulls()?;
            store::update_company(tx, id, &input)
                .await
                .map_err(db_error)?
                .ok_or_else(|| ApiError::not_found("company"))
        })
        .await?;
    Ok(Json(company))
}

/// Deletes a company.
#[utoipa::path(delete, path = "/companies/{id}", tag = "crm", params(IdParam),
    responses((status = 204, description = "Deleted")))]
async fn delete_company(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
) -> Result<StatusCode, ApiError> {
    db.write(&key, async |tx| {
        let deleted = store::delete_company(tx, id)
            .await
            .map_err(|e| ApiError::from_db(e, DELETE_COMPANY_CONSTRAINTS))?;
        if deleted { Ok(StatusCode::NO_CONTENT) } else { Err(ApiError::not_found("company")) }
    })
    .await
}

// Contacts

/// Lists contacts, oldest first.
#[utoipa::path(get, path = "/contacts", tag = "crm", params(PageParams,
        ("company_id" = Option<uuid::Uuid>, Query, description = "Only contacts of this company"),
        ("email" = Option<String>, Query, min_length = 1, max_length = 254, pattern = r"^[^\u0000]*$",
            description = "Only the contact with this e-mail address")),
    responses((status = 200, description = "A page of contacts", body = Page<Contact>)))]
async fn list_contacts(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    RawQuery(query): RawQuery,
) -> Result<Json<Page<Contact>>, ApiError> {
    let mut q = QueryParams::parse(query.as_deref())?;
    let company_id = q.uuid("company_id")?;
    // Lowercased here: the cluster's C locale folds only ASCII in lower().
    let email = q.text("email", 254)?.map(|e| e.to_lowercase());
    let window = Window { limit: q.limit()?, after: q.cursor()? };
    q.finish()?;
    let items = db
        .read(&key, async |tx| {
            store::list_contacts(tx, company_id, email.as_deref(), &window).await.map_err(db_error)
        })
        .await?;
    Ok(Json(Page::from_items(items, window.limit, Contact::cursor)))
}

/// Gets a contact.
#[utoipa::path(get, path = "/contacts/{id}", tag = "crm", params(IdParam),
    responses((status = 200, description = "The contact", body = Contact)))]
async fn get_contact(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
) -> Result<Json<Contact>, ApiError> {
    let contact = store::get_contact(&db, &key, id).await?;
    Ok(Json(contact.ok_or_else(|| ApiError::not_found("contact"))?))
}

/// Creates a contact.
#[utoipa::path(post, path = "/contacts", tag = "crm", request_body = NewContact,
    responses((status = 201, description = "The new contact", body = Contact,
        headers(("Location" = String, description = "The new contact's URL")))))]
async fn create_contact(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let contact = db
        .write(&key, async |tx| {
            let input = ContactInput::parse(body)?;
            let first_name = input.first_name.clone().required("first_name")?;
            store::insert_contact(tx, &first_name, &input).await.map_err(db_error)
        })
        .await?;
    Ok(created("contacts", contact.id, contact))
}

/// Changes a contact's members that the body names.
#[utoipa::path(patch, path = "/contacts/{id}", tag = "crm", params(IdParam), request_body = ContactChanges,
    responses((status = 200, description = "The changed contact", body = Contact)))]
async fn update_contact(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
    body: JsonObject,
) -> Result<Json<Contact>, ApiError> {
    let contact = db
        .write(&key, async |tx| {
            let input = ContactInput::parse(body)?;
            input.check_nulls()?;
            store::update_contact(tx, id, &input)
                .await
                .map_err(db_error)?
                .ok_or_else(|| ApiError::not_found("contact"))
        })
        .await?;
    Ok(Json(contact))
}

/// Deletes a contact.
#[utoipa::path(delete, path = "/contacts/{id}", tag = "crm", params(IdParam),
    responses((status = 204, description = "Deleted")))]
async fn delete_contact(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
) -> Result<StatusCode, ApiError> {
    db.write(&key, async |tx| {
        let deleted = store::delete_contact(tx, id).await.map_err(db_error)?;
        if deleted { Ok(StatusCode::NO_CONTENT) } else { Err(ApiError::not_found("contact")) }
    })
    .await
}

// Deals

/// Lists deals, oldest first.
#[utoipa::path(get, path = "/deals", tag = "crm", params(PageParams,
        ("stage" = Option<DealStage>, Query, description = "Only deals in this stage"),
        ("company_id" = Option<uuid::Uuid>, Query, description = "Only deals with this company"),
        ("owner_email" = Option<String>, Query, min_length = 1, max_length = 254,
            pattern = r"^[^\u0000]*$", description = "Only deals this person owns")),
    responses((status = 200, description = "A page of deals", body = Page<Deal>)))]
async fn list_deals(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    RawQuery(query): RawQuery,
) -> Result<Json<Page<Deal>>, ApiError> {
    let mut q = QueryParams::parse(query.as_deref())?;
    let filter = DealFilter {
        stage: q.one_of("stage", STAGES)?,
        company_id: q.uuid("company_id")?,
        owner_email: q.text("owner_email", 254)?.map(|e| e.to_lowercase()),
    };
    let window = Window { limit: q.limit()?, after: q.cursor()? };
    q.finish()?;
    let items =
        db.read(&key, async |tx| store::list_deals(tx, &filter, &window).await.map_err(db_error)).await?;
    Ok(Json(Page::from_items(items, window.limit, Deal::cursor)))
}

/// Gets a deal.
#[utoipa::path(get, path = "/deals/{id}", tag = "crm", params(IdParam),
    responses((status = 200, description = "The deal", body = Deal)))]
async fn get_deal(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
) -> Result<Json<Deal>, ApiError> {
    let deal = store::get_deal(&db, &key, id).await?;
    Ok(Json(deal.ok_or_else(|| ApiError::not_found("deal"))?))
}

/// Creates a deal.
#[utoipa::path(post, path = "/deals", tag = "crm", request_body = NewDeal,
    responses((status = 201, description = "The new deal", body = Deal,
        headers(("Location" = String, description = "The new deal's URL")))))]
async fn create_deal(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let deal = db
        .write(&key, async |tx| {
            let input = DealInput::parse(body)?;
            let title = input.title.clone().required("title")?;
            input.check_nulls()?;
            store::insert_deal(tx, &title, &input).await.map_err(db_error)
        })
        .await?;
    Ok(created("deals", deal.id, deal))
}

/// Changes a deal's members that the body names.
#[utoipa::path(patch, path = "/deals/{id}", tag = "crm", params(IdParam), request_body = DealChanges,
    responses((status = 200, description = "The changed deal", body = Deal)))]
async fn update_deal(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
    body: JsonObject,
) -> Result<Json<Deal>, ApiError> {
    let deal = db
        .write(&key, async |tx| {
            let input = DealInput::parse(body)?;
            input.check_nulls()?;
            store::update_deal(tx, id, &input)
                .await
                .map_err(db_error)?
                .ok_or_else(|| ApiError::not_found("deal"))
        })
        .await?;
    Ok(Json(deal))
}

/// Deletes a deal.
#[utoipa::path(delete, path = "/deals/{id}", tag = "crm", params(IdParam),
    responses((status = 204, description = "Deleted")))]
async fn delete_deal(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
) -> Result<StatusCode, ApiError> {
    db.write(&key, async |tx| {
        let deleted = store::delete_deal(tx, id).await.map_err(db_error)?;
        if deleted { Ok(StatusCode::NO_CONTENT) } else { Err(ApiError::not_found("deal")) }
    })
    .await
}

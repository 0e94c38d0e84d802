//! `/v1/crm/…`: list (cursor pagination and filters), get, create, partial update and delete for companies,
//! contacts and deals. Each handler parses its input strictly and runs one store function inside
//! `ModuleDb::read` or `ModuleDb::write`, which authenticate the key and bind its tenant in the same
//! transaction (see `tessera_core::db`). Writes check the key before they parse the body.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde::Serialize;
use tessera_core::ApiError;
use tessera_core::apikey::PresentedKey;
use tessera_core::db::ModuleDb;
use tessera_core::input::{IdPath, JsonObject, Page, QueryParams};
use tessera_core::problem::Constraint;
use uuid::Uuid;

use crate::model::{Company, CompanyInput, Contact, ContactInput, Deal, DealInput, STAGES};
use crate::store::{self, DealFilter, Window};

pub fn router(db: ModuleDb) -> axum::Router {
    axum::Router::new()
        .route("/companies", get(list_companies).post(create_company))
        .route("/companies/{id}", get(get_company).patch(update_company).delete(delete_company))
        .route("/contacts", get(list_contacts).post(create_contact))
        .route("/contacts/{id}", get(get_contact).patch(update_contact).delete(delete_contact))
        .route("/deals", get(list_deals).post(create_deal))
        .route("/deals/{id}", get(get_deal).patch(update_deal).delete(delete_deal))
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

async fn get_company(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
) -> Result<Json<Company>, ApiError> {
    let company = db.read(&key, async |tx| store::get_company(tx, id).await.map_err(db_error)).await?;
    Ok(Json(company.ok_or_else(|| ApiError::not_found("company"))?))
}

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

async fn get_contact(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
) -> Result<Json<Contact>, ApiError> {
    let contact = db.read(&key, async |tx| store::get_contact(tx, id).await.map_err(db_error)).await?;
    Ok(Json(contact.ok_or_else(|| ApiError::not_found("contact"))?))
}

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

async fn get_deal(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
) -> Result<Json<Deal>, ApiError> {
    let deal = db.read(&key, async |tx| store::get_deal(tx, id).await.map_err(db_error)).await?;
    Ok(Json(deal.ok_or_else(|| ApiError::not_found("deal"))?))
}

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

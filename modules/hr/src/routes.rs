//! `/v1/hr/…`: employees (list with cursor pagination and filters, get, create, partial update, delete),
//! commission plans (list, get, create, delete: a plan is never edited, a new rate is a new plan) and
//! commissions (list and get only: they are booked by the `deal.closed.won` handler, see [`crate::booking`]).
//! Each handler parses its input strictly and runs one store function inside `ModuleDb::read` or
//! `ModuleDb::write`, which authenticate the key and bind its tenant in the same transaction (see
//! `tessera_core::db`). Writes check the key before they parse the body.

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
    COMMISSION_STATUSES, Commission, CommissionPlan, CommissionStatus, EMPLOYEE_STATUSES, Employee,
    EmployeeChanges, EmployeeInput, EmployeeStatus, NewCommissionPlan, NewEmployee, PlanInput,
};
use crate::store::{self, CommissionFilter, EmployeeFilter, Window};

pub fn router(db: ModuleDb) -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(list_employees, create_employee))
        .routes(routes!(get_employee, update_employee, delete_employee))
        .routes(routes!(list_plans, create_plan))
        .routes(routes!(get_plan, delete_plan))
        .routes(routes!(list_commissions))
        .routes(routes!(get_commission))
        .with_state(db)
}

/// Which request field each constraint guards, so a violation names the field and nothing else.
const CONSTRAINTS: &[Constraint] = &[
    Constraint::field("employees_email_key", "email"),
    Constraint::field("employees_name_length", "name"),
    Constraint::field("employees_email_format", "email"),
    Constraint::field("employees_title_length", "title"),
    Constraint::field("employees_status_valid", "status"),
    Constraint::reference("commission_plans_employee_fk", "employee_id", "employee"),
    Constraint::field("commission_plans_rate_range", "rate"),
    Constraint::field("commission_plans_effective_key", "effective_from"),
];

/// Deleting an employee that commissions still refer to (their plans go with them).
const DELETE_EMPLOYEE_CONSTRAINTS: &[Constraint] =
    &[Constraint::referenced_by("commissions_employee_fk", "commissions.employee_id")];

fn db_error(err: tokio_postgres::Error) -> ApiError {
    ApiError::from_db(err, CONSTRAINTS)
}

fn created<T: Serialize>(collection: &str, id: Uuid, body: T) -> Response {
    tessera_core::input::created(&format!("/v1/hr/{collection}/{id}"), body)
}

// Employees

/// Lists employees, oldest first.
#[utoipa::path(get, path = "/employees", tag = "hr", params(PageParams,
        ("email" = Option<String>, Query, min_length = 1, max_length = 254, pattern = r"^[^\u0000]*$",
            description = "Only the employee with this e-mail address (compared case-insensitively)"),
        ("status" = Option<EmployeeStatus>, Query, description = "Only employees with this status")),
    responses((status = 200, description = "A page of employees", body = Page<Employee>)))]
async fn list_employees(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    RawQuery(query): RawQuery,
) -> Result<Json<Page<Employee>>, ApiError> {
    let mut q = QueryParams::parse(query.as_deref())?;
    let filter = EmployeeFilter {
        // Compared with lower() on both sides in SQL, as the unique index folds it.
        email: q.text("email", 254)?,
        status: q.one_of("status", EMPLOYEE_STATUSES)?,
    };
    let window = Window { limit: q.limit()?, after: q.cursor()? };
    q.finish()?;
    let items =
        db.read(&key, async |tx| store::list_employees(tx, &filter, &window).await.map_err(db_error)).await?;
    Ok(Json(Page::from_items(items, window.limit, Employee::cursor)))
}

/// Gets an employee.
#[utoipa::path(get, path = "/employees/{id}", tag = "hr", params(IdParam),
    responses((status = 200, description = "The employee", body = Employee)))]
async fn get_employee(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
) -> Result<Json<Employee>, ApiError> {
    let employee = store::get_employee(&db, &key, id).await?;
    Ok(Json(employee.ok_or_else(|| ApiError::not_found("employee"))?))
}

/// Creates an employee.
#[utoipa::path(post, path = "/employees", tag = "hr", request_body = NewEmployee,
    responses((status = 201, description = "The new employee", body = Employee,
        headers(("Location" = String, description = "The new employee's URL")))))]
async fn create_employee(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let employee = db
        .write(&key, async |tx| {
            let input = EmployeeInput::parse(body)?;
            let name = input.name.clone().required("name")?;
            let email = input.email.clone().required("email")?;
            input.check_nulls()?;
            store::insert_employee(tx, &name, &email, &input).await.map_err(db_error)
        })
        .await?;
    Ok(created("employees", employee.id, employee))
}

/// Changes an employee's members that the body names.
#[utoipa::path(patch, path = "/employees/{id}", tag = "hr", params(IdParam), request_body = EmployeeChanges,
    responses((status = 200, description = "The changed employee", body = Employee)))]
async fn update_employee(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
    body: JsonObject,
) -> Result<Json<Employee>, ApiError> {
    let employee = db
        .write(&key, async |tx| {
            let input = EmployeeInput::parse(body)?;
            input.check_nulls()?;
            store::update_employee(tx, id, &input)
                .await
                .map_err(db_error)?
                .ok_or_else(|| ApiError::not_found("employee"))
        })
        .await?;
    Ok(Json(employee))
}

/// Deletes an employee and their commission plans (refused while commissions refer to them).
#[utoipa::path(delete, path = "/employees/{id}", tag = "hr", params(IdParam),
    responses((status = 204, description = "Deleted")))]
async fn delete_employee(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
) -> Result<StatusCode, ApiError> {
    db.write(&key, async |tx| {
        let deleted = store::delete_employee(tx, id)
            .await
            .map_err(|e| ApiError::from_db(e, DELETE_EMPLOYEE_CONSTRAINTS))?;
        if deleted { Ok(StatusCode::NO_CONTENT) } else { Err(ApiError::not_found("employee")) }
    })
    .await
}

// Commission plans

/// Lists commission plans, oldest first.
#[utoipa::path(get, path = "/commission-plans", tag = "hr", params(PageParams,
        ("employee_id" = Option<uuid::Uuid>, Query, description = "Only this employee's plans")),
    responses((status = 200, description = "A page of commission plans", body = Page<CommissionPlan>)))]
async fn list_plans(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    RawQuery(query): RawQuery,
) -> Result<Json<Page<CommissionPlan>>, ApiError> {
    let mut q = QueryParams::parse(query.as_deref())?;
    let employee_id = q.uuid("employee_id")?;
    let window = Window { limit: q.limit()?, after: q.cursor()? };
    q.finish()?;
    let items =
        db.read(&key, async |tx| store::list_plans(tx, employee_id, &window).await.map_err(db_error)).await?;
    Ok(Json(Page::from_items(items, window.limit, CommissionPlan::cursor)))
}

/// Gets a commission plan.
#[utoipa::path(get, path = "/commission-plans/{id}", tag = "hr", params(IdParam),
    responses((status = 200, description = "The commission plan", body = CommissionPlan)))]
async fn get_plan(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
) -> Result<Json<CommissionPlan>, ApiError> {
    let plan = store::get_plan(&db, &key, id).await?;
    Ok(Json(plan.ok_or_else(|| ApiError::not_found("commission plan"))?))
}

/// Creates a commission plan (plans are never edited: a new rate is a new plan).
#[utoipa::path(post, path = "/commission-plans", tag = "hr", request_body = NewCommissionPlan,
    responses((status = 201, description = "The new commission plan", body = CommissionPlan,
        headers(("Location" = String, description = "The new commission plan's URL")))))]
async fn create_plan(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let plan = db
        .write(&key, async |tx| {
            let input = PlanInput::parse(body)?;
            store::insert_plan(tx, &input).await.map_err(db_error)
        })
        .await?;
    Ok(created("commission-plans", plan.id, plan))
}

/// Deletes a commission plan (commissions booked under it keep their rate).
#[utoipa::path(delete, path = "/commission-plans/{id}", tag = "hr", params(IdParam),
    responses((status = 204, description = "Deleted")))]
async fn delete_plan(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
) -> Result<StatusCode, ApiError> {
    db.write(&key, async |tx| {
        let deleted = store::delete_plan(tx, id).await.map_err(db_error)?;
        if deleted { Ok(StatusCode::NO_CONTENT) } else { Err(ApiError::not_found("commission plan")) }
    })
    .await
}

// Commissions

/// Lists commissions, oldest first.
#[utoipa::path(get, path = "/commissions", tag = "hr", params(PageParams,
        ("employee_id" = Option<uuid::Uuid>, Query, description = "Only this employee's commissions"),
        ("deal_id" = Option<uuid::Uuid>, Query, description = "Only commissions on this CRM deal"),
        ("status" = Option<CommissionStatus>, Query, description = "Only commissions with this status")),
    responses((status = 200, description = "A page of commissions", body = Page<Commission>)))]
async fn list_commissions(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    RawQuery(query): RawQuery,
) -> Result<Json<Page<Commission>>, ApiError> {
    let mut q = QueryParams::parse(query.as_deref())?;
    let filter = CommissionFilter {
        employee_id: q.uuid("employee_id")?,
        deal_id: q.uuid("deal_id")?,
        status: q.one_of("status", COMMISSION_STATUSES)?,
    };
    let window = Window { limit: q.limit()?, after: q.cursor()? };
    q.finish()?;
    let items = db
        .read(&key, async |tx| store::list_commissions(tx, &filter, &window).await.map_err(db_error))
        .await?;
    Ok(Json(Page::from_items(items, window.limit, Commission::cursor)))
}

/// Gets a commission.
#[utoipa::path(get, path = "/commissions/{id}", tag = "hr", params(IdParam),
    responses((status = 200, description = "The commission", body = Commission)))]
async fn get_commission(
    State(db): State<ModuleDb>,
    key: PresentedKey,
    IdPath(id): IdPath,
) -> Result<Json<Commission>, ApiError> {
    let commission = store::get_commission(&db, &key, id).await?;
    Ok(Json(commission.ok_or_else(|| ApiError::not_found("commission"))?))
}

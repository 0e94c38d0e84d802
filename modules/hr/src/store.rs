//! All of HR's SQL. Free functions over the transaction they run in, which has the tenant bound: a
//! request's [`TenantTx`], or for booking commissions the dispatcher's [`EffectTx`]. Row-level security
//! confines every statement to that tenant, and `tenant_id` takes its column default on insert.
//! Lists are ordered by `(created_at, id)` and continue after a cursor; partial updates are one static
//! statement with a "present?" flag per column, so that every statement can be prepared once.

use tessera_core::ApiError;
use tessera_core::EffectTx;
use tessera_core::apikey::PresentedKey;
use tessera_core::db::{ModuleDb, TenantTx};
pub use tessera_core::input::Window;
use time::{Date, OffsetDateTime};
use tokio_postgres::Error;
use uuid::Uuid;

use crate::model::{Commission, CommissionPlan, Employee, EmployeeInput, PlanInput};

// Employees

pub struct EmployeeFilter {
    /// Lowercased by the caller.
    pub email: Option<String>,
    pub status: Option<String>,
}

pub async fn list_employees(
    tx: &TenantTx,
    filter: &EmployeeFilter,
    window: &Window,
) -> Result<Vec<Employee>, Error> {
    let (ts, id, limit) = window.bounds();
    let sql = format!(
        "select {} from hr.employees
         where ($1::text is null or lower(email) = lower($1))
           and ($2::text is null or status = $2)
           and ($3::timestamptz is null or (created_at, id) > ($3, $4::uuid))
         order by created_at, id limit $5",
        Employee::COLUMNS
    );
    let rows = tx.query(&sql, &[&filter.email, &filter.status, &ts, &id, &limit]).await?;
    Ok(rows.iter().map(Employee::from_row).collect())
}

pub async fn get_employee(db: &ModuleDb, key: &PresentedKey, id: Uuid) -> Result<Option<Employee>, ApiError> {
    let sql = format!("select {} from hr.employees where id = $1", Employee::COLUMNS);
    Ok(db.read_row(key, &sql, &[&id]).await?.as_ref().map(Employee::from_row))
}

pub async fn insert_employee(
    tx: &TenantTx,
    name: &str,
    email: &str,
    input: &EmployeeInput,
) -> Result<Employee, Error> {
    let sql = format!(
        "insert into hr.employees (id, name, email, title, status)
         values ($1, $2, $3, $4, coalesce($5, 'active')) returning {}",
        Employee::COLUMNS
    );
    let row = tx
        .query_one(&sql, &[&Uuid::now_v7(), &name, &email, &input.title.value(), &input.status.value()])
        .await?;
    Ok(Employee::from_row(&row))
}

pub async fn update_employee(
    tx: &TenantTx,
    id: Uuid,
    input: &EmployeeInput,
) -> Result<Option<Employee>, Error> {
    let sql = format!(
        "update hr.employees set
            name = case when $2 then $3 else name end,
            email = case when $4 then $5 else email end,
            title = case when $6 then $7 else title end,
            status = case when $8 then $9 else status end
         where id = $1 returning {}",
        Employee::COLUMNS
    );
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 9] = [
        &id,
        &input.name.is_present(),
        &input.name.value(),
        &input.email.is_present(),
        &input.email.value(),
        &input.title.is_present(),
        &input.title.value(),
        &input.status.is_present(),
        &input.status.value(),
    ];
    Ok(tx.query_opt(&sql, &params).await?.as_ref().map(Employee::from_row))
}

/// Deletes an employee and, by cascade, their plans; refused (foreign key) while commissions refer to them.
pub async fn delete_employee(tx: &TenantTx, id: Uuid) -> Result<bool, Error> {
    Ok(tx.execute("delete from hr.employees where id = $1", &[&id]).await? == 1)
}

// Commission plans

pub async fn list_plans(
    tx: &TenantTx,
    employee_id: Option<Uuid>,
    window: &Window,
) -> Result<Vec<CommissionPlan>, Error> {
    let (ts, id, limit) = window.bounds();
    let sql = format!(
        "select {} from hr.commission_plans
         where ($1::uuid is null or employee_id = $1)
           and ($2::timestamptz is null or (created_at, id) > ($2, $3::uuid))
         order by created_at, id limit $4",
        CommissionPlan::COLUMNS
    );
    let rows = tx.query(&sql, &[&employee_id, &ts, &id, &limit]).await?;
    Ok(rows.iter().map(CommissionPlan::from_row).collect())
}

pub async fn get_plan(
    db: &ModuleDb,
    key: &PresentedKey,
    id: Uuid,
) -> Result<Option<CommissionPlan>, ApiError> {
    let sql = format!("select {} from hr.commission_plans where id = $1", CommissionPlan::COLUMNS);
    Ok(db.read_row(key, &sql, &[&id]).await?.as_ref().map(CommissionPlan::from_row))
}

pub async fn insert_plan(tx: &TenantTx, input: &PlanInput) -> Result<CommissionPlan, Error> {
    let sql = format!(
        "insert into hr.commission_plans (id, employee_id, rate, effective_from)
         values ($1, $2, $3::text::numeric, $4) returning {}",
        CommissionPlan::COLUMNS
    );
    let row = tx
        .query_one(&sql, &[&Uuid::now_v7(), &input.employee_id, &input.rate, &input.effective_from])
        .await?;
    Ok(CommissionPlan::from_row(&row))
}

/// Commissions booked under the plan keep their rate; their `plan_id` becomes null.
pub async fn delete_plan(tx: &TenantTx, id: Uuid) -> Result<bool, Error> {
    Ok(tx.execute("delete from hr.commission_plans where id = $1", &[&id]).await? == 1)
}

// Commissions

pub struct CommissionFilter {
    pub employee_id: Option<Uuid>,
    pub deal_id: Option<Uuid>,
    pub status: Option<String>,
}

pub async fn list_commissions(
    tx: &TenantTx,
    filter: &CommissionFilter,
    window: &Window,
) -> Result<Vec<Commission>, Error> {
    let (ts, id, limit) = window.bounds();
    let sql = format!(
        "select {} from hr.commissions
         where ($1::uuid is null or employee_id = $1)
           and ($2::uuid is null or deal_id = $2)
           and ($3::text is null or status = $3)
           and ($4::timestamptz is null or (created_at, id) > ($4, $5::uuid))
         order by created_at, id limit $6",
        Commission::COLUMNS
    );
    let rows =
        tx.query(&sql, &[&filter.employee_id, &filter.deal_id, &filter.status, &ts, &id, &limit]).await?;
    Ok(rows.iter().map(Commission::from_row).collect())
}

pub async fn get_commission(
    db: &ModuleDb,
    key: &PresentedKey,
    id: Uuid,
) -> Result<Option<Commission>, ApiError> {
    let sql = format!("select {} from hr.commissions where id = $1", Commission::COLUMNS);
    Ok(db.read_row(key, &sql, &[&id]).await?.as_ref().map(Commission::from_row))
}

// Booking (the deal.closed.won handler, in the dispatcher's transaction)

/// The active employee with this e-mail address (compared as the unique index folds it), if any.
pub async fn active_employee_by_email(tx: &EffectTx<'_>, email: &str) -> Result<Option<Uuid>, Error> {
    let row = tx
        .query_opt(
            "select id from hr.employees where lower(email) = lower($1) and status = 'active'",
            &[&email],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// A plan as the booking needs it.
pub struct PlanInForce {
    pub id: Uuid,
    /// Exact decimal text.
    pub rate: String,
}

/// The employee's plan in force on `day`: the latest one that took effect on or before it.
pub async fn plan_in_force(
    tx: &EffectTx<'_>,
    employee_id: Uuid,
    day: Date,
) -> Result<Option<PlanInForce>, Error> {
    let row = tx
        .query_opt(
            "select id, rate::text from hr.commission_plans
             where employee_id = $1 and effective_from <= $2
             order by effective_from desc limit 1",
            &[&employee_id, &day],
        )
        .await?;
    Ok(row.map(|r| PlanInForce { id: r.get(0), rate: r.get(1) }))
}

/// What a won deal books.
pub struct NewCommission<'a> {
    pub employee_id: Uuid,
    pub plan: &'a PlanInForce,
    pub deal_id: Uuid,
    /// Exact decimal text, as the deal carried it.
    pub deal_amount: &'a str,
    pub currency: &'a str,
    pub source_event_id: Uuid,
    pub booked_at: OffsetDateTime,
}

/// Books a commission, computing its amount in Postgres from the exact decimals. Returns its id, or `None`
/// when this event has booked one already. (Should the plan have been deleted since it was read, its
/// foreign key fails the statement and the dispatcher retries the event.)
pub async fn book_commission(tx: &EffectTx<'_>, new: &NewCommission<'_>) -> Result<Option<Uuid>, Error> {
    let row = tx
        .query_opt(
            "insert into hr.commissions
                 (id, employee_id, plan_id, deal_id, deal_amount, currency, rate, amount, source_event_id,
                  booked_at)
             select $1::uuid, $2::uuid, $3::uuid, $4::uuid, v.deal_amount, $6::text, v.rate,
                    round(v.deal_amount * v.rate, 2), $8::uuid, $9::timestamptz
               from (select $5::text::numeric(18, 2) as deal_amount, $7::text::numeric(5, 4) as rate) v
             on conflict (tenant_id, source_event_id) do nothing
             returning id",
            &[
                &Uuid::now_v7(),
                &new.employee_id,
                &new.plan.id,
                &new.deal_id,
                &new.deal_amount,
                &new.currency,
                &new.plan.rate,
                &new.source_event_id,
                &new.booked_at,
            ],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// A won deal to book a commission for, as [`book_commissions`] takes it.
pub struct WonDealBooking<'a> {
    pub deal_id: Uuid,
    /// Exact decimal text.
    pub deal_amount: &'a str,
    pub currency: &'a str,
    pub owner_email: &'a str,
    /// Picks the plan in force.
    pub day: Date,
    pub source_event_id: Uuid,
    pub booked_at: OffsetDateTime,
}

/// Books the commissions of several won deals in one statement, with the rules of the one-by-one path: the
/// owner must be an active employee (e-mail compared case-insensitively) with a plan in force on the day;
/// the amount is computed in Postgres from the exact decimals; an event that booked one already books
/// nothing. Returns how many were booked.
pub async fn book_commissions(tx: &EffectTx<'_>, deals: &[WonDealBooking<'_>]) -> Result<u64, Error> {
    let ids: Vec<Uuid> = deals.iter().map(|_| Uuid::now_v7()).collect();
    let deal_ids: Vec<Uuid> = deals.iter().map(|d| d.deal_id).collect();
    let amounts: Vec<&str> = deals.iter().map(|d| d.deal_amount).collect();
    let currencies: Vec<&str> = deals.iter().map(|d| d.currency).collect();
    let emails: Vec<&str> = deals.iter().map(|d| d.owner_email).collect();
    let days: Vec<Date> = deals.iter().map(|d| d.day).collect();
    let events: Vec<Uuid> = deals.iter().map(|d| d.source_event_id).collect();
    let booked_at: Vec<OffsetDateTime> = deals.iter().map(|d| d.booked_at).collect();
    tx.execute(
        "insert into hr.commissions
             (id, employee_id, plan_id, deal_id, deal_amount, currency, rate, amount, source_event_id, booked_at)
         select d.id, e.id, p.id, d.deal, d.amount::numeric(18, 2), d.currency, p.rate,
                round(d.amount::numeric(18, 2) * p.rate, 2), d.event, d.booked_at
           from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::date[], $7::uuid[],
                       $8::timestamptz[])
                with ordinality as d(id, deal, amount, currency, email, day, event, booked_at, ord)
           join hr.employees e on lower(e.email) = lower(d.email) and e.status = 'active'
           join lateral (
               select id, rate from hr.commission_plans
                where employee_id = e.id and effective_from <= d.day
                order by effective_from desc limit 1
           ) p on true
          order by d.ord
         on conflict (tenant_id, source_event_id) do nothing",
        &[&ids, &deal_ids, &amounts, &currencies, &emails, &days, &events, &booked_at],
    )
    .await
}

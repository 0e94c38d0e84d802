//! All of the CRM's SQL. Free functions over the request's transaction, which has the tenant bound: row-level
//! security confines every statement to that tenant, and `tenant_id` takes its column default on insert.
//! Lists are ordered by `(created_at, id)` and continue after a cursor; partial updates are one static
//! statement with a "present?" flag per column, so that every statement can be prepared once.

use tessera_core::ApiError;
use tessera_core::apikey::PresentedKey;
use tessera_core::db::{ModuleDb, TenantTx};
pub use tessera_core::input::Window;
use tokio_postgres::Error;
use uuid::Uuid;

use crate::model::{Company, CompanyInput, Contact, ContactInput, Deal, DealInput};

// Companies

pub async fn list_companies(
    tx: &TenantTx,
    domain: Option<&str>,
    window: &Window,
) -> Result<Vec<Company>, Error> {
    let (ts, id, limit) = window.bounds();
    let sql = format!(
        "select {} from crm.companies
         where ($1::text is null or domain = $1)
           and ($2::timestamptz is null or (created_at, id) > ($2, $3::uuid))
         order by created_at, id limit $4",
        Company::COLUMNS
    );
    let rows = tx.query(&sql, &[&domain, &ts, &id, &limit]).await?;
    Ok(rows.iter().map(Company::from_row).collect())
}

pub async fn get_company(db: &ModuleDb, key: &PresentedKey, id: Uuid) -> Result<Option<Company>, ApiError> {
    let sql = format!("select {} from crm.companies where id = $1", Company::COLUMNS);
    Ok(db.read_row(key, &sql, &[&id]).await?.as_ref().map(Company::from_row))
}

pub async fn insert_company(tx: &TenantTx, name: &str, input: &CompanyInput) -> Result<Company, Error> {
    let sql = format!(
        "insert into crm.companies (id, name, domain) values ($1, $2, $3) returning {}",
        Company::COLUMNS
    );
    let row = tx.query_one(&sql, &[&Uuid::now_v7(), &name, &input.domain.value()]).await?;
    Ok(Company::from_row(&row))
}

pub async fn update_company(tx: &TenantTx, id: Uuid, input: &CompanyInput) -> Result<Option<Company>, Error> {
    let sql = format!(
        "update crm.companies set
            name = case when $2 then $3 else name end,
            domain = case when $4 then $5 else domain end
         where id = $1 returning {}",
        Company::COLUMNS
    );
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
        &id,
        &input.name.is_present(),
        &input.name.value(),
        &input.domain.is_present(),
        &input.domain.value(),
    ];
    Ok(tx.query_opt(&sql, &params).await?.as_ref().map(Company::from_row))
}

pub async fn delete_company(tx: &TenantTx, id: Uuid) -> Result<bool, Error> {
    Ok(tx.execute("delete from crm.companies where id = $1", &[&id]).await? == 1)
}

// Contacts

pub async fn list_contacts(
    tx: &TenantTx,
    company_id: Option<Uuid>,
    email: Option<&str>,
    window: &Window,
) -> Result<Vec<Contact>, Error> {
    let (ts, id, limit) = window.bounds();
    let sql = format!(
        "select {} from crm.contacts
         where ($1::uuid is null or company_id = $1)
           and ($2::text is null or lower(email) = $2)
           and ($3::timestamptz is null or (created_at, id) > ($3, $4::uuid))
         order by created_at, id limit $5",
        Contact::COLUMNS
    );
    let rows = tx.query(&sql, &[&company_id, &email, &ts, &id, &limit]).await?;
    Ok(rows.iter().map(Contact::from_row).collect())
}

pub async fn get_contact(db: &ModuleDb, key: &PresentedKey, id: Uuid) -> Result<Option<Contact>, ApiError> {
    let sql = format!("select {} from crm.contacts where id = $1", Contact::COLUMNS);
    Ok(db.read_row(key, &sql, &[&id]).await?.as_ref().map(Contact::from_row))
}

pub async fn insert_contact(tx: &TenantTx, first_name: &str, input: &ContactInput) -> Result<Contact, Error> {
    let sql = format!(
        "insert into crm.contacts (id, company_id, first_name, last_name, email, phone)
         values ($1, $2, $3, $4, $5, $6) returning {}",
        Contact::COLUMNS
    );
    let row = tx
        .query_one(
            &sql,
            &[
                &Uuid::now_v7(),
                &input.company_id.value(),
                &first_name,
                &input.last_name.value(),
                &input.email.value(),
                &input.phone.value(),
            ],
        )
        .await?;
    Ok(Contact::from_row(&row))
}

pub async fn update_contact(tx: &TenantTx, id: Uuid, input: &ContactInput) -> Result<Option<Contact>, Error> {
    let sql = format!(
        "update crm.contacts set
            company_id = case when $2 then $3 else company_id end,
            first_name = case when $4 then $5 else first_name end,
            last_name = case when $6 then $7 else last_name end,
            email = case when $8 then $9 else email end,
            phone = case when $10 then $11 else phone end
         where id = $1 returning {}",
        Contact::COLUMNS
    );
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 11] = [
        &id,
        &input.company_id.is_present(),
        &input.company_id.value(),
        &input.first_name.is_present(),
        &input.first_name.value(),
        &input.last_name.is_present(),
        &input.last_name.value(),
        &input.email.is_present(),
        &input.email.value(),
        &input.phone.is_present(),
        &input.phone.value(),
    ];
    Ok(tx.query_opt(&sql, &params).await?.as_ref().map(Contact::from_row))
}

pub async fn delete_contact(tx: &TenantTx, id: Uuid) -> Result<bool, Error> {
    Ok(tx.execute("delete from crm.contacts where id = $1", &[&id]).await? == 1)
}

// Deals

pub struct DealFilter {
    pub stage: Option<String>,
    pub company_id: Option<Uuid>,
    pub owner_email: Option<String>,
}

pub async fn list_deals(tx: &TenantTx, filter: &DealFilter, window: &Window) -> Result<Vec<Deal>, Error> {
    let (ts, id, limit) = window.bounds();
    let sql = format!(
        "select {} from crm.deals
         where ($1::text is null or stage = $1)
           and ($2::uuid is null or company_id = $2)
           and ($3::text is null or owner_email = $3)
           and ($4::timestamptz is null or (created_at, id) > ($4, $5::uuid))
         order by created_at, id limit $6",
        Deal::COLUMNS
    );
    let rows =
        tx.query(&sql, &[&filter.stage, &filter.company_id, &filter.owner_email, &ts, &id, &limit]).await?;
    Ok(rows.iter().map(Deal::from_row).collect())
}

pub async fn get_deal(db: &ModuleDb, key: &PresentedKey, id: Uuid) -> Result<Option<Deal>, ApiError> {
    let sql = format!("select {} from crm.deals where id = $1", Deal::COLUMNS);
    Ok(db.read_row(key, &sql, &[&id]).await?.as_ref().map(Deal::from_row))
}

pub async fn insert_deal(tx: &TenantTx, title: &str, input: &DealInput) -> Result<Deal, Error> {
    let sql = format!(
        "insert into crm.deals
            (id, company_id, contact_id, title, stage, amount, currency, owner_email, expected_close_date)
         values ($1, $2, $3, $4, coalesce($5, 'lead'), coalesce($6::text::numeric, 0), coalesce($7, 'USD'), $8, $9)
         returning {}",
        Deal::COLUMNS
    );
    let row = tx
        .query_one(
            &sql,
            &[
                &Uuid::now_v7(),
                &input.company_id.value(),
                &input.contact_id.value(),
                &title,
                &input.stage.value(),
                &input.amount.value(),
                &input.currency.value(),
                &input.owner_email.value(),
                &input.expected_close_date.value(),
            ],
        )
        .await?;
    Ok(Deal::from_row(&row))
}

pub async fn update_deal(tx: &TenantTx, id: Uuid, input: &DealInput) -> Result<Option<Deal>, Error> {
    let sql = format!(
        "update crm.deals set
            company_id = case when $2 then $3 else company_id end,
            contact_id = case when $4 then $5 else contact_id end,
            title = case when $6 then $7 else title end,
            stage = case when $8 then $9 else stage end,
            amount = case when $10 then $11::text::numeric else amount end,
            currency = case when $12 then $13 else currency end,
            owner_email = case when $14 then $15 else owner_email end,
            expected_close_date = case when $16 then $17 else expected_close_date end
         where id = $1 returning {}",
        Deal::COLUMNS
    );
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 17] = [
        &id,
        &input.company_id.is_present(),
        &input.company_id.value(),
        &input.contact_id.is_present(),
        &input.contact_id.value(),
        &input.title.is_present(),
        &input.title.value(),
        &input.stage.is_present(),
        &input.stage.value(),
        &input.amount.is_present(),
        &input.amount.value(),
        &input.currency.is_present(),
        &input.currency.value(),
        &input.owner_email.is_present(),
        &input.owner_email.value(),
        &input.expected_close_date.is_present(),
        &input.expected_close_date.value(),
    ];
    Ok(tx.query_opt(&sql, &params).await?.as_ref().map(Deal::from_row))
}

pub async fn delete_deal(tx: &TenantTx, id: Uuid) -> Result<bool, Error> {
    Ok(tx.execute("delete from crm.deals where id = $1", &[&id]).await? == 1)
}

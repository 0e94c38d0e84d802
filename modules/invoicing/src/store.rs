//! All of the invoicing module's SQL. Free functions over the transaction they run in, which has the tenant
//! bound: row-level security confines every statement to that tenant, and `tenant_id` takes its column
//! default on insert. Request handlers pass a [`TenantTx`]; event handlers an [`EffectTx`].
//!
//! The invoice rules themselves (what may change when, the total, numbering, settling) are triggers in
//! `sql/invoicing/V1__invoicing.sql`; the functions here only say what the caller wants done.

use tessera_core::ApiError;
use tessera_core::EffectTx;
use tessera_core::apikey::PresentedKey;
use tessera_core::db::{ModuleDb, TenantTx};
pub use tessera_core::input::Window;
use tokio_postgres::Error;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::model::{
    Customer, CustomerInput, Invoice, InvoiceInput, InvoiceLine, LineInput, Payment, PaymentInput,
};

// Customers

pub async fn list_customers(
    tx: &TenantTx,
    crm_company_id: Option<Uuid>,
    window: &Window,
) -> Result<Vec<Customer>, Error> {
    let (ts, id, limit) = window.bounds();
    let sql = format!(
        "select {} from invoicing.customers
         where ($1::uuid is null or crm_company_id = $1)
           and ($2::timestamptz is null or (created_at, id) > ($2, $3::uuid))
         order by created_at, id limit $4",
        Customer::COLUMNS
    );
    let rows = tx.query(&sql, &[&crm_company_id, &ts, &id, &limit]).await?;
    Ok(rows.iter().map(Customer::from_row).collect())
}

pub async fn get_customer(db: &ModuleDb, key: &PresentedKey, id: Uuid) -> Result<Option<Customer>, ApiError> {
    let sql = format!("select {} from invoicing.customers where id = $1", Customer::COLUMNS);
    Ok(db.read_row(key, &sql, &[&id]).await?.as_ref().map(Customer::from_row))
}

pub async fn insert_customer(tx: &TenantTx, name: &str, input: &CustomerInput) -> Result<Customer, Error> {
    let sql = format!(
        "insert into invoicing.customers (id, name, email, crm_company_id) values ($1, $2, $3, $4)
         returning {}",
        Customer::COLUMNS
    );
    let row = tx
        .query_one(&sql, &[&Uuid::now_v7(), &name, &input.email.value(), &input.crm_company_id.value()])
        .await?;
    Ok(Customer::from_row(&row))
}

pub async fn update_customer(
    tx: &TenantTx,
    id: Uuid,
    input: &CustomerInput,
) -> Result<Option<Customer>, Error> {
    let sql = format!(
        "update invoicing.customers set
            name = case when $2 then $3 else name end,
            email = case when $4 then $5 else email end,
            crm_company_id = case when $6 then $7 else crm_company_id end
         where id = $1 returning {}",
        Customer::COLUMNS
    );
    let params: [&(dyn ToSql + Sync); 7] = [
        &id,
        &input.name.is_present(),
        &input.name.value(),
        &input.email.is_present(),
        &input.email.value(),
        &input.crm_company_id.is_present(),
        &input.crm_company_id.value(),
    ];
    Ok(tx.query_opt(&sql, &params).await?.as_ref().map(Customer::from_row))
}

pub async fn delete_customer(tx: &TenantTx, id: Uuid) -> Result<bool, Error> {
    Ok(tx.execute("delete from invoicing.customers where id = $1", &[&id]).await? == 1)
}

// Invoices

pub struct InvoiceFilter {
    pub status: Option<String>,
    pub customer_id: Option<Uuid>,
    pub deal_id: Option<Uuid>,
}

pub async fn list_invoices(
    tx: &TenantTx,
    filter: &InvoiceFilter,
    window: &Window,
) -> Result<Vec<Invoice>, Error> {
    let (ts, id, limit) = window.bounds();
    let sql = format!(
        "select {} from invoicing.invoices i {}
         where ($1::text is null or i.status = $1)
           and ($2::uuid is null or i.customer_id = $2)
           and ($3::uuid is null or i.deal_id = $3)
           and ($4::timestamptz is null or (i.created_at, i.id) > ($4, $5::uuid))
         order by i.created_at, i.id limit $6",
        Invoice::COLUMNS,
        Invoice::PAID
    );
    let rows =
        tx.query(&sql, &[&filter.status, &filter.customer_id, &filter.deal_id, &ts, &id, &limit]).await?;
    Ok(rows.iter().map(Invoice::from_row).collect())
}

/// An invoice with its lines.
pub async fn get_invoice(tx: &TenantTx, id: Uuid) -> Result<Option<Invoice>, Error> {
    let sql =
        format!("select {} from invoicing.invoices i {} where i.id = $1", Invoice::COLUMNS, Invoice::PAID);
    let Some(row) = tx.query_opt(&sql, &[&id]).await? else {
        return Ok(None);
    };
    let mut invoice = Invoice::from_row(&row);
    let sql = format!(
        "select {} from invoicing.invoice_lines where invoice_id = $1 order by created_at, id",
        InvoiceLine::COLUMNS
    );
    let lines = tx.query(&sql, &[&id]).await?;
    invoice.lines = Some(lines.iter().map(InvoiceLine::from_row).collect());
    Ok(Some(invoice))
}

/// Locks an invoice for the rest of the transaction and returns its status, or `None` when there is no
/// such invoice. Writes that depend on the status take this first, so the answer holds until they commit.
pub async fn lock_invoice(tx: &TenantTx, id: Uuid) -> Result<Option<String>, Error> {
    let row =
        tx.query_opt("select status from invoicing.invoices where id = $1 for no key update", &[&id]).await?;
    Ok(row.map(|r| r.get(0)))
}

/// Whether an invoice exists (for the lists under it).
pub async fn invoice_exists(tx: &TenantTx, id: Uuid) -> Result<bool, Error> {
    Ok(tx.query_opt("select 1 from invoicing.invoices where id = $1", &[&id]).await?.is_some())
}

/// A new draft; returns its id.
pub async fn insert_invoice(tx: &TenantTx, customer_id: Uuid, input: &InvoiceInput) -> Result<Uuid, Error> {
    let id = Uuid::now_v7();
    tx.execute(
        "insert into invoicing.invoices (id, customer_id, currency, issue_date, due_date, memo, deal_id)
         values ($1, $2, coalesce($3, 'USD'), $4, $5, $6, $7)",
        &[
            &id,
            &customer_id,
            &input.currency.value(),
            &input.issue_date.value(),
            &input.due_date.value(),
            &input.memo.value(),
            &input.deal_id.value(),
        ],
    )
    .await?;
    Ok(id)
}

/// Changes a draft's fields (the caller has locked it and seen it is a draft).
pub async fn update_invoice(tx: &TenantTx, id: Uuid, input: &InvoiceInput) -> Result<bool, Error> {
    let sql = "update invoicing.invoices set
            customer_id = case when $2 then $3 else customer_id end,
            currency = case when $4 then $5 else currency end,
            issue_date = case when $6 then $7 else issue_date end,
            due_date = case when $8 then $9 else due_date end,
            memo = case when $10 then $11 else memo end,
            deal_id = case when $12 then $13 else deal_id end
         where id = $1";
    let params: [&(dyn ToSql + Sync); 13] = [
        &id,
        &input.customer_id.is_present(),
        &input.customer_id.value(),
        &input.currency.is_present(),
        &input.currency.value(),
        &input.issue_date.is_present(),
        &input.issue_date.value(),
        &input.due_date.is_present(),
        &input.due_date.value(),
        &input.memo.is_present(),
        &input.memo.value(),
        &input.deal_id.is_present(),
        &input.deal_id.value(),
    ];
    Ok(tx.execute(sql, &params).await? == 1)
}

/// Moves an invoice to `status`; the database decides whether it may (and numbers it when issued).
pub async fn set_status(tx: &TenantTx, id: Uuid, status: &str) -> Result<bool, Error> {
    Ok(tx.execute("update invoicing.invoices set status = $2 where id = $1", &[&id, &status]).await? == 1)
}

pub async fn delete_invoice(tx: &TenantTx, id: Uuid) -> Result<bool, Error> {
    Ok(tx.execute("delete from invoicing.invoices where id = $1", &[&id]).await? == 1)
}

// Lines

pub async fn insert_line(tx: &TenantTx, invoice_id: Uuid, line: &LineInput) -> Result<InvoiceLine, Error> {
    let sql = format!(
        "insert into invoicing.invoice_lines (id, invoice_id, description, quantity, unit_price)
         values ($1, $2, $3, $4::text::numeric, $5::text::numeric) returning {}",
        InvoiceLine::COLUMNS
    );
    let row = tx
        .query_one(&sql, &[&Uuid::now_v7(), &invoice_id, &line.description, &line.quantity, &line.unit_price])
        .await?;
    Ok(InvoiceLine::from_row(&row))
}

pub async fn delete_line(tx: &TenantTx, invoice_id: Uuid, line_id: Uuid) -> Result<bool, Error> {
    let deleted = tx
        .execute(
            "delete from invoicing.invoice_lines where id = $1 and invoice_id = $2",
            &[&line_id, &invoice_id],
        )
        .await?;
    Ok(deleted == 1)
}

// Payments

pub async fn list_payments(tx: &TenantTx, invoice_id: Uuid, window: &Window) -> Result<Vec<Payment>, Error> {
    let (ts, id, limit) = window.bounds();
    let sql = format!(
        "select {} from invoicing.payments
         where invoice_id = $1
           and ($2::timestamptz is null or (created_at, id) > ($2, $3::uuid))
         order by created_at, id limit $4",
        Payment::COLUMNS
    );
    let rows = tx.query(&sql, &[&invoice_id, &ts, &id, &limit]).await?;
    Ok(rows.iter().map(Payment::from_row).collect())
}

/// Records a payment; the one that completes the total settles the invoice (a trigger, same transaction).
pub async fn insert_payment(tx: &TenantTx, invoice_id: Uuid, input: &PaymentInput) -> Result<Payment, Error> {
    let sql = format!(
        "insert into invoicing.payments (id, invoice_id, amount, paid_at, reference)
         values ($1, $2, $3::text::numeric, coalesce($4, now()), $5) returning {}",
        Payment::COLUMNS
    );
    let row = tx
        .query_one(&sql, &[&Uuid::now_v7(), &invoice_id, &input.amount, &input.paid_at, &input.reference])
        .await?;
    Ok(Payment::from_row(&row))
}

// Effects of CRM events (see crate::crm_events), in the dispatcher's transaction.

/// Creates or renames the customer that mirrors a CRM company. `name` is `None` when the event does not
/// carry it: a new customer is then called after the company's id, an existing one keeps its name.
/// `seq` is the event's log position: only a newer event renames (a replayed older one changes nothing).
pub async fn mirror_company(
    tx: &EffectTx<'_>,
    company_id: Uuid,
    name: Option<&str>,
    seq: i64,
) -> Result<(), Error> {
    tx.execute(
        "insert into invoicing.customers as c (id, name, crm_company_id, crm_seq)
         values ($1, coalesce($2, 'Company ' || $3::uuid::text), $3::uuid, $4)
         on conflict (tenant_id, crm_company_id) do update set name = coalesce($2, c.name), crm_seq = $4
          where c.crm_seq is null or c.crm_seq < $4",
        &[&Uuid::now_v7(), &name, &company_id, &seq],
    )
    .await?;
    Ok(())
}

/// Whether an event was already turned into an invoice.
pub async fn event_invoiced(tx: &EffectTx<'_>, event_id: Uuid) -> Result<bool, Error> {
    let row =
        tx.query_opt("select 1 from invoicing.invoices where source_event_id = $1", &[&event_id]).await?;
    Ok(row.is_some())
}

/// A customer of its own (not linked to any CRM company), for a deal that has no company.
pub async fn placeholder_customer(tx: &EffectTx<'_>, name: &str) -> Result<Uuid, Error> {
    let id = Uuid::now_v7();
    tx.execute("insert into invoicing.customers (id, name) values ($1, $2)", &[&id, &name]).await?;
    Ok(id)
}

/// Who a deal invoice bills.
pub enum Billed {
    /// The customer mirroring this CRM company (created, named after the company's id, when there is none
    /// yet).
    Company(Uuid),
    /// This customer.
    Customer(Uuid),
}

/// A draft invoice to bill a won deal with: one line, the deal's title at its amount (decimal text).
pub struct DealInvoice {
    pub billed: Billed,
    pub currency: String,
    pub deal_id: Uuid,
    pub event_id: Uuid,
    pub title: String,
    pub amount: String,
}

/// Draft invoices billing won deals, in the order given. Nothing happens for an event that already produced
/// an invoice (the unique index on `source_event_id`).
///
/// One round trip, whatever their number: the invoices (and the companies' customers, in the same statement)
/// and their lines are sent together. A line is inserted only if its invoice was. Returns how many invoices
/// were inserted.
pub async fn insert_deal_invoices(tx: &EffectTx<'_>, invoices: &[DealInvoice]) -> Result<u64, Error> {
    let n = invoices.len();
    let (mut customer_ids, mut companies, mut customers, mut invoice_ids) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut currencies, mut deals, mut events, mut line_ids, mut titles, mut amounts) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for invoice in invoices {
        customer_ids.push(Uuid::now_v7());
        let (company, customer) = match invoice.billed {
            Billed::Company(company) => (Some(company), None),
            Billed::Customer(customer) => (None, Some(customer)),
        };
        companies.push(company);
        customers.push(customer);
        invoice_ids.push(Uuid::now_v7());
        currencies.push(invoice.currency.as_str());
        deals.push(invoice.deal_id);
        events.push(invoice.event_id);
        line_ids.push(Uuid::now_v7());
        titles.push(invoice.title.as_str());
        amounts.push(invoice.amount.as_str());
    }
    let (inserted, _) = tx
        .execute_pair(
            (
                // The customer: the one given, else the company's, created if need be (once per company; a
                // row inserted by this statement is not visible to its own scan of customers, hence both
                // joins).
                "with input as (
                     select * from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::uuid[],
                                          $7::uuid[])
                              with ordinality as t(new_customer, company, customer, invoice, currency, deal, event, ord)
                 ), created as (
                     insert into invoicing.customers (id, name, crm_company_id)
                     select distinct on (company) new_customer, 'Company ' || company::text, company
                       from input where company is not null
                      order by company, ord
                     on conflict (tenant_id, crm_company_id) do nothing
                     returning id, crm_company_id
                 )
                 insert into invoicing.invoices (id, customer_id, currency, deal_id, source_event_id)
                 select i.invoice, coalesce(i.customer, c.id, k.id), i.currency, i.deal, i.event
                   from input i
                   left join created c on c.crm_company_id = i.company
                   left join invoicing.customers k on k.crm_company_id = i.company
                  order by i.ord
                 on conflict (tenant_id, source_event_id) do nothing",
                &[&customer_ids, &companies, &customers, &invoice_ids, &currencies, &deals, &events],
            ),
            (
                "insert into invoicing.invoice_lines (id, invoice_id, description, quantity, unit_price)
                 select l.id, l.invoice, l.title, 1, l.amount::numeric
                   from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[])
                        with ordinality as l(id, invoice, title, amount, ord)
                  where exists (select 1 from invoicing.invoices v where v.id = l.invoice)
                  order by l.ord",
                &[&line_ids, &invoice_ids, &titles, &amounts],
            ),
        )
        .await?;
    Ok(inserted)
}

/// How many of these events produced an invoice.
pub async fn events_invoiced(tx: &EffectTx<'_>, event_ids: &[Uuid]) -> Result<i64, Error> {
    let row = tx
        .query_opt(
            "select count(*) from invoicing.invoices where source_event_id = any($1::uuid[])",
            &[&event_ids],
        )
        .await?;
    Ok(row.map_or(0, |r| r.get(0)))
}

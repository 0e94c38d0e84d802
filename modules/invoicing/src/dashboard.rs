//! Invoicing's part of a CRM company's dashboard: the invoices of the customer that mirrors the company,
//! open (issued, not yet paid) and, among them, overdue (due before today). At most 100 each, oldest first.

use serde_json::json;
use tessera_core::ApiError;
use tessera_core::apikey::PresentedKey;
use tessera_core::db::ModuleDb;
use uuid::Uuid;

use crate::model::Invoice;

const MAX_ITEMS: i64 = 100;

pub async fn company(
    db: &ModuleDb,
    key: &PresentedKey,
    company: Uuid,
) -> Result<serde_json::Value, ApiError> {
    db.read(key, async |tx| {
        let sql = format!(
            "select {} from invoicing.invoices i {}
              where i.status = 'issued'
                and i.customer_id in (select c.id from invoicing.customers c where c.crm_company_id = $1)
              order by i.created_at, i.id limit $2",
            Invoice::COLUMNS,
            Invoice::PAID
        );
        let open: Vec<Invoice> =
            tx.query(&sql, &[&company, &MAX_ITEMS]).await?.iter().map(Invoice::from_row).collect();
        let today = time::OffsetDateTime::now_utc().date();
        let overdue: Vec<&Invoice> = open.iter().filter(|i| i.due_date.is_some_and(|d| d < today)).collect();
        Ok(json!({"open_invoices": open, "overdue_invoices": overdue}))
    })
    .await
}

//! The CRM's part of a company's dashboard: the company, its contacts and its open deals (at most 100 each,
//! oldest first).

use serde_json::json;
use tessera_core::ApiError;
use tessera_core::apikey::PresentedKey;
use tessera_core::db::ModuleDb;
use uuid::Uuid;

use crate::model::{Company, Contact, Deal};

const MAX_ITEMS: i64 = 100;

pub async fn company(db: &ModuleDb, key: &PresentedKey, id: Uuid) -> Result<serde_json::Value, ApiError> {
    db.read(key, async |tx| {
        let company = tx
            .query_opt(&format!("select {} from crm.companies where id = $1", Company::COLUMNS), &[&id])
            .await?
            .as_ref()
            .map(Company::from_row)
            .ok_or_else(|| ApiError::not_found("company"))?;
        let contacts: Vec<Contact> = tx
            .query(
                &format!(
                    "select {} from crm.contacts where company_id = $1 order by created_at, id limit $2",
                    Contact::COLUMNS
                ),
                &[&id, &MAX_ITEMS],
            )
            .await?
            .iter()
            .map(Contact::from_row)
            .collect();
        let open_deals: Vec<Deal> = tx
            .query(
                &format!(
                    "select {} from crm.deals where company_id = $1 and stage not in ('won', 'lost')
                      order by created_at, id limit $2",
                    Deal::COLUMNS
                ),
                &[&id, &MAX_ITEMS],
            )
            .await?
            .iter()
            .map(Deal::from_row)
            .collect();
        Ok(json!({"company": company, "contacts": contacts, "open_deals": open_deals}))
    })
    .await
}

//! Which tenant a key belongs to, by its secret: for counting and limiting before the request's own key
//! check. A key never changes tenant, so an answer may be kept; a wrong secret has no owner (and knowing
//! another tenant's key prefix attributes nothing to it). A revoked key keeps its owner here; the request's
//! own check refuses it.

use std::time::Duration;

use tessera_core::apikey::PresentedKey;
use tessera_core::db::Database;
use uuid::Uuid;

pub struct KeyOwners {
    db: Database,
    owners: moka::sync::Cache<[u8; 32], Option<Owner>>,
    /// One lookup at a time per stripe: the first request of a burst with a new key asks the database, the
    /// rest find its answer in the cache (instead of a herd of identical lookups exhausting the pool).
    lookups: Box<[tokio::sync::Mutex<()>]>,
}

const LOOKUP_STRIPES: usize = 64;

/// A key's tenant and the tenant's plan (a plan change is seen within the cache's ten minutes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub tenant: Uuid,
    pub plan: std::sync::Arc<str>,
}

impl KeyOwners {
    pub fn new(db: Database, capacity: u64) -> Self {
        Self {
            db,
            owners: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(Duration::from_secs(600))
                .build(),
            lookups: (0..LOOKUP_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    /// The key's tenant, or `None` for a key that does not exist (or when the database cannot say).
    pub async fn owner(&self, key: &PresentedKey) -> Option<Uuid> {
        self.owner_and_plan(key).await.map(|o| o.tenant)
    }

    /// What is already known of the key's owner, without asking the database: `None` when nothing is.
    pub fn cached(&self, key: &PresentedKey) -> Option<Option<Owner>> {
        let mut hash = [0u8; 32];
        hash.copy_from_slice(key.hash());
        self.owners.get(&hash)
    }

    /// The key's tenant and its plan.
    pub async fn owner_and_plan(&self, key: &PresentedKey) -> Option<Owner> {
        let mut hash = [0u8; 32];
        hash.copy_from_slice(key.hash());
        if let Some(owner) = self.owners.get(&hash) {
            return owner;
        }
        let _one_at_a_time = self.lookups[usize::from(hash[0]) % LOOKUP_STRIPES].lock().await;
        if let Some(owner) = self.owners.get(&hash) {
            return owner;
        }
        // Any API: only the tenant is wanted.
        let tenant = self.db.key_grant(key, "events").await.ok()?.map(|g| g.tenant_id);
        let owner = match tenant {
            Some(tenant) => {
                let plan = self.db.tenant_plan(tenant).await.ok()?.unwrap_or_else(|| "standard".to_owned());
                Some(Owner { tenant, plan: plan.into() })
            }
            None => None,
        };
        self.owners.insert(hash, owner.clone());
        owner
    }
}

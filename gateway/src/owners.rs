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
    owners: moka::sync::Cache<[u8; 32], Option<Uuid>>,
}

impl KeyOwners {
    pub fn new(db: Database, capacity: u64) -> Self {
        Self {
            db,
            owners: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(Duration::from_secs(600))
                .build(),
        }
    }

    /// The key's tenant, or `None` for a key that does not exist (or when the database cannot say).
    pub async fn owner(&self, key: &PresentedKey) -> Option<Uuid> {
        let mut hash = [0u8; 32];
        hash.copy_from_slice(key.hash());
        if let Some(owner) = self.owners.get(&hash) {
            return owner;
        }
        // Any API: only the tenant is wanted.
        let owner = self.db.key_grant(key, "events").await.ok()?.map(|g| g.tenant_id);
        self.owners.insert(hash, owner);
        owner
    }
}

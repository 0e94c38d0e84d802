//! Operator actions: tenants, their modules and their API keys. The CLI runs these as the owner role. The
//! tables FORCE row-level security, so the owner's statements are filtered like everyone's and each action
//! binds the tenant it acts for inside its own transaction. (The owner is trusted nonetheless: it owns the
//! tables and may hand functions to `tessera_auth`.)

use time::OffsetDateTime;
use tokio_postgres::{Client, Transaction};
use uuid::Uuid;

use crate::apikey::{self, Scope};
use crate::module::Module;
use crate::tenant::{TenantId, TenantSlug};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("database error")]
    Db(#[from] tokio_postgres::Error),
    #[error("a tenant with slug {0:?} already exists")]
    TenantExists(String),
    #[error("no tenant with slug {0:?}")]
    NoSuchTenant(String),
    #[error("no module named {0:?} is compiled in")]
    NoSuchModule(String),
    #[error("no active API key {0:?} for this tenant")]
    NoSuchKey(String),
    #[error(transparent)]
    Random(#[from] apikey::RandomUnavailable),
    #[error("no user with e-mail {0:?}")]
    NoSuchUser(String),
    #[error("a user with e-mail {0:?} already exists")]
    UserExists(String),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: TenantId,
    pub slug: String,
    pub name: String,
    pub status: String,
}

async fn bind(tx: &Transaction<'_>, tenant: TenantId) -> Result<(), tokio_postgres::Error> {
    tx.execute("select set_config('tessera.tenant_id', $1, true)", &[&tenant.to_string()]).await?;
    Ok(())
}

/// Creates a tenant with the given modules enabled.
pub async fn create_tenant(
    client: &mut Client,
    slug: &TenantSlug,
    name: &str,
    modules: &[&str],
) -> Result<Tenant, AdminError> {
    let tx = client.transaction().await?;
    let tenant = create_tenant_in(&tx, slug, name, modules).await?;
    tx.commit().await?;
    Ok(tenant)
}

/// Creates a tenant inside `tx` and leaves it bound there.
async fn create_tenant_in(
    tx: &Transaction<'_>,
    slug: &TenantSlug,
    name: &str,
    modules: &[&str],
) -> Result<Tenant, AdminError> {
    let id = TenantId::new();
    let inserted = tx
        .execute(
            "insert into core.tenants (id, slug, name) values ($1, $2, $3) on conflict (slug) do nothing",
            &[&id.as_uuid(), &slug.as_str(), &name],
        )
        .await?;
    if inserted == 0 {
        return Err(AdminError::TenantExists(slug.to_string()));
    }
    bind(tx, id).await?;
    for module in modules {
        tx.execute("insert into core.tenant_modules (module) values ($1)", &[module]).await?;
    }
    Ok(Tenant { id, slug: slug.to_string(), name: name.to_owned(), status: "active".into() })
}

/// Enables (or, with `enable` false, disables) modules for a tenant; returns the modules enabled afterwards.
/// Takes effect at the tenant's next request: the key check reads the list in every request's transaction.
pub async fn set_modules(
    client: &mut Client,
    tenant: TenantId,
    modules: &[&str],
    enable: bool,
) -> Result<Vec<String>, AdminError> {
    let tx = client.transaction().await?;
    bind(&tx, tenant).await?;
    for module in modules {
        if enable {
            tx.execute(
                "insert into core.tenant_modules (module) values ($1) on conflict do nothing",
                &[module],
            )
            .await?;
        } else {
            tx.execute("delete from core.tenant_modules where module = $1", &[module]).await?;
        }
    }
    let rows = tx.query("select module from core.tenant_modules order by module", &[]).await?;
    tx.commit().await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

pub async fn find_tenant(client: &Client, slug: &str) -> Result<Tenant, AdminError> {
    let row = client
        .query_opt("select id, slug, name, status from core.tenants where slug = $1", &[&slug])
        .await?
        .ok_or_else(|| AdminError::NoSuchTenant(slug.to_owned()))?;
    Ok(Tenant { id: TenantId::from_uuid(row.get(0)), slug: row.get(1), name: row.get(2), status: row.get(3) })
}

pub async fn list_tenants(client: &Client) -> Result<Vec<Tenant>, AdminError> {
    let rows = client
        .query("select id, slug, name, status from core.tenants order by created_at, slug", &[])
        .await?;
    Ok(rows
        .iter()
        .map(|r| Tenant {
            id: TenantId::from_uuid(r.get(0)),
            slug: r.get(1),
            name: r.get(2),
            status: r.get(3),
        })
        .collect())
}

/// A key as listed: never its secret.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<String>,
    pub created_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
    pub last_used_at: Option<OffsetDateTime>,
}

/// Mints an API key; the returned token is the only time the secret exists outside its hash.
pub async fn create_api_key(
    client: &mut Client,
    tenant: TenantId,
    name: &str,
    scopes: &[Scope],
) -> Result<(Uuid, String), AdminError> {
    let tx = client.transaction().await?;
    bind(&tx, tenant).await?;
    let key = create_api_key_in(&tx, name, scopes).await?;
    tx.commit().await?;
    Ok(key)
}

/// Mints a key for the tenant bound in `tx`.
async fn create_api_key_in(
    tx: &Transaction<'_>,
    name: &str,
    scopes: &[Scope],
) -> Result<(Uuid, String), AdminError> {
    let key = apikey::generate()?;
    let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    let row = tx
        .query_one(
            "insert into core.api_keys (name, prefix, secret_hash, scopes) values ($1, $2, $3, $4) returning id",
            &[&name, &key.prefix, &key.hash.as_slice(), &scopes],
        )
        .await?;
    Ok((row.get(0), key.token))
}

/// Revokes a key, named by its id or its prefix. Effective for the next request.
pub async fn revoke_api_key(client: &mut Client, tenant: TenantId, key: &str) -> Result<(), AdminError> {
    let id = Uuid::parse_str(key).ok();
    let tx = client.transaction().await?;
    bind(&tx, tenant).await?;
    let n = tx
        .execute(
            "update core.api_keys set revoked_at = now()
             where (id = $1 or prefix = $2) and revoked_at is null",
            &[&id, &key],
        )
        .await?;
    if n == 0 {
        return Err(AdminError::NoSuchKey(key.to_owned()));
    }
    tx.commit().await?;
    Ok(())
}

pub async fn list_api_keys(client: &mut Client, tenant: TenantId) -> Result<Vec<KeyInfo>, AdminError> {
    let tx = client.transaction().await?;
    bind(&tx, tenant).await?;
    let rows = tx
        .query(
            "select id, name, prefix, scopes, created_at, revoked_at, last_used_at from core.api_keys
              order by created_at, id",
            &[],
        )
        .await?;
    tx.commit().await?;
    Ok(rows
        .iter()
        .map(|r| KeyInfo {
            id: r.get(0),
            name: r.get(1),
            prefix: r.get(2),
            scopes: r.get(3),
            created_at: r.get(4),
            revoked_at: r.get(5),
            last_used_at: r.get(6),
        })
        .collect())
}

/// Checks that every named module is compiled in.
pub fn known_modules<'a>(all: &[&dyn Module], wanted: &[&'a str]) -> Result<Vec<&'a str>, AdminError> {
    for w in wanted {
        if !all.iter().any(|m| m.name() == *w) {
            return Err(AdminError::NoSuchModule((*w).to_owned()));
        }
    }
    Ok(wanted.to_vec())
}

/// The demo tenant's slug.
pub const DEMO_SLUG: &str = "demo";

/// Creates the demo tenant with every module enabled, each module's sample data and a key with every scope
/// (the SQL endpoint's reporting:read too),
/// all in one transaction. Returns the key's token, or `None` when the demo tenant already exists.
pub async fn seed_demo(client: &mut Client, modules: &[&dyn Module]) -> Result<Option<String>, AdminError> {
    let slug = TenantSlug::parse(DEMO_SLUG).map_err(|_| AdminError::NoSuchTenant(DEMO_SLUG.into()))?;
    let names: Vec<&str> = modules.iter().map(|m| m.name()).collect();
    let tx = client.transaction().await?;
    match create_tenant_in(&tx, &slug, "Demo Company", &names).await {
        Ok(_) => {}
        Err(AdminError::TenantExists(_)) => return Ok(None),
        Err(e) => return Err(e),
    }
    for module in modules {
        if let Some(sql) = module.demo_data() {
            tx.batch_execute(sql).await?;
        }
    }
    let mut scopes: Vec<Scope> =
        names.iter().map(|m| Scope { module: (*m).to_owned(), access: apikey::Access::Write }).collect();
    scopes.push(Scope { module: crate::module::EVENT_FEED_API.to_owned(), access: apikey::Access::Read });
    scopes.push(Scope { module: crate::module::REPORTING_API.to_owned(), access: apikey::Access::Read });
    let (_, token) = create_api_key_in(&tx, "demo", &scopes).await?;
    tx.commit().await?;
    Ok(Some(token))
}

/// Creates a user with an Argon2id hash of `password` (at least 12 characters). Returns the user's id.
pub async fn create_user(client: &mut Client, email: &str, password: &str) -> Result<Uuid, AdminError> {
    let email = email.trim();
    if !email.contains('@') || email.len() > 254 {
        return Err(AdminError::Invalid(format!("{email:?} is not an e-mail address")));
    }
    if password.chars().count() < 12 {
        return Err(AdminError::Invalid("a password needs at least 12 characters".into()));
    }
    let hash = crate::token::hash_password(password)?;
    let id = Uuid::now_v7();
    match client
        .execute(
            "insert into core.users (id, email, password_hash) values ($1, $2, $3)",
            &[&id, &email, &hash],
        )
        .await
    {
        Ok(_) => Ok(id),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
            Err(AdminError::UserExists(email.to_owned()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Makes a user a member of the tenant with `role` (owner, admin or member), or changes its role.
pub async fn add_member(
    client: &mut Client,
    tenant: TenantId,
    email: &str,
    role: &str,
) -> Result<(), AdminError> {
    if !matches!(role, "owner" | "admin" | "member") {
        return Err(AdminError::Invalid(format!("role {role:?} is not owner, admin or member")));
    }
    let tx = client.transaction().await?;
    bind(&tx, tenant).await?;
    let n = tx
        .execute(
            "insert into core.memberships (user_id, role)
             select id, $2 from core.users where lower(email) = lower($1)
             on conflict (tenant_id, user_id) do update set role = excluded.role",
            &[&email.trim(), &role],
        )
        .await?;
    if n == 0 {
        return Err(AdminError::NoSuchUser(email.to_owned()));
    }
    tx.commit().await?;
    Ok(())
}

/// Ends a user's membership of the tenant; its tokens for the tenant stop working at once.
pub async fn remove_member(client: &mut Client, tenant: TenantId, email: &str) -> Result<(), AdminError> {
    let tx = client.transaction().await?;
    bind(&tx, tenant).await?;
    let n = tx
        .execute(
            "delete from core.memberships where user_id in (select id from core.users where lower(email) = lower($1))",
            &[&email.trim()],
        )
        .await?;
    if n == 0 {
        return Err(AdminError::NoSuchUser(email.to_owned()));
    }
    tx.commit().await?;
    Ok(())
}

/// Puts a tenant on a plan (which rate limits it gets; see the gateway's configuration).
pub async fn set_plan(client: &mut Client, slug: &str, plan: &str) -> Result<(), AdminError> {
    if plan.is_empty()
        || plan.len() > 40
        || !plan.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(AdminError::Invalid(format!("plan {plan:?} must be 1 to 40 of a-z, 0-9, _ and -")));
    }
    let n = client.execute("update core.tenants set plan = $2 where slug = $1", &[&slug, &plan]).await?;
    if n == 0 {
        return Err(AdminError::NoSuchTenant(slug.to_owned()));
    }
    Ok(())
}

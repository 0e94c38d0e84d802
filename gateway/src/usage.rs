//! Usage for billing: requests answered successfully (status below 400), per tenant, module and UTC day,
//! counted in memory and added to `core.usage` every few seconds (`core.record_usage`); a tenant reads its
//! own with `GET /v1/usage?from=YYYY-MM-DD&to=YYYY-MM-DD` (scope `usage:read`).
//!
//! Counts not yet added are lost if the process dies (at most one flush interval's worth); a flush that
//! fails keeps them for the next one. The same flush stamps each API key used since the last one with the
//! time of its latest successful request (`core.api_keys.last_used_at`, shown by `tessera key list`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tessera_core::ApiError;
use tessera_core::apikey::{self, PresentedKey};
use tessera_core::db::{Database, ModuleDb};
use tessera_core::input::QueryParams;
use tessera_core::openapi::{ApiRouter, ToSchema, routes};
use time::{Date, OffsetDateTime};
use uuid::Uuid;

use crate::owners::KeyOwners;
use crate::paths;

/// The counts of one gateway process.
pub struct Usage {
    db: Database,
    owners: Arc<KeyOwners>,
    /// The names counted: the modules, and the platform's own APIs.
    apis: Vec<&'static str>,
    counts: Mutex<HashMap<(Uuid, &'static str, Date), i64>>,
    /// The latest successful request of each API key (by prefix) since the last flush.
    last_used: Mutex<HashMap<String, OffsetDateTime>>,
}

impl Usage {
    pub fn new(db: Database, owners: Arc<KeyOwners>, modules: &[&'static str]) -> Arc<Self> {
        let mut apis = modules.to_vec();
        apis.extend(tessera_core::module::PLATFORM_APIS);
        apis.push("dashboard");
        Arc::new(Self {
            db,
            owners,
            apis,
            counts: Mutex::new(HashMap::new()),
            last_used: Mutex::new(HashMap::new()),
        })
    }

    fn count(&self, tenant: Uuid, api: &'static str) {
        let day = OffsetDateTime::now_utc().date();
        *self.counts.lock().unwrap_or_else(|e| e.into_inner()).entry((tenant, api, day)).or_insert(0) += 1;
    }

    fn used(&self, prefix: &str) {
        let now = OffsetDateTime::now_utc();
        self.last_used.lock().unwrap_or_else(|e| e.into_inner()).insert(prefix.to_owned(), now);
    }

    /// Adds what was counted to `core.usage`, and stamps the keys used.
    pub async fn flush(&self) -> Result<(), ApiError> {
        let touched = self.flush_last_used().await;
        let counted = self.flush_counts().await;
        counted.and(touched)
    }

    async fn flush_last_used(&self) -> Result<(), ApiError> {
        let taken = std::mem::take(&mut *self.last_used.lock().unwrap_or_else(|e| e.into_inner()));
        if taken.is_empty() {
            return Ok(());
        }
        let (prefixes, times): (Vec<String>, Vec<OffsetDateTime>) =
            taken.iter().map(|(p, t)| (p.clone(), *t)).unzip();
        let result = self.db.touch_api_keys(&prefixes, &times).await;
        if result.is_err() {
            // Kept for the next flush, unless a newer use arrived meanwhile.
            let mut last_used = self.last_used.lock().unwrap_or_else(|e| e.into_inner());
            for (prefix, at) in taken {
                last_used.entry(prefix).or_insert(at);
            }
        }
        result
    }

    async fn flush_counts(&self) -> Result<(), ApiError> {
        let taken = std::mem::take(&mut *self.counts.lock().unwrap_or_else(|e| e.into_inner()));
        if taken.is_empty() {
            return Ok(());
        }
        let (mut tenants, mut apis, mut days, mut counts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((tenant, api, day), n) in &taken {
            tenants.push(*tenant);
            apis.push(*api);
            days.push(*day);
            counts.push(*n);
        }
        let result = self.db.record_usage(&tenants, &apis, &days, &counts).await;
        if result.is_err() {
            // Kept for the next flush.
            let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            for (key, n) in taken {
                *counts.entry(key).or_insert(0) += n;
            }
        }
        result
    }

    /// Flushes every `every` until aborted.
    pub async fn run(self: Arc<Self>, every: Duration) {
        let mut ticker = tokio::time::interval(every);
        loop {
            ticker.tick().await;
            if let Err(e) = self.flush().await {
                tracing::warn!(error = ?e, "could not record usage; keeping the counts");
            }
        }
    }
}

/// The middleware that counts, in front of `/v1`.
pub async fn layer(State(usage): State<Arc<Usage>>, mut request: Request, next: Next) -> Response {
    let api = paths::named_api(&request, &usage.apis);
    let key = apikey::presented_in(&mut request).ok();
    let response = next.run(request).await;
    if let (Some(api), Some(key)) = (api, key)
        && response.status().as_u16() < 400
        && let Some(tenant) = usage.owners.owner(&key).await
    {
        usage.count(tenant, api);
        // Login tokens have no prefix (and no row in core.api_keys).
        if !key.prefix().is_empty() {
            usage.used(key.prefix());
        }
    }
    response
}

/// `GET /v1/usage`.
pub fn router(db: ModuleDb) -> ApiRouter {
    ApiRouter::new().routes(routes!(read)).with_state(db)
}

/// A tenant's requests per module and day (UTC).
#[derive(serde::Serialize, ToSchema)]
struct UsageReport {
    /// Always `list`.
    #[schema(value_type = String)]
    object: &'static str,
    data: Vec<UsageDay>,
    /// The first day counted.
    #[schema(value_type = String, format = Date)]
    from: String,
    /// The last day counted.
    #[schema(value_type = String, format = Date)]
    to: String,
}

/// One module's requests on one day.
#[derive(serde::Serialize, ToSchema)]
struct UsageDay {
    module: String,
    #[schema(value_type = String, format = Date)]
    day: String,
    requests: i64,
}

/// Reads the tenant's usage per module and day.
#[utoipa::path(get, path = "/", tag = "usage",
    params(
        ("from" = Option<String>, Query, format = Date, description = "First day (default: 30 days before `to`)"),
        ("to" = Option<String>, Query, format = Date, description = "Last day (default: today); at most 366 days after `from`"),
    ),
    responses((status = 200, description = "Requests per module and day", body = UsageReport)))]
async fn read(State(db): State<ModuleDb>, key: PresentedKey, request: Request) -> Result<Response, ApiError> {
    let mut q = QueryParams::parse(request.uri().query())?;
    let today = OffsetDateTime::now_utc().date();
    let date = |q: &mut QueryParams, name: &str| -> Result<Option<Date>, ApiError> {
        q.take(name)
            .map(|v| {
                Date::parse(&v, time::macros::format_description!("[year]-[month]-[day]")).map_err(|_| {
                    ApiError::invalid_parameter(name, format!("{name} must be a date (YYYY-MM-DD)"))
                })
            })
            .transpose()
    };
    let to = date(&mut q, "to")?.unwrap_or(today);
    let from = date(&mut q, "from")?.unwrap_or(to - time::Duration::days(30));
    q.finish()?;
    if from > to || (to - from) > time::Duration::days(366) {
        return Err(ApiError::invalid_parameter(
            "from",
            "from must be on or before to, at most 366 days apart",
        ));
    }
    let rows = db
        .read(&key, async |tx| {
            Ok(tx
                .query(
                    "select module, day, requests from core.usage where day between $1 and $2 order by day, module",
                    &[&from, &to],
                )
                .await?)
        })
        .await?;
    let data = rows
        .iter()
        .map(|r| UsageDay { module: r.get(0), day: r.get::<_, Date>(1).to_string(), requests: r.get(2) })
        .collect();
    Ok(axum::Json(UsageReport { object: "list", data, from: from.to_string(), to: to.to_string() })
        .into_response())
}

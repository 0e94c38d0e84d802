//! `GET /v1/dashboard/companies/{id}`: every module that has something to say about a CRM company
//! contributes its part ([`tessera_core::Module::company_dashboard`]), all at once; the gateway knows
//! nothing of what is in them.
//!
//! - Each part runs with the caller's key through its module's own checks, concurrently, within a time
//!   budget. A part that fails, is refused or runs out of time is left out and listed under `unavailable`
//!   with the reason's code; the rest still comes back.
//! - A part answering `not_found` means the company does not exist (for this tenant): `404`. A key that is
//!   missing, malformed or unknown gets `401`, as from any route.
//! - Never cached (`Cache-Control: no-store`): a partial answer must not outlive its cause.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use tessera_core::apikey::PresentedKey;
use tessera_core::db::{Database, ModuleDb};
use tessera_core::openapi::{ApiRouter, IdParam, ToSchema, routes};
use tessera_core::{ApiError, Module};
use uuid::Uuid;

#[derive(Clone)]
struct Dashboards {
    modules: Arc<Vec<(Arc<dyn Module>, ModuleDb)>>,
    budget: Duration,
}

/// The routes under `/v1/dashboard`.
pub fn router(db: &Database, modules: &[Arc<dyn Module>], budget: Duration) -> ApiRouter {
    let modules = modules.iter().map(|m| (m.clone(), db.for_module(m.name()))).collect();
    ApiRouter::new().routes(routes!(company)).with_state(Dashboards { modules: Arc::new(modules), budget })
}

/// What every module has to say about one CRM company.
#[derive(serde::Serialize, ToSchema)]
struct CompanyDashboard {
    /// Always `company_dashboard`.
    #[schema(value_type = String)]
    object: &'static str,
    company_id: Uuid,
    /// Each module's part, by module name (e.g. `crm`: the company, its contacts and open deals;
    /// `invoicing`: open and overdue invoices).
    parts: Map<String, Value>,
    /// The parts left out, and why.
    unavailable: Vec<Unavailable>,
}

/// A module whose part is missing from a dashboard.
#[derive(serde::Serialize, ToSchema)]
struct Unavailable {
    #[schema(value_type = String)]
    module: &'static str,
    /// The error's code, or `timeout` when the part ran out of time.
    #[schema(value_type = String)]
    code: &'static str,
}

/// A CRM company's dashboard: each module's part, fetched at once; a part that fails or is late is
/// listed as unavailable and the rest still comes back. Never cached.
#[utoipa::path(get, path = "/companies/{id}", tag = "dashboard", params(IdParam),
    responses((status = 200, description = "The dashboard", body = CompanyDashboard)))]
async fn company(
    State(dashboards): State<Dashboards>,
    key: PresentedKey,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::invalid_parameter("id", "id must be a UUID"))?;
    let parts = dashboards.modules.iter().filter_map(|(module, db)| {
        let part = module.company_dashboard(db, &key, id)?;
        let budget = dashboards.budget;
        Some(async move { (module.name(), tokio::time::timeout(budget, part).await) })
    });
    let answers = futures_util::future::join_all(parts).await;
    let mut body = Map::new();
    let mut unavailable = Vec::new();
    for (module, answer) in answers {
        match answer {
            Ok(Ok(part)) => {
                body.insert(module.to_owned(), part);
            }
            Ok(Err(e)) if e.code() == "not_found" => return Err(ApiError::not_found("company")),
            Ok(Err(e)) if e.status() == StatusCode::UNAUTHORIZED => return Err(e),
            Ok(Err(e)) => {
                if e.status().is_server_error() {
                    tracing::warn!(module, code = e.code(), "a dashboard part failed");
                }
                unavailable.push(Unavailable { module, code: e.code() });
            }
            Err(_) => {
                tracing::warn!(module, "a dashboard part ran out of time");
                unavailable.push(Unavailable { module, code: "timeout" });
            }
        }
    }
    let answer = CompanyDashboard { object: "company_dashboard", company_id: id, parts: body, unavailable };
    let mut response = axum::Json(answer).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

//! tessera-gateway: the front door.
//!
//! REST under `/v1/<module>/…` (each compiled-in module contributes its routes), `/healthz` (the process is
//! up) and `/readyz` (the database answers); `/v1/events` is the tenant's event feed. Every response carries an `x-request-id`; errors, including
//! unknown routes, wrong methods and panics, are problem+json. Authentication and tenant binding happen in
//! each request's transaction (`tessera_core::db`), so the tenant always comes from the credential.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tessera_core::db::Database;
use tessera_core::{ApiError, Module};
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

mod auth;
pub mod cache;
mod dashboard;
mod events;
pub mod idempotency;
pub mod metrics;
pub mod openapi;
mod openapi_page;
pub mod overload;
pub mod owners;
mod paths;
pub mod ratelimit;
pub mod sql;
pub mod usage;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What the gateway needs to know to serve.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub body_limit_bytes: usize,
    /// Serves `GET /metrics` (Prometheus text) from this source when set.
    pub metrics: Option<MetricsSource>,
    /// Caches GET answers of module routes when set (see [`cache`]).
    pub cache: Option<cache::CacheConfig>,
    /// Limits request rates under `/v1` when set (see [`ratelimit`]).
    pub rate_limits: Option<ratelimit::RateLimitConfig>,
    /// Sheds load past this under `/v1` when set (see [`overload`]).
    pub admission: Option<overload::AdmissionConfig>,
}

/// The future a [`MetricsSource`] returns: the Prometheus text, or why there is none.
pub type MetricsFuture = std::pin::Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// Produces the Prometheus text `GET /metrics` serves.
#[derive(Clone)]
pub struct MetricsSource(pub Arc<dyn Fn() -> MetricsFuture + Send + Sync>);

impl std::fmt::Debug for MetricsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsSource")
    }
}

async fn metrics(
    State((gateway, source)): State<(Arc<metrics::GatewayMetrics>, Option<MetricsSource>)>,
) -> Response {
    let mut text = gateway.render();
    if let Some(source) = source {
        match (source.0)().await {
            Ok(more) => text.push_str(&more),
            Err(e) => {
                tracing::warn!(error = %e, "metrics unavailable");
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "metrics_unavailable",
                    "metrics are unavailable",
                )
                .into_response();
            }
        }
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// How long a module's part of a dashboard may take before the answer goes without it.
pub const DASHBOARD_BUDGET: Duration = Duration::from_millis(800);

/// The gateway's routes and middleware, ready to serve or to call in-process.
pub fn router(db: Database, modules: &[Arc<dyn Module>], body_limit_bytes: usize) -> Router {
    router_with_cache(db, modules, body_limit_bytes, None)
}

/// The same, with the module routes behind a response cache (whose listener the caller runs:
/// [`cache::listen`]).
pub fn router_with_cache(
    db: Database,
    modules: &[Arc<dyn Module>],
    body_limit_bytes: usize,
    cache: Option<Arc<cache::ResponseCache>>,
) -> Router {
    router_with_layers(db, modules, body_limit_bytes, Layers { cache, ..Layers::default() })
}

/// The optional parts of the request path.
#[derive(Clone, Default)]
pub struct Layers {
    pub cache: Option<Arc<cache::ResponseCache>>,
    pub rate_limits: Option<Arc<ratelimit::RateLimits>>,
    pub usage: Option<Arc<usage::Usage>>,
    pub admission: Option<Arc<overload::Admission>>,
}

/// The same, with any of the optional layers.
pub fn router_with_layers(
    db: Database,
    modules: &[Arc<dyn Module>],
    body_limit_bytes: usize,
    layers: Layers,
) -> Router {
    let Layers { cache, rate_limits, usage, admission } = layers;
    let feed = db.for_api(tessera_core::module::EVENT_FEED_API, tessera_core::roles::EVENT_FEED);
    let mut docs: Vec<(String, utoipa::openapi::OpenApi)> = Vec::new();
    // A router's routes, its documentation kept under the path it is served at.
    let mut split = |served_at: &str, routes: tessera_core::openapi::ApiRouter| {
        let (router, doc) = routes.split_for_parts();
        docs.push((served_at.to_owned(), doc));
        router
    };
    let mut module_routes = Router::new();
    for module in modules {
        let prefix = format!("/{}", module.name());
        let routes = split(&format!("/v1{prefix}"), module.routes(db.for_module(module.name())));
        module_routes = module_routes.nest(&prefix, routes);
    }
    if let Some(cache) = cache {
        let names: Arc<[&'static str]> = modules.iter().map(|m| m.name()).collect();
        let layer = cache::CacheLayer { cache, modules: names };
        module_routes = module_routes.layer(axum::middleware::from_fn_with_state(layer, cache::layer));
    }
    // Outside the cache: a replayed answer is not a write.
    let idempotency = idempotency::IdempotencyLayer {
        modules: Arc::new(modules.iter().map(|m| (m.name(), db.for_module(m.name()))).collect()),
        body_limit_bytes,
    };
    module_routes =
        module_routes.layer(axum::middleware::from_fn_with_state(idempotency, idempotency::layer));
    let usage_db = db.for_api(tessera_core::module::USAGE_API, tessera_core::roles::EVENT_FEED);
    let events = split("/v1/events", events::router(feed));
    let usage_routes = split("/v1/usage", usage::router(usage_db));
    let auth = split("/v1/auth", auth::router(db.clone()));
    let dashboard = split("/v1/dashboard", dashboard::router(&db, modules, DASHBOARD_BUDGET));
    // The probes: not under `/v1`, and not behind a credential.
    let probes = split(
        "",
        tessera_core::openapi::ApiRouter::new()
            .routes(tessera_core::openapi::routes!(healthz))
            .routes(tessera_core::openapi::routes!(readyz))
            .with_state(db.clone()),
    );
    let names: Vec<&str> = modules.iter().map(|m| m.name()).collect();
    let document = openapi::ApiDocument::new(docs, &names);
    let api = Router::new()
        .nest("/events", events)
        .nest("/usage", usage_routes)
        .nest("/auth", auth)
        .nest("/dashboard", dashboard)
        .merge(module_routes)
        .merge(
            Router::new()
                .route("/openapi.json", get(openapi_json))
                .route("/docs", get(openapi_page))
                .with_state(document),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    // The layers of every `/v1` request wrap the API's router as one service, not each of its routes
    // (`Router::layer`): a route's stack of boxed services is cloned for every request it answers, once
    // per layer above it, so each layer there cost allocations per request; out here they wrap the router,
    // which is an `Arc`. Outermost first: the rate limits come in two parts around load shedding: what
    // needs no database (the address, and keys whose owner is known) is checked before a request may queue
    // for a place; a key whose owner must be looked up is checked once it holds one. The usage count is
    // inside them all: a refused request is not usage.
    let api = tower::ServiceBuilder::new()
        .option_layer(rate_limits.clone().map(|l| axum::middleware::from_fn_with_state(l, ratelimit::layer)))
        .option_layer(admission.map(|a| axum::middleware::from_fn_with_state(a, overload::layer)))
        .option_layer(
            rate_limits.map(|l| axum::middleware::from_fn_with_state(l, ratelimit::after_admission)),
        )
        .option_layer(usage.map(|u| axum::middleware::from_fn_with_state(u, usage::layer)))
        .map_response(IntoResponse::into_response)
        .service(api);
    probes
        .nest_service("/v1", api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit_bytes))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal(&std::io::Error::other("a request handler panicked")).into_response()
        }))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &axum::http::Request<_>| {
                    let id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
                    tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
                })
                .on_failure(log_failure),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, RequestIds::new()))
}

/// Server errors in the request log, except 503: a shed request is counted (`tessera_shed_total`), not logged
/// one line each while the gateway is overloaded, and a database that is unavailable is logged with its
/// cause where the error is made.
fn log_failure(class: tower_http::classify::ServerErrorsFailureClass, latency: Duration, _: &tracing::Span) {
    use tower_http::classify::ServerErrorsFailureClass;
    if !matches!(class, ServerErrorsFailureClass::StatusCode(StatusCode::SERVICE_UNAVAILABLE)) {
        tracing::error!(classification = %class, latency = ?latency, "response failed");
    }
}

/// Request ids: a random per-process prefix and a counter, unique across gateway processes without a
/// system call per request.
#[derive(Clone)]
struct RequestIds {
    prefix: Arc<str>,
    next: Arc<AtomicU64>,
}

impl RequestIds {
    fn new() -> Self {
        let prefix =
            tessera_core::apikey::random_hex(6).unwrap_or_else(|_| format!("{:012x}", std::process::id()));
        Self { prefix: prefix.into(), next: Arc::new(AtomicU64::new(1)) }
    }
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{}-{n:010}", self.prefix)).ok().map(RequestId::new)
    }
}

async fn openapi_json(State(document): State<openapi::ApiDocument>) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], document.json).into_response()
}

async fn openapi_page(State(document): State<openapi::ApiDocument>) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")], document.html).into_response()
}

/// The state of the process or the database, for probes.
#[derive(serde::Serialize, tessera_core::openapi::ToSchema)]
struct Health {
    /// `ok` or `ready`.
    #[schema(value_type = String)]
    status: &'static str,
}

/// Whether the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up", body = Health)))]
async fn healthz() -> impl IntoResponse {
    axum::Json(Health { status: "ok" })
}

/// Whether the database answers.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "The database answers", body = Health)))]
async fn readyz(State(db): State<Database>) -> Response {
    if db.is_ready().await {
        axum::Json(Health { status: "ready" }).into_response()
    } else {
        // At the probe's own pace: worth a line each time.
        tracing::warn!("not ready: the database does not answer");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "the database does not answer")
            .into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// The gateway bound to its port.
pub struct Application {
    listener: TcpListener,
    router: Router,
    cache_listener: Option<tokio::task::JoinHandle<()>>,
    usage: Arc<usage::Usage>,
    usage_flusher: tokio::task::JoinHandle<()>,
    pruner: tokio::task::JoinHandle<()>,
}

/// Deletes idempotency keys older than a day, every ten minutes.
async fn prune_idempotency_keys(db: Database) {
    let mut ticker = tokio::time::interval(Duration::from_secs(600));
    loop {
        ticker.tick().await;
        match db.prune_idempotency_keys().await {
            Ok(n) if n > 0 => tracing::info!(deleted = n, "pruned idempotency keys"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = ?e, "could not prune idempotency keys"),
        }
    }
}

impl Application {
    /// Binds the listen address (port 0 picks a free port) and builds the router.
    pub async fn build(
        config: &GatewayConfig,
        db: Database,
        modules: &[Arc<dyn Module>],
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let cache = config.cache.clone().map(|c| cache::ResponseCache::new(c, db.clone()));
        let cache_listener = cache.clone().map(|c| tokio::spawn(cache::listen(c)));
        let owners = Arc::new(owners::KeyOwners::new(db.clone(), 100_000));
        let limits = config.rate_limits.clone().map(|l| ratelimit::RateLimits::new(l, owners.clone()));
        let names: Vec<&'static str> = modules.iter().map(|m| m.name()).collect();
        let usage = usage::Usage::new(db.clone(), owners, &names);
        let usage_flusher = tokio::spawn(usage.clone().run(Duration::from_secs(5)));
        let pruner = tokio::spawn(prune_idempotency_keys(db.clone()));
        let admission = config.admission.clone().map(|admission| {
            overload::Admission::new(overload::AdmissionConfig {
                body_limit_bytes: config.body_limit_bytes,
                ..admission
            })
        });
        let gateway_metrics =
            metrics::GatewayMetrics::new(db.clone(), cache.clone(), limits.clone(), admission.clone());
        let layers = Layers { cache, rate_limits: limits, usage: Some(usage.clone()), admission };
        let router = router_with_layers(db, modules, config.body_limit_bytes, layers)
            .layer(axum::middleware::from_fn_with_state(gateway_metrics.clone(), metrics::layer));
        let router = Router::new()
            .route("/metrics", get(metrics))
            .with_state((gateway_metrics, config.metrics.clone()))
            .merge(router);
        Ok(Self { listener, router, cache_listener, usage, usage_flusher, pruner })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        // With the peer's address, for the per-address rate limit.
        let service = self.router.into_make_service_with_connect_info::<SocketAddr>();
        let served = axum::serve(self.listener, service).with_graceful_shutdown(shutdown).await;
        if let Some(listener) = self.cache_listener {
            listener.abort();
        }
        self.usage_flusher.abort();
        self.pruner.abort();
        // What the last requests counted.
        if let Err(e) = self.usage.flush().await {
            tracing::warn!(error = ?e, "could not record the last usage counts");
        }
        served
    }
}

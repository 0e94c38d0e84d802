//! The gateway's response cache against a real database, a real CDC worker (whose heartbeats keep the
//! cache on) and its listener: no answer crosses tenants or permissions, writes through the API and by
//! plain SQL are seen, a slow load racing a change leaves nothing stale, a revoked key is refused, and
//! without the worker the cache stops serving.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use serde_json::json;
use tessera_core::admin;
use tessera_gateway::cache::{self, CacheConfig, CacheLayer, ResponseCache};
use tokio::task::JoinHandle;

use crate::cdc_worker::{settings, start};
use crate::support::{BODY_LIMIT, TestApp, TestResponse, cluster, connect, modules};

/// A gateway with a cache in front of its module routes, its listener, and the CDC worker it relies on.
struct Cached {
    cache: Arc<ResponseCache>,
    listener: JoinHandle<()>,
    worker: JoinHandle<Result<(), tessera_cdc::worker::CdcError>>,
}

impl Drop for Cached {
    fn drop(&mut self) {
        self.listener.abort();
        self.worker.abort();
    }
}

fn config() -> CacheConfig {
    CacheConfig { staleness_bound: Duration::from_secs(2), ..CacheConfig::default() }
}

/// Puts a cache in front of `app`'s router and waits until it serves (the first heartbeat is back).
async fn cached(app: &mut TestApp, router: impl FnOnce(Arc<ResponseCache>) -> Router) -> Cached {
    let admin = connect(&cluster().superuser, &app.db.name).await;
    let worker = start(&settings(app), &admin).await;
    let cache = ResponseCache::new(config(), app.pool.clone());
    let listener = tokio::spawn(cache::listen(cache.clone()));
    app.router = router(cache.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cache.healthy() {
        assert!(Instant::now() < deadline, "the cache never became healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Cached { cache, listener, worker }
}

fn standard(app: &TestApp) -> impl FnOnce(Arc<ResponseCache>) -> Router + use<> {
    let pool = app.pool.clone();
    move |cache| tessera_gateway::router_with_cache(pool, &modules(), BODY_LIMIT, Some(cache))
}

/// [`cached`] in front of the gateway's own router.
async fn cached_standard(app: &mut TestApp) -> Cached {
    let router = standard(app);
    cached(app, router).await
}

fn x_cache(r: &TestResponse) -> &str {
    r.headers.get("x-cache").and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// GETs `path` until `done` holds or `within` has passed; returns the last answer.
async fn poll(
    app: &TestApp,
    path: &str,
    key: &str,
    within: Duration,
    done: impl Fn(&TestResponse) -> bool,
) -> TestResponse {
    let deadline = Instant::now() + within;
    loop {
        let r = app.get(path, key).await;
        if done(&r) || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_answers_never_cross_tenants_or_permissions() {
    let mut app = TestApp::spawn().await;
    let (a, key_a) = app.tenant("acme").await;
    let (_, key_b) = app.tenant("globex").await;
    let reader_a = app.key(a, &["crm:read"]).await;
    let hr_only_a = app.key(a, &["hr:read"]).await;
    app.create("deals", &key_a, json!({"title": "Acme deal", "stage": "won"})).await;
    app.create("deals", &key_b, json!({"title": "Globex deal"})).await;
    let _gateway = cached_standard(&mut app).await;

    let first = app.get("/v1/crm/deals", &key_a).await;
    assert_eq!((first.status, x_cache(&first)), (StatusCode::OK, "miss"));
    let again = app.get("/v1/crm/deals", &key_a).await;
    assert_eq!(x_cache(&again), "hit");
    assert_eq!(again.body, first.body);
    assert_eq!(first.body["data"][0]["title"], "Acme deal");

    // The identical request from another tenant, from a key with other scopes, from a key without the scope.
    let b = app.get("/v1/crm/deals", &key_b).await;
    assert_eq!(x_cache(&b), "miss", "another tenant never hits A's entry");
    assert_eq!(b.body["data"][0]["title"], "Globex deal");
    assert_eq!(b.body["data"].as_array().map(Vec::len), Some(1));
    let reader = app.get("/v1/crm/deals", &reader_a).await;
    assert_eq!(x_cache(&reader), "miss", "other permissions, another entry");
    assert_eq!(reader.body, first.body);
    let refused = app.get("/v1/crm/deals", &hr_only_a).await;
    refused.assert_problem(403, "insufficient_scope");
    assert_eq!(x_cache(&refused), "");
    let unknown = format!("tsk_000000000000_{}", "0".repeat(48));
    app.get("/v1/crm/deals", &unknown).await.assert_problem(401, "invalid_api_key");

    // Variants that mean different things have their own entries; the same parameters in another order
    // share one.
    let one = app.get("/v1/crm/deals?limit=1&stage=won", &key_a).await;
    assert_eq!(x_cache(&one), "miss");
    let reordered = app.get("/v1/crm/deals?stage=won&limit=1", &key_a).await;
    assert_eq!((x_cache(&reordered), &reordered.body), ("hit", &one.body));
    let other = app.get("/v1/crm/deals?stage=lead&limit=1", &key_a).await;
    assert_eq!(x_cache(&other), "miss");
    assert_eq!(other.body["data"].as_array().map(Vec::len), Some(0));
    // Errors are never kept.
    for _ in 0..2 {
        let bad = app.get("/v1/crm/deals?limit=1000", &key_a).await;
        assert_eq!((bad.status, x_cache(&bad)), (StatusCode::BAD_REQUEST, ""));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_the_api_and_by_sql_are_seen() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let deal = app.create("deals", &key, json!({"title": "Before"})).await;
    let gateway = cached_standard(&mut app).await;
    let path = format!("/v1/crm/deals/{deal}");

    assert_eq!(x_cache(&app.get(&path, &key).await), "miss");
    let hit = app.get(&path, &key).await;
    assert_eq!((x_cache(&hit), hit.body["title"].as_str()), ("hit", Some("Before")));

    // Through the API: the very next read is fresh.
    let r = app.patch(&path, &key, json!({"title": "Through the API"})).await;
    assert_eq!(r.status, StatusCode::OK);
    let after = app.get(&path, &key).await;
    assert_eq!(after.body["title"], "Through the API");
    assert_eq!(x_cache(&after), "miss");

    // By plain SQL: fresh within the bound (change event, log, listener).
    assert_eq!(x_cache(&app.get(&path, &key).await), "hit");
    let admin = connect(&cluster().superuser, &app.db.name).await;
    admin
        .execute("update crm.deals set title = 'By SQL' where id = $1::text::uuid", &[&deal])
        .await
        .expect("update");
    let seen = poll(&app, &path, &key, Duration::from_secs(2), |r| r.body["title"] == "By SQL").await;
    assert_eq!(seen.body["title"], "By SQL", "the SQL change reached the cache within the bound");
    assert!(gateway.cache.stats.hits.load(std::sync::atomic::Ordering::Relaxed) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etags_answer_if_none_match_with_304() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let deal = app.create("deals", &key, json!({"title": "Tagged"})).await;
    let _gateway = cached_standard(&mut app).await;
    let path = format!("/v1/crm/deals/{deal}");
    let first = app.get(&path, &key).await;
    let etag = first.headers.get("etag").expect("an ETag").to_str().expect("ascii").to_owned();
    assert!(etag.starts_with('"') && etag.len() > 10, "a strong ETag: {etag}");
    for _ in 0..2 {
        let request = Request::builder()
            .uri(&path)
            .header("authorization", format!("Bearer {key}"))
            .header("if-none-match", &etag)
            .body(Body::empty())
            .expect("request");
        let r = app.send(request).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
        assert_eq!(r.headers.get("etag").and_then(|v| v.to_str().ok()), Some(etag.as_str()));
    }
    app.patch(&path, &key, json!({"title": "Retagged"})).await;
    let changed = app.get(&path, &key).await;
    assert_ne!(changed.headers.get("etag").and_then(|v| v.to_str().ok()), Some(etag.as_str()));
}

/// Holds a request between the handler and the cache while it carries `x-test-delay-ms`.
async fn delay(request: axum::extract::Request, next: Next) -> axum::response::Response {
    let ms = request
        .headers()
        .get("x-test-delay-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let response = next.run(request).await;
    if let Some(ms) = ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_load_racing_a_change_leaves_no_stale_entry() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let deal = app.create("deals", &key, json!({"title": "Old"})).await;
    let pool = app.pool.clone();
    let _gateway = cached(&mut app, move |cache| {
        let crm = modules().into_iter().find(|m| m.name() == "crm").expect("crm");
        let routes =
            Router::new().nest("/crm", crm.routes(pool.for_module("crm")).into()).layer(from_fn(delay));
        let layer = CacheLayer { cache, modules: Arc::from(vec!["crm"]) };
        Router::new().nest("/v1", routes.layer(from_fn_with_state(layer, cache::layer)))
    })
    .await;
    let path = format!("/v1/crm/deals/{deal}");

    // The slow load reads "Old", then waits; meanwhile a change commits by SQL and reaches the cache.
    let slow = {
        let (router, path, key) = (app.router.clone(), path.clone(), key.clone());
        tokio::spawn(async move {
            let request = Request::builder()
                .method(Method::GET)
                .uri(&path)
                .header("authorization", format!("Bearer {key}"))
                .header("x-test-delay-ms", "1500")
                .body(Body::empty())
                .expect("request");
            tower::ServiceExt::oneshot(router, request).await.expect("infallible")
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    admin
        .execute("update crm.deals set title = 'New' where id = $1::text::uuid", &[&deal])
        .await
        .expect("update");
    let slow = slow.await.expect("the slow load");
    assert_eq!(slow.status(), StatusCode::OK);
    let body = axum::body::to_bytes(slow.into_body(), 1 << 20).await.expect("body");
    let old: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(old["title"], "Old", "the slow load read before the change");

    // What the slow load stored is never served: every read from now on is fresh.
    for _ in 0..5 {
        let r = app.get(&path, &key).await;
        assert_eq!(r.body["title"], "New", "x-cache: {}", x_cache(&r));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_though_its_answers_were_cached() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    app.create("deals", &key, json!({"title": "Secret"})).await;
    let _gateway = cached_standard(&mut app).await;
    assert_eq!(x_cache(&app.get("/v1/crm/deals", &key).await), "miss");
    assert_eq!(x_cache(&app.get("/v1/crm/deals", &key).await), "hit");

    let prefix = key.split('_').nth(1).expect("prefix").to_owned();
    admin::revoke_api_key(&mut app.owner, tenant, &prefix).await.expect("revoke");
    let refused =
        poll(&app, "/v1/crm/deals", &key, Duration::from_secs(2), |r| r.status == StatusCode::UNAUTHORIZED)
            .await;
    refused.assert_problem(401, "invalid_api_key");
    for _ in 0..3 {
        app.get("/v1/crm/deals", &key).await.assert_problem(401, "invalid_api_key");
    }

    // A module disabled for the tenant: refused too, cached answers or not.
    let key2 = app.key(tenant, &["crm:read"]).await;
    assert_eq!(app.get("/v1/crm/deals", &key2).await.status, StatusCode::OK);
    assert_eq!(x_cache(&app.get("/v1/crm/deals", &key2).await), "hit");
    admin::set_modules(&mut app.owner, tenant, &["crm"], false).await.expect("disable");
    let off =
        poll(&app, "/v1/crm/deals", &key2, Duration::from_secs(2), |r| r.status == StatusCode::FORBIDDEN)
            .await;
    off.assert_problem(403, "module_not_enabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_cdc_worker_the_cache_stops_serving() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let deal = app.create("deals", &key, json!({"title": "Before"})).await;
    let gateway = cached_standard(&mut app).await;
    let path = format!("/v1/crm/deals/{deal}");
    app.get(&path, &key).await;
    assert_eq!(x_cache(&app.get(&path, &key).await), "hit");

    gateway.worker.abort();
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway.cache.healthy() {
        assert!(Instant::now() < deadline, "still healthy without a worker");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A change the log will not carry: the cache must not hide it.
    let admin = connect(&cluster().superuser, &app.db.name).await;
    admin
        .execute("update crm.deals set title = 'Unlogged' where id = $1::text::uuid", &[&deal])
        .await
        .expect("update");
    let r = app.get(&path, &key).await;
    assert_eq!((x_cache(&r), r.body["title"].as_str()), ("bypass", Some("Unlogged")));
}

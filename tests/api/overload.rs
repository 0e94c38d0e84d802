//! Load shedding through the gateway's router: with every place taken, a request under `/v1` waits its
//! queue time and is refused with `503 overloaded` and `Retry-After`, while the probes still answer; the
//! place comes back when the request holding it finishes.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::json;
use tessera_gateway::overload::{Admission, AdmissionConfig};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Transaction};
use tower::ServiceExt;

use crate::support::{BODY_LIMIT, TestApp, cluster, connect, modules};

/// Takes the gateway's only place: locks the company's row through `holder` (the cluster's superuser: row
/// security would hide the row from the owner role), then sends a PATCH of it with `key` that blocks on the
/// lock inside its transaction, holding its place. Rolling the returned transaction back lets it finish.
async fn hold_the_only_place<'a>(
    app: &TestApp,
    admission: &Admission,
    company: &str,
    key: &str,
    holder: &'a mut Client,
) -> (Transaction<'a>, JoinHandle<StatusCode>) {
    let lock = holder.transaction().await.expect("begin");
    let locked = lock
        .execute("select 1 from crm.companies where id = $1::text::uuid for update", &[&company])
        .await
        .expect("lock the row");
    assert_eq!(locked, 1);
    let router = app.router.clone();
    let (path, key) = (format!("/v1/crm/companies/{company}"), key.to_owned());
    let held = tokio::spawn(async move {
        let request = Request::patch(&path)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Body::from(json!({"name": "Acme Corp"}).to_string()))
            .expect("request");
        router.oneshot(request).await.expect("infallible").status()
    });
    while admission.in_flight() < 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (lock, held)
}

#[tokio::test]
async fn a_full_gateway_refuses_fast_with_503_and_probes_still_answer() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let company = app.create("companies", &key, json!({"name": "Acme"})).await;
    let admission = Admission::new(AdmissionConfig::new(1, Duration::from_millis(20)));
    let layers = tessera_gateway::Layers { admission: Some(admission.clone()), ..Default::default() };
    app.router = tessera_gateway::router_with_layers(app.pool.clone(), &modules(), BODY_LIMIT, layers);

    let mut holder = connect(&cluster().superuser, &app.db.name).await;
    let (lock, held) = hold_the_only_place(&app, &admission, &company, &key, &mut holder).await;
    let path = format!("/v1/crm/companies/{company}");

    let started = std::time::Instant::now();
    let refused = app.get(&path, &key).await;
    refused.assert_problem(503, "overloaded");
    assert_eq!(refused.headers["retry-after"], "1");
    assert!(started.elapsed() < Duration::from_millis(500), "refused after its queue time, not held");
    // Probes are outside the shedding.
    assert_eq!(app.call(Method::GET, "/healthz", None, None).await.status, StatusCode::OK);
    assert_eq!(app.call(Method::GET, "/readyz", None, None).await.status, StatusCode::OK);
    assert_eq!(admission.shed_total(), 1);

    lock.rollback().await.expect("release");
    assert_eq!(held.await.expect("task"), StatusCode::OK);
    assert_eq!(admission.in_flight(), 0);
    assert_eq!(app.get(&path, &key).await.body["name"], "Acme Corp");
}

/// The rate limits that need no database run before a request queues for a place: a key over its limit is
/// refused with 429 at once even while the gateway is full; a key whose owner is not yet known queues like
/// any request (its owner is looked up only once it holds a place), and gets 503 when none comes free.
#[tokio::test]
async fn rate_limits_refuse_before_the_queue_and_unknown_keys_wait_for_a_place() {
    use tessera_gateway::ratelimit::{Rate, RateLimitConfig, RateLimits};
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    let writer = app.key(tenant, &["crm:write"]).await;
    let stranger = app.key(tenant, &["crm:read"]).await;
    let company = app.create("companies", &writer, json!({"name": "Acme"})).await;
    let admission = Admission::new(AdmissionConfig::new(1, Duration::from_millis(20)));
    let owners = std::sync::Arc::new(tessera_gateway::owners::KeyOwners::new(app.pool.clone(), 1000));
    let config = RateLimitConfig {
        per_ip: None,
        per_key: Some(Rate { per_second: 0.01, burst: 1 }),
        per_tenant: None,
        ..RateLimitConfig::default()
    };
    let layers = tessera_gateway::Layers {
        admission: Some(admission.clone()),
        rate_limits: Some(RateLimits::new(config, owners)),
        ..Default::default()
    };
    app.router = tessera_gateway::router_with_layers(app.pool.clone(), &modules(), BODY_LIMIT, layers);
    let path = format!("/v1/crm/companies/{company}");
    // The key's one request: its owner is now known, and its budget spent.
    assert_eq!(app.get(&path, &key).await.status, StatusCode::OK);

    let mut holder = connect(&cluster().superuser, &app.db.name).await;
    let (lock, held) = hold_the_only_place(&app, &admission, &company, &writer, &mut holder).await;
    // Over its limit: 429 at once, without queueing.
    app.get(&path, &key).await.assert_problem(429, "rate_limited");
    assert_eq!(admission.shed_total(), 0, "the refused request never queued");
    // A key seen for the first time queues for a place (its owner lookup needs one) and is shed.
    app.get(&path, &stranger).await.assert_problem(503, "overloaded");
    assert_eq!(admission.shed_total(), 1);

    lock.rollback().await.expect("release");
    assert_eq!(held.await.expect("task"), StatusCode::OK);
    // With a place free, the new key is looked up and limited like any other.
    let r = app.get(&path, &stranger).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.headers["ratelimit-remaining"], "0");
    app.get(&path, &stranger).await.assert_problem(429, "rate_limited");
}

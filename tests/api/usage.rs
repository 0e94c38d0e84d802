//! Usage for billing: successful requests counted per tenant, module and day, added to the database and read
//! back by the tenant itself (scope usage:read), never another tenant's.

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::json;
use tessera_gateway::owners::KeyOwners;
use tessera_gateway::usage::Usage;

use crate::support::{BODY_LIMIT, TestApp, modules};

/// Puts the usage layer in front of the app's router, and returns it to flush.
fn counted(app: &mut TestApp) -> Arc<Usage> {
    let owners = Arc::new(KeyOwners::new(app.pool.clone(), 1000));
    let names: Vec<&'static str> = modules().iter().map(|m| m.name()).collect();
    let usage = Usage::new(app.pool.clone(), owners, &names);
    let layers = tessera_gateway::Layers { usage: Some(usage.clone()), ..Default::default() };
    app.router = tessera_gateway::router_with_layers(app.pool.clone(), &modules(), BODY_LIMIT, layers);
    usage
}

#[tokio::test]
async fn requests_are_counted_per_tenant_and_module_and_read_back_by_the_tenant() {
    let mut app = TestApp::spawn().await;
    let (acme, key_a) = app.tenant("acme").await;
    let (_, key_b) = app.tenant("globex").await;
    let reader_a = app.key(acme, &["usage:read"]).await;
    let usage = counted(&mut app);

    for _ in 0..3 {
        assert_eq!(app.get("/v1/crm/deals", &key_a).await.status, StatusCode::OK);
    }
    assert_eq!(app.get("/v1/hr/employees", &key_a).await.status, StatusCode::OK);
    assert_eq!(
        app.post("/v1/crm/companies", &key_a, json!({"name": "Counted"})).await.status,
        StatusCode::CREATED
    );
    // Refused requests are not usage.
    app.get("/v1/crm/deals?limit=0", &key_a).await.assert_problem(400, "invalid_parameter");
    assert_eq!(app.get("/v1/crm/deals", &key_b).await.status, StatusCode::OK);
    usage.flush().await.expect("flush");
    // Counted again after a flush: added, not replaced.
    assert_eq!(app.get("/v1/crm/deals", &key_a).await.status, StatusCode::OK);
    usage.flush().await.expect("flush");

    let r = app.get("/v1/usage", &reader_a).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let rows: Vec<(String, i64)> = r.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|row| (row["module"].as_str().unwrap_or("").to_owned(), row["requests"].as_i64().unwrap_or(0)))
        .collect();
    assert_eq!(rows, [("crm".to_owned(), 5), ("hr".to_owned(), 1)], "acme's own, per module");

    // A key without the scope is refused; bad dates are named; another tenant sees only its own (none).
    let crm_only = app.key(acme, &["crm:read"]).await;
    app.get("/v1/usage", &crm_only).await.assert_problem(403, "insufficient_scope");
    app.get("/v1/usage?from=yesterday", &reader_a).await.assert_problem(400, "invalid_parameter");
    app.get("/v1/usage?from=2026-01-02&to=2026-01-01", &reader_a)
        .await
        .assert_problem(400, "invalid_parameter");
    app.get("/v1/usage?color=blue", &reader_a).await.assert_problem(400, "unknown_parameter");
    let (initech, _) = app.tenant("initech").await;
    let reader_other = app.key(initech, &["usage:read"]).await;
    let other = app.get("/v1/usage", &reader_other).await;
    assert_eq!(other.body["data"], json!([]), "{}", other.body);
}

#[tokio::test]
async fn keys_show_when_they_were_last_used() {
    let mut app = TestApp::spawn().await;
    let (acme, key) = app.tenant("acme").await;
    let idle = app.key(acme, &["crm:read"]).await;
    let usage = counted(&mut app);

    let last_used = async |app: &mut TestApp| -> Vec<(String, Option<time::OffsetDateTime>)> {
        tessera_core::admin::list_api_keys(&mut app.owner, acme)
            .await
            .expect("keys")
            .into_iter()
            .map(|k| (k.prefix, k.last_used_at))
            .collect()
    };
    let before = time::OffsetDateTime::now_utc();
    assert!(last_used(&mut app).await.iter().all(|(_, at)| at.is_none()), "no key used yet");
    assert_eq!(app.get("/v1/crm/deals", &key).await.status, StatusCode::OK);
    // A refused request is no use of the key.
    app.get("/v1/crm/deals?limit=0", &idle).await.assert_problem(400, "invalid_parameter");
    usage.flush().await.expect("flush");
    let keys = last_used(&mut app).await;
    let used: Vec<&str> = keys.iter().filter(|(_, at)| at.is_some()).map(|(p, _)| p.as_str()).collect();
    assert_eq!(used, [&key[4..16]], "only the key that answered a request: {keys:?}");
    let stamped = keys.iter().find_map(|(_, at)| *at).expect("stamped");
    assert!(stamped >= before - time::Duration::seconds(1), "{stamped} is the time of the request");
}

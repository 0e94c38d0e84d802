//! A restarted database: committed data survives, requests during the outage fail fast with 503, and the
//! gateway recovers on its own. The test runs its own cluster, since it crashes it.

use std::time::{Duration, Instant};

use serde_json::json;
use tessera_core::admin;
use tessera_core::apikey::Scope;
use tessera_core::bootstrap;
use tessera_core::db::Database;
use tessera_core::tenant::TenantSlug;

use crate::support::{BODY_LIMIT, modules, private_cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_recovers_when_postgres_crashes_and_restarts() {
    let (cluster, endpoint, _watchdog) = tokio::task::block_in_place(|| private_cluster(true));
    let mods = modules();
    let refs: Vec<&dyn tessera_core::Module> = mods.iter().map(|m| m.as_ref()).collect();
    bootstrap::provision(&endpoint, "postgres", "tessera", &refs).await.expect("provision");
    let mut owner = bootstrap::connect(&endpoint.pg_config("tessera_owner", "tessera")).await.expect("owner");
    let tenant =
        admin::create_tenant(&mut owner, &TenantSlug::parse("acme").expect("slug"), "Acme", &["crm"])
            .await
            .expect("tenant");
    let key = admin::create_api_key(&mut owner, tenant.id, "t", &[Scope::parse("crm:write").expect("scope")])
        .await
        .expect("key")
        .1;
    drop(owner);
    let db = Database::new(endpoint.pg_config("tessera_app", "tessera"), 2).expect("pool");
    let router = tessera_gateway::router(db, &mods, BODY_LIMIT);
    let call = async |method: &str, path: &str, body: Option<serde_json::Value>| {
        use tower::ServiceExt;
        let mut req = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {key}"));
        let body = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                axum::body::Body::from(b.to_string())
            }
            None => axum::body::Body::empty(),
        };
        let response = router.clone().oneshot(req.body(body).expect("request")).await.expect("infallible");
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
        (status, serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default())
    };

    let (status, created) = call("POST", "/v1/crm/companies", Some(json!({"name": "Survivor"}))).await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().expect("id").to_owned();

    // Crash it (no shutdown checkpoint) and bring it back on the same socket.
    tokio::task::block_in_place(|| cluster.stop(true)).expect("crash");
    let started = Instant::now();
    let (status, body) = call("GET", &format!("/v1/crm/companies/{id}"), None).await;
    assert_eq!(status, 503, "while the database is down: {body}");
    assert_eq!(body["code"], "service_unavailable");
    assert!(started.elapsed() < Duration::from_secs(6), "refused fast, not hung");
    let again = tokio::task::block_in_place(|| cluster.start()).expect("start again");
    assert_eq!(again, endpoint, "the same port and socket as before");

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = call("GET", &format!("/v1/crm/companies/{id}"), None).await;
        if status == 200 {
            assert_eq!(body["name"], "Survivor", "the committed row survived the crash");
            break;
        }
        assert!(Instant::now() < deadline, "the gateway did not recover: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = call("POST", "/v1/crm/companies", Some(json!({"name": "After"}))).await;
    assert_eq!(status, 201, "writes work again");

    // `pg_ctl restart -m immediate` under the running gateway: the same, in one step.
    let restarted = tokio::task::block_in_place(|| cluster.restart(true)).expect("restart");
    assert_eq!(restarted, endpoint);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = call("GET", "/v1/crm/companies", None).await;
        if status == 200 {
            let names: Vec<&str> =
                body["data"].as_array().expect("data").iter().filter_map(|c| c["name"].as_str()).collect();
            assert_eq!(names, ["Survivor", "After"]);
            break;
        }
        assert!(Instant::now() < deadline, "the gateway did not recover: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! Idempotency-Key on POST: a replay answers the first response and creates nothing; another body with the
//! same key is refused; a key still held is refused; keys are per tenant; a request that failed frees its
//! key; concurrent identical requests create one record.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};

use crate::support::{TestApp, TestResponse, cluster, connect};

async fn post(app: &TestApp, key: &str, idempotency_key: &str, body: Value) -> TestResponse {
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/crm/companies")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .header("idempotency-key", idempotency_key)
        .body(Body::from(body.to_string()))
        .expect("request");
    app.send(request).await
}

fn replayed(r: &TestResponse) -> bool {
    r.headers.get("idempotent-replayed").is_some()
}

#[tokio::test]
async fn a_replay_answers_the_first_response_and_creates_nothing() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let first = post(&app, &key, "order-1", json!({"name": "Initech"})).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert!(!replayed(&first));
    let again = post(&app, &key, "order-1", json!({"name": "Initech"})).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert!(replayed(&again));
    assert_eq!(again.body, first.body, "the same record, the same answer");
    assert_eq!(again.headers.get("location"), first.headers.get("location"));
    assert_eq!(app.count_all("crm.companies").await, 1);

    // The same key with another body: refused, nothing written.
    post(&app, &key, "order-1", json!({"name": "Initrode"}))
        .await
        .assert_problem(422, "idempotency_key_reused");
    // Another key: another record.
    assert_eq!(post(&app, &key, "order-2", json!({"name": "Initrode"})).await.status, StatusCode::CREATED);
    assert_eq!(app.count_all("crm.companies").await, 2);
    // A malformed key.
    post(&app, &key, "", json!({"name": "x"})).await.assert_problem(400, "invalid_idempotency_key");
}

#[tokio::test]
async fn keys_belong_to_their_tenant() {
    let mut app = TestApp::spawn().await;
    let (_, key_a) = app.tenant("acme").await;
    let (_, key_b) = app.tenant("globex").await;
    let a = post(&app, &key_a, "shared-key", json!({"name": "Acme's"})).await;
    assert_eq!(a.status, StatusCode::CREATED);
    // B's identical key and body: its own request, never A's replayed answer.
    let b = post(&app, &key_b, "shared-key", json!({"name": "Acme's"})).await;
    assert_eq!(b.status, StatusCode::CREATED);
    assert!(!replayed(&b));
    assert_ne!(a.body["id"], b.body["id"]);
    // And another body under B's key is judged against B's request only.
    post(&app, &key_b, "shared-key", json!({"name": "other"}))
        .await
        .assert_problem(422, "idempotency_key_reused");
    assert!(replayed(&post(&app, &key_a, "shared-key", json!({"name": "Acme's"})).await));
}

#[tokio::test]
async fn a_failed_request_frees_its_key_and_a_held_key_is_refused() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    // Refused (invalid body): nothing took effect, so the key may be used again, with a corrected body.
    post(&app, &key, "k-1", json!({"name": ""})).await.assert_problem(422, "too_short");
    assert_eq!(post(&app, &key, "k-1", json!({"name": "Fixed"})).await.status, StatusCode::CREATED);

    // A key another request holds right now (as a concurrent request would): refused without running.
    let admin = connect(&cluster().superuser, &app.db.name).await;
    let fingerprint_of_other = vec![0u8; 32];
    admin
        .execute(
            "insert into core.idempotency_keys (tenant_id, owner_role, key, fingerprint, locked_until)
             values ($1, 'tessera_crm', 'k-2', $2, now() + interval '1 minute')",
            &[&tenant.as_uuid(), &fingerprint_of_other],
        )
        .await
        .expect("held key");
    // (The held request's fingerprint differs, which is checked first.)
    post(&app, &key, "k-2", json!({"name": "Held"})).await.assert_problem(422, "idempotency_key_reused");
    let r = post(&app, &key, "k-3", json!({"name": "Third"})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    // Now hold k-3 as if its request were still running, its response not yet recorded.
    admin
        .execute(
            "update core.idempotency_keys set locked_until = now() + interval '1 minute', response_status = null
              where key = 'k-3'",
            &[],
        )
        .await
        .expect("hold");
    post(&app, &key, "k-3", json!({"name": "Third"})).await.assert_problem(409, "idempotency_key_in_flight");
    // Its holder died after its writes committed, before the response was recorded: never run again.
    admin
        .execute(
            "update core.idempotency_keys set locked_until = now() - interval '1 second' where key = 'k-3'",
            &[],
        )
        .await
        .expect("expire");
    post(&app, &key, "k-3", json!({"name": "Third"}))
        .await
        .assert_problem(409, "idempotency_request_unfinished");
    let companies = app.count_all("crm.companies").await;
    assert_eq!(companies, 2, "Fixed and Third, once each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_requests_create_one_record() {
    let mut app = TestApp::spawn_with_pool(8).await;
    let (_, key) = app.tenant("acme").await;
    let app = Arc::new(app);
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let (app, key) = (app.clone(), key.clone());
            tokio::spawn(async move { post(&app, &key, "race", json!({"name": "Once"})).await })
        })
        .collect();
    let mut created = Vec::new();
    for task in tasks {
        let r = task.await.expect("request");
        match r.status {
            StatusCode::CREATED => created.push(r.body["id"].clone()),
            StatusCode::CONFLICT => r.assert_problem(409, "idempotency_key_in_flight"),
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert!(!created.is_empty());
    assert!(created.iter().all(|id| *id == created[0]), "every success is the one record: {created:?}");
    assert_eq!(app.count_all("crm.companies").await, 1);
}

#[tokio::test]
async fn a_request_whose_claim_was_taken_over_takes_no_effect() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    // The key is held by another claim (the request that took it over).
    admin
        .execute(
            "insert into core.idempotency_keys (tenant_id, owner_role, key, fingerprint, locked_until, claim)
             values ($1, 'tessera_crm', 'stolen', $2, now() + interval '1 minute', gen_random_uuid())",
            &[&tenant.as_uuid(), &vec![0u8; 32]],
        )
        .await
        .expect("held");
    // The old holder wakes up and writes: refused, and nothing of it stays.
    let held = tessera_core::db::IdempotentRequest { key: "stolen".into(), claim: uuid::Uuid::new_v4() };
    let presented = tessera_core::apikey::parse(&key).expect("key");
    let db = app.pool.for_module("crm");
    let result = tessera_core::db::IDEMPOTENCY_KEY
        .scope(held, async {
            db.write(&presented, async |tx| {
                tx.execute("insert into crm.companies (name) values ('Twice')", &[]).await?;
                Ok(())
            })
            .await
        })
        .await;
    let error = result.expect_err("refused");
    assert_eq!(error.code(), "idempotency_key_in_flight");
    assert_eq!(app.count_all("crm.companies").await, 0, "its write was rolled back");
}

#[tokio::test]
async fn keys_belong_to_the_module_that_used_them() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    assert_eq!(post(&app, &key, "shared", json!({"name": "A company"})).await.status, StatusCode::CREATED);
    // The same key on another module's route is that module's own: no 422, no replay.
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/hr/employees")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .header("idempotency-key", "shared")
        .body(Body::from(json!({"name": "Ana", "email": "ana@acme.example"}).to_string()))
        .expect("request");
    let hr = app.send(request).await;
    assert_eq!(hr.status, StatusCode::CREATED, "{}", hr.body);
    assert!(!replayed(&hr));
    // And the CRM's role reads only the CRM's key, not HR's stored answer.
    let admin = connect(&cluster().superuser, &app.db.name).await;
    admin.batch_execute("begin; set local role tessera_crm").await.expect("role");
    admin
        .execute("select set_config('tessera.tenant_id', $1, true)", &[&tenant.as_uuid().to_string()])
        .await
        .expect("bind");
    let seen: i64 = admin
        .query_one("select count(*) from core.idempotency_keys where key = 'shared'", &[])
        .await
        .expect("count")
        .get(0);
    admin.batch_execute("rollback").await.expect("rollback");
    assert_eq!(seen, 1, "its own key only");
}

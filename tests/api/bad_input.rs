//! Bad input never yields a 500 and never writes anything: each gets its 4xx problem+json with a stable code
//! and, where there is one, the field it is about.

use axum::body::Body;
use axum::http::{Method, Request};
use serde_json::json;

use crate::support::{BODY_LIMIT, TestApp};

async fn rows(app: &TestApp) -> i64 {
    app.count_all("crm.companies").await
        + app.count_all("crm.contacts").await
        + app.count_all("crm.deals").await
}

fn raw(
    method: Method,
    path: &str,
    key: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path).header("authorization", format!("Bearer {key}"));
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    b.body(body.into()).expect("request")
}

#[tokio::test]
async fn malformed_bodies_are_refused_before_anything_is_written() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let before = rows(&app).await;

    let cases: Vec<(Option<&str>, Vec<u8>, u16, &str)> = vec![
        (Some("application/json"), b"{\"title\": ".to_vec(), 400, "malformed_json"),
        (Some("application/json"), b"not json".to_vec(), 400, "malformed_json"),
        (Some("application/json"), b"".to_vec(), 400, "malformed_json"),
        (Some("application/json"), b"[{\"title\":\"x\"}]".to_vec(), 400, "invalid_body"),
        (Some("application/json"), b"\"title\"".to_vec(), 400, "invalid_body"),
        (Some("application/json"), b"null".to_vec(), 400, "invalid_body"),
        (Some("text/plain"), b"{\"title\":\"x\"}".to_vec(), 415, "unsupported_media_type"),
        (None, b"{\"title\":\"x\"}".to_vec(), 415, "unsupported_media_type"),
    ];
    for (ct, body, status, code) in cases {
        let r = app.send(raw(Method::POST, "/v1/crm/deals", &key, ct, body.clone())).await;
        r.assert_problem(status, code);
    }

    let mut big = b"{\"title\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'x', BODY_LIMIT + 1));
    big.extend(b"\"}");
    let r = app.send(raw(Method::POST, "/v1/crm/deals", &key, Some("application/json"), big)).await;
    r.assert_problem(413, "body_too_large");

    assert_eq!(rows(&app).await, before);
}

#[tokio::test]
async fn invalid_fields_are_named_and_nothing_is_written() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let company = app.create("companies", &key, json!({"name": "Acme", "domain": "acme.example"})).await;
    let before = rows(&app).await;

    let cases = vec![
        ("deals", json!({"title": "x", "bogus": 1}), "unknown_field", "bogus"),
        (
            "deals",
            json!({"title": "x", "tenant_id": "0190a000-0000-7000-8000-000000000001"}),
            "unknown_field",
            "tenant_id",
        ),
        ("deals", json!({"title": "x", "id": "0190a000-0000-7000-8000-000000000001"}), "unknown_field", "id"),
        ("deals", json!({}), "missing_field", "title"),
        ("deals", json!({"title": null}), "missing_field", "title"),
        ("deals", json!({"title": "x", "stage": null}), "missing_field", "stage"),
        ("deals", json!({"title": 5}), "invalid_type", "title"),
        ("deals", json!({"title": ["x"]}), "invalid_type", "title"),
        ("deals", json!({"title": "x", "amount": true}), "invalid_type", "amount"),
        ("deals", json!({"title": "x", "amount": "-5"}), "invalid_value", "amount"),
        ("deals", json!({"title": "x", "amount": "1.234"}), "invalid_value", "amount"),
        ("deals", json!({"title": "x", "amount": "12345678901234567"}), "invalid_value", "amount"),
        ("deals", json!({"title": "x", "amount": 1e300}), "invalid_value", "amount"),
        ("deals", json!({"title": "x", "stage": "closed"}), "invalid_value", "stage"),
        ("deals", json!({"title": "x", "currency": "usd"}), "invalid_value", "currency"),
        ("deals", json!({"title": "x", "company_id": "not-a-uuid"}), "invalid_value", "company_id"),
        ("deals", json!({"title": "x", "company_id": 42}), "invalid_type", "company_id"),
        (
            "deals",
            json!({"title": "x", "expected_close_date": "2027-02-30"}),
            "invalid_value",
            "expected_close_date",
        ),
        ("deals", json!({"title": "x", "owner_email": "nobody"}), "invalid_value", "owner_email"),
        ("deals", json!({"title": "x".repeat(201)}), "too_long", "title"),
        ("deals", json!({"title": "   "}), "too_short", "title"),
        ("companies", json!({"name": "y".repeat(201)}), "too_long", "name"),
        ("companies", json!({"name": "Acme", "domain": "not a domain"}), "invalid_value", "domain"),
        ("contacts", json!({"first_name": "z".repeat(101)}), "too_long", "first_name"),
        ("contacts", json!({"first_name": "Z", "email": "two@@at.example"}), "invalid_value", "email"),
        ("contacts", json!({"last_name": "only"}), "missing_field", "first_name"),
    ];
    for (collection, body, code, field) in cases {
        let r = app.post(&format!("/v1/crm/{collection}"), &key, body.clone()).await;
        r.assert_problem(422, code);
        assert_eq!(r.field(), field, "for {body}");
        assert!(
            r.body["detail"].as_str().expect("detail").contains(field),
            "detail names the field: {}",
            r.body
        );
    }

    // The same checks hold for partial updates.
    let deal = app.create("deals", &key, json!({"title": "Anvils", "company_id": company})).await;
    let before = before + 1;
    for (body, code, field) in [
        (json!({"title": null}), "missing_field", "title"),
        (json!({"amount": null}), "missing_field", "amount"),
        (json!({"stage": "nope"}), "invalid_value", "stage"),
        (json!({"nope": 1}), "unknown_field", "nope"),
    ] {
        let r = app.patch(&format!("/v1/crm/deals/{deal}"), &key, body).await;
        r.assert_problem(422, code);
        assert_eq!(r.field(), field);
    }
    let unchanged = app.get(&format!("/v1/crm/deals/{deal}"), &key).await;
    assert_eq!(unchanged.body["title"], "Anvils");
    assert_eq!(rows(&app).await, before);
}

#[tokio::test]
async fn references_and_duplicates_are_refused_by_the_database_and_named() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    app.create("companies", &key, json!({"name": "Acme", "domain": "acme.example"})).await;
    app.create("contacts", &key, json!({"first_name": "Wile", "email": "wile@acme.example"})).await;
    let before = rows(&app).await;

    let dup = app.post("/v1/crm/companies", &key, json!({"name": "Other", "domain": "ACME.example"})).await;
    dup.assert_problem(409, "already_exists");
    assert_eq!(dup.field(), "domain");
    let dup =
        app.post("/v1/crm/contacts", &key, json!({"first_name": "W", "email": "WILE@acme.example"})).await;
    dup.assert_problem(409, "already_exists");
    assert_eq!(dup.field(), "email");

    let missing = "0190a000-0000-7000-8000-0000000000ff";
    let r = app.post("/v1/crm/deals", &key, json!({"title": "x", "company_id": missing})).await;
    r.assert_problem(422, "invalid_reference");
    assert_eq!(r.field(), "company_id");
    let r = app.post("/v1/crm/deals", &key, json!({"title": "x", "contact_id": missing})).await;
    r.assert_problem(422, "invalid_reference");
    assert_eq!(r.field(), "contact_id");

    for body in [&dup.body, &r.body] {
        let text = body.to_string();
        for internal in ["constraint", "violates", "crm.", "SQLSTATE", "tenant_id", "postgres"] {
            assert!(!text.contains(internal), "{internal:?} leaked: {text}");
        }
    }
    assert_eq!(rows(&app).await, before);
}

#[tokio::test]
async fn bad_ids_and_query_parameters_are_refused() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    for path in ["/v1/crm/deals/nope", "/v1/crm/deals/1234", "/v1/crm/companies/0190a000-0000-7000-8000"] {
        let r = app.get(path, &key).await;
        r.assert_problem(400, "invalid_parameter");
        assert_eq!(r.field(), "id");
    }
    let r = app.patch("/v1/crm/deals/nope", &key, json!({"title": "x"})).await;
    r.assert_problem(400, "invalid_parameter");
    let r = app.delete("/v1/crm/contacts/nope", &key).await;
    r.assert_problem(400, "invalid_parameter");

    for (query, code, field) in [
        ("limit=0", "invalid_parameter", "limit"),
        ("limit=101", "invalid_parameter", "limit"),
        ("limit=ten", "invalid_parameter", "limit"),
        ("after=garbage", "invalid_parameter", "after"),
        ("stage=closed", "invalid_parameter", "stage"),
        ("company_id=nope", "invalid_parameter", "company_id"),
        ("tenant_id=0190a000-0000-7000-8000-000000000001", "unknown_parameter", "tenant_id"),
        ("stage=won&stage=lost", "invalid_parameter", "stage"),
    ] {
        let r = app.get(&format!("/v1/crm/deals?{query}"), &key).await;
        r.assert_problem(400, code);
        assert_eq!(r.field(), field, "for {query}");
    }
}

#[tokio::test]
async fn missing_malformed_revoked_and_underscoped_keys_are_refused() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    let before = rows(&app).await;

    let r = app.call(Method::GET, "/v1/crm/deals", None, None).await;
    r.assert_problem(401, "missing_api_key");
    assert!(r.headers.contains_key("www-authenticate"));

    for bad in ["nonsense", "tsk_123", &key[..key.len() - 1], &key.to_uppercase()] {
        app.get("/v1/crm/deals", bad).await.assert_problem(401, "malformed_api_key");
    }
    let basic = Request::builder()
        .uri("/v1/crm/deals")
        .header("authorization", format!("Basic {key}"))
        .body(Body::empty())
        .expect("request");
    app.send(basic).await.assert_problem(401, "malformed_api_key");

    // Well-formed but unknown: right prefix with a wrong secret, and an unknown prefix.
    let mut wrong_secret = key.clone();
    wrong_secret.replace_range(key.len() - 4.., "0000");
    app.get("/v1/crm/deals", &wrong_secret).await.assert_problem(401, "invalid_api_key");
    app.get("/v1/crm/deals", &format!("tsk_000000000000_{}", "0".repeat(48)))
        .await
        .assert_problem(401, "invalid_api_key");

    let reader = app.key(tenant, &["crm:read"]).await;
    assert_eq!(app.get("/v1/crm/deals", &reader).await.status, 200);
    app.post("/v1/crm/deals", &reader, json!({"title": "x"})).await.assert_problem(403, "insufficient_scope");
    let other_module = app.key(tenant, &["hr:write"]).await;
    app.get("/v1/crm/deals", &other_module).await.assert_problem(403, "insufficient_scope");

    let prefix = key.split('_').nth(1).expect("prefix").to_owned();
    tessera_core::admin::revoke_api_key(&mut app.owner, tenant, &prefix).await.expect("revoke");
    app.get("/v1/crm/deals", &key).await.assert_problem(401, "invalid_api_key");
    app.post("/v1/crm/deals", &key, json!({"title": "x"})).await.assert_problem(401, "invalid_api_key");

    assert_eq!(rows(&app).await, before);
}

#[tokio::test]
async fn a_tenant_without_the_module_or_suspended_is_refused() {
    let mut app = TestApp::spawn().await;
    let slug = tessera_core::tenant::TenantSlug::parse("nocrm").expect("slug");
    let tenant =
        tessera_core::admin::create_tenant(&mut app.owner, &slug, "No CRM", &[]).await.expect("tenant");
    let key = app.key(tenant.id, &["crm:write"]).await;
    let r = app.get("/v1/crm/deals", &key).await;
    r.assert_problem(403, "module_not_enabled");
    assert!(r.body.get("data").is_none(), "a refused read returns no rows: {}", r.body);
    assert!(r.body["detail"].as_str().expect("detail").contains("crm"));

    let (acme, acme_key) = app.tenant("acme").await;
    app.owner
        .execute("update core.tenants set status = 'suspended' where id = $1", &[&acme.as_uuid()])
        .await
        .expect("suspend");
    let r = app.get("/v1/crm/deals", &acme_key).await;
    r.assert_problem(403, "tenant_suspended");
    assert!(r.body.get("data").is_none(), "a refused read returns no rows: {}", r.body);
}

#[tokio::test]
async fn nul_characters_odd_paths_and_out_of_range_values_are_refused_cleanly() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let before = rows(&app).await;
    let r = app.post("/v1/crm/companies", &key, json!({"name": "a\u{0}b"})).await;
    r.assert_problem(422, "invalid_value");
    assert_eq!(r.field(), "name");
    app.get("/v1/crm/companies?domain=a%00b", &key).await.assert_problem(400, "invalid_parameter");
    let r = app.get("/v1/crm/deals/%FF", &key).await;
    r.assert_problem(400, "invalid_parameter");
    assert_eq!(r.field(), "id");
    let r =
        app.post("/v1/crm/deals", &key, json!({"title": "x", "expected_close_date": "-9999-01-01"})).await;
    r.assert_problem(422, "invalid_value");
    assert_eq!(r.field(), "expected_close_date");
    use base64::Engine;
    let far = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("-300000000000000000.{}", uuid::Uuid::nil().simple()));
    let r = app.get(&format!("/v1/crm/deals?after={far}"), &key).await;
    r.assert_problem(400, "invalid_parameter");
    assert_eq!(r.field(), "after");
    assert_eq!(rows(&app).await, before);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems_too() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    app.get("/v1/crm/nothing", &key).await.assert_problem(404, "route_not_found");
    app.get("/v2/crm/deals", &key).await.assert_problem(404, "route_not_found");
    app.call(Method::PUT, "/v1/crm/deals", Some(&key), Some(json!({})))
        .await
        .assert_problem(405, "method_not_allowed");
}

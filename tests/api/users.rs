//! Users, memberships and login tokens: a token is bound to the one tenant it was issued for; wrong
//! credentials all look alike; tampered, `alg: none`, expired tokens and tokens of removed members are
//! refused at once; a tenant named in a header or body changes nothing.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tessera_core::admin;
use tessera_core::token::{self, Claims};

use crate::support::{TestApp, TestResponse};

const PASSWORD: &str = "correct horse battery staple";

async fn login(app: &TestApp, email: &str, password: &str, tenant: &str) -> TestResponse {
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/auth/login")
        .header("content-type", "application/json")
        .body(Body::from(json!({"email": email, "password": password, "tenant": tenant}).to_string()))
        .expect("request");
    app.send(request).await
}

async fn token(app: &TestApp, email: &str, tenant: &str) -> String {
    let r = login(app, email, PASSWORD, tenant).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["token_type"], "Bearer");
    r.body["token"].as_str().expect("token").to_owned()
}

#[tokio::test]
async fn a_token_is_bound_to_its_tenant_and_ends_with_the_membership() {
    let mut app = TestApp::spawn().await;
    let (acme, key_a) = app.tenant("acme").await;
    let (globex, key_b) = app.tenant("globex").await;
    app.create("deals", &key_a, json!({"title": "Acme deal"})).await;
    app.create("deals", &key_b, json!({"title": "Globex deal"})).await;
    admin::create_user(&mut app.owner, "ana@example.com", PASSWORD).await.expect("user");
    admin::add_member(&mut app.owner, acme, "ana@example.com", "member").await.expect("member of acme");
    admin::add_member(&mut app.owner, globex, "ANA@example.com", "admin").await.expect("admin of globex");

    let acme_token = token(&app, "Ana@Example.com", "acme").await;
    let r = app.get("/v1/crm/deals", &acme_token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let titles: Vec<&str> =
        r.body["data"].as_array().expect("data").iter().filter_map(|d| d["title"].as_str()).collect();
    assert_eq!(titles, ["Acme deal"], "only the token's tenant");
    // A tenant named in a header or the body changes nothing.
    let request = Request::builder()
        .uri("/v1/crm/deals")
        .header("authorization", format!("Bearer {acme_token}"))
        .header("x-tenant-id", globex.to_string())
        .body(Body::empty())
        .expect("request");
    assert_eq!(app.send(request).await.body["data"][0]["title"], "Acme deal");
    let created = app
        .post("/v1/crm/companies", &acme_token, json!({"name": "Via token", "tenant_id": globex.to_string()}))
        .await;
    created.assert_problem(422, "unknown_field");

    // Writes work for members; the usage is for owners and admins.
    assert_eq!(
        app.post("/v1/crm/companies", &acme_token, json!({"name": "Via token"})).await.status,
        StatusCode::CREATED
    );
    app.get("/v1/usage", &acme_token).await.assert_problem(403, "insufficient_scope");
    let globex_token = token(&app, "ana@example.com", "globex").await;
    assert_eq!(app.get("/v1/usage", &globex_token).await.status, StatusCode::OK);
    assert_eq!(app.get("/v1/crm/deals", &globex_token).await.body["data"][0]["title"], "Globex deal");

    // Removing the membership ends the token at the next request.
    admin::remove_member(&mut app.owner, acme, "ana@example.com").await.expect("remove");
    app.get("/v1/crm/deals", &acme_token).await.assert_problem(401, "invalid_token");
    login(&app, "ana@example.com", PASSWORD, "acme").await.assert_problem(401, "invalid_credentials");
    assert_eq!(
        app.get("/v1/crm/deals", &globex_token).await.status,
        StatusCode::OK,
        "the other membership stands"
    );
}

#[tokio::test]
async fn wrong_credentials_all_look_alike() {
    let mut app = TestApp::spawn().await;
    let (acme, _) = app.tenant("acme").await;
    app.tenant("globex").await;
    admin::create_user(&mut app.owner, "ana@example.com", PASSWORD).await.expect("user");
    admin::add_member(&mut app.owner, acme, "ana@example.com", "owner").await.expect("member");
    let answers: Vec<Value> = vec![
        login(&app, "ana@example.com", "wrong password!!", "acme").await,
        login(&app, "nobody@example.com", PASSWORD, "acme").await,
        login(&app, "ana@example.com", PASSWORD, "globex").await,
        login(&app, "ana@example.com", PASSWORD, "no-such-tenant").await,
    ]
    .into_iter()
    .map(|r| {
        r.assert_problem(401, "invalid_credentials");
        r.body
    })
    .collect();
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:#?}");
    // Malformed bodies are named like any other.
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/auth/login")
        .header("content-type", "application/json")
        .body(Body::from(json!({"email": "ana@example.com", "tenant": "acme"}).to_string()))
        .expect("request");
    app.send(request).await.assert_problem(422, "missing_field");
    assert!(admin::create_user(&mut app.owner, "short@example.com", "too short").await.is_err());
    assert!(matches!(
        admin::create_user(&mut app.owner, "ANA@example.com", PASSWORD).await,
        Err(admin::AdminError::UserExists(_))
    ));
}

#[tokio::test]
async fn tampered_unsigned_and_expired_tokens_are_refused() {
    let mut app = TestApp::spawn().await;
    let (acme, _) = app.tenant("acme").await;
    let (globex, _) = app.tenant("globex").await;
    admin::create_user(&mut app.owner, "ana@example.com", PASSWORD).await.expect("user");
    admin::add_member(&mut app.owner, acme, "ana@example.com", "member").await.expect("member");
    let real = token(&app, "ana@example.com", "acme").await;
    let parts: Vec<&str> = real.split('.').collect();
    let mut claims: Claims =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("claims");

    // Another tenant in the payload, the original signature.
    claims.tid = globex.as_uuid();
    let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("json"));
    let tampered = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    app.get("/v1/crm/deals", &tampered).await.assert_problem(401, "invalid_token");
    // alg: none, with and without a signature.
    let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    app.get("/v1/crm/deals", &format!("{none}.{forged_payload}.")).await.assert_problem(401, "invalid_token");
    app.get("/v1/crm/deals", &format!("{none}.{forged_payload}.{}", parts[2]))
        .await
        .assert_problem(401, "invalid_token");
    // Signed with the right key but expired, or signed with another key.
    let secret = app.pool.token_signing_key().await.expect("key");
    claims.tid = acme.as_uuid();
    claims.exp = time::OffsetDateTime::now_utc().unix_timestamp() - 1;
    app.get("/v1/crm/deals", &token::sign(&secret, &claims)).await.assert_problem(401, "invalid_token");
    claims.exp += 3600;
    app.get("/v1/crm/deals", &token::sign(b"not the key", &claims))
        .await
        .assert_problem(401, "invalid_token");
    // The same claims signed with the right key work: the refusals above were about the token.
    assert_eq!(app.get("/v1/crm/deals", &token::sign(&secret, &claims)).await.status, StatusCode::OK);
    // A token for a tenant the user is not a member of, even correctly signed: refused.
    claims.tid = globex.as_uuid();
    app.get("/v1/crm/deals", &token::sign(&secret, &claims)).await.assert_problem(401, "invalid_token");
}

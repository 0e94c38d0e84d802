//! Tenant isolation: tenant A's key can neither see, change, reference nor infer tenant B's records through
//! the REST API, and the database itself holds the line underneath (RLS, per-module roles).

use serde_json::json;
use tessera_core::input::Cursor;
use tokio_postgres::error::SqlState;

use crate::support::TestApp;

struct World {
    app: TestApp,
    key_a: String,
    key_b: String,
    company_b: String,
    contact_b: String,
    deal_b: String,
    deal_a: String,
}

async fn world() -> World {
    let mut app = TestApp::spawn().await;
    let (_, key_a) = app.tenant("tenant-a").await;
    let (_, key_b) = app.tenant("tenant-b").await;
    let company_a =
        app.create("companies", &key_a, json!({"name": "A Corp", "domain": "shared.example"})).await;
    let deal_a = app
        .create("deals", &key_a, json!({"title": "A deal", "company_id": company_a, "stage": "won"}))
        .await;
    let company_b =
        app.create("companies", &key_b, json!({"name": "B Corp", "domain": "shared.example"})).await;
    let contact_b = app
        .create(
            "contacts",
            &key_b,
            json!({"first_name": "Bea", "email": "bea@b.example", "company_id": company_b}),
        )
        .await;
    let deal_b = app
        .create(
            "deals",
            &key_b,
            json!({"title": "B secret", "company_id": company_b, "stage": "won", "amount": "999"}),
        )
        .await;
    World { app, key_a, key_b, company_b, contact_b, deal_b, deal_a }
}

fn ids(r: &crate::support::TestResponse) -> Vec<String> {
    r.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|x| x["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn a_tenant_lists_only_its_own_records() {
    let w = world().await;
    for collection in ["companies", "contacts", "deals"] {
        let r = w.app.get(&format!("/v1/crm/{collection}?limit=100"), &w.key_a).await;
        let text = r.body.to_string();
        assert!(
            !text.contains(&w.company_b) && !text.contains(&w.deal_b) && !text.contains(&w.contact_b),
            "{text}"
        );
    }
    assert_eq!(ids(&w.app.get("/v1/crm/deals?stage=won", &w.key_a).await), std::slice::from_ref(&w.deal_a));
}

#[tokio::test]
async fn filters_on_another_tenants_values_find_nothing() {
    let w = world().await;
    let by_company = w.app.get(&format!("/v1/crm/deals?company_id={}", w.company_b), &w.key_a).await;
    assert_eq!(by_company.status, 200);
    assert!(ids(&by_company).is_empty());
    let by_contact_company =
        w.app.get(&format!("/v1/crm/contacts?company_id={}", w.company_b), &w.key_a).await;
    assert!(ids(&by_contact_company).is_empty());
    let by_email = w.app.get("/v1/crm/contacts?email=bea@b.example", &w.key_a).await;
    assert!(ids(&by_email).is_empty());
}

#[tokio::test]
async fn a_tenant_cannot_get_update_or_delete_another_tenants_records() {
    let w = world().await;
    for (collection, id) in [("companies", &w.company_b), ("contacts", &w.contact_b), ("deals", &w.deal_b)] {
        let path = format!("/v1/crm/{collection}/{id}");
        let get = w.app.get(&path, &w.key_a).await;
        get.assert_problem(404, "not_found");
        // Exactly what a record that never existed answers: nothing to infer.
        let never =
            w.app.get(&format!("/v1/crm/{collection}/0190a000-0000-7000-8000-0000000000ee"), &w.key_a).await;
        assert_eq!(get.body, never.body);

        let body = match collection {
            "companies" => json!({"name": "pwned"}),
            "contacts" => json!({"first_name": "pwned"}),
            _ => json!({"title": "pwned"}),
        };
        w.app.patch(&path, &w.key_a, body).await.assert_problem(404, "not_found");
        w.app.delete(&path, &w.key_a).await.assert_problem(404, "not_found");

        let still = w.app.get(&path, &w.key_b).await;
        assert_eq!(still.status, 200, "B's record survives");
        assert!(!still.body.to_string().contains("pwned"));
    }
}

#[tokio::test]
async fn a_tenant_cannot_reference_another_tenants_records() {
    let w = world().await;
    let r = w.app.post("/v1/crm/deals", &w.key_a, json!({"title": "x", "company_id": w.company_b})).await;
    r.assert_problem(422, "invalid_reference");
    let never = w
        .app
        .post(
            "/v1/crm/deals",
            &w.key_a,
            json!({"title": "x", "company_id": "0190a000-0000-7000-8000-0000000000ee"}),
        )
        .await;
    assert_eq!(r.body, never.body, "a foreign id answers like a missing one");

    w.app
        .post("/v1/crm/deals", &w.key_a, json!({"title": "x", "contact_id": w.contact_b}))
        .await
        .assert_problem(422, "invalid_reference");
    w.app
        .post("/v1/crm/contacts", &w.key_a, json!({"first_name": "x", "company_id": w.company_b}))
        .await
        .assert_problem(422, "invalid_reference");
    w.app
        .patch(&format!("/v1/crm/deals/{}", w.deal_a), &w.key_a, json!({"company_id": w.company_b}))
        .await
        .assert_problem(422, "invalid_reference");
}

#[tokio::test]
async fn unique_values_do_not_reveal_other_tenants() {
    let w = world().await;
    // Both tenants hold shared.example; B's contact e-mail is free for A to use.
    let r =
        w.app.post("/v1/crm/contacts", &w.key_a, json!({"first_name": "Al", "email": "bea@b.example"})).await;
    assert_eq!(r.status, 201, "{}", r.body);
}

#[tokio::test]
async fn a_forged_cursor_pointing_into_another_tenant_leaks_nothing() {
    let w = world().await;
    let b_deal = w.app.get(&format!("/v1/crm/deals/{}", w.deal_b), &w.key_b).await;
    let created_at = time::OffsetDateTime::parse(
        b_deal.body["created_at"].as_str().expect("ts"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("rfc3339");
    let cursor =
        Cursor { created_at: created_at - time::Duration::seconds(60), id: uuid::Uuid::nil() }.encode();
    let r = w.app.get(&format!("/v1/crm/deals?after={cursor}"), &w.key_a).await;
    assert_eq!(r.status, 200);
    assert_eq!(ids(&r), std::slice::from_ref(&w.deal_a));
}

#[tokio::test]
async fn guessing_ids_finds_nothing() {
    let w = world().await;
    // B's ids are time-ordered UUIDs: try B's neighbours and B's exact ids across every collection.
    let b = uuid::Uuid::parse_str(&w.deal_b).expect("uuid");
    let mut guesses: Vec<String> =
        (1..20u128).map(|i| uuid::Uuid::from_u128(b.as_u128() ^ i).to_string()).collect();
    guesses.extend([w.company_b.clone(), w.contact_b.clone(), w.deal_b.clone()]);
    for guess in guesses {
        for collection in ["companies", "contacts", "deals"] {
            let r = w.app.get(&format!("/v1/crm/{collection}/{guess}"), &w.key_a).await;
            assert_eq!(r.status, 404, "{collection}/{guess}: {}", r.body);
        }
    }
}

#[tokio::test]
async fn the_database_enforces_isolation_below_the_api() {
    let w = world().await;
    let app_role = w.app.db.connect_as("tessera_app").await;

    // The login role has no rights of its own.
    let err = app_role.query("select * from crm.deals", &[]).await.expect_err("no direct access");
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));

    let tenant_of = async |slug: &str| -> uuid::Uuid {
        w.app
            .owner
            .query_one("select id from core.tenants where slug = $1", &[&slug])
            .await
            .expect("tenant")
            .get(0)
    };
    let tenant_a = tenant_of("tenant-a").await;
    let tenant_b = tenant_of("tenant-b").await;

    // As the CRM role with no tenant bound: nothing visible, nothing writable, even naming a tenant.
    app_role.batch_execute("begin; set local role tessera_crm").await.expect("set role");
    let n: i64 = app_role.query_one("select count(*) from crm.deals", &[]).await.expect("count").get(0);
    assert_eq!(n, 0, "fail closed: no tenant, no rows");
    let err = app_role
        .execute("insert into crm.companies (tenant_id, name) values ($1, 'x')", &[&tenant_b])
        .await
        .expect_err("no tenant, no writes");
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "refused by the policy: {err}");
    app_role.batch_execute("rollback").await.expect("rollback");

    // Bound to tenant A: only A's rows, and rows cannot be written into B.
    app_role.batch_execute("begin; set local role tessera_crm").await.expect("set role");
    app_role
        .execute("select set_config('tessera.tenant_id', $1, true)", &[&tenant_a.to_string()])
        .await
        .expect("bind");
    let visible: Vec<String> = app_role
        .query("select title from crm.deals", &[])
        .await
        .expect("select")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(visible, ["A deal"]);
    let err = app_role
        .execute("insert into crm.companies (tenant_id, name) values ($1, 'smuggled')", &[&tenant_b])
        .await
        .expect_err("cannot write into another tenant");
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    app_role.batch_execute("rollback").await.expect("rollback");
    assert_eq!(w.app.count_all("crm.companies").await, 2, "nothing was smuggled in");
}

#[tokio::test]
async fn a_reused_connection_never_carries_one_requests_tenant_into_the_next() {
    let mut app = TestApp::spawn_with_pool(1).await;
    let (_, key_a) = app.tenant("tenant-a").await;
    let (_, key_b) = app.tenant("tenant-b").await;
    let deal_a = app.create("deals", &key_a, json!({"title": "A only"})).await;
    let bogus = format!("tsk_000000000000_{}", "0".repeat(48));
    for round in 0..3 {
        // A read, a refused key, a write that fails inside its transaction, then the other tenant.
        assert_eq!(
            ids(&app.get("/v1/crm/deals", &key_a).await),
            std::slice::from_ref(&deal_a),
            "round {round}"
        );
        app.get("/v1/crm/deals", &bogus).await.assert_problem(401, "invalid_api_key");
        let r = app.get(&format!("/v1/crm/deals/{deal_a}"), &bogus).await;
        assert!(!r.body.to_string().contains("A only"));
        app.post(
            "/v1/crm/deals",
            &key_a,
            json!({"title": "x", "company_id": "0190a000-0000-7000-8000-0000000000ee"}),
        )
        .await
        .assert_problem(422, "invalid_reference");
        let b = app.get("/v1/crm/deals", &key_b).await;
        assert_eq!(b.status, 200);
        assert!(ids(&b).is_empty(), "tenant B sees nothing of A: {}", b.body);
        app.get(&format!("/v1/crm/deals/{deal_a}"), &key_b).await.assert_problem(404, "not_found");
    }
}

#[tokio::test]
async fn the_crm_role_cannot_read_core_secrets() {
    let w = world().await;
    let app_role = w.app.db.connect_as("tessera_app").await;
    for table in ["core.api_keys", "core.tenants", "core.tenant_modules"] {
        app_role.batch_execute("begin; set local role tessera_crm").await.expect("set role");
        let err = app_role
            .query(&format!("select * from {table}"), &[])
            .await
            .expect_err("the CRM role must not read core tables");
        assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{table}");
        app_role.batch_execute("rollback").await.expect("rollback");
    }
    // The authentication function answers only for a matching key hash, and never returns the hash.
    app_role.batch_execute("begin; set local role tessera_crm").await.expect("set role");
    let rows = app_role
        .query("select * from core.authenticate_api_key('000000000000', '\\x00'::bytea, 'crm')", &[])
        .await
        .expect("call");
    assert!(rows.is_empty());
    let columns: Vec<String> = app_role
        .prepare("select * from core.authenticate_api_key('', ''::bytea, '')")
        .await
        .expect("prepare")
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    assert_eq!(columns, ["tenant_id", "scopes", "tenant_status", "module_enabled"]);
    app_role.batch_execute("rollback").await.expect("rollback");
}

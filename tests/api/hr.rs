//! The HR module: employees, commission plans and commissions through the REST API, bad input, tenant
//! isolation, and the `deal.closed.won` handler that books commissions, called directly the way the
//! dispatcher calls it (in a transaction as `tessera_hr` with the event's tenant bound).

use axum::http::StatusCode;
use serde_json::{Value, json};
use tessera_core::tenant::TenantId;
use tessera_core::{EffectTx, Event, Module};
use time::OffsetDateTime;
use time::macros::datetime;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::support::{TestApp, TestResponse, cluster, connect};

/// Creates a record under `/v1/hr/` and returns its id, asserting 201.
async fn create(app: &TestApp, collection: &str, key: &str, body: Value) -> String {
    let r = app.post(&format!("/v1/hr/{collection}"), key, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "create {collection}: {}", r.body);
    r.body["id"].as_str().expect("id").to_owned()
}

async fn employee(app: &TestApp, key: &str, name: &str, email: &str) -> String {
    create(app, "employees", key, json!({"name": name, "email": email})).await
}

async fn plan(app: &TestApp, key: &str, employee: &str, rate: &str, from: &str) -> String {
    create(
        app,
        "commission-plans",
        key,
        json!({"employee_id": employee, "rate": rate, "effective_from": from}),
    )
    .await
}

/// Every HR row of every tenant.
async fn rows(app: &TestApp) -> i64 {
    app.count_all("hr.employees").await
        + app.count_all("hr.commission_plans").await
        + app.count_all("hr.commissions").await
}

fn ids(r: &TestResponse) -> Vec<String> {
    r.body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("a list: {}", r.body))
        .iter()
        .map(|x| x["id"].as_str().expect("id").to_owned())
        .collect()
}

/// A `deal.closed.won` event as the CDC worker records it: the deal's row as JSON (numerics as strings),
/// the old row (crm.deals has REPLICA IDENTITY FULL) and the id of the change it derives from.
fn deal_won(tenant: TenantId, deal: Uuid, amount: Value, owner: Option<&str>, at: OffsetDateTime) -> Event {
    let row = |stage: &str| {
        json!({
            "tenant_id": tenant.as_uuid().to_string(), "id": deal.to_string(), "company_id": null,
            "contact_id": null, "title": "Rocket skates", "stage": stage, "amount": amount,
            "currency": "USD", "owner_email": owner, "expected_close_date": "2025-06-30",
            "created_at": "2025-01-02 10:00:00+00", "updated_at": "2025-06-01 12:00:00+00"
        })
    };
    Event {
        seq: 1,
        id: Uuid::new_v4(),
        tenant_id: tenant.as_uuid(),
        kind: "deal.closed.won".to_owned(),
        commit_time: at,
        data: json!({
            "table": "crm.deals", "op": "update", "new": row("won"), "old": row("negotiation"),
            "change_id": Uuid::new_v4().to_string()
        }),
    }
}

/// Hands `event` to HR's subscription as the dispatcher does: one transaction, as `tessera_hr`, with the
/// event's tenant bound (so row-level security applies), committed when the handler succeeds.
async fn deliver(app: &TestApp, event: &Event) {
    let sub = tessera_hr::Hr
        .subscriptions()
        .into_iter()
        .find(|s| s.types.contains(&event.kind.as_str()))
        .expect("HR subscribes to the event");
    assert_eq!(sub.name, "hr.commissions");
    let client = connect(&cluster().superuser, &app.db.name).await;
    client.batch_execute("begin; set local role tessera_hr").await.expect("begin");
    client
        .execute("select set_config('tessera.tenant_id', $1, true)", &[&event.tenant_id.to_string()])
        .await
        .expect("bind the tenant");
    (sub.handle)(&EffectTx::new(&client), event).await.expect("the handler succeeds");
    client.batch_execute("commit").await.expect("commit");
}

/// Hands several events of one tenant to HR's subscription at once, as the dispatcher does with a backlog.
async fn deliver_many(app: &TestApp, events: &[Event]) {
    let sub = tessera_hr::Hr.subscriptions().into_iter().next().expect("HR's subscription");
    let handle_many = sub.handle_many.expect("HR handles runs of events");
    let client = connect(&cluster().superuser, &app.db.name).await;
    client.batch_execute("begin; set local role tessera_hr").await.expect("begin");
    client
        .execute("select set_config('tessera.tenant_id', $1, true)", &[&events[0].tenant_id.to_string()])
        .await
        .expect("bind the tenant");
    handle_many(&EffectTx::new(&client), events).await.expect("the handler succeeds");
    client.batch_execute("commit").await.expect("commit");
}

// CRUD

#[tokio::test]
async fn an_employee_is_created_read_updated_listed_and_deleted() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;

    let created = app
        .post(
            "/v1/hr/employees",
            &key,
            json!({"name": "  Ana Lima ", "email": "Ana@Acme.example", "title": "Account Executive"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().expect("id").to_owned();
    assert_eq!(created.headers["location"], format!("/v1/hr/employees/{id}").as_str());
    assert_eq!(created.body["object"], "employee");
    assert_eq!(created.body["name"], "Ana Lima", "surrounding whitespace is trimmed");
    assert_eq!(created.body["email"], "ana@acme.example", "e-mail addresses are lowercased");
    assert_eq!(created.body["status"], "active");

    let fetched = app.get(&format!("/v1/hr/employees/{id}"), &key).await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.body, created.body);

    let updated = app
        .patch(&format!("/v1/hr/employees/{id}"), &key, json!({"title": null, "status": "inactive"}))
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    assert_eq!(updated.body["title"], Value::Null);
    assert_eq!(updated.body["status"], "inactive");
    assert_eq!(updated.body["name"], "Ana Lima", "fields left out are unchanged");
    assert_ne!(updated.body["updated_at"], created.body["updated_at"]);

    let other = employee(&app, &key, "Ben", "ben@acme.example").await;
    let by_email = app.get("/v1/hr/employees?email=ANA@acme.EXAMPLE", &key).await;
    assert_eq!(ids(&by_email), [id.as_str()]);
    assert_eq!(ids(&app.get("/v1/hr/employees?status=active", &key).await), [other.as_str()]);
    assert_eq!(ids(&app.get("/v1/hr/employees", &key).await), [id.clone(), other]);

    let deleted = app.delete(&format!("/v1/hr/employees/{id}"), &key).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    app.get(&format!("/v1/hr/employees/{id}"), &key).await.assert_problem(404, "not_found");
    app.delete(&format!("/v1/hr/employees/{id}"), &key).await.assert_problem(404, "not_found");
    app.patch(&format!("/v1/hr/employees/{id}"), &key, json!({"name": "x"}))
        .await
        .assert_problem(404, "not_found");
}

#[tokio::test]
async fn commission_plans_are_created_listed_and_deleted_and_go_with_their_employee() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let ana = employee(&app, &key, "Ana", "ana@acme.example").await;
    let ben = employee(&app, &key, "Ben", "ben@acme.example").await;

    let created = app
        .post(
            "/v1/hr/commission-plans",
            &key,
            json!({"employee_id": ana, "rate": 0.1, "effective_from": "2025-01-01"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let first = created.body["id"].as_str().expect("id").to_owned();
    assert_eq!(created.headers["location"], format!("/v1/hr/commission-plans/{first}").as_str());
    assert_eq!(created.body["object"], "commission_plan");
    assert_eq!(created.body["rate"], "0.1000", "rates are exact decimal strings");
    assert_eq!(created.body["effective_from"], "2025-01-01");
    assert_eq!(created.body["employee_id"], ana.as_str());
    let fetched = app.get(&format!("/v1/hr/commission-plans/{first}"), &key).await;
    assert_eq!(fetched.body, created.body);

    let second = plan(&app, &key, &ana, "1", "2026-01-01").await;
    let bens = plan(&app, &key, &ben, "0", "2025-01-01").await;
    assert_eq!(
        ids(&app.get(&format!("/v1/hr/commission-plans?employee_id={ana}"), &key).await),
        [first.clone(), second.clone()]
    );
    assert_eq!(ids(&app.get("/v1/hr/commission-plans", &key).await).len(), 3);

    assert_eq!(
        app.delete(&format!("/v1/hr/commission-plans/{first}"), &key).await.status,
        StatusCode::NO_CONTENT
    );
    app.get(&format!("/v1/hr/commission-plans/{first}"), &key).await.assert_problem(404, "not_found");
    app.delete(&format!("/v1/hr/commission-plans/{first}"), &key).await.assert_problem(404, "not_found");

    // An employee without commissions can be deleted, and their plans go with them.
    assert_eq!(app.delete(&format!("/v1/hr/employees/{ana}"), &key).await.status, StatusCode::NO_CONTENT);
    app.get(&format!("/v1/hr/commission-plans/{second}"), &key).await.assert_problem(404, "not_found");
    assert_eq!(ids(&app.get("/v1/hr/commission-plans", &key).await), [bens]);
}

#[tokio::test]
async fn employee_lists_page_through_every_record_once_in_a_stable_order() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(employee(&app, &key, &format!("E{i}"), &format!("e{i}@acme.example")).await);
    }
    let mut seen = Vec::new();
    let mut path = "/v1/hr/employees?limit=3".to_owned();
    let mut pages = 0;
    loop {
        let page = app.get(&path, &key).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert_eq!(page.body["object"], "list");
        seen.extend(ids(&page));
        pages += 1;
        if page.body["has_more"] == false {
            assert_eq!(page.body["next_cursor"], Value::Null);
            break;
        }
        let cursor = page.body["next_cursor"].as_str().expect("cursor");
        path = format!("/v1/hr/employees?limit=3&after={cursor}");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created, "every record once, in creation order");
}

// Bad input

#[tokio::test]
async fn invalid_fields_are_named_and_nothing_is_written() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let ana = employee(&app, &key, "Ana", "ana@acme.example").await;
    let before = rows(&app).await;

    let cases = vec![
        ("employees", json!({"email": "x@acme.example"}), "missing_field", "name"),
        ("employees", json!({"name": "X"}), "missing_field", "email"),
        ("employees", json!({"name": null, "email": "x@acme.example"}), "missing_field", "name"),
        (
            "employees",
            json!({"name": "X", "email": "x@acme.example", "status": null}),
            "missing_field",
            "status",
        ),
        ("employees", json!({"name": "X", "email": "x@acme.example", "bogus": 1}), "unknown_field", "bogus"),
        (
            "employees",
            json!({"name": "X", "email": "x@acme.example", "tenant_id": Uuid::nil().to_string()}),
            "unknown_field",
            "tenant_id",
        ),
        ("employees", json!({"name": 5, "email": "x@acme.example"}), "invalid_type", "name"),
        ("employees", json!({"name": "X", "email": "nobody"}), "invalid_value", "email"),
        ("employees", json!({"name": "X", "email": "a@@b.example"}), "invalid_value", "email"),
        (
            "employees",
            json!({"name": "X", "email": "x@acme.example", "status": "fired"}),
            "invalid_value",
            "status",
        ),
        ("employees", json!({"name": "x".repeat(201), "email": "x@acme.example"}), "too_long", "name"),
        ("employees", json!({"name": "   ", "email": "x@acme.example"}), "too_short", "name"),
        (
            "employees",
            json!({"name": "X", "email": "x@acme.example", "title": "t".repeat(201)}),
            "too_long",
            "title",
        ),
        ("employees", json!({"name": "a\u{0}b", "email": "x@acme.example"}), "invalid_value", "name"),
        (
            "commission-plans",
            json!({"rate": "0.1", "effective_from": "2025-01-01"}),
            "missing_field",
            "employee_id",
        ),
        (
            "commission-plans",
            json!({"employee_id": ana, "effective_from": "2025-01-01"}),
            "missing_field",
            "rate",
        ),
        ("commission-plans", json!({"employee_id": ana, "rate": "0.1"}), "missing_field", "effective_from"),
        (
            "commission-plans",
            json!({"employee_id": ana, "rate": null, "effective_from": "2025-01-01"}),
            "missing_field",
            "rate",
        ),
        (
            "commission-plans",
            json!({"employee_id": "nope", "rate": "0.1", "effective_from": "2025-01-01"}),
            "invalid_value",
            "employee_id",
        ),
        (
            "commission-plans",
            json!({"employee_id": ana, "rate": "1.5", "effective_from": "2025-01-01"}),
            "invalid_value",
            "rate",
        ),
        (
            "commission-plans",
            json!({"employee_id": ana, "rate": "1.0001", "effective_from": "2025-01-01"}),
            "invalid_value",
            "rate",
        ),
        (
            "commission-plans",
            json!({"employee_id": ana, "rate": "-0.1", "effective_from": "2025-01-01"}),
            "invalid_value",
            "rate",
        ),
        (
            "commission-plans",
            json!({"employee_id": ana, "rate": "0.12345", "effective_from": "2025-01-01"}),
            "invalid_value",
            "rate",
        ),
        (
            "commission-plans",
            json!({"employee_id": ana, "rate": 12, "effective_from": "2025-01-01"}),
            "invalid_value",
            "rate",
        ),
        (
            "commission-plans",
            json!({"employee_id": ana, "rate": true, "effective_from": "2025-01-01"}),
            "invalid_type",
            "rate",
        ),
        (
            "commission-plans",
            json!({"employee_id": ana, "rate": "0.1", "effective_from": "2025-02-30"}),
            "invalid_value",
            "effective_from",
        ),
        (
            "commission-plans",
            json!({"employee_id": ana, "rate": "0.1", "effective_from": "-9999-01-01"}),
            "invalid_value",
            "effective_from",
        ),
        (
            "commission-plans",
            json!({"employee_id": ana, "rate": "0.1", "effective_from": "2025-01-01", "id": ana}),
            "unknown_field",
            "id",
        ),
    ];
    for (collection, body, code, field) in cases {
        let r = app.post(&format!("/v1/hr/{collection}"), &key, body.clone()).await;
        r.assert_problem(422, code);
        assert_eq!(r.field(), field, "for {body}: {}", r.body);
        assert!(
            r.body["detail"].as_str().expect("detail").contains(field),
            "detail names the field: {}",
            r.body
        );
    }

    // The same checks hold for partial updates.
    for (body, code, field) in [
        (json!({"name": null}), "missing_field", "name"),
        (json!({"email": null}), "missing_field", "email"),
        (json!({"status": null}), "missing_field", "status"),
        (json!({"status": "gone"}), "invalid_value", "status"),
        (json!({"email": "not-an-address"}), "invalid_value", "email"),
        (json!({"nope": 1}), "unknown_field", "nope"),
    ] {
        let r = app.patch(&format!("/v1/hr/employees/{ana}"), &key, body).await;
        r.assert_problem(422, code);
        assert_eq!(r.field(), field);
    }
    let unchanged = app.get(&format!("/v1/hr/employees/{ana}"), &key).await;
    assert_eq!(
        (unchanged.body["name"].as_str(), unchanged.body["status"].as_str()),
        (Some("Ana"), Some("active"))
    );

    // Commissions are booked by events only: there is nothing to post, patch or delete.
    let r = app.post("/v1/hr/commissions", &key, json!({"employee_id": ana})).await;
    r.assert_problem(405, "method_not_allowed");
    assert_eq!(rows(&app).await, before);
}

#[tokio::test]
async fn duplicates_and_missing_references_are_refused_and_named() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let ana = employee(&app, &key, "Ana", "ana@acme.example").await;
    let ben = employee(&app, &key, "Ben", "ben@acme.example").await;
    plan(&app, &key, &ana, "0.1", "2025-01-01").await;
    let before = rows(&app).await;

    let dup =
        app.post("/v1/hr/employees", &key, json!({"name": "Other Ana", "email": "ANA@acme.example"})).await;
    dup.assert_problem(409, "already_exists");
    assert_eq!(dup.field(), "email");
    let dup = app.patch(&format!("/v1/hr/employees/{ben}"), &key, json!({"email": "Ana@Acme.Example"})).await;
    dup.assert_problem(409, "already_exists");
    assert_eq!(dup.field(), "email");

    let same_day = app
        .post(
            "/v1/hr/commission-plans",
            &key,
            json!({"employee_id": ana, "rate": "0.2", "effective_from": "2025-01-01"}),
        )
        .await;
    same_day.assert_problem(409, "already_exists");
    assert_eq!(same_day.field(), "effective_from");

    let nobody = "0190a000-0000-7000-8000-0000000000ff";
    let missing = app
        .post(
            "/v1/hr/commission-plans",
            &key,
            json!({"employee_id": nobody, "rate": "0.2", "effective_from": "2025-01-01"}),
        )
        .await;
    missing.assert_problem(422, "invalid_reference");
    assert_eq!(missing.field(), "employee_id");

    for body in [&dup.body, &same_day.body, &missing.body] {
        let text = body.to_string();
        for internal in ["constraint", "violates", "hr.", "SQLSTATE", "tenant_id", "postgres"] {
            assert!(!text.contains(internal), "{internal:?} leaked: {text}");
        }
    }
    assert_eq!(rows(&app).await, before);
}

#[tokio::test]
async fn bad_ids_query_parameters_and_scopes_are_refused() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    for path in ["/v1/hr/employees/nope", "/v1/hr/commission-plans/1234", "/v1/hr/commissions/%FF"] {
        let r = app.get(path, &key).await;
        r.assert_problem(400, "invalid_parameter");
        assert_eq!(r.field(), "id");
    }
    app.patch("/v1/hr/employees/nope", &key, json!({"name": "x"}))
        .await
        .assert_problem(400, "invalid_parameter");
    app.delete("/v1/hr/commission-plans/nope", &key).await.assert_problem(400, "invalid_parameter");

    for (path, code, field) in [
        ("/v1/hr/employees?status=fired", "invalid_parameter", "status"),
        ("/v1/hr/employees?email=", "invalid_parameter", "email"),
        ("/v1/hr/employees?limit=0", "invalid_parameter", "limit"),
        ("/v1/hr/employees?after=garbage", "invalid_parameter", "after"),
        ("/v1/hr/employees?bogus=1", "unknown_parameter", "bogus"),
        ("/v1/hr/commission-plans?employee_id=nope", "invalid_parameter", "employee_id"),
        ("/v1/hr/commissions?employee_id=nope", "invalid_parameter", "employee_id"),
        ("/v1/hr/commissions?deal_id=1", "invalid_parameter", "deal_id"),
        ("/v1/hr/commissions?status=unpaid", "invalid_parameter", "status"),
        ("/v1/hr/commissions?limit=101", "invalid_parameter", "limit"),
        ("/v1/hr/commissions?email=a@b", "unknown_parameter", "email"),
    ] {
        let r = app.get(path, &key).await;
        r.assert_problem(400, code);
        assert_eq!(r.field(), field, "{path}");
    }

    let reader = app.key(tenant, &["hr:read"]).await;
    assert_eq!(app.get("/v1/hr/employees", &reader).await.status, StatusCode::OK);
    app.post("/v1/hr/employees", &reader, json!({"name": "X", "email": "x@acme.example"}))
        .await
        .assert_problem(403, "insufficient_scope");
    let crm_only = app.key(tenant, &["crm:write"]).await;
    app.get("/v1/hr/commissions", &crm_only).await.assert_problem(403, "insufficient_scope");
    assert_eq!(rows(&app).await, 0);
}

// Booking commissions from deal.closed.won

#[tokio::test]
async fn a_won_deal_books_one_commission_at_the_owners_rate_even_when_delivered_twice() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    let ana = employee(&app, &key, "Ana", "ana@acme.example").await;
    let plan_id = plan(&app, &key, &ana, "0.1", "2025-01-01").await;
    let deal = Uuid::now_v7();
    let won_at = datetime!(2025-06-01 12:00 UTC);
    // The CRM stores owner addresses as sent by SQL too: the match ignores case.
    let event = deal_won(tenant, deal, json!("12345.67"), Some("Ana@ACME.example"), won_at);

    deliver(&app, &event).await;

    let list = app.get(&format!("/v1/hr/commissions?deal_id={deal}"), &key).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    let data = list.body["data"].as_array().expect("data");
    assert_eq!(data.len(), 1, "{}", list.body);
    let c = &data[0];
    assert_eq!(c["object"], "commission");
    assert_eq!(c["employee_id"], ana.as_str());
    assert_eq!(c["plan_id"], plan_id.as_str());
    assert_eq!(c["deal_id"], deal.to_string());
    assert_eq!(c["deal_amount"], "12345.67");
    assert_eq!(c["currency"], "USD");
    assert_eq!(c["rate"], "0.1000");
    assert_eq!(c["amount"], "1234.57", "round(12345.67 × 0.1, 2)");
    assert_eq!(c["status"], "booked");
    assert_eq!(c["source_event_id"], event.id.to_string());
    assert_eq!(c["booked_at"], "2025-06-01T12:00:00Z", "when the deal was won");
    let id = c["id"].as_str().expect("id");
    let fetched = app.get(&format!("/v1/hr/commissions/{id}"), &key).await;
    assert_eq!(&fetched.body, c);
    assert_eq!(ids(&app.get(&format!("/v1/hr/commissions?employee_id={ana}"), &key).await), [id]);
    assert_eq!(ids(&app.get("/v1/hr/commissions?status=booked", &key).await), [id]);
    assert!(ids(&app.get("/v1/hr/commissions?status=paid", &key).await).is_empty());

    // The same event again (a redelivery) books nothing more.
    deliver(&app, &event).await;
    assert_eq!(app.count_all("hr.commissions").await, 1);
    assert_eq!(ids(&app.get("/v1/hr/commissions", &key).await), [id]);

    // An employee with commissions cannot be deleted; deleting the plan keeps the commission's rate.
    let r = app.delete(&format!("/v1/hr/employees/{ana}"), &key).await;
    r.assert_problem(409, "still_referenced");
    assert_eq!(app.get(&format!("/v1/hr/employees/{ana}"), &key).await.status, StatusCode::OK);
    assert_eq!(
        app.delete(&format!("/v1/hr/commission-plans/{plan_id}"), &key).await.status,
        StatusCode::NO_CONTENT
    );
    let kept = app.get(&format!("/v1/hr/commissions/{id}"), &key).await;
    assert_eq!(kept.body["plan_id"], Value::Null);
    assert_eq!((kept.body["rate"].as_str(), kept.body["amount"].as_str()), (Some("0.1000"), Some("1234.57")));
}

#[tokio::test]
async fn a_run_of_won_deals_handled_at_once_books_what_one_by_one_would() {
    let mut app = TestApp::spawn().await;
    let (one_by_one, key_one) = app.tenant("acme").await;
    let (at_once, key_many) = app.tenant("globex").await;
    for key in [&key_one, &key_many] {
        let ana = employee(&app, key, "Ana", "ana@example.com").await;
        plan(&app, key, &ana, "0.05", "2024-01-01").await;
        plan(&app, key, &ana, "0.1", "2025-01-01").await;
        employee(&app, key, "Ben", "ben@example.com").await; // no plan
        let cleo = employee(&app, key, "Cleo", "cleo@example.com").await;
        plan(&app, key, &cleo, "0.0333", "2020-01-01").await;
        let r = app.patch(&format!("/v1/hr/employees/{cleo}"), key, json!({"status": "inactive"})).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let deals: Vec<Uuid> = (0..8).map(|_| Uuid::now_v7()).collect();
    let script = |tenant: TenantId| {
        let won = |i: usize, amount: Value, owner: Option<&str>, at: OffsetDateTime| {
            let mut event = deal_won(tenant, deals[i], amount, owner, at);
            // The same event id in both tenants' scripts is fine: ids are unique per tenant.
            event.id = Uuid::from_u128(i as u128 + 1);
            event
        };
        vec![
            won(0, json!("1000.00"), Some("ana@example.com"), datetime!(2024-06-01 12:00 UTC)),
            won(1, json!("1000.00"), Some("ANA@example.com"), datetime!(2024-12-31 22:30 -02:00)),
            won(2, json!(150.15), Some("ana@example.com"), datetime!(2025-06-01 12:00 UTC)),
            won(3, json!("500.00"), None, datetime!(2025-06-01 12:00 UTC)),
            won(4, json!("500.00"), Some("ben@example.com"), datetime!(2025-06-01 12:00 UTC)),
            won(5, json!("500.00"), Some("cleo@example.com"), datetime!(2025-06-01 12:00 UTC)),
            won(6, json!("500.00"), Some("nobody@example.com"), datetime!(2025-06-01 12:00 UTC)),
            won(7, json!("9999999999999999.99"), Some("ana@example.com"), datetime!(2023-12-31 23:00 UTC)),
        ]
    };
    for event in &script(one_by_one) {
        deliver(&app, event).await;
    }
    let run = script(at_once);
    deliver_many(&app, &run).await;
    deliver_many(&app, &run).await;
    deliver_many(&app, &run[..3]).await;

    let admin = connect(&cluster().superuser, &app.db.name).await;
    let booked = async |tenant: TenantId| -> Vec<String> {
        admin
            .query(
                "select concat_ws(' | ', c.deal_id, e.email, c.deal_amount, c.currency, c.rate, c.amount,
                                  c.source_event_id, c.booked_at)
                   from hr.commissions c
                   join hr.employees e on e.tenant_id = c.tenant_id and e.id = c.employee_id
                  where c.tenant_id = $1
                  order by c.deal_id",
                &[&tenant.as_uuid()],
            )
            .await
            .expect("commissions")
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let expected = booked(one_by_one).await;
    assert_eq!(expected.len(), 3, "Ana's three wins with a plan in force: {expected:#?}");
    assert_eq!(booked(at_once).await, expected);
}

#[tokio::test]
async fn the_plan_in_force_on_the_commit_date_sets_the_rate() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    let ana = employee(&app, &key, "Ana", "ana@acme.example").await;
    plan(&app, &key, &ana, "0.05", "2024-01-01").await;
    plan(&app, &key, &ana, "0.1", "2025-01-01").await;
    plan(&app, &key, &ana, "0.5", "2099-01-01").await;

    let cases = [
        // (won at, expected rate and amount on 1000.00)
        (datetime!(2023-12-31 23:59:59 UTC), None),
        (datetime!(2024-01-01 00:00 UTC), Some(("0.0500", "50.00"))),
        (datetime!(2024-12-31 23:59:59 UTC), Some(("0.0500", "50.00"))),
        // 22:30 at UTC-2 is 2025-01-01 in UTC: plan dates are UTC days.
        (datetime!(2024-12-31 22:30 -02:00), Some(("0.1000", "100.00"))),
        (datetime!(2025-01-01 00:00 UTC), Some(("0.1000", "100.00"))),
        (datetime!(2030-06-15 09:00 UTC), Some(("0.1000", "100.00"))),
    ];
    for (at, expected) in cases {
        let deal = Uuid::now_v7();
        deliver(&app, &deal_won(tenant, deal, json!("1000.00"), Some("ana@acme.example"), at)).await;
        let r = app.get(&format!("/v1/hr/commissions?deal_id={deal}"), &key).await;
        let data = r.body["data"].as_array().expect("data");
        match expected {
            None => assert!(data.is_empty(), "no plan in force on {at}: {}", r.body),
            Some((rate, amount)) => {
                assert_eq!(data.len(), 1, "{at}: {}", r.body);
                assert_eq!(
                    (data[0]["rate"].as_str(), data[0]["amount"].as_str()),
                    (Some(rate), Some(amount)),
                    "{at}"
                );
            }
        }
    }
}

#[tokio::test]
async fn amounts_keep_their_digits_and_round_half_up() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    let ana = employee(&app, &key, "Ana", "ana@acme.example").await;
    plan(&app, &key, &ana, "0.0333", "2020-01-01").await;
    let at = datetime!(2025-06-01 12:00 UTC);
    for (amount, deal_amount, commission) in [
        // The largest amount a deal can hold, which no float carries exactly.
        (json!("9999999999999999.99"), "9999999999999999.99", "333000000000000.00"),
        // A JSON number is taken as written, never through a float's rounding.
        (json!(150.15), "150.15", "5.00"),
        // 0.1665 rounds half away from zero to 0.17 (numeric rounding, not banker's 0.16).
        (json!("5.00"), "5.00", "0.17"),
    ] {
        let deal = Uuid::now_v7();
        deliver(&app, &deal_won(tenant, deal, amount, Some("ana@acme.example"), at)).await;
        let r = app.get(&format!("/v1/hr/commissions?deal_id={deal}"), &key).await;
        let c = &r.body["data"][0];
        assert_eq!(
            (c["deal_amount"].as_str(), c["amount"].as_str()),
            (Some(deal_amount), Some(commission)),
            "{}",
            r.body
        );
    }
}

#[tokio::test]
async fn no_owner_an_unknown_or_inactive_owner_or_no_plan_books_nothing() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    let ana = employee(&app, &key, "Ana", "ana@acme.example").await;
    plan(&app, &key, &ana, "0.1", "2020-01-01").await;
    employee(&app, &key, "Ben", "ben@acme.example").await; // no plan
    let cleo = employee(&app, &key, "Cleo", "cleo@acme.example").await;
    plan(&app, &key, &cleo, "0.1", "2020-01-01").await;
    let r = app.patch(&format!("/v1/hr/employees/{cleo}"), &key, json!({"status": "inactive"})).await;
    assert_eq!(r.status, StatusCode::OK);
    let before = rows(&app).await;

    let at = datetime!(2025-06-01 12:00 UTC);
    for owner in [None, Some("nobody@acme.example"), Some("ben@acme.example"), Some("cleo@acme.example")] {
        deliver(&app, &deal_won(tenant, Uuid::now_v7(), json!("500.00"), owner, at)).await;
    }
    assert_eq!(rows(&app).await, before, "nothing was booked");
    assert!(ids(&app.get("/v1/hr/commissions", &key).await).is_empty());

    // And the handler still books for the one who qualifies.
    deliver(&app, &deal_won(tenant, Uuid::now_v7(), json!("500.00"), Some("ana@acme.example"), at)).await;
    assert_eq!(ids(&app.get("/v1/hr/commissions", &key).await).len(), 1);
}

#[tokio::test]
async fn a_malformed_event_is_an_error_and_writes_nothing() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    let ana = employee(&app, &key, "Ana", "ana@acme.example").await;
    plan(&app, &key, &ana, "0.1", "2020-01-01").await;
    let before = rows(&app).await;
    let sub = tessera_hr::Hr.subscriptions().into_iter().next().expect("subscription");
    let client = connect(&cluster().superuser, &app.db.name).await;
    for amount in [json!("NaN"), json!(null), json!("12,00")] {
        let event = deal_won(
            tenant,
            Uuid::now_v7(),
            amount,
            Some("ana@acme.example"),
            datetime!(2025-06-01 0:00 UTC),
        );
        client.batch_execute("begin; set local role tessera_hr").await.expect("begin");
        client
            .execute("select set_config('tessera.tenant_id', $1, true)", &[&event.tenant_id.to_string()])
            .await
            .expect("bind");
        let err = (sub.handle)(&EffectTx::new(&client), &event).await.expect_err("refused");
        assert!(err.message.contains(&event.id.to_string()), "the error names the event: {err}");
        client.batch_execute("rollback").await.expect("rollback");
    }
    assert_eq!(rows(&app).await, before);
}

// Isolation

struct World {
    app: TestApp,
    tenant_a: TenantId,
    key_a: String,
    key_b: String,
    employee_b: String,
    plan_b: String,
    commission_b: String,
}

/// Two tenants with an employee of the same address and a plan each; B has a commission.
async fn world() -> World {
    let mut app = TestApp::spawn().await;
    let (tenant_a, key_a) = app.tenant("tenant-a").await;
    let (tenant_b, key_b) = app.tenant("tenant-b").await;
    let employee_a = employee(&app, &key_a, "Al", "al@shared.example").await;
    plan(&app, &key_a, &employee_a, "0.2", "2020-01-01").await;
    let employee_b = employee(&app, &key_b, "Bea", "sam@shared.example").await;
    let plan_b = plan(&app, &key_b, &employee_b, "0.1", "2020-01-01").await;
    let deal = Uuid::now_v7();
    let at = datetime!(2025-06-01 12:00 UTC);
    deliver(&app, &deal_won(tenant_b, deal, json!("999.00"), Some("sam@shared.example"), at)).await;
    let commission_b = ids(&app.get("/v1/hr/commissions", &key_b).await).pop().expect("B's commission");
    World { app, tenant_a, key_a, key_b, employee_b, plan_b, commission_b }
}

#[tokio::test]
async fn a_tenant_cannot_see_change_or_reference_another_tenants_hr_records() {
    let w = world().await;
    let before = rows(&w.app).await;
    for collection in ["employees", "commission-plans", "commissions"] {
        let r = w.app.get(&format!("/v1/hr/{collection}?limit=100"), &w.key_a).await;
        assert_eq!(r.status, StatusCode::OK);
        let text = r.body.to_string();
        for b in [&w.employee_b, &w.plan_b, &w.commission_b] {
            assert!(!text.contains(b.as_str()), "{collection}: {text}");
        }
    }
    assert!(ids(&w.app.get("/v1/hr/commissions", &w.key_a).await).is_empty());
    assert!(ids(&w.app.get("/v1/hr/employees?email=sam@shared.example", &w.key_a).await).is_empty());
    let q = format!("/v1/hr/commissions?employee_id={}", w.employee_b);
    assert!(ids(&w.app.get(&q, &w.key_a).await).is_empty());
    let q = format!("/v1/hr/commission-plans?employee_id={}", w.employee_b);
    assert!(ids(&w.app.get(&q, &w.key_a).await).is_empty());

    for (collection, id) in
        [("employees", &w.employee_b), ("commission-plans", &w.plan_b), ("commissions", &w.commission_b)]
    {
        let path = format!("/v1/hr/{collection}/{id}");
        let get = w.app.get(&path, &w.key_a).await;
        get.assert_problem(404, "not_found");
        // Exactly what a record that never existed answers: nothing to infer.
        let never =
            w.app.get(&format!("/v1/hr/{collection}/0190a000-0000-7000-8000-0000000000ee"), &w.key_a).await;
        assert_eq!(get.body, never.body);
        if collection != "commissions" {
            w.app.delete(&path, &w.key_a).await.assert_problem(404, "not_found");
        }
        assert_eq!(w.app.get(&path, &w.key_b).await.status, StatusCode::OK, "B's record survives");
    }
    w.app
        .patch(&format!("/v1/hr/employees/{}", w.employee_b), &w.key_a, json!({"name": "pwned"}))
        .await
        .assert_problem(404, "not_found");
    assert_eq!(w.app.get(&format!("/v1/hr/employees/{}", w.employee_b), &w.key_b).await.body["name"], "Bea");

    // A plan for B's employee answers as for an employee that does not exist.
    let r = w
        .app
        .post(
            "/v1/hr/commission-plans",
            &w.key_a,
            json!({"employee_id": w.employee_b, "rate": "0.9", "effective_from": "2021-01-01"}),
        )
        .await;
    r.assert_problem(422, "invalid_reference");
    assert_eq!(r.field(), "employee_id");
    // B's address is free for A.
    employee(&w.app, &w.key_a, "Sam A", "sam@shared.example").await;
    assert_eq!(rows(&w.app).await, before + 1);
}

#[tokio::test]
async fn the_handler_books_only_among_the_event_tenants_employees() {
    let w = world().await;
    let before_b = ids(&w.app.get("/v1/hr/commissions", &w.key_b).await);
    // An event of tenant A for an owner only B employs: RLS hides B's employee, nothing is booked anywhere.
    let at = datetime!(2025-06-01 12:00 UTC);
    deliver(&w.app, &deal_won(w.tenant_a, Uuid::now_v7(), json!("100.00"), Some("sam@shared.example"), at))
        .await;
    assert!(ids(&w.app.get("/v1/hr/commissions", &w.key_a).await).is_empty());
    assert_eq!(ids(&w.app.get("/v1/hr/commissions", &w.key_b).await), before_b);
    // A's own employee is booked in A, at A's rate.
    let deal = Uuid::now_v7();
    deliver(&w.app, &deal_won(w.tenant_a, deal, json!("100.00"), Some("al@shared.example"), at)).await;
    let a = w.app.get(&format!("/v1/hr/commissions?deal_id={deal}"), &w.key_a).await;
    assert_eq!(a.body["data"][0]["amount"], "20.00");
    assert!(ids(&w.app.get(&format!("/v1/hr/commissions?deal_id={deal}"), &w.key_b).await).is_empty());
}

#[tokio::test]
async fn the_hr_role_reaches_only_its_own_schema_and_cannot_rewrite_commissions() {
    let w = world().await;
    let client = w.app.db.connect_as("tessera_app").await;
    for sql in ["select * from crm.deals", "select * from core.api_keys", "select * from events.log"] {
        client.batch_execute("begin; set local role tessera_hr").await.expect("set role");
        let err = client.query(sql, &[]).await.expect_err("outside hr");
        assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{sql}");
        client.batch_execute("rollback").await.expect("rollback");
    }
    for sql in ["update hr.commissions set amount = 0", "delete from hr.commissions"] {
        client.batch_execute("begin; set local role tessera_hr").await.expect("set role");
        let err = client.execute(sql, &[]).await.expect_err("commissions are append-only for the runtime");
        assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{sql}");
        client.batch_execute("rollback").await.expect("rollback");
    }
    // With no tenant bound the role sees nothing (fail closed).
    client.batch_execute("begin read only; set local role tessera_hr").await.expect("set role");
    let n: i64 = client.query_one("select count(*) from hr.employees", &[]).await.expect("count").get(0);
    assert_eq!(n, 0);
    client.batch_execute("rollback").await.expect("rollback");
    assert_eq!(
        w.app.get(&format!("/v1/hr/commissions/{}", w.commission_b), &w.key_b).await.body["amount"],
        "99.90"
    );
}

// Demo data

#[tokio::test]
async fn the_demo_tenant_pays_its_deal_owners_a_commission() {
    let mut app = TestApp::spawn().await;
    let modules = crate::support::modules();
    let refs: Vec<&dyn Module> = modules.iter().map(|m| m.as_ref()).collect();
    let key = tessera_core::admin::seed_demo(&mut app.owner, &refs).await.expect("seed").expect("a new demo");
    let tenant: Uuid = app
        .owner
        .query_one("select id from core.tenants where slug = 'demo'", &[])
        .await
        .expect("demo tenant")
        .get(0);

    // The demo deal "Rocket skates" is Ana's; she has a plan in force.
    let deal = app.get("/v1/crm/deals/0190a000-0000-7000-8000-000000000021", &key).await;
    assert_eq!(deal.status, StatusCode::OK, "{}", deal.body);
    let owner = deal.body["owner_email"].as_str().expect("owner").to_owned();
    let staff = app.get(&format!("/v1/hr/employees?email={owner}"), &key).await;
    let ana = ids(&staff).pop().expect("the demo deal's owner is an employee");
    assert!(!ids(&app.get(&format!("/v1/hr/commission-plans?employee_id={ana}"), &key).await).is_empty());

    let deal_id = Uuid::parse_str("0190a000-0000-7000-8000-000000000021").expect("uuid");
    let event = deal_won(
        TenantId::from_uuid(tenant),
        deal_id,
        json!(deal.body["amount"].as_str().expect("amount")),
        Some(&owner),
        datetime!(2025-06-01 12:00 UTC),
    );
    deliver(&app, &event).await;
    let booked = app.get(&format!("/v1/hr/commissions?deal_id={deal_id}"), &key).await;
    assert_eq!(booked.body["data"][0]["amount"], "1200.00", "{}", booked.body);
}

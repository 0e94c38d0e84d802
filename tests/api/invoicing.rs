//! The invoicing module end to end: customers, drafts and their lines, the lifecycle draft → issued → paid
//! and void, gapless numbering under concurrency, payments, the database holding the rules below the API,
//! bad input, tenant isolation, and the handler that turns CRM events into customers and draft invoices.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use tessera_core::tenant::TenantId;
use tessera_core::{EffectTx, Event, HandlerError, Module};
use tokio_postgres::error::SqlState;
use tower::ServiceExt;

use crate::support::{TestApp, TestResponse, cluster, connect};

const NEVER: &str = "0190a000-0000-7000-8000-0000000000ee";

async fn customer(app: &TestApp, key: &str, name: &str) -> String {
    let r = app.post("/v1/invoicing/customers", key, json!({"name": name})).await;
    assert_eq!(r.status, StatusCode::CREATED, "create customer: {}", r.body);
    r.body["id"].as_str().expect("id").to_owned()
}

/// A draft for `customer` with `lines`; returns the created invoice.
async fn draft(app: &TestApp, key: &str, customer: &str, lines: Value) -> Value {
    let r = app.post("/v1/invoicing/invoices", key, json!({"customer_id": customer, "lines": lines})).await;
    assert_eq!(r.status, StatusCode::CREATED, "create invoice: {}", r.body);
    r.body
}

fn id(v: &Value) -> String {
    v["id"].as_str().expect("id").to_owned()
}

async fn issue(app: &TestApp, key: &str, invoice: &str) -> TestResponse {
    app.call(Method::POST, &format!("/v1/invoicing/invoices/{invoice}/issue"), Some(key), None).await
}

async fn void(app: &TestApp, key: &str, invoice: &str) -> TestResponse {
    app.call(Method::POST, &format!("/v1/invoicing/invoices/{invoice}/void"), Some(key), None).await
}

async fn pay(app: &TestApp, key: &str, invoice: &str, amount: &str) -> TestResponse {
    app.post(&format!("/v1/invoicing/invoices/{invoice}/payments"), key, json!({"amount": amount})).await
}

async fn rows(app: &TestApp) -> i64 {
    let mut n = 0;
    for table in ["customers", "invoices", "invoice_lines", "payments", "invoice_counters"] {
        n += app.count_all(&format!("invoicing.{table}")).await;
    }
    n
}

fn ids(r: &TestResponse) -> Vec<String> {
    r.body["data"].as_array().expect("data").iter().map(id).collect()
}

// CRUD

#[tokio::test]
async fn customers_are_created_read_updated_listed_and_deleted() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let company = uuid::Uuid::now_v7().to_string();

    let created = app
        .post(
            "/v1/invoicing/customers",
            &key,
            json!({"name": "  Initech  ", "email": "AP@Initech.example", "crm_company_id": company}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let cid = id(&created.body);
    assert_eq!(created.headers["location"], format!("/v1/invoicing/customers/{cid}").as_str());
    assert_eq!(created.body["object"], "customer");
    assert_eq!(created.body["name"], "Initech");
    assert_eq!(created.body["email"], "ap@initech.example");
    assert_eq!(created.body["crm_company_id"], company.as_str());
    assert_eq!(app.get(&format!("/v1/invoicing/customers/{cid}"), &key).await.body, created.body);

    let renamed = app
        .patch(&format!("/v1/invoicing/customers/{cid}"), &key, json!({"name": "Initrode", "email": null}))
        .await;
    assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.body);
    assert_eq!(renamed.body["name"], "Initrode");
    assert_eq!(renamed.body["email"], Value::Null);
    assert_eq!(renamed.body["crm_company_id"], company.as_str(), "fields left out are unchanged");

    // One customer per CRM company.
    let dup =
        app.post("/v1/invoicing/customers", &key, json!({"name": "Again", "crm_company_id": company})).await;
    dup.assert_problem(409, "already_exists");
    assert_eq!(dup.field(), "crm_company_id");

    let mut all = vec![cid.clone()];
    for i in 0..6 {
        all.push(customer(&app, &key, &format!("Customer {i}")).await);
    }
    let mut seen = Vec::new();
    let mut path = "/v1/invoicing/customers?limit=4".to_owned();
    loop {
        let page = app.get(&path, &key).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        seen.extend(ids(&page));
        if page.body["has_more"] == false {
            break;
        }
        path = format!(
            "/v1/invoicing/customers?limit=4&after={}",
            page.body["next_cursor"].as_str().expect("c")
        );
    }
    assert_eq!(seen, all, "every customer once, in creation order");
    let by_company = app.get(&format!("/v1/invoicing/customers?crm_company_id={company}"), &key).await;
    assert_eq!(ids(&by_company), std::slice::from_ref(&cid));

    // A customer with invoices stays.
    draft(&app, &key, &cid, json!([])).await;
    let r = app.delete(&format!("/v1/invoicing/customers/{cid}"), &key).await;
    r.assert_problem(409, "still_referenced");
    assert_eq!(app.delete(&format!("/v1/invoicing/customers/{}", all[1]), &key).await.status, 204);
    app.get(&format!("/v1/invoicing/customers/{}", all[1]), &key).await.assert_problem(404, "not_found");
    app.delete(&format!("/v1/invoicing/customers/{}", all[1]), &key).await.assert_problem(404, "not_found");
}

#[tokio::test]
async fn drafts_are_created_with_lines_edited_and_deleted() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let acme = customer(&app, &key, "Acme").await;
    let globex = customer(&app, &key, "Globex").await;

    let created = app
        .post(
            "/v1/invoicing/invoices",
            &key,
            json!({"customer_id": acme, "currency": "EUR", "memo": "Skates", "lines": [
                {"description": "Rocket skates, pair", "quantity": 10, "unit_price": "300"},
                {"description": "Express delivery", "unit_price": 49.9},
                {"description": "Wax", "quantity": "2.5", "unit_price": "0.99"}
            ]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let inv = id(&created.body);
    assert_eq!(created.headers["location"], format!("/v1/invoicing/invoices/{inv}").as_str());
    let b = &created.body;
    assert_eq!(b["object"], "invoice");
    assert_eq!(b["status"], "draft");
    assert_eq!(b["number"], Value::Null);
    assert_eq!(b["currency"], "EUR");
    // 3000.00 + 49.90 + round(2.475, 2) = 3052.38
    assert_eq!(b["total"], "3052.38");
    assert_eq!(b["amount_paid"], "0.00");
    assert_eq!(b["amount_due"], "3052.38");
    let lines = b["lines"].as_array().expect("lines");
    let descriptions: Vec<&str> = lines.iter().map(|l| l["description"].as_str().expect("d")).collect();
    assert_eq!(descriptions, ["Rocket skates, pair", "Express delivery", "Wax"], "in the order sent");
    assert_eq!((lines[0]["quantity"].as_str(), lines[0]["amount"].as_str()), (Some("10"), Some("3000.00")));
    assert_eq!((lines[1]["quantity"].as_str(), lines[1]["unit_price"].as_str()), (Some("1"), Some("49.90")));
    assert_eq!(lines[2]["amount"], "2.48");
    assert_eq!(app.get(&format!("/v1/invoicing/invoices/{inv}"), &key).await.body, created.body);

    // Lines come and go; the total follows in the same transaction.
    let added = app
        .post(
            &format!("/v1/invoicing/invoices/{inv}/lines"),
            &key,
            json!({"description": "Gift wrap", "unit_price": "7.62"}),
        )
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.body);
    assert_eq!(added.body["object"], "invoice_line");
    assert_eq!(app.get(&format!("/v1/invoicing/invoices/{inv}"), &key).await.body["total"], "3060.00");
    let wax = id(&lines[2]);
    let r = app.delete(&format!("/v1/invoicing/invoices/{inv}/lines/{wax}"), &key).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let now = app.get(&format!("/v1/invoicing/invoices/{inv}"), &key).await;
    assert_eq!(now.body["total"], "3057.52");
    assert_eq!(now.body["lines"].as_array().expect("lines").len(), 3);
    app.delete(&format!("/v1/invoicing/invoices/{inv}/lines/{wax}"), &key)
        .await
        .assert_problem(404, "not_found");

    let patched = app
        .patch(
            &format!("/v1/invoicing/invoices/{inv}"),
            &key,
            json!({"customer_id": globex, "currency": "USD", "due_date": "2031-01-31", "memo": null}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.body["customer_id"], globex.as_str());
    assert_eq!(patched.body["currency"], "USD");
    assert_eq!(patched.body["due_date"], "2031-01-31");
    assert_eq!(patched.body["memo"], Value::Null);
    assert_eq!(patched.body["total"], "3057.52", "fields left out are unchanged");

    // Lists filter by status and customer.
    let other = draft(&app, &key, &acme, json!([])).await;
    let by_customer = app.get(&format!("/v1/invoicing/invoices?customer_id={globex}"), &key).await;
    assert_eq!(ids(&by_customer), std::slice::from_ref(&inv));
    assert!(by_customer.body["data"][0].get("lines").is_none(), "list items leave the lines out");
    let drafts = app.get("/v1/invoicing/invoices?status=draft", &key).await;
    assert_eq!(ids(&drafts), [inv.clone(), id(&other)]);
    assert!(ids(&app.get("/v1/invoicing/invoices?status=issued", &key).await).is_empty());

    // Deleting a draft takes its lines along.
    assert_eq!(app.delete(&format!("/v1/invoicing/invoices/{inv}"), &key).await.status, 204);
    app.get(&format!("/v1/invoicing/invoices/{inv}"), &key).await.assert_problem(404, "not_found");
    assert_eq!(app.count_all("invoicing.invoice_lines").await, 0);
    app.delete(&format!("/v1/invoicing/invoices/{inv}"), &key).await.assert_problem(404, "not_found");
}

// Lifecycle

#[tokio::test]
async fn an_invoice_goes_from_draft_to_issued_to_paid() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let acme = customer(&app, &key, "Acme").await;
    let inv = id(&draft(&app, &key, &acme, json!([{"description": "Anvil", "unit_price": "100.00"}])).await);

    let issued = issue(&app, &key, &inv).await;
    assert_eq!(issued.status, StatusCode::OK, "{}", issued.body);
    let b = &issued.body;
    assert_eq!(b["status"], "issued");
    assert_eq!(b["number"], "INV-000001");
    assert_eq!(b["customer_name"], "Acme");
    let today = time::OffsetDateTime::now_utc().date();
    let issue_date = b["issue_date"].as_str().expect("issue_date");
    assert!(
        [today.previous_day(), Some(today), today.next_day()]
            .iter()
            .flatten()
            .any(|d| d.to_string() == issue_date),
        "issued today: {issue_date}"
    );
    assert!(b["due_date"].as_str().expect("due") > issue_date, "due 30 days later by default");
    assert!(b["issued_at"].is_string());

    // Renaming the customer does not rewrite an issued invoice.
    app.patch(&format!("/v1/invoicing/customers/{acme}"), &key, json!({"name": "Acme Renamed"})).await;
    assert_eq!(app.get(&format!("/v1/invoicing/invoices/{inv}"), &key).await.body["customer_name"], "Acme");

    let first = pay(&app, &key, &inv, "40").await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!(first.body["object"], "payment");
    assert_eq!(first.body["amount"], "40.00");
    let partly = app.get(&format!("/v1/invoicing/invoices/{inv}"), &key).await;
    assert_eq!(partly.body["status"], "issued", "not yet paid in full");
    assert_eq!(
        (partly.body["amount_paid"].as_str(), partly.body["amount_due"].as_str()),
        (Some("40.00"), Some("60.00"))
    );

    let over = pay(&app, &key, &inv, "60.01").await;
    over.assert_problem(422, "payment_exceeds_balance");
    assert_eq!(over.field(), "amount");

    let rest = app
        .post(
            &format!("/v1/invoicing/invoices/{inv}/payments"),
            &key,
            json!({"amount": 60, "paid_at": "2030-05-01T09:30:00Z", "reference": "wire 42"}),
        )
        .await;
    assert_eq!(rest.status, StatusCode::CREATED, "{}", rest.body);
    assert_eq!(rest.body["paid_at"], "2030-05-01T09:30:00Z");
    let paid = app.get(&format!("/v1/invoicing/invoices/{inv}"), &key).await;
    assert_eq!(paid.body["status"], "paid", "the payment reaching the total settles it");
    assert_eq!(
        (paid.body["amount_paid"].as_str(), paid.body["amount_due"].as_str()),
        (Some("100.00"), Some("0.00"))
    );
    assert!(paid.body["paid_at"].is_string());
    assert_eq!(paid.body["number"], "INV-000001");

    let payments = app.get(&format!("/v1/invoicing/invoices/{inv}/payments"), &key).await;
    assert_eq!(payments.status, StatusCode::OK);
    assert_eq!(ids(&payments), [id(&first.body), id(&rest.body)]);

    pay(&app, &key, &inv, "1").await.assert_problem(409, "invoice_not_issued");
    void(&app, &key, &inv).await.assert_problem(409, "invalid_transition");
    issue(&app, &key, &inv).await.assert_problem(409, "invoice_not_draft");
    assert_eq!(app.count_all("invoicing.payments").await, 2);
}

#[tokio::test]
async fn drafts_and_unpaid_invoices_can_be_voided_but_not_once_paid_into() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let acme = customer(&app, &key, "Acme").await;
    let line = json!([{"description": "Anvil", "unit_price": "100.00"}]);

    let d = id(&draft(&app, &key, &acme, line.clone()).await);
    let voided = void(&app, &key, &d).await;
    assert_eq!(voided.status, StatusCode::OK, "{}", voided.body);
    assert_eq!((voided.body["status"].as_str(), &voided.body["number"]), (Some("void"), &Value::Null));
    assert_eq!(voided.body["amount_due"], "0.00");
    issue(&app, &key, &d).await.assert_problem(409, "invoice_not_draft");
    pay(&app, &key, &d, "1").await.assert_problem(409, "invoice_not_issued");
    void(&app, &key, &d).await.assert_problem(409, "invalid_transition");

    let i = id(&draft(&app, &key, &acme, line.clone()).await);
    assert_eq!(issue(&app, &key, &i).await.body["number"], "INV-000001");
    let voided = void(&app, &key, &i).await;
    assert_eq!(voided.status, StatusCode::OK, "{}", voided.body);
    assert_eq!(voided.body["number"], "INV-000001", "a voided invoice keeps its number");
    assert!(voided.body["voided_at"].is_string());

    let p = id(&draft(&app, &key, &acme, line).await);
    assert_eq!(issue(&app, &key, &p).await.body["number"], "INV-000002");
    assert_eq!(pay(&app, &key, &p, "10").await.status, StatusCode::CREATED);
    void(&app, &key, &p).await.assert_problem(409, "invoice_has_payments");
    assert_eq!(app.get(&format!("/v1/invoicing/invoices/{p}"), &key).await.body["status"], "issued");
}

#[tokio::test]
async fn an_issued_invoice_cannot_be_changed_through_the_api() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let acme = customer(&app, &key, "Acme").await;
    let created = draft(&app, &key, &acme, json!([{"description": "Anvil", "unit_price": "100.00"}])).await;
    let inv = id(&created);
    let line = id(&created["lines"][0]);
    let before = issue(&app, &key, &inv).await.body;
    let rows_before = rows(&app).await;

    let path = format!("/v1/invoicing/invoices/{inv}");
    app.patch(&path, &key, json!({"memo": "changed"})).await.assert_problem(409, "invoice_not_draft");
    app.patch(&path, &key, json!({"currency": "USD"})).await.assert_problem(409, "invoice_not_draft");
    app.delete(&path, &key).await.assert_problem(409, "invoice_not_draft");
    app.post(&format!("{path}/lines"), &key, json!({"description": "More", "unit_price": "1"}))
        .await
        .assert_problem(409, "invoice_not_draft");
    app.delete(&format!("{path}/lines/{line}"), &key).await.assert_problem(409, "invoice_not_draft");
    issue(&app, &key, &inv).await.assert_problem(409, "invoice_not_draft");

    assert_eq!(app.get(&path, &key).await.body, before, "the issued invoice is untouched");
    assert_eq!(rows(&app).await, rows_before);
}

#[tokio::test]
async fn an_empty_invoice_cannot_be_issued_and_burns_no_number() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let acme = customer(&app, &key, "Acme").await;
    let empty = id(&draft(&app, &key, &acme, json!([])).await);
    issue(&app, &key, &empty).await.assert_problem(422, "invoice_empty");
    let free =
        id(&draft(&app, &key, &acme, json!([{"description": "Free sample", "unit_price": "0"}])).await);
    issue(&app, &key, &free).await.assert_problem(422, "invoice_empty");

    // A draft whose due date would fall before today's issue date fails after taking its number.
    let late = draft(&app, &key, &acme, json!([{"description": "x", "unit_price": "1"}])).await;
    let late = id(&late);
    app.patch(&format!("/v1/invoicing/invoices/{late}"), &key, json!({"due_date": "2001-01-01"})).await;
    let r = issue(&app, &key, &late).await;
    r.assert_problem(422, "invalid_value");
    assert_eq!(r.field(), "due_date");
    let still = app.get(&format!("/v1/invoicing/invoices/{late}"), &key).await;
    assert_eq!((still.body["status"].as_str(), &still.body["number"]), (Some("draft"), &Value::Null));

    let good = id(&draft(&app, &key, &acme, json!([{"description": "x", "unit_price": "1"}])).await);
    assert_eq!(issue(&app, &key, &good).await.body["number"], "INV-000001", "no number was burnt");
}

/// Found by the contract test: dates that pass year 9999 (a due date computed on issue, a payment time in UTC)
/// are refused as input, not stored for readers to fail on.
#[tokio::test]
async fn dates_past_year_9999_are_refused_not_stored() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let acme = customer(&app, &key, "Acme").await;
    let r = app
        .post(
            "/v1/invoicing/invoices",
            &key,
            json!({"customer_id": acme, "issue_date": "9999-12-20", "lines": [{"description": "x", "unit_price": "1"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let late = id(&r.body);
    let r = issue(&app, &key, &late).await;
    r.assert_problem(422, "invalid_value");
    assert_eq!(r.field(), "due_date");
    let still = app.get(&format!("/v1/invoicing/invoices/{late}"), &key).await;
    assert_eq!(still.body["status"], "draft", "{}", still.body);

    let fine = id(&draft(&app, &key, &acme, json!([{"description": "x", "unit_price": "10"}])).await);
    assert_eq!(issue(&app, &key, &fine).await.status, StatusCode::OK);
    let payments = format!("/v1/invoicing/invoices/{fine}/payments");
    let r = app.post(&payments, &key, json!({"amount": "1", "paid_at": "9999-12-31T23:00:00-02:00"})).await;
    r.assert_problem(422, "invalid_value");
    assert_eq!(r.field(), "paid_at");
    let r = app.post(&payments, &key, json!({"amount": "1", "paid_at": "9999-12-31T23:00:00+02:00"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(app.get(&payments, &key).await.body["data"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_rolled_back_issue_gives_its_number_back() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    let acme = customer(&app, &key, "Acme").await;
    let first = id(&draft(&app, &key, &acme, json!([{"description": "x", "unit_price": "1"}])).await);
    let second = id(&draft(&app, &key, &acme, json!([{"description": "y", "unit_price": "2"}])).await);

    let sql = app.db.connect_as("tessera_app").await;
    sql.batch_execute("begin; set local role tessera_invoicing").await.expect("role");
    sql.execute("select set_config('tessera.tenant_id', $1, true)", &[&tenant.to_string()])
        .await
        .expect("bind");
    let number: String = sql
        .query_one(
            "update invoicing.invoices set status = 'issued' where id = $1::text::uuid returning number",
            &[&first],
        )
        .await
        .expect("issue")
        .get(0);
    assert_eq!(number, "INV-000001");
    sql.batch_execute("rollback").await.expect("rollback");

    assert_eq!(issue(&app, &key, &second).await.body["number"], "INV-000001");
    assert_eq!(issue(&app, &key, &first).await.body["number"], "INV-000002");
}

/// Issues `invoice` through a clone of the router, so that many run at once.
async fn issue_concurrently(
    router: axum::Router,
    key: String,
    invoice: String,
) -> (String, StatusCode, Value) {
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("/v1/invoicing/invoices/{invoice}/issue"))
        .header("authorization", format!("Bearer {key}"))
        .body(Body::empty())
        .expect("request");
    let response = router.oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
    (invoice, status, serde_json::from_slice(&bytes).expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_issues_are_numbered_without_gaps_or_duplicates() {
    let mut app = TestApp::spawn_with_pool(8).await;
    let (_, key_a) = app.tenant("tenant-a").await;
    let (_, key_b) = app.tenant("tenant-b").await;
    let a = customer(&app, &key_a, "A").await;
    let b = customer(&app, &key_b, "B").await;
    const GOOD: usize = 40;
    const FAILING: usize = 10;
    const OTHER_TENANT: usize = 10;
    let mut jobs: Vec<(String, String, bool)> = Vec::new();
    for i in 0..GOOD + FAILING {
        let inv =
            id(&draft(&app, &key_a, &a, json!([{"description": format!("line {i}"), "unit_price": "1"}]))
                .await);
        if i >= GOOD {
            // Fails its date check after the number was taken: the rollback must give it back.
            app.patch(&format!("/v1/invoicing/invoices/{inv}"), &key_a, json!({"due_date": "2001-01-01"}))
                .await;
        }
        jobs.push((key_a.clone(), inv, i < GOOD));
    }
    for _ in 0..OTHER_TENANT {
        let inv = id(&draft(&app, &key_b, &b, json!([{"description": "b", "unit_price": "1"}])).await);
        jobs.push((key_b.clone(), inv, true));
    }
    // Interleave the tenants and the failing issues.
    jobs.sort_by(|x, y| x.1.chars().rev().cmp(y.1.chars().rev()));

    let mut set = tokio::task::JoinSet::new();
    for (key, inv, _) in &jobs {
        set.spawn(issue_concurrently(app.router.clone(), key.clone(), inv.clone()));
    }
    let mut numbers_a = Vec::new();
    let mut numbers_b = Vec::new();
    while let Some(done) = set.join_next().await {
        let (inv, status, body) = done.expect("task");
        let (key, _, good) = jobs.iter().find(|j| j.1 == inv).expect("job");
        if !good {
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            continue;
        }
        assert_eq!(status, StatusCode::OK, "{body}");
        let n: u32 = body["number"].as_str().expect("number")["INV-".len()..].parse().expect("digits");
        if *key == key_a { numbers_a.push(n) } else { numbers_b.push(n) }
    }
    numbers_a.sort_unstable();
    numbers_b.sort_unstable();
    assert_eq!(numbers_a, (1..=GOOD as u32).collect::<Vec<_>>(), "1..N, no gap, no duplicate");
    assert_eq!(numbers_b, (1..=OTHER_TENANT as u32).collect::<Vec<_>>(), "each tenant counts on its own");
    let drafts = app.get("/v1/invoicing/invoices?status=draft&limit=100", &key_a).await;
    assert_eq!(ids(&drafts).len(), FAILING, "the failed issues left their drafts as they were");
}

// The database holds the rules below the API.

/// Runs `sql` in a transaction of its own as the invoicing role with `tenant` bound; commits it if it
/// succeeds.
async fn as_module(app: &TestApp, tenant: TenantId, sql: &str) -> Result<u64, tokio_postgres::Error> {
    let client = app.db.connect_as("tessera_app").await;
    client.batch_execute("begin; set local role tessera_invoicing").await.expect("role");
    client
        .execute("select set_config('tessera.tenant_id', $1, true)", &[&tenant.to_string()])
        .await
        .expect("bind");
    let result = client.execute(sql, &[]).await;
    client.batch_execute(if result.is_ok() { "commit" } else { "rollback" }).await.expect("end");
    result
}

#[track_caller]
fn assert_refused(
    result: Result<u64, tokio_postgres::Error>,
    state: SqlState,
    constraint: Option<&str>,
    sql: &str,
) {
    let err = result.expect_err(sql);
    let db = err.as_db_error().unwrap_or_else(|| panic!("{sql}: {err}"));
    assert_eq!((db.code(), db.constraint()), (&state, constraint), "{sql}: {}", db.message());
}

#[tokio::test]
async fn the_database_keeps_issued_invoices_immutable_even_for_direct_sql() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    let acme = customer(&app, &key, "Acme").await;
    let other = customer(&app, &key, "Other").await;
    let created = draft(&app, &key, &acme, json!([{"description": "Anvil", "unit_price": "100.00"}])).await;
    let inv = id(&created);
    let line = id(&created["lines"][0]);
    let before = issue(&app, &key, &inv).await.body;
    let paid_inv = id(&draft(&app, &key, &acme, json!([{"description": "Bolt", "unit_price": "5"}])).await);
    issue(&app, &key, &paid_inv).await;
    pay(&app, &key, &paid_inv, "5").await;
    let draft_inv = id(&draft(&app, &key, &acme, json!([{"description": "Nut", "unit_price": "3"}])).await);

    let not_draft = Some("invoice_not_draft");
    let transition = Some("invoice_invalid_transition");
    let state = SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE;
    for sql in [
        format!("update invoicing.invoices set total = 1 where id = '{inv}'"),
        format!("update invoicing.invoices set customer_id = '{other}' where id = '{inv}'"),
        format!("update invoicing.invoices set currency = 'EUR' where id = '{inv}'"),
        format!("update invoicing.invoices set number = 'INV-999999' where id = '{inv}'"),
        format!("update invoicing.invoices set due_date = due_date + 1 where id = '{inv}'"),
        format!("update invoicing.invoices set memo = 'sneaky' where id = '{inv}'"),
        format!("update invoicing.invoices set issued_at = now() - interval '1 day' where id = '{inv}'"),
        format!("update invoicing.invoices set memo = 'sneaky' where id = '{paid_inv}'"),
        format!("delete from invoicing.invoices where id = '{inv}'"),
        format!("delete from invoicing.invoices where id = '{paid_inv}'"),
        format!(
            "insert into invoicing.invoice_lines (invoice_id, description, unit_price) values ('{inv}', 'x', 1)"
        ),
        format!("update invoicing.invoice_lines set unit_price = 1 where id = '{line}'"),
        format!("update invoicing.invoice_lines set description = 'renamed' where id = '{line}'"),
        format!("delete from invoicing.invoice_lines where id = '{line}'"),
    ] {
        assert_refused(as_module(&app, tenant, &sql).await, state.clone(), not_draft, &sql);
    }
    for sql in [
        format!("update invoicing.invoices set status = 'draft' where id = '{inv}'"),
        format!("update invoicing.invoices set status = 'paid' where id = '{inv}'"),
        format!("update invoicing.invoices set status = 'void' where id = '{paid_inv}'"),
        format!("update invoicing.invoices set status = 'paid' where id = '{draft_inv}'"),
        format!("insert into invoicing.invoices (customer_id, status) values ('{acme}', 'issued')"),
    ] {
        assert_refused(as_module(&app, tenant, &sql).await, state.clone(), transition, &sql);
    }
    let sql = format!("insert into invoicing.payments (invoice_id, amount) values ('{draft_inv}', 1)");
    assert_refused(as_module(&app, tenant, &sql).await, state.clone(), Some("invoice_not_issued"), &sql);
    let sql = format!("insert into invoicing.payments (invoice_id, amount) values ('{inv}', 100.01)");
    assert_refused(
        as_module(&app, tenant, &sql).await,
        SqlState::CHECK_VIOLATION,
        Some("payments_within_balance"),
        &sql,
    );
    // Payments are append-only, and numbers are the database's alone.
    for sql in [
        "update invoicing.payments set amount = 1".to_owned(),
        "delete from invoicing.payments".to_owned(),
        "update invoicing.invoice_counters set next_number = 1".to_owned(),
        "insert into invoicing.invoice_counters (next_number) values (7)".to_owned(),
    ] {
        assert_refused(as_module(&app, tenant, &sql).await, SqlState::INSUFFICIENT_PRIVILEGE, None, &sql);
    }

    // A draft's total is derived: writing it by hand changes nothing.
    as_module(&app, tenant, &format!("update invoicing.invoices set total = 999 where id = '{draft_inv}'"))
        .await
        .expect("drafts are editable");
    assert_eq!(app.get(&format!("/v1/invoicing/invoices/{draft_inv}"), &key).await.body["total"], "3.00");
    // Issuing by SQL numbers the invoice just as the API does.
    as_module(
        &app,
        tenant,
        &format!("update invoicing.invoices set status = 'issued' where id = '{draft_inv}'"),
    )
    .await
    .expect("issue by SQL");
    assert_eq!(
        app.get(&format!("/v1/invoicing/invoices/{draft_inv}"), &key).await.body["number"],
        "INV-000003"
    );

    assert_eq!(app.get(&format!("/v1/invoicing/invoices/{inv}"), &key).await.body, before);
}

#[tokio::test]
async fn a_tenant_with_issued_and_paid_invoices_can_still_be_deleted() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("leaving").await;
    let (_, stay_key) = app.tenant("staying").await;
    let acme = customer(&app, &key, "Acme").await;
    for state in ["draft", "issued", "paid"] {
        let inv = id(&draft(&app, &key, &acme, json!([{"description": state, "unit_price": "5"}])).await);
        if state != "draft" {
            issue(&app, &key, &inv).await;
        }
        if state == "paid" {
            pay(&app, &key, &inv, "5").await;
        }
    }
    let stays = customer(&app, &stay_key, "Stays").await;
    let kept = id(&draft(&app, &stay_key, &stays, json!([{"description": "k", "unit_price": "1"}])).await);
    issue(&app, &stay_key, &kept).await;

    app.owner
        .execute("delete from core.tenants where id = $1", &[&tenant.as_uuid()])
        .await
        .expect("delete tenant");
    for (table, left) in
        [("customers", 1), ("invoices", 1), ("invoice_lines", 1), ("payments", 0), ("invoice_counters", 1)]
    {
        assert_eq!(app.count_all(&format!("invoicing.{table}")).await, left, "{table}");
    }
    assert_eq!(app.get(&format!("/v1/invoicing/invoices/{kept}"), &stay_key).await.body["status"], "issued");
}

// Bad input

#[tokio::test]
async fn bad_input_is_refused_with_its_field_and_nothing_is_written() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    let acme = customer(&app, &key, "Acme").await;
    let created = draft(&app, &key, &acme, json!([{"description": "Anvil", "unit_price": "100"}])).await;
    let inv = id(&created);
    let issued = id(&draft(&app, &key, &acme, json!([{"description": "Anvil", "unit_price": "100"}])).await);
    issue(&app, &key, &issued).await;
    let before = rows(&app).await;

    let invoices = "/v1/invoicing/invoices".to_owned();
    let lines = format!("/v1/invoicing/invoices/{inv}/lines");
    let payments = format!("/v1/invoicing/invoices/{issued}/payments");
    let customers = "/v1/invoicing/customers".to_owned();
    let cases: Vec<(&String, Value, u16, &str, &str)> = vec![
        (&customers, json!({}), 422, "missing_field", "name"),
        (&customers, json!({"name": "x".repeat(201)}), 422, "too_long", "name"),
        (&customers, json!({"name": "A", "email": "nope"}), 422, "invalid_value", "email"),
        (&customers, json!({"name": "A", "crm_company_id": "nope"}), 422, "invalid_value", "crm_company_id"),
        (
            &customers,
            json!({"name": "A", "tenant_id": tenant.to_string()}),
            422,
            "unknown_field",
            "tenant_id",
        ),
        (&invoices, json!({}), 422, "missing_field", "customer_id"),
        (&invoices, json!({"customer_id": NEVER}), 422, "invalid_reference", "customer_id"),
        (&invoices, json!({"customer_id": acme, "currency": "usd"}), 422, "invalid_value", "currency"),
        (&invoices, json!({"customer_id": acme, "currency": null}), 422, "missing_field", "currency"),
        (&invoices, json!({"customer_id": acme, "status": "paid"}), 422, "unknown_field", "status"),
        (&invoices, json!({"customer_id": acme, "number": "INV-000009"}), 422, "unknown_field", "number"),
        (&invoices, json!({"customer_id": acme, "total": "5"}), 422, "unknown_field", "total"),
        (
            &invoices,
            json!({"customer_id": acme, "source_event_id": NEVER}),
            422,
            "unknown_field",
            "source_event_id",
        ),
        (&invoices, json!({"customer_id": acme, "due_date": "2027-02-30"}), 422, "invalid_value", "due_date"),
        (
            &invoices,
            json!({"customer_id": acme, "issue_date": "2027-02-01", "due_date": "2027-01-01"}),
            422,
            "invalid_value",
            "due_date",
        ),
        (&invoices, json!({"customer_id": acme, "lines": "x"}), 422, "invalid_type", "lines"),
        (&invoices, json!({"customer_id": acme, "lines": [1]}), 422, "invalid_type", "lines[0]"),
        (
            &invoices,
            json!({"customer_id": acme, "lines": [{"description": "ok", "unit_price": "1"}, {"unit_price": "1"}]}),
            422,
            "missing_field",
            "lines[1].description",
        ),
        (
            &invoices,
            json!({"customer_id": acme, "lines": [{"description": "a", "unit_price": "-1"}]}),
            422,
            "invalid_value",
            "lines[0].unit_price",
        ),
        (
            &invoices,
            json!({"customer_id": acme, "lines": [{"description": "a", "unit_price": "1", "amount": "9"}]}),
            422,
            "unknown_field",
            "lines[0].amount",
        ),
        (
            // Each line fits, their total does not: refused by the database, named, and nothing kept.
            &invoices,
            json!({"customer_id": acme, "lines": [
                {"description": "a", "unit_price": "9999999999999999"},
                {"description": "b", "unit_price": "9999999999999999"}
            ]}),
            422,
            "invalid_value",
            "lines[1].unit_price",
        ),
        (&lines, json!({"unit_price": "1"}), 422, "missing_field", "description"),
        (&lines, json!({"description": "a"}), 422, "missing_field", "unit_price"),
        (&lines, json!({"description": "a", "unit_price": "1.234"}), 422, "invalid_value", "unit_price"),
        (&lines, json!({"description": "a", "unit_price": 1e300}), 422, "invalid_value", "unit_price"),
        (&lines, json!({"description": "a", "unit_price": true}), 422, "invalid_type", "unit_price"),
        (
            &lines,
            json!({"description": "a", "unit_price": "1", "quantity": "0"}),
            422,
            "invalid_value",
            "quantity",
        ),
        (
            &lines,
            json!({"description": "a", "unit_price": "1", "quantity": "1.2345"}),
            422,
            "invalid_value",
            "quantity",
        ),
        (
            &lines,
            json!({"description": "a", "unit_price": "9999999999999999", "quantity": "999999999"}),
            422,
            "invalid_value",
            "unit_price",
        ),
        (&lines, json!({"description": "x".repeat(501), "unit_price": "1"}), 422, "too_long", "description"),
        (&lines, json!({"description": "a\u{0}b", "unit_price": "1"}), 422, "invalid_value", "description"),
        (&payments, json!({}), 422, "missing_field", "amount"),
        (&payments, json!({"amount": "0"}), 422, "invalid_value", "amount"),
        (&payments, json!({"amount": "-5"}), 422, "invalid_value", "amount"),
        (&payments, json!({"amount": "100.01"}), 422, "payment_exceeds_balance", "amount"),
        (&payments, json!({"amount": "1", "paid_at": "tuesday"}), 422, "invalid_value", "paid_at"),
        (&payments, json!({"amount": "1", "paid_at": 5}), 422, "invalid_type", "paid_at"),
        (&payments, json!({"amount": "1", "invoice_id": inv}), 422, "unknown_field", "invoice_id"),
    ];
    for (path, body, status, code, field) in cases {
        let r = app.post(path, &key, body.clone()).await;
        r.assert_problem(status, code);
        assert_eq!(r.field(), field, "for {body}");
        let text = r.body.to_string();
        for internal in ["constraint", "violates", "invoicing.", "SQLSTATE", "postgres"] {
            assert!(!text.contains(internal), "{internal:?} leaked: {text}");
        }
    }

    // Partial updates: the same checks, and no nulls where a value is required.
    let path = format!("/v1/invoicing/invoices/{inv}");
    for (body, code, field) in [
        (json!({"customer_id": null}), "missing_field", "customer_id"),
        (json!({"customer_id": NEVER}), "invalid_reference", "customer_id"),
        (json!({"lines": []}), "unknown_field", "lines"),
        (json!({"status": "issued"}), "unknown_field", "status"),
        (json!({"memo": ""}), "too_short", "memo"),
    ] {
        let r = app.patch(&path, &key, body.clone()).await;
        r.assert_problem(422, code);
        assert_eq!(r.field(), field, "for {body}");
    }
    let r = app.patch(&format!("/v1/invoicing/customers/{acme}"), &key, json!({"name": null})).await;
    r.assert_problem(422, "missing_field");

    // Bodies that are not JSON objects.
    let raw = Request::builder()
        .method(Method::POST)
        .uri("/v1/invoicing/invoices")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Body::from("{\"customer_id\": "))
        .expect("request");
    app.send(raw).await.assert_problem(400, "malformed_json");
    let raw = Request::builder()
        .method(Method::POST)
        .uri(format!("/v1/invoicing/invoices/{issued}/payments"))
        .header("authorization", format!("Bearer {key}"))
        .body(Body::from("{\"amount\": \"1\"}"))
        .expect("request");
    app.send(raw).await.assert_problem(415, "unsupported_media_type");

    // Bad ids and query parameters.
    for path in [
        "/v1/invoicing/invoices/nope".to_owned(),
        "/v1/invoicing/customers/1234".to_owned(),
        "/v1/invoicing/invoices/nope/payments".to_owned(),
    ] {
        let r = app.get(&path, &key).await;
        r.assert_problem(400, "invalid_parameter");
        assert_eq!(r.field(), "id");
    }
    let r = app.call(Method::POST, "/v1/invoicing/invoices/nope/issue", Some(&key), None).await;
    r.assert_problem(400, "invalid_parameter");
    let r = app.delete(&format!("/v1/invoicing/invoices/{inv}/lines/nope"), &key).await;
    r.assert_problem(400, "invalid_parameter");
    assert_eq!(r.field(), "line_id");
    let r = app.delete(&format!("/v1/invoicing/invoices/nope/lines/{NEVER}"), &key).await;
    assert_eq!(r.field(), "id");
    for (query, code, field) in [
        ("status=open", "invalid_parameter", "status"),
        ("customer_id=nope", "invalid_parameter", "customer_id"),
        ("limit=0", "invalid_parameter", "limit"),
        ("after=garbage", "invalid_parameter", "after"),
        ("number=INV-000001", "unknown_parameter", "number"),
    ] {
        let r = app.get(&format!("/v1/invoicing/invoices?{query}"), &key).await;
        r.assert_problem(400, code);
        assert_eq!(r.field(), field, "for {query}");
    }

    // Missing things are 404s, not 500s.
    for r in [
        app.get(&format!("/v1/invoicing/invoices/{NEVER}"), &key).await,
        issue(&app, &key, NEVER).await,
        void(&app, &key, NEVER).await,
        pay(&app, &key, NEVER, "1").await,
        app.get(&format!("/v1/invoicing/invoices/{NEVER}/payments"), &key).await,
        app.post(
            &format!("/v1/invoicing/invoices/{NEVER}/lines"),
            &key,
            json!({"description": "a", "unit_price": "1"}),
        )
        .await,
        app.delete(&format!("/v1/invoicing/invoices/{inv}/lines/{NEVER}"), &key).await,
    ] {
        r.assert_problem(404, "not_found");
    }

    // A read-only key reads and writes nothing.
    let reader = app.key(tenant, &["invoicing:read"]).await;
    assert_eq!(app.get("/v1/invoicing/invoices", &reader).await.status, 200);
    issue(&app, &reader, &inv).await.assert_problem(403, "insufficient_scope");
    pay(&app, &reader, &issued, "1").await.assert_problem(403, "insufficient_scope");
    let crm_only = app.key(tenant, &["crm:write"]).await;
    app.get("/v1/invoicing/invoices", &crm_only).await.assert_problem(403, "insufficient_scope");

    assert_eq!(rows(&app).await, before, "nothing was written");
    let unchanged = app.get(&format!("/v1/invoicing/invoices/{inv}"), &key).await;
    assert_eq!(
        (unchanged.body["total"].as_str(), unchanged.body["status"].as_str()),
        (Some("100.00"), Some("draft"))
    );
}

// Isolation

#[tokio::test]
async fn a_tenant_cannot_see_change_issue_void_or_pay_another_tenants_invoices() {
    let mut app = TestApp::spawn().await;
    let (_, key_a) = app.tenant("tenant-a").await;
    let (_, key_b) = app.tenant("tenant-b").await;
    let customer_a = customer(&app, &key_a, "A Corp").await;
    let created =
        draft(&app, &key_a, &customer_a, json!([{"description": "A secret", "unit_price": "100"}])).await;
    let draft_a = id(&created);
    let line_a = id(&created["lines"][0]);
    let issued_a =
        id(&draft(&app, &key_a, &customer_a, json!([{"description": "A2", "unit_price": "50"}])).await);
    issue(&app, &key_a, &issued_a).await;
    pay(&app, &key_a, &issued_a, "10").await;
    let customer_b = customer(&app, &key_b, "B Corp").await;
    let own_b = id(&draft(&app, &key_b, &customer_b, json!([{"description": "B", "unit_price": "1"}])).await);
    let before = rows(&app).await;
    let snapshot_a = (
        app.get(&format!("/v1/invoicing/invoices/{draft_a}"), &key_a).await.body,
        app.get(&format!("/v1/invoicing/invoices/{issued_a}"), &key_a).await.body,
        app.get(&format!("/v1/invoicing/customers/{customer_a}"), &key_a).await.body,
    );

    // Lists show only B's own; filters on A's values find nothing.
    for path in ["/v1/invoicing/invoices?limit=100", "/v1/invoicing/customers?limit=100"] {
        let text = app.get(path, &key_b).await.body.to_string();
        assert!(
            !text.contains(&draft_a) && !text.contains(&issued_a) && !text.contains(&customer_a),
            "{text}"
        );
    }
    assert!(
        ids(&app.get(&format!("/v1/invoicing/invoices?customer_id={customer_a}"), &key_b).await).is_empty()
    );
    assert_eq!(ids(&app.get("/v1/invoicing/invoices", &key_b).await), std::slice::from_ref(&own_b));

    // Every door on A's records answers exactly as for a record that never existed.
    for target in [&draft_a, &issued_a] {
        let path = format!("/v1/invoicing/invoices/{target}");
        let never = format!("/v1/invoicing/invoices/{NEVER}");
        assert_eq!(app.get(&path, &key_b).await.body, app.get(&never, &key_b).await.body);
        app.get(&path, &key_b).await.assert_problem(404, "not_found");
        app.patch(&path, &key_b, json!({"memo": "pwned"})).await.assert_problem(404, "not_found");
        app.delete(&path, &key_b).await.assert_problem(404, "not_found");
        issue(&app, &key_b, target).await.assert_problem(404, "not_found");
        void(&app, &key_b, target).await.assert_problem(404, "not_found");
        pay(&app, &key_b, target, "1").await.assert_problem(404, "not_found");
        app.get(&format!("{path}/payments"), &key_b).await.assert_problem(404, "not_found");
        app.post(&format!("{path}/lines"), &key_b, json!({"description": "pwned", "unit_price": "1"}))
            .await
            .assert_problem(404, "not_found");
        app.delete(&format!("{path}/lines/{line_a}"), &key_b).await.assert_problem(404, "not_found");
    }
    // B's own invoice cannot reach A's line or customer either.
    app.delete(&format!("/v1/invoicing/invoices/{own_b}/lines/{line_a}"), &key_b)
        .await
        .assert_problem(404, "not_found");
    let foreign = app
        .patch(&format!("/v1/invoicing/invoices/{own_b}"), &key_b, json!({"customer_id": customer_a}))
        .await;
    foreign.assert_problem(422, "invalid_reference");
    let missing =
        app.patch(&format!("/v1/invoicing/invoices/{own_b}"), &key_b, json!({"customer_id": NEVER})).await;
    assert_eq!(foreign.body, missing.body, "a foreign id answers like a missing one");
    app.post("/v1/invoicing/invoices", &key_b, json!({"customer_id": customer_a}))
        .await
        .assert_problem(422, "invalid_reference");
    let path = format!("/v1/invoicing/customers/{customer_a}");
    app.get(&path, &key_b).await.assert_problem(404, "not_found");
    app.patch(&path, &key_b, json!({"name": "pwned"})).await.assert_problem(404, "not_found");
    app.delete(&path, &key_b).await.assert_problem(404, "not_found");

    assert_eq!(rows(&app).await, before, "row counts unchanged");
    let after = (
        app.get(&format!("/v1/invoicing/invoices/{draft_a}"), &key_a).await.body,
        app.get(&format!("/v1/invoicing/invoices/{issued_a}"), &key_a).await.body,
        app.get(&format!("/v1/invoicing/customers/{customer_a}"), &key_a).await.body,
    );
    assert_eq!(after, snapshot_a, "A's records are untouched");

    // B's numbering is its own: its first issue is INV-000001 although A has issued one.
    assert_eq!(issue(&app, &key_b, &own_b).await.body["number"], "INV-000001");
}

// The handler for CRM events

/// Log positions for hand-made events, increasing as the dispatcher's would.
static SEQ: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);

fn event(tenant: TenantId, kind: &str, table: &str, op: &str, new: Value) -> Event {
    Event {
        seq: SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        id: uuid::Uuid::new_v4(),
        tenant_id: tenant.as_uuid(),
        kind: kind.to_owned(),
        commit_time: time::OffsetDateTime::now_utc(),
        data: json!({"table": table, "op": op, "new": new, "old": null}),
    }
}

/// Runs the `invoicing.deals` handler as the dispatcher would: in a transaction as `tessera_invoicing` with
/// the event's tenant bound, committed when it succeeds.
async fn deliver(app: &TestApp, event: &Event) -> Result<(), HandlerError> {
    let subscription = tessera_invoicing::Invoicing
        .subscriptions()
        .into_iter()
        .find(|s| s.name == "invoicing.deals")
        .expect("the subscription");
    assert!(subscription.types.contains(&event.kind.as_str()), "subscribed to {}", event.kind);
    let client = connect(&cluster().superuser, &app.db.name).await;
    client.batch_execute("begin; set local role tessera_invoicing").await.expect("role");
    client
        .execute("select set_config('tessera.tenant_id', $1, true)", &[&event.tenant_id.to_string()])
        .await
        .expect("bind");
    let tx = EffectTx::new(&client);
    let result = (subscription.handle)(&tx, event).await;
    client.batch_execute(if result.is_ok() { "commit" } else { "rollback" }).await.expect("end");
    result
}

/// Runs the subscription's handler for several events of one tenant at once, as the dispatcher does with a
/// backlog.
async fn deliver_many(app: &TestApp, events: &[Event]) -> Result<(), HandlerError> {
    let subscription = tessera_invoicing::Invoicing
        .subscriptions()
        .into_iter()
        .find(|s| s.name == "invoicing.deals")
        .expect("the subscription");
    let handle_many = subscription.handle_many.expect("invoicing handles runs of events");
    let client = connect(&cluster().superuser, &app.db.name).await;
    client.batch_execute("begin; set local role tessera_invoicing").await.expect("role");
    client
        .execute("select set_config('tessera.tenant_id', $1, true)", &[&events[0].tenant_id.to_string()])
        .await
        .expect("bind");
    let tx = EffectTx::new(&client);
    let result = handle_many(&tx, events).await;
    client.batch_execute(if result.is_ok() { "commit" } else { "rollback" }).await.expect("end");
    result
}

fn won_deal(tenant: TenantId, deal: &str, company: Option<&str>, amount: Value) -> Event {
    event(
        tenant,
        "deal.closed.won",
        "crm.deals",
        "update",
        json!({"tenant_id": tenant.to_string(), "id": deal, "company_id": company, "contact_id": null,
               "title": "Hammock district fit-out", "stage": "won", "amount": amount, "currency": "EUR",
               "owner_email": "ana@acme.example"}),
    )
}

#[tokio::test]
async fn a_won_deal_becomes_one_draft_invoice_even_when_delivered_twice() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    let company = uuid::Uuid::now_v7().to_string();
    let deal = uuid::Uuid::now_v7().to_string();
    let created = event(
        tenant,
        "crm.companies.insert",
        "crm.companies",
        "insert",
        json!({"tenant_id": tenant.to_string(), "id": company, "name": "Globex", "domain": "globex.example"}),
    );
    deliver(&app, &created).await.expect("company");

    let won = won_deal(tenant, &deal, Some(&company), json!("12345678901234.56"));
    deliver(&app, &won).await.expect("deal");
    deliver(&app, &won).await.expect("the same event again");

    let list = app.get(&format!("/v1/invoicing/invoices?deal_id={deal}"), &key).await;
    assert_eq!(ids(&list).len(), 1, "one invoice: {}", list.body);
    let inv = app.get(&format!("/v1/invoicing/invoices/{}", ids(&list)[0]), &key).await.body;
    assert_eq!(inv["status"], "draft");
    assert_eq!(inv["currency"], "EUR");
    assert_eq!(inv["total"], "12345678901234.56", "every digit of the amount");
    assert_eq!(inv["source_event_id"], won.id.to_string().as_str());
    assert_eq!(inv["deal_id"], deal.as_str());
    let lines = inv["lines"].as_array().expect("lines");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["description"], "Hammock district fit-out");
    assert_eq!(lines[0]["quantity"], "1");
    let customers = app.get(&format!("/v1/invoicing/customers?crm_company_id={company}"), &key).await;
    assert_eq!(ids(&customers), [inv["customer_id"].as_str().expect("customer").to_owned()]);
    assert_eq!(customers.body["data"][0]["name"], "Globex");
    assert_eq!(app.count_all("invoicing.customers").await, 1);

    // The draft is a normal draft: it can be issued.
    assert_eq!(issue(&app, &key, &ids(&list)[0]).await.body["number"], "INV-000001");
}

#[tokio::test]
async fn a_run_of_events_handled_at_once_has_the_effects_of_handling_them_one_by_one() {
    let mut app = TestApp::spawn().await;
    let (one_by_one, _) = app.tenant("acme").await;
    let (at_once, _) = app.tenant("globex").await;
    let (known, unknown) = (uuid::Uuid::now_v7().to_string(), uuid::Uuid::now_v7().to_string());
    let deals: Vec<String> = (0..7).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    // Wins of a known company, of one the module has not heard of (a placeholder customer, renamed by the
    // company event in between), of no company, and a malformed-free mix of amounts.
    let script = |tenant: TenantId| {
        let company = |id: &str, name: &str| json!({"tenant_id": tenant.to_string(), "id": id, "name": name, "domain": null});
        vec![
            event(tenant, "crm.companies.insert", "crm.companies", "insert", company(&known, "Initech")),
            won_deal(tenant, &deals[0], Some(&known), json!("100.10")),
            won_deal(tenant, &deals[1], Some(&known), json!(200)),
            won_deal(tenant, &deals[2], Some(&unknown), json!("300.30")),
            won_deal(tenant, &deals[3], Some(&unknown), json!("400.40")),
            event(tenant, "crm.companies.update", "crm.companies", "update", company(&unknown, "Hooli")),
            won_deal(tenant, &deals[4], None, json!("500.50")),
            won_deal(tenant, &deals[5], Some(&unknown), json!("600.60")),
            won_deal(tenant, &deals[6], Some(&known), json!("700.70")),
        ]
    };
    for event in &script(one_by_one) {
        deliver(&app, event).await.expect("one event");
    }
    let run = script(at_once);
    deliver_many(&app, &run).await.expect("the run");
    deliver_many(&app, &run).await.expect("the same run again");
    deliver_many(&app, &run[1..3]).await.expect("part of it again");

    let admin = connect(&cluster().superuser, &app.db.name).await;
    let effects = async |tenant: TenantId| -> Vec<String> {
        admin
            .query(
                "select concat_ws(' | ', i.deal_id, i.status, i.currency, i.total, c.name, c.crm_company_id,
                                  l.description, l.quantity, l.unit_price, l.amount)
                   from invoicing.invoices i
                   join invoicing.customers c on c.tenant_id = i.tenant_id and c.id = i.customer_id
                   join invoicing.invoice_lines l on l.tenant_id = i.tenant_id and l.invoice_id = i.id
                  where i.tenant_id = $1
                  order by i.deal_id",
                &[&tenant.as_uuid()],
            )
            .await
            .expect("effects")
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let expected = effects(one_by_one).await;
    assert_eq!(expected.len(), 7, "{expected:#?}");
    assert_eq!(effects(at_once).await, expected);
    let customers = "select count(*) from invoicing.customers where tenant_id = $1";
    let count = async |tenant: TenantId| -> i64 {
        admin.query_one(customers, &[&tenant.as_uuid()]).await.expect("count").get(0)
    };
    assert_eq!((count(one_by_one).await, count(at_once).await), (3, 3), "two companies and a placeholder");
}

#[tokio::test]
async fn company_events_create_and_rename_the_linked_customer() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    let company = uuid::Uuid::now_v7().to_string();
    let row =
        |name: &str| json!({"tenant_id": tenant.to_string(), "id": company, "name": name, "domain": null});
    deliver(&app, &event(tenant, "crm.companies.insert", "crm.companies", "insert", row("Initech")))
        .await
        .expect("insert");
    let older = event(tenant, "crm.companies.update", "crm.companies", "update", row("Initech Ltd"));
    deliver(&app, &event(tenant, "crm.companies.update", "crm.companies", "update", row("Initrode")))
        .await
        .expect("update");
    let list = app.get(&format!("/v1/invoicing/customers?crm_company_id={company}"), &key).await;
    assert_eq!(list.body["data"].as_array().expect("data").len(), 1);
    assert_eq!(list.body["data"][0]["name"], "Initrode");
    // An older event handled late (a replayed dead letter) does not roll the newer name back.
    deliver(&app, &older).await.expect("late");
    let list = app.get(&format!("/v1/invoicing/customers?crm_company_id={company}"), &key).await;
    assert_eq!(list.body["data"][0]["name"], "Initrode");

    // A company the module has not heard of yet gets a placeholder customer, renamed by the CRM's next change.
    let unknown = uuid::Uuid::now_v7().to_string();
    deliver(&app, &won_deal(tenant, &uuid::Uuid::now_v7().to_string(), Some(&unknown), json!(12000.5)))
        .await
        .expect("deal");
    let placeholder = app.get(&format!("/v1/invoicing/customers?crm_company_id={unknown}"), &key).await;
    assert_eq!(placeholder.body["data"][0]["name"], format!("Company {unknown}").as_str());
    let update = json!({"tenant_id": tenant.to_string(), "id": unknown, "name": "Hooli", "domain": null});
    deliver(&app, &event(tenant, "crm.companies.update", "crm.companies", "update", update))
        .await
        .expect("rename");
    let renamed = app.get(&format!("/v1/invoicing/customers?crm_company_id={unknown}"), &key).await;
    assert_eq!(renamed.body["data"][0]["name"], "Hooli");
    let invoices = app.get("/v1/invoicing/invoices", &key).await;
    assert_eq!(invoices.body["data"][0]["total"], "12000.50", "a JSON number amount is taken as written");
    assert_eq!(invoices.body["data"][0]["customer_id"], renamed.body["data"][0]["id"]);
}

#[tokio::test]
async fn a_won_deal_without_company_is_billed_to_a_customer_named_after_it() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    let deal = uuid::Uuid::now_v7().to_string();
    deliver(&app, &won_deal(tenant, &deal, None, json!("500.00"))).await.expect("deal");
    let invoices = app.get(&format!("/v1/invoicing/invoices?deal_id={deal}"), &key).await;
    assert_eq!(ids(&invoices).len(), 1);
    let customer_id = invoices.body["data"][0]["customer_id"].as_str().expect("customer").to_owned();
    let customer = app.get(&format!("/v1/invoicing/customers/{customer_id}"), &key).await;
    assert_eq!(customer.body["name"], "Hammock district fit-out");
    assert_eq!(customer.body["crm_company_id"], Value::Null);
}

#[tokio::test]
async fn each_win_of_a_deal_is_billed_once_however_often_it_is_delivered() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    let company = uuid::Uuid::now_v7().to_string();
    let deal = uuid::Uuid::now_v7().to_string();
    let first = won_deal(tenant, &deal, Some(&company), json!("10"));
    deliver(&app, &first).await.expect("first win");
    deliver(&app, &first).await.expect("the first win again");
    // Won, lost and won again: the CRM counts two wins, and so two drafts.
    deliver(&app, &won_deal(tenant, &deal, Some(&company), json!("12"))).await.expect("won again");
    let list = app.get(&format!("/v1/invoicing/invoices?deal_id={deal}"), &key).await;
    let totals: Vec<&str> = list.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|i| i["total"].as_str().expect("total"))
        .collect();
    assert_eq!(totals, ["10.00", "12.00"], "{}", list.body);
    assert_eq!(app.count_all("invoicing.customers").await, 1, "one customer for the company throughout");
}

#[tokio::test]
async fn a_malformed_deal_event_fails_and_writes_nothing() {
    let mut app = TestApp::spawn().await;
    let (tenant, _) = app.tenant("acme").await;
    let deal = uuid::Uuid::now_v7().to_string();
    let company = uuid::Uuid::now_v7().to_string();
    let before = rows(&app).await;
    for amount in [json!("NaN-ish"), json!(null), json!(true), json!("-5")] {
        let r = deliver(&app, &won_deal(tenant, &deal, Some(&company), amount.clone())).await;
        assert!(r.is_err(), "amount {amount} must fail the handler");
    }
    let no_id = event(tenant, "deal.closed.won", "crm.deals", "update", json!({"title": "x", "amount": "1"}));
    assert!(deliver(&app, &no_id).await.is_err());
    assert_eq!(rows(&app).await, before, "a failed handler rolls back everything it did");
}

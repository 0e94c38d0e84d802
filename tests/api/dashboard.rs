//! `GET /v1/dashboard/companies/{id}`: the CRM's and invoicing's parts of a company in one answer; a
//! missing or foreign company is 404; a part the key may not read, a failing part and a part that runs out
//! of time are left out and named, while the rest comes back; nothing of it is cached.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::json;
use tessera_core::apikey::PresentedKey;
use tessera_core::db::ModuleDb;
use tessera_core::module::DashboardPart;
use tessera_core::{ApiError, Module};

use crate::support::{BODY_LIMIT, TestApp, cluster, connect, modules};

async fn company_with_everything(app: &TestApp, key: &str) -> String {
    let company = app.create("companies", key, json!({"name": "Initech"})).await;
    app.create("contacts", key, json!({"first_name": "Peter", "company_id": company})).await;
    app.create("deals", key, json!({"title": "Open", "company_id": company, "stage": "proposal"})).await;
    app.create("deals", key, json!({"title": "Closed", "company_id": company, "stage": "lost"})).await;
    let customer =
        app.post("/v1/invoicing/customers", key, json!({"name": "Initech", "crm_company_id": company})).await;
    assert_eq!(customer.status, StatusCode::CREATED, "{}", customer.body);
    let customer = customer.body["id"].as_str().expect("id").to_owned();
    let mut invoices = Vec::new();
    for amount in ["100.00", "200.00"] {
        let r = app
            .post(
                "/v1/invoicing/invoices",
                key,
                json!({"customer_id": customer, "lines": [{"description": "x", "quantity": "1", "unit_price": amount}]}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let id = r.body["id"].as_str().expect("id").to_owned();
        let issued = app.post(&format!("/v1/invoicing/invoices/{id}/issue"), key, json!({})).await;
        assert_eq!(issued.status, StatusCode::OK, "{}", issued.body);
        invoices.push(id);
    }
    // The first one fell due yesterday (issued invoices are immutable, except to an operator like this).
    let admin = connect(&cluster().superuser, &app.db.name).await;
    admin
        .batch_execute(&format!(
            "set session_replication_role = replica;
             update invoicing.invoices set issue_date = current_date - 31, due_date = current_date - 1
              where id = '{}'",
            invoices[0]
        ))
        .await
        .expect("overdue");
    company
}

#[tokio::test]
async fn a_company_dashboard_gathers_every_module_part() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    let company = company_with_everything(&app, &key).await;
    let r = app.get(&format!("/v1/dashboard/companies/{company}"), &key).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.headers.get("cache-control").and_then(|v| v.to_str().ok()), Some("no-store"));
    let crm = &r.body["parts"]["crm"];
    assert_eq!(crm["company"]["name"], "Initech");
    assert_eq!(crm["contacts"].as_array().map(Vec::len), Some(1));
    let open: Vec<&str> =
        crm["open_deals"].as_array().expect("deals").iter().filter_map(|d| d["title"].as_str()).collect();
    assert_eq!(open, ["Open"]);
    let invoicing = &r.body["parts"]["invoicing"];
    assert_eq!(invoicing["open_invoices"].as_array().map(Vec::len), Some(2));
    assert_eq!(invoicing["overdue_invoices"].as_array().map(Vec::len), Some(1));
    assert_eq!(invoicing["overdue_invoices"][0]["total"], "100.00");
    assert_eq!(r.body["unavailable"], json!([]));

    // A key that may read the CRM only: the invoicing part is named, not shown.
    let crm_only = app.key(tenant, &["crm:read"]).await;
    let r = app.get(&format!("/v1/dashboard/companies/{company}"), &crm_only).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["parts"]["crm"]["company"]["name"], "Initech");
    assert!(r.body["parts"].get("invoicing").is_none());
    assert_eq!(r.body["unavailable"], json!([{"module": "invoicing", "code": "insufficient_scope"}]));
}

#[tokio::test]
async fn missing_foreign_or_unauthenticated_is_refused() {
    let mut app = TestApp::spawn().await;
    let (_, key_a) = app.tenant("acme").await;
    let (_, key_b) = app.tenant("globex").await;
    let company = app.create("companies", &key_a, json!({"name": "Acme's own"})).await;
    let path = format!("/v1/dashboard/companies/{company}");
    app.get(&path, &key_b).await.assert_problem(404, "not_found");
    app.get("/v1/dashboard/companies/0190a000-0000-7000-8000-00000000dead", &key_a)
        .await
        .assert_problem(404, "not_found");
    app.get("/v1/dashboard/companies/not-a-uuid", &key_a).await.assert_problem(400, "invalid_parameter");
    app.call(axum::http::Method::GET, &path, None, None).await.assert_problem(401, "missing_api_key");
    let unknown = format!("tsk_000000000000_{}", "0".repeat(48));
    app.get(&path, &unknown).await.assert_problem(401, "invalid_api_key");
}

/// A module with nothing but a dashboard part: `part` makes it (one that fails, one that takes too long).
struct PartOnly {
    name: &'static str,
    part: fn() -> DashboardPart<'static>,
}

impl Module for PartOnly {
    fn name(&self) -> &'static str {
        self.name
    }
    fn migrations(&self) -> refinery::Runner {
        refinery::Runner::new(&[])
    }
    fn routes(&self, _: ModuleDb) -> tessera_core::openapi::ApiRouter {
        tessera_core::openapi::ApiRouter::new()
    }
    fn company_dashboard<'a>(
        &'a self,
        _: &'a ModuleDb,
        _: &'a PresentedKey,
        _: uuid::Uuid,
    ) -> Option<DashboardPart<'a>> {
        Some((self.part)())
    }
}

fn failing() -> DashboardPart<'static> {
    Box::pin(async { Err(ApiError::internal(&std::io::Error::other("injected failure"))) })
}

fn slow() -> DashboardPart<'static> {
    Box::pin(async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(json!({"never": "seen"}))
    })
}

#[tokio::test]
async fn a_failing_part_and_a_slow_part_leave_the_rest_standing() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let company = company_with_everything(&app, &key).await;
    let mut with_faults = modules();
    with_faults.push(Arc::new(PartOnly { name: "failing", part: failing }));
    with_faults.push(Arc::new(PartOnly { name: "slow", part: slow }));
    app.router = tessera_gateway::router(app.pool.clone(), &with_faults, BODY_LIMIT);

    let started = Instant::now();
    let r = app.get(&format!("/v1/dashboard/companies/{company}"), &key).await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(took < Duration::from_secs(5), "the slow part is cut off at the budget, not awaited: {took:?}");
    assert_eq!(r.body["parts"]["crm"]["company"]["name"], "Initech");
    assert_eq!(r.body["parts"]["invoicing"]["open_invoices"].as_array().map(Vec::len), Some(2));
    let mut unavailable = r.body["unavailable"].as_array().expect("unavailable").clone();
    unavailable.sort_by_key(|u| u["module"].as_str().unwrap_or("").to_owned());
    assert_eq!(
        unavailable,
        [
            json!({"module": "failing", "code": "internal_error"}),
            json!({"module": "slow", "code": "timeout"})
        ]
    );
    assert_eq!(r.headers.get("cache-control").and_then(|v| v.to_str().ok()), Some("no-store"));
}

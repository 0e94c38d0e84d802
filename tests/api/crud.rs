//! Create, read, update, delete and list through the REST API.

use axum::http::StatusCode;
use serde_json::json;

use crate::support::TestApp;

#[tokio::test]
async fn a_deal_goes_through_its_whole_life() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let company = app.create("companies", &key, json!({"name": "Globex", "domain": "Globex.example"})).await;
    let contact = app
        .create(
            "contacts",
            &key,
            json!({"first_name": "Hank", "email": "Hank@Globex.example", "company_id": company}),
        )
        .await;

    let created = app
        .post(
            "/v1/crm/deals",
            &key,
            json!({"title": "Hammocks", "company_id": company, "contact_id": contact, "amount": "87500.5",
                   "currency": "EUR", "owner_email": "ana@acme.example", "expected_close_date": "2027-01-31"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = created.body["id"].as_str().expect("id").to_owned();
    assert_eq!(created.headers["location"], format!("/v1/crm/deals/{id}").as_str());
    assert_eq!(created.body["object"], "deal");
    assert_eq!(created.body["stage"], "lead");
    assert_eq!(created.body["amount"], "87500.50");
    assert_eq!(created.body["currency"], "EUR");
    assert_eq!(created.body["expected_close_date"], "2027-01-31");

    let fetched = app.get(&format!("/v1/crm/deals/{id}"), &key).await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.body, created.body);

    let updated =
        app.patch(&format!("/v1/crm/deals/{id}"), &key, json!({"stage": "won", "contact_id": null})).await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    assert_eq!(updated.body["stage"], "won");
    assert_eq!(updated.body["contact_id"], serde_json::Value::Null);
    assert_eq!(updated.body["title"], "Hammocks", "fields left out are unchanged");
    assert_eq!(updated.body["amount"], "87500.50");
    assert_ne!(updated.body["updated_at"], created.body["updated_at"]);

    let deleted = app.delete(&format!("/v1/crm/deals/{id}"), &key).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    app.get(&format!("/v1/crm/deals/{id}"), &key).await.assert_problem(404, "not_found");
    app.delete(&format!("/v1/crm/deals/{id}"), &key).await.assert_problem(404, "not_found");
}

#[tokio::test]
async fn companies_and_contacts_are_created_read_updated_and_deleted() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;

    let company = app
        .post("/v1/crm/companies", &key, json!({"name": "  Initech  ", "domain": "INITECH.example"}))
        .await;
    assert_eq!(company.status, StatusCode::CREATED);
    assert_eq!(company.body["name"], "Initech", "surrounding whitespace is trimmed");
    assert_eq!(company.body["domain"], "initech.example", "domains are lowercased");
    let company_id = company.body["id"].as_str().expect("id").to_owned();

    let contact = app
        .post(
            "/v1/crm/contacts",
            &key,
            json!({"first_name": "Bill", "last_name": "Lumbergh", "company_id": company_id}),
        )
        .await;
    assert_eq!(contact.status, StatusCode::CREATED);
    let contact_id = contact.body["id"].as_str().expect("id").to_owned();

    let renamed =
        app.patch(&format!("/v1/crm/companies/{company_id}"), &key, json!({"name": "Initrode"})).await;
    assert_eq!(renamed.body["name"], "Initrode");
    assert_eq!(renamed.body["domain"], "initech.example");
    let cleared = app.patch(&format!("/v1/crm/companies/{company_id}"), &key, json!({"domain": null})).await;
    assert_eq!(cleared.body["domain"], serde_json::Value::Null);

    let moved =
        app.patch(&format!("/v1/crm/contacts/{contact_id}"), &key, json!({"phone": "+1 555 0100"})).await;
    assert_eq!(moved.body["phone"], "+1 555 0100");
    assert_eq!(moved.body["company_id"], company_id.as_str());

    // Deleting the company detaches its contacts rather than deleting them.
    assert_eq!(
        app.delete(&format!("/v1/crm/companies/{company_id}"), &key).await.status,
        StatusCode::NO_CONTENT
    );
    let orphan = app.get(&format!("/v1/crm/contacts/{contact_id}"), &key).await;
    assert_eq!(orphan.status, StatusCode::OK);
    assert_eq!(orphan.body["company_id"], serde_json::Value::Null);
    assert_eq!(
        app.delete(&format!("/v1/crm/contacts/{contact_id}"), &key).await.status,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn a_company_with_deals_cannot_be_deleted() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let company = app.create("companies", &key, json!({"name": "Acme"})).await;
    app.create("deals", &key, json!({"title": "Anvils", "company_id": company})).await;
    let r = app.delete(&format!("/v1/crm/companies/{company}"), &key).await;
    r.assert_problem(409, "still_referenced");
    assert_eq!(app.get(&format!("/v1/crm/companies/{company}"), &key).await.status, StatusCode::OK);
}

#[tokio::test]
async fn lists_page_through_every_record_once_in_a_stable_order() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let mut ids = Vec::new();
    for i in 0..23 {
        ids.push(app.create("companies", &key, json!({"name": format!("Company {i:02}")})).await);
    }

    let mut seen = Vec::new();
    let mut path = "/v1/crm/companies?limit=5".to_owned();
    let mut pages = 0;
    loop {
        let page = app.get(&path, &key).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert_eq!(page.body["object"], "list");
        let data = page.body["data"].as_array().expect("data");
        assert!(data.len() <= 5);
        seen.extend(data.iter().map(|c| c["id"].as_str().expect("id").to_owned()));
        pages += 1;
        if page.body["has_more"] == false {
            assert_eq!(page.body["next_cursor"], serde_json::Value::Null);
            break;
        }
        let cursor = page.body["next_cursor"].as_str().expect("cursor");
        path = format!("/v1/crm/companies?limit=5&after={cursor}");
    }
    assert_eq!(pages, 5);
    assert_eq!(seen, ids, "every record once, in creation order");

    let default_page = app.get("/v1/crm/companies", &key).await;
    assert_eq!(default_page.body["data"].as_array().expect("data").len(), 20);
    let max_page = app.get("/v1/crm/companies?limit=100", &key).await;
    assert_eq!(max_page.body["data"].as_array().expect("data").len(), 23);
    assert_eq!(max_page.body["has_more"], false);
}

#[tokio::test]
async fn deals_are_filtered_by_stage_company_and_owner() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let a = app.create("companies", &key, json!({"name": "A"})).await;
    let b = app.create("companies", &key, json!({"name": "B"})).await;
    app.create(
        "deals",
        &key,
        json!({"title": "1", "company_id": a, "stage": "won", "owner_email": "x@acme.example"}),
    )
    .await;
    app.create("deals", &key, json!({"title": "2", "company_id": a, "stage": "lead"})).await;
    app.create("deals", &key, json!({"title": "3", "company_id": b, "stage": "won"})).await;

    let titles = |r: &crate::support::TestResponse| -> Vec<String> {
        r.body["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|d| d["title"].as_str().expect("t").to_owned())
            .collect()
    };
    assert_eq!(titles(&app.get("/v1/crm/deals?stage=won", &key).await), ["1", "3"]);
    assert_eq!(titles(&app.get(&format!("/v1/crm/deals?company_id={a}"), &key).await), ["1", "2"]);
    assert_eq!(titles(&app.get(&format!("/v1/crm/deals?company_id={a}&stage=won"), &key).await), ["1"]);
    assert_eq!(titles(&app.get("/v1/crm/deals?owner_email=X@acme.example", &key).await), ["1"]);
    let contacts = app.get(&format!("/v1/crm/contacts?company_id={b}"), &key).await;
    assert_eq!(contacts.body["data"].as_array().expect("data").len(), 0);
}

#[tokio::test]
async fn e_mail_filters_ignore_case_beyond_ascii() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let id = app.create("contacts", &key, json!({"first_name": "Émile", "email": "Émile@Exemple.fr"})).await;
    for query in ["email=%C3%89mile@exemple.fr", "email=%C3%A9MILE@EXEMPLE.FR"] {
        let r = app.get(&format!("/v1/crm/contacts?{query}"), &key).await;
        let found: Vec<&str> =
            r.body["data"].as_array().expect("data").iter().filter_map(|c| c["id"].as_str()).collect();
        assert_eq!(found, [id.as_str()], "{query}");
    }
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = TestApp::spawn().await;
    let health = app.call(axum::http::Method::GET, "/healthz", None, None).await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = app.call(axum::http::Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.body["status"], "ready");
    assert!(ready.headers.contains_key("x-request-id"));
}

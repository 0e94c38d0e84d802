//! The API contract: `/v1/openapi.json` is a valid OpenAPI 3.1 document that lists every route, `/v1/docs`
//! shows it, and every operation answers as documented (schemathesis, run against a served gateway).

use std::collections::BTreeSet;
use std::process::Stdio;

use axum::http::{Method, StatusCode};
use serde_json::Value;

use crate::support::{MODULES, TestApp};

/// The routes the gateway serves, as (method, path) — what the document must list, no more, no less.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("post", "/v1/auth/login"),
    ("get", "/v1/events"),
    ("get", "/v1/usage"),
    ("get", "/v1/dashboard/companies/{id}"),
    ("get", "/v1/crm/companies"),
    ("post", "/v1/crm/companies"),
    ("get", "/v1/crm/companies/{id}"),
    ("patch", "/v1/crm/companies/{id}"),
    ("delete", "/v1/crm/companies/{id}"),
    ("get", "/v1/crm/contacts"),
    ("post", "/v1/crm/contacts"),
    ("get", "/v1/crm/contacts/{id}"),
    ("patch", "/v1/crm/contacts/{id}"),
    ("delete", "/v1/crm/contacts/{id}"),
    ("get", "/v1/crm/deals"),
    ("post", "/v1/crm/deals"),
    ("get", "/v1/crm/deals/{id}"),
    ("patch", "/v1/crm/deals/{id}"),
    ("delete", "/v1/crm/deals/{id}"),
    ("get", "/v1/invoicing/customers"),
    ("post", "/v1/invoicing/customers"),
    ("get", "/v1/invoicing/customers/{id}"),
    ("patch", "/v1/invoicing/customers/{id}"),
    ("delete", "/v1/invoicing/customers/{id}"),
    ("get", "/v1/invoicing/invoices"),
    ("post", "/v1/invoicing/invoices"),
    ("get", "/v1/invoicing/invoices/{id}"),
    ("patch", "/v1/invoicing/invoices/{id}"),
    ("delete", "/v1/invoicing/invoices/{id}"),
    ("post", "/v1/invoicing/invoices/{id}/lines"),
    ("delete", "/v1/invoicing/invoices/{id}/lines/{line_id}"),
    ("post", "/v1/invoicing/invoices/{id}/issue"),
    ("post", "/v1/invoicing/invoices/{id}/void"),
    ("get", "/v1/invoicing/invoices/{id}/payments"),
    ("post", "/v1/invoicing/invoices/{id}/payments"),
    ("get", "/v1/hr/employees"),
    ("post", "/v1/hr/employees"),
    ("get", "/v1/hr/employees/{id}"),
    ("patch", "/v1/hr/employees/{id}"),
    ("delete", "/v1/hr/employees/{id}"),
    ("get", "/v1/hr/commission-plans"),
    ("post", "/v1/hr/commission-plans"),
    ("get", "/v1/hr/commission-plans/{id}"),
    ("delete", "/v1/hr/commission-plans/{id}"),
    ("get", "/v1/hr/commissions"),
    ("get", "/v1/hr/commissions/{id}"),
];

fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            ops.insert((method.clone(), path.clone()));
        }
    }
    ops
}

#[tokio::test]
async fn the_document_lists_every_route_with_its_shared_answers_and_the_page_shows_it() {
    let app = TestApp::spawn().await;
    // No credential needed for the contract.
    let r = app.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.headers["content-type"], "application/json");
    let doc = r.body;
    assert_eq!(doc["openapi"], "3.1.0");
    let expected: BTreeSet<(String, String)> =
        ROUTES.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect();
    assert_eq!(operations(&doc), expected, "the document and the routes differ");

    // Every documented operation is routed: none answers route_not_found or method_not_allowed.
    for (method, path) in ROUTES {
        let concrete = path
            .replace("{id}", &uuid::Uuid::nil().to_string())
            .replace("{line_id}", &uuid::Uuid::nil().to_string());
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let r = app.call(method.clone(), &concrete, None, None).await;
        assert!(
            !matches!(r.code(), "route_not_found" | "method_not_allowed"),
            "{method} {concrete} is documented but not routed: {}",
            r.body
        );
    }

    let mut ids = BTreeSet::new();
    for (method, path) in ROUTES {
        let op = &doc["paths"][*path][*method];
        assert!(ids.insert(op["operationId"].as_str().expect("operationId").to_owned()), "duplicate id");
        assert!(op["summary"].as_str().is_some_and(|s| !s.is_empty()), "{method} {path} has no summary");
        let responses = op["responses"].as_object().expect("responses");
        assert!(responses.keys().any(|s| s.starts_with('2')), "{method} {path}: no success answer");
        let public = ["/healthz", "/readyz", "/v1/auth/login"].contains(path);
        // Authentication applies to every route but the public ones, and says so.
        assert_eq!(op.get("security").is_some(), !public, "{method} {path}: security");
        // Only login can refuse a credential among the public routes: the one it is sent.
        assert_eq!(
            responses.contains_key("401"),
            !public || *path == "/v1/auth/login",
            "{method} {path}: 401"
        );
        if path.contains('{') {
            assert!(responses.contains_key("404") && responses.contains_key("400"), "{method} {path}");
        }
        if op.get("requestBody").is_some() {
            for status in ["400", "413", "415", "422"] {
                assert!(responses.contains_key(status), "{method} {path}: {status}");
            }
        }
        let module = path.strip_prefix("/v1/").and_then(|p| p.split('/').next()).unwrap_or("");
        if MODULES.contains(&module) && *method == "post" {
            let params = op["parameters"].as_array().expect("parameters");
            assert!(params.iter().any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"), "{path}");
        }
        for (status, response) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    response["content"]["application/problem+json"]["schema"]["$ref"],
                    "#/components/schemas/Problem",
                    "{method} {path} {status}"
                );
            }
        }
    }
    // Every schema a document refers to is in it.
    let text = doc.to_string();
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for reference in text.split("\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().expect("name");
        assert!(schemas.contains_key(name), "{name} is referred to but not defined");
    }

    let r = app.call(Method::GET, "/v1/docs", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
    let page = r.body.as_str().expect("html");
    for (_, path) in ROUTES {
        assert!(page.contains(&format!("<code>{path}</code>")), "the page does not show {path}");
    }
    assert!(page.contains("id=\"schema-Deal\"") && !page.contains("<script"), "a self-contained page");
}

/// Runs a Python one-off with the document on stdin.
async fn python(script: &str, doc: &[u8]) -> std::process::Output {
    let mut child = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (see .ci/run)");
    let mut stdin = child.stdin.take().expect("stdin");
    tokio::io::AsyncWriteExt::write_all(&mut stdin, doc).await.expect("write");
    drop(stdin);
    child.wait_with_output().await.expect("python3")
}

#[tokio::test]
async fn the_document_validates_as_openapi_3_1() {
    let app = TestApp::spawn().await;
    let r = app.call(Method::GET, "/v1/openapi.json", None, None).await;
    let out = python(
        "import json, sys\n\
         from openapi_spec_validator import validate\n\
         from openapi_spec_validator.validation import OpenAPIV31SpecValidator\n\
         validate(json.load(sys.stdin), cls=OpenAPIV31SpecValidator)\n\
         print('valid')",
        r.body.to_string().as_bytes(),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "openapi-spec-validator (see .ci/run) refused the document: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "valid");
}

/// Schemathesis (see .ci/run) against a served gateway: generated requests for every operation, valid and
/// invalid, with every check it has; a run with any failure fails the test and shows schemathesis' report.
#[tokio::test]
async fn every_operation_answers_as_documented_under_schemathesis() {
    let mut app = TestApp::spawn_with_pool(8).await;
    let (tenant, _) = app.tenant("contract").await;
    let scopes = ["crm:write", "invoicing:write", "hr:write", "events:read", "usage:read"];
    let key = app.key(tenant, &scopes).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = app.router.clone();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    // Schemathesis keeps a cache in its working folder: a throwaway one, not the checkout.
    let workdir = std::env::temp_dir().join(format!("tessera-contract-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&workdir).expect("work folder");
    let out = tokio::process::Command::new("st")
        .current_dir(&workdir)
        .args(["run", &format!("http://{addr}/v1/openapi.json")])
        .args(["--url", &format!("http://{addr}")])
        .args(["--header", &format!("Authorization: Bearer {key}")])
        .args(["--checks", "all"])
        // That check expects every schema-valid request to succeed, but whether one does can depend on the
        // data: a random company_id refers to no company (422 invalid_reference), a made-up cursor is not
        // a cursor (400), a reused Idempotency-Key with another body is refused (422). Those answers are
        // documented, and status_code_conformance still checks them.
        // And a POST replayed under its Idempotency-Key answers with the resource the first request created,
        // which a later DELETE may have removed (as Stripe's do): that check reads it as a lost resource.
        .args(["--exclude-checks", "positive_data_acceptance,ensure_resource_availability"])
        // Hypothesis' own run time warnings are not contract failures; a slow answer still fails below.
        .args(["--suppress-health-check", "too_slow"])
        .args(["--max-examples", "50", "--seed", "3", "--workers", "2", "--no-color"])
        .args(["--max-response-time", "5"])
        .args(["--generation-database", "none"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("schemathesis' st command (see .ci/run)");
    server.abort();
    let _ = std::fs::remove_dir_all(&workdir);
    let report =
        format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "schemathesis found operations that do not answer as documented:\n{report}"
    );
    // It did test: every operation shows up in its report as passed.
    assert!(report.contains("passed") && !report.contains("No operations"), "{report}");
}

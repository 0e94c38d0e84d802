//! The API contract: the OpenAPI 3.1 document at `GET /v1/openapi.json` and a page that shows it at
//! `GET /v1/docs`.
//!
//! Every route is declared with its documentation (`tessera_core::openapi::routes!` over handlers carrying
//! `#[utoipa::path]`), so the document lists exactly the routes the gateway serves. Each handler documents
//! what is its own (parameters, body, success answers); what the gateway's layers add to every route is
//! added here, once: the bearer credential, `Idempotency-Key` on module POSTs, `If-None-Match`/304 on module
//! GETs, and the problem+json answers of authentication, entitlements, rate limits, input checks and
//! overload. The contract test (`tests/api/contract.rs`) runs schemathesis against the served document.

use serde_json::{Map, Value, json};
use utoipa::openapi::OpenApi;

/// Paths anyone may call without a credential.
const PUBLIC: &[&str] = &["/healthz", "/readyz", "/v1/auth/login", "/v1/openapi.json", "/v1/docs"];

/// The document and its page, rendered once when the router is built.
#[derive(Clone)]
pub struct ApiDocument {
    pub json: bytes::Bytes,
    pub html: bytes::Bytes,
}

impl ApiDocument {
    /// `parts`: each router's documentation with the prefix it is mounted under; `modules`: the module
    /// names (their routes take `Idempotency-Key` and may answer 304).
    pub fn new(parts: Vec<(String, OpenApi)>, modules: &[&str]) -> Self {
        let mut doc = utoipa::openapi::OpenApiBuilder::new().build();
        for (prefix, part) in parts {
            doc = doc.nest_with_path_composer(prefix, part, nested_path);
        }
        let mut doc = serde_json::to_value(&doc).unwrap_or(Value::Null);
        finish(&mut doc, modules);
        let html = crate::openapi_page::render(&doc);
        let json = serde_json::to_vec(&Ordered::of(&doc)).unwrap_or_default();
        Self { json: json.into(), html: html.into() }
    }
}

/// The document's top-level members in the order readers expect (a JSON map would sort them).
#[derive(serde::Serialize)]
struct Ordered<'a> {
    openapi: &'a Value,
    info: &'a Value,
    tags: &'a Value,
    paths: &'a Value,
    components: &'a Value,
}

impl<'a> Ordered<'a> {
    fn of(doc: &'a Value) -> Self {
        Self {
            openapi: &doc["openapi"],
            info: &doc["info"],
            tags: &doc["tags"],
            paths: &doc["paths"],
            components: &doc["components"],
        }
    }
}

/// As axum nests: a route `/` under `/v1/events` is `/v1/events`.
fn nested_path(prefix: &str, path: &str) -> String {
    if path == "/" || path.is_empty() { prefix.to_owned() } else { format!("{prefix}{path}") }
}

fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    })
}

const API_DESCRIPTION: &str = "\
Tessera's REST API: every module under `/v1/<module>/…`, the tenant's event feed, usage and dashboards.

**Authentication.** Send an API key (`tsk_…`, created with `tessera key create`) or a login token \
(`POST /v1/auth/login`) as `Authorization: Bearer …`. The tenant comes from the credential, never from the \
request. A key's scopes (`crm:read`, `invoicing:write`, …) decide what it may call; a module the tenant has \
not enabled answers 403 `module_not_enabled`.

**Errors** are RFC 9457 problem+json with a stable `code` (and `field` when one request field is wrong).

**Lists** are pages: `limit` (1–100), `after` (the previous page's `next_cursor`), `has_more`.

**Writes.** POST takes an `Idempotency-Key`: the same key and body replay the first answer, another body \
answers 422, a request still running 409. PATCH changes only the members sent.

**Caching.** With the response cache on (the default), module GETs carry a strong `ETag` and \
`If-None-Match` answers 304 when nothing changed.

**Limits.** Requests are limited per address, key and tenant (`RateLimit-*` headers, 429 with \
`Retry-After`). Past its capacity the gateway sheds load: a request that finds no place within a short, \
bounded wait (50 ms by default), or no database connection within 250 ms, gets 503 with `Retry-After`. \
Every answer carries `X-Request-Id`.";

/// Adds what every route shares: info, the credential, the shared parameters and error answers.
fn finish(doc: &mut Value, modules: &[&str]) {
    doc["openapi"] = json!("3.1.0");
    doc["info"] = json!({
        "title": "Tessera API",
        "version": env!("CARGO_PKG_VERSION"),
        "description": API_DESCRIPTION,
        "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
    });
    let components = doc["components"].as_object_mut().map(std::mem::take).unwrap_or_default();
    let mut components = Value::Object(components);
    components["securitySchemes"] = json!({
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (`tsk_…`) or a token from `POST /v1/auth/login`."
        }
    });
    let (name, schema) = tessera_core::openapi::problem_schema();
    components["schemas"][name] = serde_json::to_value(schema).unwrap_or(Value::Null);
    doc["components"] = components;
    let mut tags: Vec<String> = Vec::new();
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else { continue };
            for (method, op) in item.iter_mut() {
                if let Some(op) = op.as_object_mut() {
                    finish_operation(path, method, op, modules);
                    for tag in op.get("tags").and_then(Value::as_array).into_iter().flatten() {
                        if let Some(tag) = tag.as_str().filter(|t| !tags.iter().any(|k| k == t)) {
                            tags.push(tag.to_owned());
                        }
                    }
                }
            }
        }
    }
    doc["tags"] = tags.iter().map(|t| json!({"name": t})).collect();
    close_request_bodies(doc);
}

/// Every body parser refuses members it does not know (422 `unknown_field`): the body schemas say so.
fn close_request_bodies(doc: &mut Value) {
    let mut names = Vec::new();
    for item in doc["paths"].as_object().into_iter().flat_map(|p| p.values()) {
        for op in item.as_object().into_iter().flat_map(|i| i.values()) {
            let schema = &op["requestBody"]["content"]["application/json"]["schema"];
            collect_refs(schema, &mut names);
        }
    }
    let mut i = 0;
    while let Some(name) = names.get(i).cloned() {
        let schema = &mut doc["components"]["schemas"][&name];
        if schema["type"] == "object" {
            schema["additionalProperties"] = json!(false);
        }
        // Nested bodies (an invoice's lines) are parsed as strictly.
        let nested = schema["properties"].clone();
        collect_refs(&nested, &mut names);
        i += 1;
    }
}

fn collect_refs(schema: &Value, names: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(name) =
                map.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/components/schemas/"))
                && !names.iter().any(|n| n == name)
            {
                names.push(name.to_owned());
            }
            map.values().for_each(|v| collect_refs(v, names));
        }
        Value::Array(list) => list.iter().for_each(|v| collect_refs(v, names)),
        _ => {}
    }
}

fn finish_operation(path: &str, method: &str, op: &mut Map<String, Value>, modules: &[&str]) {
    let module = path.strip_prefix("/v1/").and_then(|rest| rest.split('/').next());
    let is_module = module.is_some_and(|m| modules.contains(&m));
    let public = PUBLIC.contains(&path);
    // From the route, not the handler's name: unique across modules by construction.
    op.insert("operationId".into(), json!(operation_id(method, path)));
    let params = op.entry("parameters").or_insert_with(|| json!([]));
    let has_query = has_param(params, "query");
    let has_path = has_param(params, "path");
    if is_module && method == "post" {
        push(
            params,
            json!({
                "name": "Idempotency-Key",
                "in": "header",
                "required": false,
                "description": "Makes the POST safe to retry: the same key and body replay the first answer.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$"}
            }),
        );
    }
    if is_module && method == "get" {
        push(
            params,
            json!({
                "name": "If-None-Match",
                "in": "header",
                "required": false,
                "description": "An ETag of an earlier answer: 304 when the answer is still the same.",
                "schema": {"type": "string"}
            }),
        );
    }
    if params.as_array().is_some_and(Vec::is_empty) {
        op.remove("parameters");
    }
    let has_body = op.contains_key("requestBody");
    let responses = op.entry("responses").or_insert_with(|| json!({}));
    let Some(responses) = responses.as_object_mut() else { return };
    let mut add = |status: &str, description: &str| {
        responses.entry(status.to_owned()).or_insert_with(|| problem(description));
    };
    if !public {
        add("401", "No credential, or one that is malformed, unknown, revoked or expired");
        add("403", "The credential lacks the scope, or the tenant lacks the module or is suspended");
    } else if path == "/v1/auth/login" {
        add("401", "The e-mail, password or tenant is not right (the answer does not say which)");
        add("403", "The tenant is suspended");
    }
    if has_query || has_path || has_body || is_module {
        add("400", "A malformed query string, query or path parameter, header or body");
    }
    if has_path {
        add("404", "No such record for this tenant");
    }
    if is_module && method == "post" {
        add(
            "422",
            "A body member is missing, unknown, of the wrong type or invalid (see `field`), or the \
                    Idempotency-Key was used with another request",
        );
    }
    if has_body {
        add("413", "The body is over the size limit");
        add("415", "The body is not JSON");
        add("422", "A body member is missing, unknown, of the wrong type or invalid (see `field`)");
    }
    if is_module && method != "get" {
        add(
            "409",
            "A conflict: a duplicate, a record still referred to, a state that forbids this, or an \
                    Idempotency-Key still in flight",
        );
    }
    if path.starts_with("/v1/") {
        add("429", "Over a rate limit; see Retry-After");
    }
    // The liveness probe answers whenever the process does.
    if path != "/healthz" {
        add("503", "Overloaded or the database is unavailable; retry later");
    }
    if path.starts_with("/v1/") && has_body {
        add("408", "The body did not arrive in time");
    }
    if is_module && method == "get" {
        responses
            .entry("304".to_owned())
            .or_insert_with(|| json!({"description": "Not modified (If-None-Match)"}));
    }
    if !public {
        op.insert("security".into(), json!([{"bearer": []}]));
    }
}

fn has_param(params: &Value, location: &str) -> bool {
    params.as_array().into_iter().flatten().any(|p| p["in"] == location)
}

fn push(params: &mut Value, param: Value) {
    if let Some(list) = params.as_array_mut() {
        list.push(param);
    }
}

/// `get /v1/crm/companies/{id}` → `get_crm_companies_id`.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_owned();
    for segment in path.split('/').filter(|s| !s.is_empty() && *s != "v1") {
        id.push('_');
        id.extend(
            segment
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .map(|c| if c == '-' { '_' } else { c }),
        );
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids_read_like_the_route() {
        assert_eq!(operation_id("get", "/v1/crm/companies/{id}"), "get_crm_companies_id");
        assert_eq!(operation_id("post", "/v1/hr/commission-plans"), "post_hr_commission_plans");
        assert_eq!(operation_id("get", "/healthz"), "get_healthz");
    }

    #[test]
    fn nested_paths_follow_axum() {
        assert_eq!(nested_path("/v1/events", "/"), "/v1/events");
        assert_eq!(nested_path("/v1/crm", "/deals/{id}"), "/v1/crm/deals/{id}");
    }
}

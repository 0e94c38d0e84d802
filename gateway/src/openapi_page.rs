//! `GET /v1/docs`: the OpenAPI document as one self-contained HTML page (no scripts, nothing fetched from
//! elsewhere, so it works on a machine without internet): every operation with its parameters, body and
//! answers, and every schema with its members and their rules.

use std::fmt::Write;

use serde_json::Value;

const METHODS: &[&str] = &["get", "post", "put", "patch", "delete"];

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;\
color:#222;line-height:1.45}code,pre{font-family:ui-monospace,monospace;font-size:.9em}\
table{border-collapse:collapse;margin:.4rem 0 1rem}td,th{border:1px solid #ddd;padding:.25rem .5rem;\
text-align:left;vertical-align:top}th{background:#f5f5f5}.op{border:1px solid #ddd;border-radius:6px;\
margin:1rem 0;padding:.5rem 1rem}.m{display:inline-block;min-width:4rem;font-weight:bold;text-transform:uppercase}\
.get{color:#0a6}.post{color:#06c}.patch{color:#a60}.delete{color:#c22}.desc{white-space:pre-wrap}";

/// The page for `doc` (an OpenAPI 3.1 document as JSON).
pub fn render(doc: &Value) -> String {
    let mut out = String::new();
    let title = doc["info"]["title"].as_str().unwrap_or("API");
    let version = doc["info"]["version"].as_str().unwrap_or("");
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style>\
         </head><body><h1>{} <small>{}</small></h1><p>The machine-readable contract: \
         <a href=\"/v1/openapi.json\"><code>/v1/openapi.json</code></a> (OpenAPI {}).</p><div class=\"desc\">{}</div>",
        esc(title),
        esc(title),
        esc(version),
        esc(doc["openapi"].as_str().unwrap_or("")),
        esc(doc["info"]["description"].as_str().unwrap_or("")),
    );
    let operations = operations(doc);
    let mut tags: Vec<&str> =
        doc["tags"].as_array().into_iter().flatten().filter_map(|t| t["name"].as_str()).collect();
    if operations.iter().any(|(_, _, op)| op["tags"].as_array().is_none_or(Vec::is_empty)) {
        tags.push("");
    }
    out.push_str("<h2>Operations</h2><ul>");
    for tag in &tags {
        let _ = write!(
            out,
            "<li><a href=\"#tag-{0}\">{0}</a></li>",
            esc(if tag.is_empty() { "other" } else { tag })
        );
    }
    out.push_str("<li><a href=\"#schemas\">schemas</a></li></ul>");
    for tag in &tags {
        let shown = if tag.is_empty() { "other" } else { tag };
        let _ = write!(out, "<h2 id=\"tag-{0}\">{0}</h2>", esc(shown));
        for (path, method, op) in operations.iter().filter(|(_, _, op)| tag_of(op) == *tag) {
            operation(&mut out, path, method, op);
        }
    }
    out.push_str("<h2 id=\"schemas\">Schemas</h2>");
    for (name, schema) in doc["components"]["schemas"].as_object().into_iter().flatten() {
        let _ = write!(out, "<h3 id=\"schema-{0}\">{0}</h3>", esc(name));
        if let Some(d) = schema["description"].as_str() {
            let _ = write!(out, "<p class=\"desc\">{}</p>", esc(d));
        }
        members(&mut out, schema);
    }
    out.push_str("</body></html>");
    out
}

fn operations(doc: &Value) -> Vec<(&str, &str, &Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for method in METHODS {
            if let Some(op) = item.get(*method) {
                ops.push((path.as_str(), *method, op));
            }
        }
    }
    ops
}

fn tag_of(op: &Value) -> &str {
    op["tags"].get(0).and_then(Value::as_str).unwrap_or("")
}

fn operation(out: &mut String, path: &str, method: &str, op: &Value) {
    let _ = write!(
        out,
        "<div class=\"op\" id=\"{}\"><p><span class=\"m {method}\">{method}</span> <code>{}</code>",
        esc(op["operationId"].as_str().unwrap_or("")),
        esc(path)
    );
    if let Some(summary) = op["summary"].as_str() {
        let _ = write!(out, " — {}", esc(summary));
    }
    out.push_str("</p>");
    if let Some(d) = op["description"].as_str() {
        let _ = write!(out, "<p class=\"desc\">{}</p>", esc(d));
    }
    if op.get("security").is_some() {
        out.push_str("<p>Needs <code>Authorization: Bearer …</code>.</p>");
    }
    if let Some(params) = op["parameters"].as_array().filter(|p| !p.is_empty()) {
        out.push_str("<table><tr><th>parameter</th><th>in</th><th>type</th><th>description</th></tr>");
        for p in params {
            let required = if p["required"] == true { " (required)" } else { "" };
            let _ = write!(
                out,
                "<tr><td><code>{}</code>{required}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(p["name"].as_str().unwrap_or("")),
                esc(p["in"].as_str().unwrap_or("")),
                type_of(&p["schema"]),
                esc(p["description"].as_str().unwrap_or("")),
            );
        }
        out.push_str("</table>");
    }
    if let Some(body) = op["requestBody"]["content"]["application/json"]["schema"].as_object() {
        let _ = write!(out, "<p>Body (JSON): {}</p>", type_of(&Value::Object(body.clone())));
    }
    out.push_str("<table><tr><th>answer</th><th>description</th><th>body</th></tr>");
    for (status, response) in op["responses"].as_object().into_iter().flatten() {
        let body = response["content"]
            .as_object()
            .and_then(|c| c.iter().next())
            .map(|(mime, media)| format!("{} <code>{}</code>", type_of(&media["schema"]), esc(mime)))
            .unwrap_or_default();
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{body}</td></tr>",
            esc(status),
            esc(response["description"].as_str().unwrap_or(""))
        );
    }
    out.push_str("</table></div>");
}

/// A schema's members as a table: name, type and rules, description.
fn members(out: &mut String, schema: &Value) {
    let Some(properties) = schema["properties"].as_object() else {
        let _ = write!(out, "<p>{}</p>", type_of(schema));
        return;
    };
    let required: Vec<&str> =
        schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    out.push_str("<table><tr><th>member</th><th>type</th><th>description</th></tr>");
    for (name, member) in properties {
        let flag = if required.contains(&name.as_str()) { " (required)" } else { "" };
        let _ = write!(
            out,
            "<tr><td><code>{}</code>{flag}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            type_of(member),
            esc(member["description"].as_str().unwrap_or("")),
        );
    }
    out.push_str("</table>");
}

/// A short HTML rendering of a schema: a link for a reference, else its type and rules.
fn type_of(schema: &Value) -> String {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("<a href=\"#schema-{0}\">{0}</a>", esc(name));
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(list) = schema[key].as_array() {
            let parts: Vec<String> = list.iter().map(type_of).collect();
            return parts.join(" | ");
        }
    }
    let mut text = match &schema["type"] {
        Value::String(t) => esc(t),
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).map(esc).collect::<Vec<_>>().join(" | "),
        _ => "any".to_owned(),
    };
    if let Some(items) = schema.get("items") {
        let _ = write!(text, " of {}", type_of(items));
    }
    let mut rules = Vec::new();
    for key in ["format", "pattern", "minLength", "maxLength", "minimum", "maximum", "maxItems", "default"] {
        if let Some(v) = schema.get(key) {
            rules.push(format!("{key} <code>{}</code>", esc(&plain(v))));
        }
    }
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<String> = values.iter().map(|v| format!("<code>{}</code>", esc(&plain(v)))).collect();
        rules.push(format!("one of {}", values.join(", ")));
    }
    if !rules.is_empty() {
        let _ = write!(text, " ({})", rules.join("; "));
    }
    text
}

fn plain(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_what_it_shows() {
        let doc = serde_json::json!({
            "openapi": "3.1.0",
            "info": {"title": "<T>", "version": "1", "description": "a & b"},
            "paths": {"/x/{id}": {"get": {"summary": "<script>", "tags": ["t"], "responses": {"200": {"description": "ok"}}}}},
            "tags": [{"name": "t"}],
            "components": {"schemas": {"S": {"type": "object", "properties": {"a": {"type": "string", "maxLength": 3}}}}}
        });
        let page = render(&doc);
        assert!(!page.contains("<script>") && page.contains("&lt;script&gt;"), "{page}");
        assert!(page.contains("&lt;T&gt;") && page.contains("a &amp; b"));
        assert!(page.contains("<code>/x/{id}</code>") && page.contains("maxLength <code>3</code>"));
    }
}

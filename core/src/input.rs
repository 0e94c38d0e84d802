//! Strict request input: JSON bodies and query strings are parsed at the edge into typed values, and every
//! refusal names the field and carries a stable code.
//!
//! | problem | status | code |
//! |---|---|---|
//! | body not `application/json` | 415 | `unsupported_media_type` |
//! | body over the size limit | 413 | `body_too_large` |
//! | body not JSON | 400 | `malformed_json` |
//! | body not a JSON object | 400 | `invalid_body` |
//! | member the resource does not have | 422 | `unknown_field` |
//! | member of the wrong JSON type | 422 | `invalid_type` |
//! | required member missing or null | 422 | `missing_field` |
//! | string too long / empty | 422 | `too_long` / `too_short` |
//! | value outside its domain (bad UUID, date, enum, …) | 422 | `invalid_value` |
//! | unknown, repeated or invalid query parameter | 400 | `unknown_parameter` / `invalid_parameter` |

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use time::{Date, OffsetDateTime};
use uuid::Uuid;

use crate::problem::ApiError;

/// A request body that is a JSON object. Enforces the content type and, through axum's body limit, size.
#[derive(Debug)]
pub struct JsonObject(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "the request body is too large",
                )
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", "the request body could not be read")
            }
        })?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "the request body must be a JSON object",
            )),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the request body is not valid JSON (line {}, column {})", e.line(), e.column()),
            )),
        }
    }
}

/// A body member as sent: absent, explicitly null, or a value. Partial updates tell the first two apart.
#[derive(Debug, Clone, PartialEq)]
pub enum Patch<T> {
    Absent,
    Null,
    Value(T),
}

impl<T> Patch<T> {
    /// The value, or `missing_field` when it is absent or null.
    pub fn required(self, field: &str) -> Result<T, ApiError> {
        match self {
            Patch::Value(v) => Ok(v),
            _ => Err(ApiError::invalid_field("missing_field", field, format!("{field} is required"))),
        }
    }

    /// A value that may not be cleared: null is refused, absence is fine.
    pub fn not_null(self, field: &str) -> Result<Option<T>, ApiError> {
        match self {
            Patch::Value(v) => Ok(Some(v)),
            Patch::Absent => Ok(None),
            Patch::Null => {
                Err(ApiError::invalid_field("missing_field", field, format!("{field} cannot be null")))
            }
        }
    }

    /// Absent and null alike become `None`.
    pub fn optional(self) -> Option<T> {
        match self {
            Patch::Value(v) => Some(v),
            _ => None,
        }
    }

    pub fn is_present(&self) -> bool {
        !matches!(self, Patch::Absent)
    }

    /// A copy of the value, if there is one (absent and null alike are `None`).
    pub fn value(&self) -> Option<T>
    where
        T: Clone,
    {
        match self {
            Patch::Value(v) => Some(v.clone()),
            _ => None,
        }
    }
}

/// Typed access to a JSON object's members, refusing members the resource does not have.
pub struct Fields(Map<String, Value>);

impl Fields {
    pub fn new(body: JsonObject, allowed: &[&str]) -> Result<Self, ApiError> {
        let mut unknown: Vec<&String> = body.0.keys().filter(|k| !allowed.contains(&k.as_str())).collect();
        unknown.sort();
        if let Some(first) = unknown.first() {
            let shown: String = first.chars().take(64).collect();
            return Err(ApiError::invalid_field(
                "unknown_field",
                &shown,
                format!("{shown} is not a field of this resource; allowed: {}", allowed.join(", ")),
            ));
        }
        Ok(Self(body.0))
    }

    fn get(&self, field: &str) -> Patch<&Value> {
        match self.0.get(field) {
            None => Patch::Absent,
            Some(Value::Null) => Patch::Null,
            Some(v) => Patch::Value(v),
        }
    }

    /// A string of 1 to `max` characters, trimmed of surrounding whitespace.
    pub fn text(&self, field: &str, max: usize) -> Result<Patch<String>, ApiError> {
        match self.get(field) {
            Patch::Absent => Ok(Patch::Absent),
            Patch::Null => Ok(Patch::Null),
            Patch::Value(Value::String(s)) => {
                let s = s.trim();
                let len = s.chars().count();
                if s.contains('\0') {
                    // Postgres text cannot hold NUL.
                    Err(ApiError::invalid_field(
                        "invalid_value",
                        field,
                        format!("{field} must not contain NUL characters"),
                    ))
                } else if len == 0 {
                    Err(ApiError::invalid_field("too_short", field, format!("{field} must not be empty")))
                } else if len > max {
                    Err(ApiError::invalid_field(
                        "too_long",
                        field,
                        format!("{field} must be at most {max} characters, got {len}"),
                    ))
                } else {
                    Ok(Patch::Value(s.to_owned()))
                }
            }
            Patch::Value(other) => Err(wrong_type(field, "a string", other)),
        }
    }

    pub fn uuid(&self, field: &str) -> Result<Patch<Uuid>, ApiError> {
        self.parsed(field, "a UUID", |s| Uuid::parse_str(s).ok())
    }

    /// A calendar date, `YYYY-MM-DD`.
    pub fn date(&self, field: &str) -> Result<Patch<Date>, ApiError> {
        self.parsed(field, "a date in the form YYYY-MM-DD", parse_date)
    }

    /// One of a fixed set of strings.
    pub fn one_of(&self, field: &str, allowed: &[&str]) -> Result<Patch<String>, ApiError> {
        let expected = format!("one of {}", allowed.join(", "));
        self.parsed(field, &expected, |s| allowed.contains(&s).then(|| s.to_owned()))
    }

    /// An e-mail address (one `@`, no spaces), lowercased.
    pub fn email(&self, field: &str) -> Result<Patch<String>, ApiError> {
        match self.text(field, 254)? {
            Patch::Value(s) => {
                let ok = s.split('@').count() == 2
                    && !s.starts_with('@')
                    && !s.ends_with('@')
                    && !s.chars().any(char::is_whitespace);
                if ok {
                    Ok(Patch::Value(s.to_lowercase()))
                } else {
                    Err(ApiError::invalid_field(
                        "invalid_value",
                        field,
                        format!("{field} must be an e-mail address"),
                    ))
                }
            }
            other => Ok(other),
        }
    }

    /// A non-negative decimal with at most `int_digits` digits before the point and `frac_digits` after,
    /// sent as a JSON string ("1200.50") or number (1200.5); returned as its exact decimal text.
    pub fn decimal(
        &self,
        field: &str,
        int_digits: usize,
        frac_digits: usize,
    ) -> Result<Patch<String>, ApiError> {
        let expected = format!(
            "a non-negative decimal with at most {int_digits} digits before the point and {frac_digits} after"
        );
        let text = match self.get(field) {
            Patch::Absent => return Ok(Patch::Absent),
            Patch::Null => return Ok(Patch::Null),
            Patch::Value(Value::String(s)) => s.trim().to_owned(),
            Patch::Value(Value::Number(n)) => n.to_string(),
            Patch::Value(other) => return Err(wrong_type(field, &expected, other)),
        };
        let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        let ok = !int.is_empty()
            && int.len() <= int_digits
            && frac.len() <= frac_digits
            && digits(int)
            && digits(frac)
            && !(text.contains('.') && frac.is_empty());
        if ok {
            Ok(Patch::Value(text))
        } else {
            Err(ApiError::invalid_field("invalid_value", field, format!("{field} must be {expected}")))
        }
    }

    fn parsed<T>(
        &self,
        field: &str,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Patch<T>, ApiError> {
        match self.get(field) {
            Patch::Absent => Ok(Patch::Absent),
            Patch::Null => Ok(Patch::Null),
            Patch::Value(Value::String(s)) => match parse(s) {
                Some(v) => Ok(Patch::Value(v)),
                None => Err(ApiError::invalid_field(
                    "invalid_value",
                    field,
                    format!("{field} must be {expected}"),
                )),
            },
            Patch::Value(other) => Err(wrong_type(field, expected, other)),
        }
    }
}

fn wrong_type(field: &str, expected: &str, got: &Value) -> ApiError {
    let got = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    ApiError::invalid_field("invalid_type", field, format!("{field} must be {expected}, got {got}"))
}

/// Years Postgres and clients agree on: 1 to 9999.
fn plausible_year(year: i32) -> bool {
    (1..=9999).contains(&year)
}

fn parse_date(s: &str) -> Option<Date> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(s, &format).ok().filter(|d| plausible_year(d.year()))
}

/// A record id from the path (`/…/{id}`): a UUID, or 400 `invalid_parameter` naming `id`.
#[derive(Debug, Clone, Copy)]
pub struct IdPath(pub Uuid);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let invalid = || ApiError::invalid_parameter("id", "id must be a UUID");
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state).await.map_err(|_| invalid())?;
        Uuid::parse_str(&raw).map(Self).map_err(|_| invalid())
    }
}

/// Where a list starts and how much it fetches (one more than the page, to learn whether there is more).
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub after: Option<Cursor>,
    pub limit: i64,
}

impl Window {
    /// `(after created_at, after id, rows to fetch)` as a list query's parameters.
    pub fn bounds(&self) -> (Option<OffsetDateTime>, Option<Uuid>, i64) {
        (self.after.map(|c| c.created_at), self.after.map(|c| c.id), self.limit + 1)
    }
}

/// A `201 Created` answer with the new resource's `Location`.
pub fn created<T: serde::Serialize>(location: &str, body: T) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut response = (StatusCode::CREATED, axum::Json(body)).into_response();
    if let Ok(location) = axum::http::HeaderValue::from_str(location) {
        response.headers_mut().insert(axum::http::header::LOCATION, location);
    }
    response
}

/// The query string of a request, consumed parameter by parameter; what is left over is refused.
pub struct QueryParams(Vec<(String, String)>);

/// The most items one page may hold (`limit`), as in Stripe's API.
pub const MAX_LIMIT: i64 = 100;
pub const DEFAULT_LIMIT: i64 = 20;

impl QueryParams {
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or("")).map_err(|_| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", "the query string is malformed")
        })?;
        for (i, (name, _)) in pairs.iter().enumerate() {
            if pairs[..i].iter().any(|(n, _)| n == name) {
                return Err(ApiError::invalid_parameter(name, format!("{name} is given more than once")));
            }
        }
        Ok(Self(pairs))
    }

    /// Takes a parameter's raw value.
    pub fn take(&mut self, name: &str) -> Option<String> {
        let i = self.0.iter().position(|(n, _)| n == name)?;
        Some(self.0.remove(i).1)
    }

    pub fn uuid(&mut self, name: &str) -> Result<Option<Uuid>, ApiError> {
        self.take(name)
            .map(|v| {
                Uuid::parse_str(&v)
                    .map_err(|_| ApiError::invalid_parameter(name, format!("{name} must be a UUID")))
            })
            .transpose()
    }

    pub fn one_of(&mut self, name: &str, allowed: &[&str]) -> Result<Option<String>, ApiError> {
        self.take(name)
            .map(|v| {
                if allowed.contains(&v.as_str()) {
                    Ok(v)
                } else {
                    Err(ApiError::invalid_parameter(
                        name,
                        format!("{name} must be one of {}", allowed.join(", ")),
                    ))
                }
            })
            .transpose()
    }

    pub fn text(&mut self, name: &str, max: usize) -> Result<Option<String>, ApiError> {
        self.take(name)
            .map(|v| {
                if v.is_empty() || v.chars().count() > max || v.contains('\0') {
                    Err(ApiError::invalid_parameter(name, format!("{name} must be 1 to {max} characters")))
                } else {
                    Ok(v)
                }
            })
            .transpose()
    }

    /// `limit`: 1 to [`MAX_LIMIT`], default [`DEFAULT_LIMIT`].
    pub fn limit(&mut self) -> Result<i64, ApiError> {
        match self.take("limit") {
            None => Ok(DEFAULT_LIMIT),
            Some(v) => v.parse::<i64>().ok().filter(|n| (1..=MAX_LIMIT).contains(n)).ok_or_else(|| {
                ApiError::invalid_parameter(
                    "limit",
                    format!("limit must be an integer from 1 to {MAX_LIMIT}"),
                )
            }),
        }
    }

    /// `after`: the opaque cursor of the previous page.
    pub fn cursor(&mut self) -> Result<Option<Cursor>, ApiError> {
        self.take("after")
            .map(|v| {
                Cursor::decode(&v).ok_or_else(|| {
                    ApiError::invalid_parameter(
                        "after",
                        "after must be a next_cursor value from a previous page",
                    )
                })
            })
            .transpose()
    }

    /// Refuses whatever parameter was not taken.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.0.first() {
            None => Ok(()),
            Some((name, _)) => {
                let shown: String = name.chars().take(64).collect();
                Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "unknown_parameter",
                    format!("{shown} is not a parameter of this endpoint"),
                )
                .with_field(shown))
            }
        }
    }
}

/// A position in a list sorted by `(created_at, id)`; opaque to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: OffsetDateTime,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let micros = self.created_at.unix_timestamp_nanos() / 1_000;
        URL_SAFE_NO_PAD.encode(format!("{micros}.{}", self.id.simple()))
    }

    pub fn decode(s: &str) -> Option<Self> {
        let raw = URL_SAFE_NO_PAD.decode(s).ok()?;
        let text = std::str::from_utf8(&raw).ok()?;
        let (micros, id) = text.split_once('.')?;
        let micros: i128 = micros.parse().ok()?;
        let created_at = OffsetDateTime::from_unix_timestamp_nanos(micros.checked_mul(1_000)?).ok()?;
        if !plausible_year(created_at.year()) {
            return None;
        }
        Some(Self { created_at, id: Uuid::parse_str(id).ok()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str, allowed: &[&str]) -> Result<Fields, ApiError> {
        match serde_json::from_str::<Value>(json).expect("test json") {
            Value::Object(map) => Fields::new(JsonObject(map), allowed),
            _ => panic!("test json must be an object"),
        }
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = fields(r#"{"title":"x","bogus":1}"#, &["title"]).err().expect("refused");
        assert_eq!((err.code(), err.field()), ("unknown_field", Some("bogus")));
    }

    #[test]
    fn text_is_trimmed_and_bounded() {
        let f = fields(r#"{"a":"  hi  ","b":"","c":"xxxx","d":5}"#, &["a", "b", "c", "d"]).expect("ok");
        assert_eq!(f.text("a", 3).expect("ok"), Patch::Value("hi".to_owned()));
        assert_eq!(f.text("b", 3).err().map(|e| e.code()), Some("too_short"));
        assert_eq!(f.text("c", 3).err().map(|e| e.code()), Some("too_long"));
        assert_eq!(f.text("d", 3).err().map(|e| e.code()), Some("invalid_type"));
        assert_eq!(f.text("e", 3).expect("ok"), Patch::Absent);
    }

    #[test]
    fn decimals_keep_their_digits() {
        let f = fields(
            r#"{"a":"1200.50","b":1200.5,"c":"-1","d":"1.234","e":"12345678901234567","f":"1.","g":"abc","h":true}"#,
            &["a", "b", "c", "d", "e", "f", "g", "h"],
        )
        .expect("ok");
        assert_eq!(f.decimal("a", 16, 2).expect("ok"), Patch::Value("1200.50".to_owned()));
        assert_eq!(f.decimal("b", 16, 2).expect("ok"), Patch::Value("1200.5".to_owned()));
        for bad in ["c", "d", "e", "f", "g"] {
            assert_eq!(f.decimal(bad, 16, 2).err().map(|e| e.code()), Some("invalid_value"), "{bad}");
        }
        assert_eq!(f.decimal("h", 16, 2).err().map(|e| e.code()), Some("invalid_type"));
    }

    #[test]
    fn required_and_nullable_members_are_told_apart() {
        let f = fields(r#"{"a":null}"#, &["a", "b"]).expect("ok");
        assert_eq!(f.uuid("a").expect("ok"), Patch::Null);
        assert_eq!(f.uuid("b").expect("ok"), Patch::Absent);
        assert_eq!(f.text("a", 5).expect("ok").required("a").err().map(|e| e.code()), Some("missing_field"));
        assert_eq!(f.text("a", 5).expect("ok").not_null("a").err().map(|e| e.code()), Some("missing_field"));
        assert_eq!(f.text("b", 5).expect("ok").not_null("b").expect("ok"), None);
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = Cursor {
            created_at: OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_000).expect("ts"),
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in ["", "!!", "bm90LWEtY3Vyc29y", &URL_SAFE_NO_PAD.encode("1.not-a-uuid")] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn nul_characters_and_implausible_dates_are_refused() {
        let f = fields(
            r#"{"a":"x\u0000y","d":"-9999-01-01","e":"10000-01-01","g":"2027-01-31"}"#,
            &["a", "d", "e", "g"],
        )
        .expect("ok");
        assert_eq!(f.text("a", 10).err().map(|e| e.code()), Some("invalid_value"));
        assert_eq!(f.date("d").err().map(|e| e.code()), Some("invalid_value"));
        assert_eq!(f.date("e").err().map(|e| e.code()), Some("invalid_value"));
        assert!(matches!(f.date("g"), Ok(Patch::Value(_))));
        let mut q = QueryParams::parse(Some("domain=a%00b")).expect("ok");
        assert_eq!(q.text("domain", 10).err().map(|e| e.code()), Some("invalid_parameter"));
        let far = URL_SAFE_NO_PAD.encode(format!("-300000000000000000.{}", Uuid::nil().simple()));
        assert_eq!(Cursor::decode(&far), None);
    }

    #[test]
    fn query_parameters_are_strict() {
        assert_eq!(QueryParams::parse(Some("a=1&a=2")).err().map(|e| e.code()), Some("invalid_parameter"));
        let mut q = QueryParams::parse(Some("limit=101")).expect("ok");
        assert_eq!(q.limit().err().map(|e| e.code()), Some("invalid_parameter"));
        let mut q = QueryParams::parse(Some("limit=5&x=1")).expect("ok");
        assert_eq!(q.limit().expect("ok"), 5);
        assert_eq!(q.finish().err().map(|e| e.code()), Some("unknown_parameter"));
    }
}

/// One page of a list, Stripe-style: `has_more` and the cursor to pass as `after` for the next page.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// Always `list`.
    #[schema(value_type = String, example = "list")]
    pub object: &'static str,
    pub data: Vec<T>,
    /// Whether more items follow this page.
    pub has_more: bool,
    /// Pass as `after` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` items fetched in list order: the extra one only says there is more.
    pub fn from_items(mut items: Vec<T>, limit: i64, cursor_of: impl Fn(&T) -> Cursor) -> Self {
        let limit = usize::try_from(limit).unwrap_or(0);
        let has_more = items.len() > limit;
        items.truncate(limit);
        let next_cursor = if has_more { items.last().map(|last| cursor_of(last).encode()) } else { None };
        Self { object: "list", data: items, has_more, next_cursor }
    }
}

//! Errors as clients see them: RFC 9457 problem+json with a stable `code`.
//!
//! What the client sees is decided here, in one place, and kept apart from what is logged: a 5xx body is
//! generic while the full error chain goes to the log. Postgres conditions become client errors by SQLSTATE
//! and constraint name (unique → 409 naming the field, foreign key → 422, check → 422); anything else from
//! Postgres is a 500 whose details never reach the client.

use std::borrow::Cow;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio_postgres::error::SqlState;

/// A client-facing error. Build it with the constructors; `into_response` renders problem+json.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: Cow<'static, str>,
    field: Option<Cow<'static, str>>,
    /// The cause, logged and never shown.
    internal: Option<String>,
}

/// An error (RFC 9457 problem details, `application/problem+json`).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub(crate) struct ProblemBody<'a> {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    kind: String,
    /// A short summary of the kind of problem.
    title: &'a str,
    /// The HTTP status.
    status: u16,
    /// A stable machine-readable code (`not_found`, `invalid_value`, `rate_limited`, …).
    code: &'a str,
    /// What went wrong in this request.
    detail: &'a str,
    /// The request field (body member, query or path parameter) the error is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        Self { status, code, detail: detail.into(), field: None, internal: None }
    }

    /// Names the request field (body member or query parameter) that the error is about.
    pub fn with_field(mut self, field: impl Into<Cow<'static, str>>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// A field of the request body or query that is wrong: 422 with the field named.
    pub fn invalid_field(code: &'static str, field: &str, detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail).with_field(field.to_owned())
    }

    /// A query parameter or path segment that is wrong: 400 with the parameter named.
    pub fn invalid_parameter(field: &str, detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_parameter", detail).with_field(field.to_owned())
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("no such {what}"))
    }

    pub fn unauthenticated(code: &'static str, detail: &'static str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, detail)
    }

    pub fn forbidden(code: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, detail)
    }

    /// An unexpected failure: the client gets a generic 500, the log gets `cause` with its chain.
    pub fn internal(cause: &(dyn std::error::Error + 'static)) -> Self {
        let mut text = cause.to_string();
        let mut source = cause.source();
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal_error",
            detail: Cow::Borrowed("the server could not complete the request; it has been logged"),
            field: None,
            internal: Some(text),
        }
    }

    /// The database is out of reach or saturated: 503, the cause logged.
    pub fn unavailable(cause: &(dyn std::error::Error + 'static)) -> Self {
        let mut e = Self::internal(cause);
        e.status = StatusCode::SERVICE_UNAVAILABLE;
        e.code = "service_unavailable";
        e.detail = Cow::Borrowed("the service is temporarily unavailable; retry later");
        e
    }

    /// Maps an error from SQL this service issued. `constraints` names, per constraint, the request field
    /// it guards, so the client learns which field was wrong and nothing about the schema.
    pub fn from_db(err: tokio_postgres::Error, constraints: &[Constraint]) -> Self {
        let Some(db) = err.as_db_error() else {
            return Self::unavailable(&err);
        };
        let state = db.code();
        let known = db.constraint().and_then(|name| constraints.iter().find(|c| c.name == name));
        let field = known.map(|c| Cow::Borrowed(c.field));
        let (status, code, detail): (StatusCode, &'static str, Cow<'static, str>) = if *state
            == SqlState::UNIQUE_VIOLATION
        {
            let detail = match known {
                Some(c) => format!("another record already has this {}", c.field).into(),
                None => "a record with these values already exists".into(),
            };
            (StatusCode::CONFLICT, "already_exists", detail)
        } else if *state == SqlState::FOREIGN_KEY_VIOLATION {
            match known {
                Some(c) if c.referenced_by_others => (
                    StatusCode::CONFLICT,
                    "still_referenced",
                    format!("other records still refer to this one through {}", c.field).into(),
                ),
                Some(c) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_reference",
                    format!("{} does not refer to an existing {}", c.field, c.target).into(),
                ),
                None => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "invalid_reference", "a reference is invalid".into())
                }
            }
        } else if *state == SqlState::CHECK_VIOLATION
            || *state == SqlState::NOT_NULL_VIOLATION
            || *state == SqlState::STRING_DATA_RIGHT_TRUNCATION
            || *state == SqlState::NUMERIC_VALUE_OUT_OF_RANGE
            || *state == SqlState::INVALID_TEXT_REPRESENTATION
            || *state == SqlState::DATETIME_FIELD_OVERFLOW
            || *state == SqlState::DATETIME_VALUE_OUT_OF_RANGE
            || *state == SqlState::CHARACTER_NOT_IN_REPERTOIRE
            || *state == SqlState::UNTRANSLATABLE_CHARACTER
        {
            let detail = match known {
                Some(c) => format!("{} is not valid", c.field).into(),
                None => "a value is not valid".into(),
            };
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", detail)
        } else if *state == SqlState::INSUFFICIENT_PRIVILEGE {
            // Row-level security refusing a write, or a missing grant: never the client's to see in detail.
            return Self::internal(&err);
        } else if *state == SqlState::T_R_SERIALIZATION_FAILURE
            || *state == SqlState::T_R_DEADLOCK_DETECTED
            || *state == SqlState::TOO_MANY_CONNECTIONS
            || *state == SqlState::ADMIN_SHUTDOWN
            || *state == SqlState::CANNOT_CONNECT_NOW
        {
            return Self::unavailable(&err);
        } else {
            return Self::internal(&err);
        };
        let mut e = Self::new(status, code, detail);
        e.field = field;
        e
    }
}

/// A named constraint and the request field it guards.
#[derive(Debug, Clone, Copy)]
pub struct Constraint {
    pub name: &'static str,
    pub field: &'static str,
    /// For foreign keys: what the field refers to ("company").
    pub target: &'static str,
    /// True for a foreign key seen from the referenced side (a delete blocked by it).
    pub referenced_by_others: bool,
}

impl Constraint {
    pub const fn field(name: &'static str, field: &'static str) -> Self {
        Self { name, field, target: "", referenced_by_others: false }
    }

    pub const fn reference(name: &'static str, field: &'static str, target: &'static str) -> Self {
        Self { name, field, target, referenced_by_others: false }
    }

    pub const fn referenced_by(name: &'static str, field: &'static str) -> Self {
        Self { name, field, target: "", referenced_by_others: true }
    }
}

/// Lets a log line through at most once per interval: for conditions that, under load, would otherwise be
/// logged once per request (and add to the load).
#[derive(Debug, Default)]
pub struct LogThrottle {
    /// Milliseconds since the Unix epoch of the last line let through; 0 before the first.
    last: std::sync::atomic::AtomicU64,
}

impl LogThrottle {
    pub const fn new() -> Self {
        Self { last: std::sync::atomic::AtomicU64::new(0) }
    }

    /// Whether a line may be logged now (and if so, the next one only after `every`).
    pub fn allow(&self, every: std::time::Duration) -> bool {
        use std::sync::atomic::Ordering;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let last = self.last.load(Ordering::Relaxed);
        let every = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
        (last == 0 || now.saturating_sub(last) >= every)
            && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::from_db(err, &[])
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Only failures with a cause: a 5xx the gateway answers on purpose (overloaded, not ready) is no
        // error of its own, and under load one line per answer would add to the load.
        if self.status.is_server_error() && self.internal.is_some() {
            tracing::error!(
                code = self.code,
                cause = self.internal.as_deref().unwrap_or(""),
                "request failed"
            );
        }
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = ProblemBody {
            kind: format!("urn:tessera:problem:{}", self.code),
            title,
            status: self.status.as_u16(),
            code: self.code,
            detail: &self.detail,
            field: self.field.as_deref(),
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (self.status, bytes).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"tessera\""));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lets_one_line_through_per_interval() {
        let throttle = LogThrottle::new();
        assert!(throttle.allow(std::time::Duration::from_secs(60)));
        assert!(!throttle.allow(std::time::Duration::from_secs(60)));
        assert!(throttle.allow(std::time::Duration::ZERO));
    }
}

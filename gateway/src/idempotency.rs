//! `Idempotency-Key` on POST, for every module's routes: the same key with the same request replays the
//! first response; with another request it is refused (`422 idempotency_key_reused`); while the first is
//! still running it is refused too (`409 idempotency_key_in_flight`). Keys belong to the tenant of the API
//! key (row-level security on `core.idempotency_keys`), so tenants never see each other's, and live 24 hours.
//!
//! ```text
//! claim (own transaction: insert the key, or read it)  ─▶ run the request (its writes mark the key
//!   "committed" in their own transaction)  ─▶ record the response (own transaction)
//! ```
//!
//! - Only successful (2xx) responses are kept for replay; any other response releases the key so the
//!   client can try again, unless the request's writes took effect (then it is kept too).
//! - A request whose writes committed but whose response was never recorded (the process died in between)
//!   is never run again: its key answers `409 idempotency_request_unfinished`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use tessera_core::ApiError;
use tessera_core::apikey::{self, PresentedKey};
use tessera_core::db::{IDEMPOTENCY_KEY, IdempotentRequest, ModuleDb};

use crate::paths;

/// State of the idempotency layer: each module's database access.
#[derive(Clone)]
pub struct IdempotencyLayer {
    pub modules: Arc<HashMap<&'static str, ModuleDb>>,
    pub body_limit_bytes: usize,
}

const HEADER: &str = "idempotency-key";
/// Responses larger than this are not kept (the key is released instead).
const MAX_RECORDED: usize = 1024 * 1024;

/// What the key says about this request.
enum Claim {
    /// New, or free again: run it.
    Run,
    Replay {
        status: i32,
        content_type: Option<String>,
        location: Option<String>,
        body: Vec<u8>,
    },
    Reused,
    InFlight,
    TookEffect,
}

async fn claim(
    db: &ModuleDb,
    key: &PresentedKey,
    idempotency_key: &str,
    fingerprint: &[u8],
    claim_id: uuid::Uuid,
) -> Result<Claim, ApiError> {
    db.write(key, async |tx| {
        tx.execute(
            "delete from core.idempotency_keys where key = $1 and created_at < now() - interval '24 hours'",
            &[&idempotency_key],
        )
        .await?;
        let inserted = tx
            .execute(
                "insert into core.idempotency_keys (key, fingerprint, locked_until, claim)
                 values ($1, $2, now() + interval '60 seconds', $3) on conflict do nothing",
                &[&idempotency_key, &fingerprint, &claim_id],
            )
            .await?;
        if inserted == 1 {
            return Ok(Claim::Run);
        }
        // Another request has it (waited for above if it was being inserted concurrently).
        let Some(row) = tx
            .query_opt(
                "select fingerprint, locked_until > now(), committed, response_status, response_content_type,
                        response_location, response_body
                   from core.idempotency_keys where key = $1 for update",
                &[&idempotency_key],
            )
            .await?
        else {
            return Ok(Claim::InFlight);
        };
        if row.get::<_, Vec<u8>>(0) != fingerprint {
            return Ok(Claim::Reused);
        }
        if let Some(status) = row.get::<_, Option<i32>>(3) {
            return Ok(Claim::Replay {
                status,
                content_type: row.get(4),
                location: row.get(5),
                body: row.get::<_, Option<Vec<u8>>>(6).unwrap_or_default(),
            });
        }
        if row.get::<_, Option<bool>>(1).unwrap_or(false) {
            return Ok(Claim::InFlight);
        }
        if row.get::<_, bool>(2) {
            return Ok(Claim::TookEffect);
        }
        // Its holder died (or is stuck) before anything took effect: this request takes the key over, and
        // the old holder, should it wake up, can no longer mark the key (its claim is gone): it takes no
        // effect.
        tx.execute(
            "update core.idempotency_keys set locked_until = now() + interval '60 seconds', claim = $2
              where key = $1",
            &[&idempotency_key, &claim_id],
        )
        .await?;
        Ok(Claim::Run)
    })
    .await
}

/// Keeps a successful (or effective) response for replay; releases the key otherwise. Only while this
/// request still holds the key (`claim_id`).
#[allow(clippy::too_many_arguments)]
async fn record(
    db: &ModuleDb,
    key: &PresentedKey,
    idempotency_key: &str,
    claim_id: uuid::Uuid,
    status: StatusCode,
    content_type: Option<&str>,
    location: Option<&str>,
    body: Option<&[u8]>,
) -> Result<(), ApiError> {
    let status = i32::from(status.as_u16());
    let keep = (200..300).contains(&status) && body.is_some();
    db.write(key, async |tx| {
        if !keep {
            // Nothing took effect: the key is free again. If something did, the answer is kept as it is
            // (one too large to keep leaves the key saying the request took effect).
            tx.execute(
                "delete from core.idempotency_keys where key = $1 and claim = $2 and not committed",
                &[&idempotency_key, &claim_id],
            )
            .await?;
        }
        let status = body.map(|_| status);
        tx.execute(
            "update core.idempotency_keys
                set locked_until = null, response_status = $3, response_content_type = $4,
                    response_location = $5, response_body = $6
              where key = $1 and claim = $2",
            &[&idempotency_key, &claim_id, &status, &content_type, &location, &body],
        )
        .await?;
        Ok(())
    })
    .await
}

fn problem(status: StatusCode, code: &'static str, detail: &str) -> Response {
    ApiError::new(status, code, detail.to_owned()).into_response()
}

/// The middleware in front of the module routes.
pub async fn layer(State(state): State<IdempotencyLayer>, mut request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let Some(raw) = request.headers().get(HEADER) else { return next.run(request).await };
    let idempotency_key = match raw.to_str() {
        Ok(k) if (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()) => k.to_owned(),
        _ => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            );
        }
    };
    let uri = paths::original_uri(&request).clone();
    let Some(db) = paths::api_of(uri.path()).and_then(|module| state.modules.get(module)) else {
        return next.run(request).await;
    };
    // Without a usable key the handler answers (401).
    let Ok(key) = apikey::presented_in(&mut request) else { return next.run(request).await };

    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, state.body_limit_bytes).await else {
        return problem(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the request body is too large");
    };
    let mut hasher = Sha256::new();
    for part in [parts.method.as_str().as_bytes(), b"\0", uri.to_string().as_bytes(), b"\0", &bytes] {
        hasher.update(part);
    }
    let fingerprint = hasher.finalize().to_vec();

    let claim_id = uuid::Uuid::new_v4();
    match claim(db, &key, &idempotency_key, &fingerprint, claim_id).await {
        Err(e) => e.into_response(),
        Ok(Claim::Reused) => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used with another request",
        ),
        Ok(Claim::InFlight) => problem(
            StatusCode::CONFLICT,
            "idempotency_key_in_flight",
            "a request with this Idempotency-Key is still being processed; retry later",
        ),
        Ok(Claim::TookEffect) => problem(
            StatusCode::CONFLICT,
            "idempotency_request_unfinished",
            "the request with this Idempotency-Key took effect, but its response was lost",
        ),
        Ok(Claim::Replay { status, content_type, location, body }) => {
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = u16::try_from(status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::OK);
            let headers = response.headers_mut();
            if let Some(value) = content_type.and_then(|v| HeaderValue::from_str(&v).ok()) {
                headers.insert(header::CONTENT_TYPE, value);
            }
            if let Some(value) = location.and_then(|v| HeaderValue::from_str(&v).ok()) {
                headers.insert(header::LOCATION, value);
            }
            headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
            response
        }
        Ok(Claim::Run) => {
            // On a task of its own: a client that goes away after the request's writes committed must not
            // keep its answer from being recorded (every retry would then be refused).
            let db = db.clone();
            let held = IdempotentRequest { key: Arc::from(idempotency_key.as_str()), claim: claim_id };
            // The task keeps the request's place under load shedding for as long as it runs.
            let place = parts.extensions.get::<crate::overload::Place>().cloned();
            let request = Request::from_parts(parts, Body::from(bytes));
            let task = tokio::spawn(async move {
                let _place = place;
                let response = IDEMPOTENCY_KEY.scope(held, next.run(request)).await;
                let (parts, body) = response.into_parts();
                let body: Option<Bytes> = axum::body::to_bytes(body, MAX_RECORDED).await.ok();
                let text = |name| {
                    parts.headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok()).map(str::to_owned)
                };
                let (content_type, location) = (text(header::CONTENT_TYPE), text(header::LOCATION));
                if let Err(e) = record(
                    &db,
                    &key,
                    &idempotency_key,
                    claim_id,
                    parts.status,
                    content_type.as_deref(),
                    location.as_deref(),
                    body.as_deref(),
                )
                .await
                {
                    // The key stays held for a minute, then is taken over (or, if the request took effect,
                    // answers idempotency_request_unfinished).
                    tracing::warn!(error = ?e, "could not record an idempotent response");
                }
                match body {
                    Some(body) => Response::from_parts(parts, Body::from(body)),
                    None => problem(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal_error",
                        "the response could not be read",
                    ),
                }
            });
            task.await.unwrap_or_else(|_| {
                problem(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "the request failed")
            })
        }
    }
}

//! `POST /v1/auth/login`: a user's e-mail and password for one tenant (by slug) give a token bound to that
//! tenant, valid 15 minutes (see [`tessera_core::token`]). Send it as `Authorization: Bearer <token>`.
//!
//! Every failure (no such user, wrong password, not a member, no such tenant) answers the same
//! `401 invalid_credentials`, after the same password hashing work, so the answer says nothing about which
//! part was wrong. A suspended tenant answers `403 tenant_suspended` only after the password was right.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use tessera_core::ApiError;
use tessera_core::db::Database;
use tessera_core::input::{Fields, JsonObject};
use tessera_core::openapi::{ApiRouter, ToSchema, routes};
use tessera_core::token::{self, Claims, TOKEN_TTL_SECONDS};

pub fn router(db: Database) -> ApiRouter {
    ApiRouter::new().routes(routes!(login)).with_state(db)
}

/// A user's credentials for one tenant.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Login {
    /// The user's e-mail address.
    #[schema(max_length = 254, pattern = r"^[^\u0000]*\S[^\u0000]*$")]
    email: String,
    /// The password, as set (1 to 1024 bytes, not trimmed).
    #[schema(min_length = 1, max_length = 1024)]
    password: String,
    /// The tenant's slug.
    #[schema(max_length = 63, pattern = r"^[^\u0000]*\S[^\u0000]*$")]
    tenant: String,
}

/// A token bound to one tenant; send it as `Authorization: Bearer <token>`.
#[derive(serde::Serialize, ToSchema)]
struct Token {
    /// Always `token`.
    #[schema(value_type = String)]
    object: &'static str,
    token: String,
    /// Always `Bearer`.
    #[schema(value_type = String)]
    token_type: &'static str,
    /// Seconds until the token expires.
    expires_in: i64,
    tenant_id: uuid::Uuid,
    /// The user's role in the tenant: `owner`, `admin` or `member`.
    role: String,
}

fn refused() -> ApiError {
    ApiError::unauthenticated("invalid_credentials", "the e-mail, password or tenant is not right")
}

/// Logs a user in to one tenant: a short-lived token for that tenant.
#[utoipa::path(post, path = "/login", tag = "auth", request_body = Login,
    responses((status = 200, description = "The token", body = Token)))]
async fn login(
    State(db): State<Database>,
    place: Option<axum::Extension<crate::overload::Place>>,
    body: JsonObject,
) -> Result<Response, ApiError> {
    // The password as sent: not trimmed, unlike other text fields.
    let password = match body.0.get("password") {
        Some(serde_json::Value::String(p)) if !p.is_empty() && p.len() <= 1024 => p.clone(),
        Some(serde_json::Value::String(_)) => {
            return Err(ApiError::invalid_field(
                "invalid_value",
                "password",
                "password must be 1 to 1024 bytes",
            ));
        }
        Some(_) => {
            return Err(ApiError::invalid_field("invalid_type", "password", "password must be a string"));
        }
        None => return Err(ApiError::invalid_field("missing_field", "password", "password is required")),
    };
    let input = Fields::new(body, &["email", "password", "tenant"])?;
    let email = input.text("email", 254)?.required("email")?;
    let tenant = input.text("tenant", 63)?.required("tenant")?;
    let record = db.login_lookup(&email, &tenant).await?;
    let stored = record.as_ref().map_or(token::DUMMY_HASH.to_owned(), |r| r.password_hash.clone());
    // Off the async threads: Argon2 is slow on purpose.
    // The hash keeps the request's place under load shedding even if the client goes away meanwhile.
    let matches = tokio::task::spawn_blocking(move || {
        let _place = place;
        token::verify_password(&password, &stored)
    })
    .await
    .unwrap_or(false);
    let Some(record) = record.filter(|_| matches) else { return Err(refused()) };
    let (Some(tenant_id), Some(role)) = (record.tenant_id, record.role) else { return Err(refused()) };
    if !record.tenant_active {
        return Err(ApiError::forbidden("tenant_suspended", "this tenant is suspended"));
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = Claims {
        sub: record.user_id,
        tid: tenant_id,
        role: role.clone(),
        iat: now,
        exp: now + TOKEN_TTL_SECONDS,
    };
    let signed = token::sign(&db.token_signing_key().await?, &claims);
    Ok(axum::Json(Token {
        object: "token",
        token: signed,
        token_type: "Bearer",
        expires_in: TOKEN_TTL_SECONDS,
        tenant_id,
        role,
    })
    .into_response())
}

//! `POST /api/v1/auth/register`, `/auth/token`, `/auth/refresh`, `/auth/logout`, and the
//! admin route `POST /api/v1/admin/sync`.
//!
//! Passwords are hashed with Argon2id (OWASP minimum parameters, the crate's defaults) on the
//! blocking pool, never on the async workers. Logins are limited per client address and per
//! account, registrations per client address, cluster-wide, with fixed one-minute windows in
//! Redis (a node that cannot reach Redis limits with its own counters instead); the client
//! address is [`ClientIp`] (`X-Forwarded-For` only from `node.limits.trusted_proxies`). A wrong password and an unknown email answer the
//! same 401 after the same work.

use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use pricefeed_store::alerts::{self as store, AccountError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Role;
use super::extract::{AdminUser, JsonBody};
use crate::api::error::{ApiError, ApiResult};
use crate::api::limits::ClientIp;
use crate::ingest::connector::now_ms;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(crate::api::v1(routes!(register)))
        .routes(crate::api::v1(routes!(token)))
        .routes(crate::api::v1(routes!(refresh)))
        .routes(crate::api::v1(routes!(logout)))
        .routes(crate::api::v1(routes!(admin_sync)))
}

/// Registration or login.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The address alert emails go to (any case; stored in lower case): printable ASCII, one
    /// `@`, a domain with a dot inside it.
    #[schema(
        example = "ada@example.com",
        max_length = 254,
        pattern = r"^[!-?A-~]+@[!-\-/-?A-~][!-?A-~]*\.[!-?A-~]*[!-\-/-?A-~]$"
    )]
    pub email: String,
    /// 10 to 128 characters.
    #[schema(example = "correct horse battery", min_length = 10, max_length = 128)]
    pub password: String,
}

/// A new account.
#[derive(Debug, Serialize, ToSchema)]
pub struct Account {
    pub id: i64,
    pub email: String,
    pub role: Role,
}

/// Tokens issued on login and refresh.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenPair {
    /// JWT, sent as `Authorization: Bearer …`.
    pub access_token: String,
    /// Opaque; exchange it at `/auth/refresh` (once: it rotates).
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds the access token lives.
    pub expires_in: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    #[schema(format = "uuid")]
    pub refresh_token: String,
}

/// Checks and normalises an email address (lower case): exactly the `email` pattern of
/// [`Credentials`], so no surrounding spaces either.
pub fn normalize_email(e: &str) -> Result<String, ApiError> {
    let e = e.to_ascii_lowercase();
    let valid = e.len() <= 254
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
        })
        && e.bytes().all(|b| b.is_ascii_graphic());
    if valid {
        Ok(e)
    } else {
        Err(ApiError::field("email", "must be an email address"))
    }
}

fn check_password(p: &str) -> Result<(), ApiError> {
    let n = p.chars().count();
    if (10..=128).contains(&n) {
        Ok(())
    } else {
        Err(ApiError::field("password", "must be 10 to 128 characters"))
    }
}

/// Argon2id hash of `password`, on the blocking pool.
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| ApiError::internal(anyhow::anyhow!("hashing: {e}")))
    })
    .await
    .map_err(ApiError::internal)?
}

/// Verifies `password` against a PHC `hash`, on the blocking pool.
async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .verify_password(password.as_bytes(), hash.as_str())
            .is_ok()
    })
    .await
    .unwrap_or(false)
}

/// Creates an account.
#[utoipa::path(post, path = "/auth/register", tag = "accounts", request_body = Credentials,
    responses(
        (status = 201, body = Account),
        (status = 400, description = "Body is not JSON", content_type = "application/problem+json"),
        (status = 409, description = "Email already registered", content_type = "application/problem+json"),
        (status = 415, description = "Body not sent as application/json", content_type = "application/problem+json"),
        (status = 422, description = "Invalid email or password (field named)", content_type = "application/problem+json"),
        (status = 429, description = "Too many registrations from this address (`auth.register_per_address_per_min`) or requests (`node.limits`)", content_type = "application/problem+json"),
        (status = 503, description = "Postgres unavailable", content_type = "application/problem+json"),
    ))]
async fn register(
    State(st): State<AppState>,
    ClientIp(client): ClientIp,
    JsonBody(c): JsonBody<Credentials>,
) -> ApiResult<(StatusCode, Json<Account>)> {
    let email = normalize_email(&c.email)?;
    check_password(&c.password)?;
    // Each registration costs an Argon2 hash and a row: bounded per address, cluster-wide.
    limit(
        &st,
        "register-ip",
        &client.to_string(),
        st.auth.register_per_address_per_min,
        "registrations",
    )
    .await?;
    let hash = hash_password(c.password).await?;
    let id = store::create_user(&st.db, &email, &hash, "user")
        .await
        .map_err(|e| match e {
            AccountError::EmailTaken => {
                ApiError::Conflict("an account with this email exists".into())
            }
            AccountError::Db(e) => e.into(),
            other => ApiError::internal(other),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(Account {
            id,
            email,
            role: Role::User,
        }),
    ))
}

/// Counts one attempt of `who` against `limit` per minute; `Err` with the wait when over.
async fn limit(
    st: &AppState,
    name: &str,
    who: &str,
    limit: u32,
    what: &str,
) -> Result<(), ApiError> {
    let window = now_ms() / 60_000;
    let key = st.keys.rate_limit(name, who, window);
    let mut redis = st.redis.clone();
    let count: Result<(i64,), _> = redis::pipe()
        .atomic()
        .incr(&key, 1)
        .pexpire(&key, 61_000)
        .ignore()
        .query_async(&mut redis)
        .await;
    let n = match count {
        Ok((n,)) => n,
        // Redis down: this node's own counters still bound the attempts.
        Err(_) => st.local_limits.hit(&key),
    };
    if n > i64::from(limit) {
        let wait = 60_000 - now_ms() % 60_000;
        return Err(ApiError::TooManyRequests {
            detail: format!("too many {what}; at most {limit} per minute"),
            retry_after: Some(Duration::from_millis(wait as u64)),
        });
    }
    Ok(())
}

/// Logs in: an access token and a refresh token.
#[utoipa::path(post, path = "/auth/token", tag = "accounts", request_body = Credentials,
    responses(
        (status = 200, body = TokenPair),
        (status = 400, description = "Body is not JSON", content_type = "application/problem+json"),
        (status = 401, description = "Wrong email or password", content_type = "application/problem+json"),
        (status = 415, description = "Body not sent as application/json", content_type = "application/problem+json"),
        (status = 422, description = "Malformed body (field named)", content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts (per address or per account)", content_type = "application/problem+json"),
        (status = 503, description = "Postgres unavailable", content_type = "application/problem+json"),
    ))]
async fn token(
    State(st): State<AppState>,
    ClientIp(client): ClientIp,
    JsonBody(c): JsonBody<Credentials>,
) -> ApiResult<Json<TokenPair>> {
    let email = normalize_email(&c.email)?;
    limit(
        &st,
        "login-ip",
        &client.to_string(),
        st.auth.login_per_address_per_min,
        "login attempts",
    )
    .await?;
    limit(
        &st,
        "login-account",
        &email,
        st.auth.login_per_account_per_min,
        "login attempts",
    )
    .await?;
    let user = store::user_by_email(&st.db, &email).await?;
    // Unknown emails verify against a fixed hash, so both failures take the same time.
    let hash = user
        .as_ref()
        .map_or_else(|| st.dummy_hash.to_string(), |u| u.password_hash.clone());
    let ok = verify_password(c.password, hash).await;
    let Some(user) = user.filter(|_| ok) else {
        return Err(ApiError::Unauthorized("wrong email or password".into()));
    };
    issue(&st, user.id, role_of(&user.role), None)
        .await
        .map(Json)
}

fn role_of(r: &str) -> Role {
    if r == "admin" {
        Role::Admin
    } else {
        Role::User
    }
}

async fn issue(
    st: &AppState,
    user_id: i64,
    role: Role,
    refresh: Option<uuid::Uuid>,
) -> ApiResult<TokenPair> {
    let refresh = match refresh {
        Some(r) => r,
        None => store::new_refresh(&st.db, user_id, st.auth.refresh_ttl_ms).await?,
    };
    Ok(TokenPair {
        access_token: st.tokens.issue(user_id, role, now_ms() / 1000),
        refresh_token: refresh.to_string(),
        token_type: "Bearer".into(),
        expires_in: st.tokens.ttl_s(),
    })
}

fn parse_refresh(s: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(s).map_err(|_| ApiError::Unauthorized("invalid refresh token".into()))
}

/// Exchanges a refresh token for a new pair (the old refresh token stops working; presenting
/// it again revokes every token descending from it).
#[utoipa::path(post, path = "/auth/refresh", tag = "accounts", request_body = RefreshRequest,
    responses(
        (status = 200, body = TokenPair),
        (status = 400, description = "Body is not JSON", content_type = "application/problem+json"),
        (status = 401, description = "Unknown, expired, revoked or reused refresh token", content_type = "application/problem+json"),
        (status = 415, description = "Body not sent as application/json", content_type = "application/problem+json"),
        (status = 422, description = "Malformed body (field named)", content_type = "application/problem+json"),
        (status = 503, description = "Postgres unavailable", content_type = "application/problem+json"),
    ))]
async fn refresh(
    State(st): State<AppState>,
    JsonBody(r): JsonBody<RefreshRequest>,
) -> ApiResult<Json<TokenPair>> {
    let id = parse_refresh(&r.refresh_token)?;
    match store::rotate_refresh(&st.db, id, st.auth.refresh_ttl_ms).await {
        Ok((user, next)) => issue(&st, user.id, role_of(&user.role), Some(next))
            .await
            .map(Json),
        Err(AccountError::RefreshReused) => {
            tracing::warn!(user_session = %id, "refresh token reused; its family is revoked");
            Err(ApiError::Unauthorized(
                "refresh token reused; sign in again".into(),
            ))
        }
        Err(AccountError::Db(e)) => Err(e.into()),
        Err(_) => Err(ApiError::Unauthorized("invalid refresh token".into())),
    }
}

/// Revokes a refresh token and every token rotated from the same login.
#[utoipa::path(post, path = "/auth/logout", tag = "accounts", request_body = RefreshRequest,
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, description = "Body is not JSON", content_type = "application/problem+json"),
        (status = 401, description = "Unknown refresh token", content_type = "application/problem+json"),
        (status = 415, description = "Body not sent as application/json", content_type = "application/problem+json"),
        (status = 422, description = "Malformed body (field named)", content_type = "application/problem+json"),
        (status = 503, description = "Postgres unavailable", content_type = "application/problem+json"),
    ))]
async fn logout(
    State(st): State<AppState>,
    JsonBody(r): JsonBody<RefreshRequest>,
) -> ApiResult<StatusCode> {
    let id = parse_refresh(&r.refresh_token)?;
    if store::revoke_refresh(&st.db, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::Unauthorized("invalid refresh token".into()))
    }
}

/// The instrument sync was requested.
#[derive(Debug, Serialize, ToSchema)]
pub struct SyncRequested {
    /// The scheduler leader runs it within a second (the request waits up to a minute for a
    /// leader).
    pub requested: bool,
}

/// Asks the scheduler leader to sync instruments from the broker now (admin only).
#[utoipa::path(post, path = "/admin/sync", tag = "accounts",
    security(("bearer" = [])),
    responses(
        (status = 202, body = SyncRequested),
        (status = 401, description = "No or invalid token", content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", content_type = "application/problem+json"),
        (status = 503, description = "Redis unavailable", content_type = "application/problem+json"),
    ))]
async fn admin_sync(
    State(st): State<AppState>,
    admin: AdminUser,
) -> ApiResult<(StatusCode, Json<SyncRequested>)> {
    let mut redis = st.redis.clone();
    redis::cmd("SET")
        .arg(st.keys.sync_requested())
        .arg(admin.0.id.to_string())
        .arg("PX")
        .arg(60_000)
        .query_async::<()>(&mut redis)
        .await?;
    tracing::info!(admin = admin.0.id, "instrument sync requested");
    Ok((
        StatusCode::ACCEPTED,
        Json(SyncRequested { requested: true }),
    ))
}

//! Extractors of authenticated routes and JSON bodies; every rejection is an [`ApiError`]
//! (problem+json), so handlers never see a missing token or a malformed body.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::Role;
use crate::api::error::ApiError;
use crate::state::AppState;

/// The caller, from a valid access token (`Authorization: Bearer …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthUser {
    pub id: i64,
    pub role: Role,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized("expected `Authorization: Bearer <token>`".into())
            })?;
        user_from_token(st, token)
    }
}

/// Verifies an access token (also used by the WebSocket `auth` command).
pub fn user_from_token(st: &AppState, token: &str) -> Result<AuthUser, ApiError> {
    let claims = st
        .tokens
        .verify(token)
        .map_err(|_| ApiError::Unauthorized("invalid or expired token".into()))?;
    let id = claims
        .user_id()
        .ok_or_else(|| ApiError::Unauthorized("invalid token subject".into()))?;
    Ok(AuthUser {
        id,
        role: claims.role,
    })
}

/// An authenticated admin (403 for anyone else).
#[derive(Debug, Clone, Copy)]
pub struct AdminUser(pub AuthUser);

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let u = AuthUser::from_request_parts(parts, st).await?;
        if u.role != Role::Admin {
            return Err(ApiError::Forbidden("admin role required".into()));
        }
        Ok(AdminUser(u))
    }
}

/// `Json<T>` whose rejections name the offending field: a body that is not JSON is a 400 (a
/// missing or other content type a 415, one over `node.limits.max_body_bytes` a 413), a JSON
/// body with a missing, unknown or mistyped field a 422.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|axum::Json(t)| JsonBody(t))
            .map_err(json_problem)
    }
}

impl<T: DeserializeOwned> JsonBody<T> {
    /// A body already read: the decoding and the errors of [`FromRequest`] (axum's extractor
    /// checks the content type and reads the body, then decodes it with the same
    /// `Json::from_bytes`). Public for the query fuzz target (`fuzz/fuzz_targets/api_query.rs`).
    pub fn from_bytes(body: &[u8]) -> Result<Self, ApiError> {
        axum::Json::<T>::from_bytes(body)
            .map(|axum::Json(t)| JsonBody(t))
            .map_err(json_problem)
    }
}

fn json_problem(e: JsonRejection) -> ApiError {
    match e {
        JsonRejection::JsonDataError(e) => {
            let text = e.body_text();
            ApiError::field(&field_of(&text), text)
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
            "expected a JSON body with `Content-Type: application/json`".into(),
        ),
        // The body limit (`DefaultBodyLimit`, set from `node.limits.max_body_bytes`).
        e if e.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(
            "the request body is larger than this server accepts (node.limits.max_body_bytes)"
                .into(),
        ),
        e => ApiError::param("body", e.body_text()),
    }
}

/// The field a serde message is about: "missing field `email`", "unknown field `x`", or the
/// path serde_path_to_error puts first ("threshold: invalid ...").
fn field_of(text: &str) -> String {
    if let Some(f) = text
        .split("field `")
        .nth(1)
        .and_then(|s| s.split('`').next())
    {
        return f.to_string();
    }
    text.split(": ")
        .nth(1)
        .and_then(|s| s.split(':').next())
        .filter(|p| !p.contains(' ') && !p.is_empty())
        .unwrap_or("body")
        .to_string()
}

/// Fixed-window counters of this node, for when Redis (the cluster-wide counters) is down.
#[derive(Debug, Default)]
pub struct LocalLimits {
    counts: Mutex<HashMap<String, i64>>,
}

impl LocalLimits {
    /// Counts one hit on `key` (a key names its window, so old windows are just left behind
    /// and cleared when the map grows).
    pub fn hit(&self, key: &str) -> i64 {
        let mut m = self.counts.lock().unwrap();
        if m.len() > 100_000 {
            m.clear();
        }
        let c = m.entry(key.to_string()).or_insert(0);
        *c += 1;
        *c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_name_the_field() {
        assert_eq!(
            field_of(
                "Failed to deserialize the JSON body into the target type: missing field `email` at line 1 column 2"
            ),
            "email"
        );
        assert_eq!(
            field_of(
                "Failed to deserialize the JSON body into the target type: unknown field `x`, expected one of"
            ),
            "x"
        );
        assert_eq!(
            field_of(
                "Failed to deserialize the JSON body into the target type: threshold: invalid decimal at line 1"
            ),
            "threshold"
        );
        assert_eq!(field_of("nothing useful"), "body");
        let l = LocalLimits::default();
        assert_eq!((l.hit("a"), l.hit("a"), l.hit("b")), (1, 2, 1));
    }
}

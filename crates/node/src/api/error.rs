//! The one error type of the HTTP API. Handlers return `Result<_, ApiError>` and use `?` on
//! database, Redis and domain errors; [`ApiError`] picks the status and renders RFC 9457
//! problem+json ([`Problem`]). A 5xx is logged exactly once, here, with its cause chain, and its
//! body says nothing about the cause.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pricefeed_runtime::problem::Problem;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 404, with a stable type (`unknown-instrument`, `not-found`, …).
    #[error("{detail}")]
    NotFound { kind: &'static str, detail: String },
    /// 400: a malformed query or path parameter, named.
    #[error("{param}: {detail}")]
    InvalidParam { param: String, detail: String },
    /// 422: a well-formed body with an invalid field, named.
    #[error("{field}: {detail}")]
    InvalidField { field: String, detail: String },
    /// 401: no credentials, or credentials that do not verify.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated, not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 409.
    #[error("{0}")]
    Conflict(String),
    /// 413: a body over the configured limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: a body that is not declared as JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 429, with the seconds to wait when known.
    #[error("{detail}")]
    TooManyRequests {
        detail: String,
        retry_after: Option<Duration>,
    },
    /// 503: a dependency is down; the request may succeed later.
    #[error("{what} unavailable")]
    Unavailable {
        what: &'static str,
        #[source]
        source: anyhow::Error,
    },
    /// 500.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn param(param: &str, detail: impl Into<String>) -> Self {
        Self::InvalidParam {
            param: param.into(),
            detail: detail.into(),
        }
    }

    pub fn field(field: &str, detail: impl Into<String>) -> Self {
        Self::InvalidField {
            field: field.into(),
            detail: detail.into(),
        }
    }

    pub fn not_found(kind: &'static str, detail: impl Into<String>) -> Self {
        Self::NotFound {
            kind,
            detail: detail.into(),
        }
    }

    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        Self::Internal(e.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::InvalidParam { .. } => StatusCode::BAD_REQUEST,
            Self::InvalidField { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn problem(&self) -> Problem {
        let s = self.status();
        match self {
            Self::NotFound { kind, detail } => Problem::new(s, kind, detail.clone()),
            Self::InvalidParam { param, detail } => {
                let mut p = Problem::new(s, "invalid-parameter", detail.clone());
                p.param = Some(param.clone());
                p
            }
            Self::InvalidField { field, detail } => {
                // The detail names the field too, for clients that show only the detail.
                let detail = if detail.contains(field.as_str()) {
                    detail.clone()
                } else {
                    format!("{field}: {detail}")
                };
                let mut p = Problem::new(s, "invalid-field", detail);
                p.param = Some(field.clone());
                p
            }
            Self::Unauthorized(d) => Problem::new(s, "unauthorized", d.clone()),
            Self::Forbidden(d) => Problem::new(s, "forbidden", d.clone()),
            Self::Conflict(d) => Problem::new(s, "conflict", d.clone()),
            Self::PayloadTooLarge(d) => Problem::new(s, "payload-too-large", d.clone()),
            Self::UnsupportedMediaType(d) => Problem::new(s, "unsupported-media-type", d.clone()),
            Self::TooManyRequests { detail, .. } => {
                Problem::new(s, "too-many-requests", detail.clone())
            }
            Self::Unavailable { what, .. } => {
                Problem::new(s, "unavailable", format!("{what} unavailable"))
            }
            Self::Internal(_) => Problem::new(
                s,
                "internal",
                "an internal error occurred; it has been logged",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(e) => {
                tracing::error!(error.message = %e, error.cause_chain = ?e, "request failed");
            }
            Self::Unavailable { what, source } => {
                tracing::warn!(dependency = what, error.cause_chain = ?source, "request failed: dependency unavailable");
            }
            _ => {}
        }
        let retry = match &self {
            Self::TooManyRequests {
                retry_after: Some(d),
                ..
            } => Some(d.as_secs().max(1)),
            Self::Unavailable { .. } => Some(1),
            _ => None,
        };
        let mut res = self.problem().into_response();
        if let Some(s) = retry
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        res
    }
}

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        let detail = p.detail.clone();
        match p.status {
            400 => Self::param(p.param.as_deref().unwrap_or("query"), detail),
            404 => Self::not_found("not-found", detail),
            503 => Self::Unavailable {
                what: "dependency",
                source: anyhow::anyhow!(detail),
            },
            _ => Self::Internal(anyhow::anyhow!(detail)),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                Self::Unavailable {
                    what: "postgres",
                    source: e.into(),
                }
            }
            e => Self::Internal(e.into()),
        }
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> Self {
        Self::Unavailable {
            what: "redis",
            source: e.into(),
        }
    }
}

impl From<crate::live_cache::ReadError> for ApiError {
    fn from(e: crate::live_cache::ReadError) -> Self {
        Self::Unavailable {
            what: "redis",
            source: e.into(),
        }
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

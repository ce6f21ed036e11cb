//! RFC 9457 problem details (`application/problem+json`), the only error shape HTTP clients see.
//!
//! Internal error text never reaches a client: 5xx problems carry a generic detail and the
//! cause is logged inside the request span instead.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A problem document. `type` is a stable URI-ish tag clients can switch on.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The offending parameter or field, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("https://pricefeed.dev/problems/{kind}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            param: None,
        }
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    pub fn bad_request(param: &str, detail: impl Into<String>) -> Self {
        let mut p = Self::new(StatusCode::BAD_REQUEST, "invalid-parameter", detail);
        p.param = Some(param.to_string());
        p
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }

    /// Logs `err` and returns a 500 that says nothing about it.
    pub fn internal(err: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred; it has been logged",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response()
    }
}

/// Fallback for unknown routes, so even a 404 is problem+json.
pub async fn not_found_fallback(uri: axum::http::Uri) -> Problem {
    Problem::not_found(format!("no route for {}", uri.path()))
}

//! The shared HTTP stack: request ids, request spans, RED metrics, timeouts, and a server loop
//! that drains in-flight requests on shutdown.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::shutdown::Shutdown;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps `router` with the common layers. The outermost layer assigns the request id so the
/// span and every log line inside it carry it.
pub fn with_common_layers(router: Router, request_timeout: Duration) -> Router {
    router
        .layer(middleware::from_fn(record_metrics))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let request_id = req
                .headers()
                .get(&REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!(
                "http",
                method = %req.method(),
                path = %req.uri().path(),
                request_id = %request_id,
            )
        }))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

async fn record_metrics(req: Request, next: Next) -> Response {
    let start = Instant::now();
    // The matched route template, not the raw path, keeps label cardinality bounded.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("http_request_duration_seconds", "method" => method, "route" => route)
        .record(start.elapsed().as_secs_f64());
    res
}

/// Binds `addr`; returns the listener and the actual address (port 0 resolves here).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind {addr}: {e}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves `router` on `listener` as a tracked task until shutdown, then drains.
pub fn spawn_server(listener: tokio::net::TcpListener, router: Router, shutdown: &Shutdown) {
    let token = shutdown.token();
    let trigger = shutdown.clone();
    shutdown.tracker().spawn(async move {
        let res = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(token.cancelled_owned())
        .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "http server failed");
            trigger.trigger();
        }
    });
}

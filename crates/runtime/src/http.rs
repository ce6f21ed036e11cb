//! The shared HTTP stack: request ids, request spans, RED metrics, timeouts, and a server loop
//! that drains in-flight requests on shutdown.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;

use crate::shutdown::Shutdown;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Which of the common layers to apply ([`with_layers`]); [`Layers::ALL`] is what every binary
/// serves with. The others exist so `pricefeed-bench http-stack` can price each layer alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layers {
    pub request_id: bool,
    pub trace: bool,
    pub timeout: bool,
    pub metrics: bool,
}

impl Layers {
    pub const ALL: Self = Self {
        request_id: true,
        trace: true,
        timeout: true,
        metrics: true,
    };
    pub const NONE: Self = Self {
        request_id: false,
        trace: false,
        timeout: false,
        metrics: false,
    };
}

/// Wraps `router` with the common layers. The outermost layer assigns the request id so the
/// span and every log line inside it carry it.
pub fn with_common_layers(router: Router, request_timeout: Duration) -> Router {
    with_layers(router, request_timeout, Layers::ALL)
}

/// [`with_common_layers`] with a choice of layers: innermost a panic guard (always), the timeout, then [`Observe`]
/// (span and RED metrics; outside the timeout, so a request it cuts is counted as a 408), then
/// the request id (outermost, so the span carries it). axum applies `layer` per route, which is
/// why [`Observe`] sees the matched route template.
pub fn with_layers(mut router: Router, request_timeout: Duration, l: Layers) -> Router {
    // A handler that panics answers a logged 500 problem instead of dropping the connection.
    router = router.layer(tower_http::catch_panic::CatchPanicLayer::custom(
        |panic: Box<dyn std::any::Any + Send>| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_string());
            axum::response::IntoResponse::into_response(crate::problem::Problem::internal(
                &format!("handler panicked: {what}"),
            ))
        },
    ));
    if l.timeout {
        router = router.layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ));
    }
    if l.trace || l.metrics {
        router = router.layer(ObserveLayer {
            span: l.trace,
            metrics: l.metrics,
        });
    }
    if l.request_id {
        router = router
            .layer(PropagateRequestIdLayer::new(REQUEST_ID))
            .layer(SetRequestIdLayer::new(REQUEST_ID, SeqRequestId));
    }
    router
}

/// The span (`http`, with method, path and request id, entered while the request's future runs
/// so every log line inside carries them) and the RED metrics (`http_requests_total`,
/// `http_request_duration_seconds` by method and route template) of every request, in one
/// future wrapper. It replaced tower-http's `TraceLayer` plus a `from_fn` middleware: one
/// wrapper instead of two, no boxed future and no response-body wrapper per request
/// (`pricefeed-bench http-stack`). Failures are logged where they happen (`ApiError` logs every
/// 5xx with its cause chain); the status and latency of each response are a `debug` event.
#[derive(Debug, Clone, Copy)]
pub struct ObserveLayer {
    span: bool,
    metrics: bool,
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner, cfg: *self }
    }
}

/// See [`ObserveLayer`].
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    cfg: ObserveLayer,
}

impl<S> tower::Service<Request> for Observe<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The matched route template, not the raw path, keeps label cardinality bounded; labels
        // are `&'static str` so recording allocates nothing per request.
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", |p| intern(p.as_str()));
        let method = method_label(req.method());
        let span = if self.cfg.span {
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
        } else {
            tracing::Span::none()
        };
        let fut = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        ObserveFuture {
            fut,
            span,
            start: Instant::now(),
            method,
            route,
            metrics: self.cfg.metrics,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Observe`].
    pub struct ObserveFuture<F> {
        #[pin]
        fut: F,
        span: tracing::Span,
        start: Instant,
        method: &'static str,
        route: &'static str,
        metrics: bool,
    }
}

impl<F, E> std::future::Future for ObserveFuture<F>
where
    F: std::future::Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let out = std::task::ready!(this.fut.poll(cx));
        if let Ok(res) = &out {
            let status = status_label(res.status());
            let elapsed = this.start.elapsed();
            if *this.metrics {
                let (method, route) = (*this.method, *this.route);
                metrics::counter!("http_requests_total", "method" => method, "route" => route, "status" => status).increment(1);
                metrics::histogram!("http_request_duration_seconds", "method" => method, "route" => route)
                    .record(elapsed.as_secs_f64());
            }
            tracing::debug!(status, latency_ms = elapsed.as_secs_f64() * 1e3, "response");
        }
        std::task::Poll::Ready(out)
    }
}

/// Request ids of the form `3f9a1c2e-00000000001b`: a random prefix drawn once per process and
/// a counter. Unique across the cluster in practice (a prefix collision between two processes
/// would also need the same counter value), ordered within a process, and without the random
/// draw per request a UUID v4 costs (`pricefeed-bench http-stack`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SeqRequestId;

impl MakeRequestId for SeqRequestId {
    fn make_request_id<B>(&mut self, _req: &axum::http::Request<B>) -> Option<RequestId> {
        static PREFIX: OnceLock<u32> = OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let p = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u128() as u32);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{p:08x}-{n:012x}"))
            .ok()
            .map(RequestId::new)
    }
}

/// Route templates as `'static` strings. The set is bounded by the router's routes, so leaking
/// each once is the cheapest correct interning.
fn intern(route: &str) -> &'static str {
    static ROUTES: std::sync::RwLock<Vec<&'static str>> = std::sync::RwLock::new(Vec::new());
    if let Some(r) = ROUTES
        .read()
        .expect("routes lock")
        .iter()
        .find(|r| **r == route)
    {
        return r;
    }
    let mut w = ROUTES.write().expect("routes lock");
    if let Some(r) = w.iter().find(|r| **r == route) {
        return r;
    }
    let leaked: &'static str = Box::leak(route.to_owned().into_boxed_str());
    w.push(leaked);
    leaked
}

fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn status_label(s: StatusCode) -> &'static str {
    const CODES: [(u16, &str); 20] = [
        (200, "200"),
        (201, "201"),
        (202, "202"),
        (204, "204"),
        (301, "301"),
        (302, "302"),
        (304, "304"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (408, "408"),
        (409, "409"),
        (415, "415"),
        (422, "422"),
        (429, "429"),
        (500, "500"),
        (503, "503"),
        (504, "504"),
    ];
    CODES.iter().find(|(c, _)| *c == s.as_u16()).map_or(
        match s.as_u16() / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        },
        |(_, l)| l,
    )
}

/// Binds `addr`; returns the listener and the actual address (port 0 resolves here).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind {addr}: {e}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves `router` on `listener` as a tracked task until shutdown, then drains; with the
/// default [`crate::serve::ServerLimits`].
pub fn spawn_server(listener: tokio::net::TcpListener, router: Router, shutdown: &Shutdown) {
    spawn_server_with(
        listener,
        router,
        crate::serve::ServerLimits::default(),
        shutdown,
    );
}

/// [`spawn_server`] with the given connection limits (`HttpConfig::server_limits`).
pub fn spawn_server_with(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: crate::serve::ServerLimits,
    shutdown: &Shutdown,
) {
    let token = shutdown.token();
    shutdown
        .tracker()
        .spawn(crate::serve::serve(listener, router, limits, token));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_answers_a_500_problem_with_a_request_id() {
        let app = with_common_layers(
            Router::new().route(
                "/boom",
                axum::routing::get(|| async {
                    if true {
                        panic!("kaboom");
                    }
                    "never"
                }),
            ),
            Duration::from_secs(5),
        );
        let res = app
            .oneshot(
                axum::http::Request::get("/boom")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        assert!(res.headers().contains_key("x-request-id"));
    }

    #[test]
    fn request_ids_are_distinct_and_share_the_process_prefix() {
        let req = axum::http::Request::new(());
        let mut m = SeqRequestId;
        let a = m.make_request_id(&req).unwrap();
        let b = m.make_request_id(&req).unwrap();
        let (a, b) = (
            a.header_value().to_str().unwrap().to_string(),
            b.header_value().to_str().unwrap().to_string(),
        );
        assert_ne!(a, b);
        assert_eq!(a.len(), 21, "{a}");
        assert_eq!(a[..9], b[..9]);
    }

    #[test]
    fn labels_are_static_and_bounded() {
        assert_eq!(status_label(StatusCode::OK), "200");
        assert_eq!(status_label(StatusCode::IM_A_TEAPOT), "4xx");
        assert_eq!(status_label(StatusCode::BAD_GATEWAY), "5xx");
        assert_eq!(method_label(&axum::http::Method::GET), "GET");
        let a = intern("/api/v1/prices/{symbol}");
        let b = intern(&String::from("/api/v1/prices/{symbol}"));
        assert!(std::ptr::eq(a, b), "one leaked string per route");
    }
}

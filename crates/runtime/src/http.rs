//! The shared HTTP stack: request ids, request spans, RED metrics, timeouts, and a server loop
//! that drains in-flight requests on shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use tower_http::request_id::{MakeRequestId, RequestId};

use crate::shutdown::Shutdown;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Which parts of the common stack to apply ([`with_layers`]); [`Layers::ALL`] is what every
/// binary serves with. The others exist so `pricefeed-bench http-stack` can price each part
/// alone.
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

/// Wraps `router` with the common stack ([`Observe`]): request id, span, RED metrics, timeout
/// and a panic guard.
pub fn with_common_layers(router: Router, request_timeout: Duration) -> Router {
    with_layers(router, request_timeout, Layers::ALL)
}

/// A synchronous admission check run inside [`Observe`] before the handler (rate limits): a
/// returned response is sent instead, counted in the RED metrics like any other. Part of the one
/// service rather than a `from_fn` layer of its own, which would box a future and clone a boxed
/// route per request (see [`with_layers`]).
pub trait Admit: Send + Sync + 'static {
    fn admit(&self, req: &mut Request) -> Option<Response>;
}

/// [`with_common_layers`] with `admit` checked before every handler.
pub fn with_common_layers_admitting(
    router: Router,
    request_timeout: Duration,
    admit: Arc<dyn Admit>,
) -> Router {
    observe(router, request_timeout, Layers::ALL, Some(admit))
}

/// [`with_common_layers`] with a choice of parts (the panic guard is always on).
///
/// All parts live in the one [`Observe`] service on purpose: axum applies each `layer` call to
/// every route separately and boxes the result, and a boxed route is cloned (recursively, box
/// by box) for every request, so five `layer` calls cost ~20 allocations per request before any
/// middleware runs (`pricefeed-bench prices`, docs/benchmarks.md). Applying it per route is
/// also why [`Observe`] sees the matched route template.
pub fn with_layers(router: Router, request_timeout: Duration, l: Layers) -> Router {
    observe(router, request_timeout, l, None)
}

fn observe(
    router: Router,
    request_timeout: Duration,
    parts: Layers,
    admit: Option<Arc<dyn Admit>>,
) -> Router {
    if parts.metrics {
        // The metric handles are resolved once and kept (`RouteMetrics`): one resolved before
        // the recorder exists would stay a no-op for good.
        crate::telemetry::metrics_handle();
    }
    router.layer(ObserveLayer {
        parts,
        timeout: request_timeout,
        admit,
    })
}

/// Layer of [`Observe`].
#[derive(Clone)]
pub struct ObserveLayer {
    parts: Layers,
    timeout: Duration,
    admit: Option<Arc<dyn Admit>>,
}

impl std::fmt::Debug for ObserveLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObserveLayer")
            .field("parts", &self.parts)
            .field("timeout", &self.timeout)
            .field("admit", &self.admit.is_some())
            .finish()
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            cfg: self.clone(),
        }
    }
}

/// The shared HTTP stack as one service, in the order the separate layers had (outermost
/// first):
///
/// - **request id**: the client's `x-request-id` if it sent one, else a new [`SeqRequestId`];
///   echoed on the response;
/// - **span** `http` (info) with method, path and request id, entered while the request's future
///   runs, so every log line inside carries them;
/// - **RED metrics** `http_requests_total{method,route,status}` and
///   `http_request_duration_seconds{method,route}`, by route template; a request the timeout
///   cuts counts as a 408, a panic as a 500;
/// - **timeout**: `408` with an empty body after the configured time. The timer is armed only
///   when the handler does not finish on its first poll, so the common in-memory request never
///   touches the timer wheel;
/// - **panic guard**: a handler that panics answers a logged 500 problem instead of dropping
///   the connection.
///
/// Failures are logged where they happen (`ApiError` logs every 5xx with its cause chain); the
/// status and latency of each response are a `debug` event.
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

    fn call(&mut self, mut req: Request) -> Self::Future {
        let start = Instant::now();
        let parts = self.cfg.parts;
        let request_id = if parts.request_id {
            Some(match req.headers().get(&REQUEST_ID) {
                Some(v) => v.clone(),
                None => SeqRequestId::next(),
            })
        } else {
            None
        };
        let span = if parts.trace {
            let id = request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!(
                "http",
                method = %req.method(),
                path = %req.uri().path(),
                request_id = %id,
            )
        } else {
            tracing::Span::none()
        };
        // Resolved now, while the request (and its matched route) is at hand; the handles are
        // per worker thread, so recording takes no lock and builds no key.
        let metrics = parts.metrics.then(|| {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", |p| p.as_str());
            RouteMetrics::of(method_label(req.method()), route)
        });
        let refused = match &self.cfg.admit {
            Some(a) => {
                let _entered = span.enter();
                a.admit(&mut req)
            }
            None => None,
        };
        let state = match refused {
            Some(res) => State::Done { res: Some(res) },
            None => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _entered = span.enter();
                self.inner.call(req)
            })) {
                Ok(fut) => State::Running { fut },
                Err(panic) => State::Done {
                    res: Some(panic_response(panic, &span)),
                },
            },
        };
        ObserveFuture {
            state,
            span,
            start,
            timeout: parts.timeout.then_some(self.cfg.timeout),
            sleep: None,
            request_id,
            metrics,
        }
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running { #[pin] fut: F },
        Done { res: Option<Response> },
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Observe`].
    pub struct ObserveFuture<F> {
        #[pin]
        state: State<F>,
        span: tracing::Span,
        start: Instant,
        timeout: Option<Duration>,
        // Armed on the first `Pending` only (see [`Observe`]).
        sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
        request_id: Option<HeaderValue>,
        metrics: Option<&'static RouteMetrics>,
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
        use std::task::Poll;
        let mut this = self.project();
        let _entered = this.span.enter();
        let polled = match this.state.as_mut().project() {
            StateProj::Done { res } => {
                Poll::Ready(Ok(res.take().expect("polled after completion")))
            }
            StateProj::Running { fut } => {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.poll(cx))) {
                    Ok(p) => p,
                    Err(panic) => Poll::Ready(Ok(panic_response(panic, this.span))),
                }
            }
        };
        let mut res = match polled {
            Poll::Ready(Ok(res)) => res,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(t) = *this.timeout else {
                    return Poll::Pending;
                };
                let deadline = tokio::time::Instant::from_std(*this.start + t);
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // Dropped here, inside the span, like the timeout layer did.
                this.state.set(State::Done { res: None });
                let mut r = Response::new(axum::body::Body::empty());
                *r.status_mut() = StatusCode::REQUEST_TIMEOUT;
                r
            }
        };
        if let Some(id) = this.request_id.take()
            && !res.headers().contains_key(&REQUEST_ID)
        {
            res.headers_mut().insert(REQUEST_ID, id);
        }
        let elapsed = this.start.elapsed();
        if let Some(m) = this.metrics {
            m.record(res.status(), elapsed);
        }
        tracing::debug!(
            status = status_label(res.status()),
            latency_ms = elapsed.as_secs_f64() * 1e3,
            "response"
        );
        Poll::Ready(Ok(res))
    }
}

/// The 500 problem of a panicking handler (logged by [`crate::problem::Problem::internal`]).
fn panic_response(panic: Box<dyn std::any::Any + Send>, span: &tracing::Span) -> Response {
    let _entered = span.enter();
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_string());
    axum::response::IntoResponse::into_response(crate::problem::Problem::internal(&format!(
        "handler panicked: {what}"
    )))
}

/// The RED metric handles of one (method, route template): resolved once per process (leaked,
/// like [`intern`], so bounded by the router's routes) and found through a per-thread map, so a
/// request takes no lock and builds no key. The `metrics` macros would build a labelled key,
/// allocate, hash it and look it up in the recorder's locked registry twice per request
/// (`pricefeed-bench prices`).
#[derive(Debug)]
struct RouteMetrics {
    method: &'static str,
    route: &'static str,
    duration: metrics::Histogram,
    /// `http_requests_total` by [`status_index`], resolved on first use.
    requests: [OnceLock<metrics::Counter>; STATUS_LABELS.len()],
}

thread_local! {
    static ROUTE_METRICS: std::cell::RefCell<
        std::collections::HashMap<Box<str>, Vec<&'static RouteMetrics>, foldhash::fast::RandomState>,
    > = std::cell::RefCell::default();
}

impl RouteMetrics {
    fn of(method: &'static str, route: &str) -> &'static Self {
        ROUTE_METRICS.with_borrow_mut(|local| {
            if let Some(m) = local
                .get(route)
                .and_then(|v| v.iter().find(|m| m.method == method))
            {
                return *m;
            }
            let m = Self::global(method, route);
            local.entry(route.into()).or_default().push(m);
            m
        })
    }

    /// The process-wide entry of (method, route), created on its first request in any thread.
    fn global(method: &'static str, route: &str) -> &'static Self {
        static ALL: std::sync::Mutex<Vec<&'static RouteMetrics>> =
            std::sync::Mutex::new(Vec::new());
        let mut all = ALL.lock().expect("route metrics lock");
        if let Some(m) = all.iter().find(|m| m.method == method && m.route == route) {
            return m;
        }
        let route = intern(route);
        let m: &'static Self = Box::leak(Box::new(Self {
            method,
            route,
            duration: metrics::histogram!("http_request_duration_seconds", "method" => method, "route" => route),
            requests: Default::default(),
        }));
        all.push(m);
        m
    }

    fn record(&self, status: StatusCode, elapsed: Duration) {
        let i = status_index(status);
        self.requests[i]
            .get_or_init(|| {
                let (method, route, status) = (self.method, self.route, STATUS_LABELS[i]);
                metrics::counter!("http_requests_total", "method" => method, "route" => route, "status" => status)
            })
            .increment(1);
        self.duration.record(elapsed.as_secs_f64());
    }
}

/// Request ids of the form `3f9a1c2e-00000000001b`: a random prefix drawn once per process and
/// a counter. Unique across the cluster in practice (a prefix collision between two processes
/// would also need the same counter value), ordered within a process, and without the random
/// draw per request a UUID v4 costs (`pricefeed-bench http-stack`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SeqRequestId;

impl SeqRequestId {
    /// The next id, formatted on the stack (one allocation: the header value's own).
    pub fn next() -> HeaderValue {
        static PREFIX: OnceLock<u32> = OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let p = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u128() as u32);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [b'-'; 21];
        for (i, b) in buf[..8].iter_mut().enumerate() {
            *b = HEX[((p >> (28 - 4 * i)) & 0xf) as usize];
        }
        for (i, b) in buf[9..].iter_mut().enumerate() {
            *b = HEX[((n >> (44 - 4 * i)) & 0xf) as usize];
        }
        HeaderValue::from_bytes(&buf).expect("hex and '-' are valid header bytes")
    }
}

impl MakeRequestId for SeqRequestId {
    fn make_request_id<B>(&mut self, _req: &axum::http::Request<B>) -> Option<RequestId> {
        Some(RequestId::new(Self::next()))
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

/// Status labels: the codes the API answers with, then a class for any other code.
const STATUS_LABELS: [&str; 25] = [
    "200", "201", "202", "204", "301", "302", "304", "400", "401", "403", "404", "405", "408",
    "409", "415", "422", "429", "500", "503", "504", "1xx", "2xx", "3xx", "4xx", "5xx",
];

const STATUS_CODES: [u16; 20] = [
    200, 201, 202, 204, 301, 302, 304, 400, 401, 403, 404, 405, 408, 409, 415, 422, 429, 500, 503,
    504,
];

fn status_index(s: StatusCode) -> usize {
    let code = s.as_u16();
    STATUS_CODES
        .iter()
        .position(|c| *c == code)
        .unwrap_or(match code / 100 {
            1 => 20,
            2 => 21,
            3 => 22,
            4 => 23,
            _ => 24,
        })
}

fn status_label(s: StatusCode) -> &'static str {
    STATUS_LABELS[status_index(s)]
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

    /// Records, per `http` span, its `request_id` field, and for every event inside a span the
    /// request id of the enclosing `http` span: what a log line of a handler would carry.
    #[derive(Clone, Default)]
    struct Captured {
        spans: Arc<Mutex<Vec<String>>>,
        events: Arc<Mutex<Vec<(String, String)>>>,
    }

    struct Id(String);

    #[derive(Default)]
    struct Fields {
        request_id: Option<String>,
        message: Option<String>,
    }

    impl tracing::field::Visit for Fields {
        fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
            match f.name() {
                "request_id" => self.request_id = Some(format!("{v:?}")),
                "message" => self.message = Some(format!("{v:?}")),
                _ => {}
            }
        }
    }

    impl<S> tracing_subscriber::Layer<S> for Captured
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            id: &tracing::span::Id,
            ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            if attrs.metadata().name() != "http" {
                return;
            }
            let mut f = Fields::default();
            attrs.record(&mut f);
            let rid = f.request_id.unwrap_or_default();
            self.spans.lock().unwrap().push(rid.clone());
            ctx.span(id).unwrap().extensions_mut().insert(Id(rid));
        }

        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let Some(span) = ctx.event_span(event) else {
                return;
            };
            let rid = span
                .scope()
                .find_map(|s| s.extensions().get::<Id>().map(|i| i.0.clone()))
                .unwrap_or_default();
            let mut f = Fields::default();
            event.record(&mut f);
            self.events
                .lock()
                .unwrap()
                .push((f.message.unwrap_or_default(), rid));
        }
    }

    /// Runs `f` on a fresh current-thread runtime with [`Captured`] as the thread's subscriber.
    fn traced<F: std::future::Future>(f: F) -> (F::Output, Captured) {
        use tracing_subscriber::layer::SubscriberExt;
        let cap = Captured::default();
        let sub = tracing_subscriber::registry().with(cap.clone());
        let out = tracing::subscriber::with_default(sub, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f)
        });
        (out, cap)
    }

    use std::sync::{Arc, Mutex};

    /// A route that yields once (so the handler is pending at least one poll, the path that
    /// arms the timer) and logs from inside.
    async fn yielding() -> &'static str {
        tokio::task::yield_now().await;
        tracing::info!("inside the handler");
        "ok"
    }

    fn get(uri: &str, id: Option<&str>) -> axum::http::Request<axum::body::Body> {
        let mut b = axum::http::Request::get(uri);
        if let Some(id) = id {
            b = b.header("x-request-id", id);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn a_client_request_id_is_echoed_and_carried_by_the_span_and_the_handlers_logs() {
        let app = with_common_layers(
            Router::new().route("/y", axum::routing::get(yielding)),
            Duration::from_secs(5),
        );
        let (res, cap) = traced(app.oneshot(get("/y", Some("client-id-42"))));
        let res = res.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["x-request-id"], "client-id-42");
        assert_eq!(*cap.spans.lock().unwrap(), ["client-id-42"]);
        assert!(
            cap.events
                .lock()
                .unwrap()
                .contains(&("inside the handler".into(), "client-id-42".into())),
            "{:?}",
            cap.events.lock().unwrap()
        );
    }

    #[test]
    fn a_request_without_an_id_gets_a_fresh_one_in_the_response_and_the_span() {
        let app = with_common_layers(
            Router::new().route("/y", axum::routing::get(yielding)),
            Duration::from_secs(5),
        );
        let (ids, cap) = traced(async move {
            let mut ids = Vec::new();
            for _ in 0..2 {
                let res = app.clone().oneshot(get("/y", None)).await.unwrap();
                ids.push(res.headers()["x-request-id"].to_str().unwrap().to_string());
            }
            ids
        });
        assert_ne!(ids[0], ids[1]);
        assert_eq!(ids[0].len(), 21, "{}", ids[0]);
        assert_eq!(*cap.spans.lock().unwrap(), ids);
        let events = cap.events.lock().unwrap();
        for id in &ids {
            assert!(
                events.contains(&("inside the handler".into(), id.clone())),
                "{events:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_handler_slower_than_the_timeout_answers_408_with_the_request_id() {
        let app = with_common_layers(
            Router::new()
                .route("/stuck", axum::routing::get(std::future::pending::<&str>))
                .route("/y", axum::routing::get(yielding)),
            Duration::from_millis(50),
        );
        let res = app
            .clone()
            .oneshot(get("/stuck", Some("t-1")))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(res.headers()["x-request-id"], "t-1");
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        assert!(body.is_empty());
        // Pending for a poll but done in time: the armed timer does not fire.
        let res = app.oneshot(get("/y", None)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn with_the_timeout_off_a_slow_handler_is_not_cut() {
        let app = with_layers(
            Router::new().route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    "late"
                }),
            ),
            Duration::from_millis(10),
            Layers {
                timeout: false,
                ..Layers::ALL
            },
        );
        let res = app.oneshot(get("/slow", None)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_handler_panicking_after_a_pending_poll_answers_a_500_problem() {
        let app = with_common_layers(
            Router::new().route(
                "/late-boom",
                axum::routing::get(|| async {
                    tokio::task::yield_now().await;
                    if true {
                        panic!("late kaboom");
                    }
                    "never"
                }),
            ),
            Duration::from_secs(5),
        );
        let res = app.oneshot(get("/late-boom", Some("p-1"))).await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        assert_eq!(res.headers()["x-request-id"], "p-1");
    }

    #[tokio::test]
    async fn a_service_panicking_in_call_answers_a_500_problem() {
        // A handler panics inside its future; a service can panic in `call` itself.
        let svc = tower::service_fn(
            |_req: Request| -> std::future::Ready<Result<Response, std::convert::Infallible>> {
                panic!("panic in call")
            },
        );
        let app = with_common_layers(
            Router::new().route_service("/svc", svc),
            Duration::from_secs(5),
        );
        let res = app.oneshot(get("/svc", None)).await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        assert!(res.headers().contains_key("x-request-id"));
    }

    #[tokio::test]
    async fn red_metrics_are_labelled_by_method_route_template_and_status() {
        let prom = crate::telemetry::metrics_handle();
        let app = with_common_layers(
            Router::new()
                .route(
                    "/red-test/{id}",
                    axum::routing::get(yielding).post(|| async { StatusCode::CREATED }),
                )
                .route(
                    "/red-test/{id}/stuck",
                    axum::routing::get(std::future::pending::<&str>),
                )
                .route(
                    "/red-test/{id}/boom",
                    axum::routing::get(|| async {
                        if true {
                            panic!("boom");
                        }
                        "never"
                    }),
                ),
            Duration::from_millis(50),
        );
        for uri in [
            "/red-test/a",
            "/red-test/b",
            "/red-test/c/stuck",
            "/red-test/d/boom",
            "/red-test-nowhere",
        ] {
            app.clone().oneshot(get(uri, None)).await.unwrap();
        }
        let post = axum::http::Request::post("/red-test/e")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(
            app.oneshot(post).await.unwrap().status(),
            StatusCode::CREATED
        );
        let text = prom.render();
        for line in [
            r#"http_requests_total{method="GET",route="/red-test/{id}",status="200"} 2"#,
            r#"http_requests_total{method="POST",route="/red-test/{id}",status="201"} 1"#,
            r#"http_requests_total{method="GET",route="/red-test/{id}/stuck",status="408"} 1"#,
            r#"http_requests_total{method="GET",route="/red-test/{id}/boom",status="500"} 1"#,
            r#"http_request_duration_seconds_count{method="GET",route="/red-test/{id}"} 2"#,
            r#"http_request_duration_seconds_count{method="GET",route="/red-test/{id}/stuck"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line} in:\n{text}"
            );
        }
        // Unknown paths share one label instead of one series per raw path.
        assert!(!text.contains("red-test-nowhere"), "{text}");
        assert!(
            text.lines().any(|l| l.starts_with(
                r#"http_requests_total{method="GET",route="unmatched",status="404"}"#
            )),
            "{text}"
        );
    }

    #[test]
    fn route_metric_handles_are_shared_per_method_and_route() {
        let a = RouteMetrics::of("GET", "/shared/{x}");
        let b = RouteMetrics::of("GET", &String::from("/shared/{x}"));
        let c = RouteMetrics::of("POST", "/shared/{x}");
        assert!(std::ptr::eq(a, b));
        assert!(!std::ptr::eq(a, c));
        // Another thread resolves to the same process-wide entry.
        let d = std::thread::spawn(|| {
            RouteMetrics::of("GET", "/shared/{x}") as *const RouteMetrics as usize
        })
        .join()
        .unwrap();
        assert_eq!(d, a as *const RouteMetrics as usize);
        assert_eq!(status_index(StatusCode::REQUEST_TIMEOUT), 12);
        assert_eq!(
            STATUS_LABELS[status_index(StatusCode::REQUEST_TIMEOUT)],
            "408"
        );
        assert_eq!(STATUS_LABELS[status_index(StatusCode::IM_A_TEAPOT)], "4xx");
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

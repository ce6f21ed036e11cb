//! Operational endpoints present on every HTTP binary.
//!
//! - `GET /livez`: the process answers; never checks dependencies, so a database outage does not
//!   turn into a restart storm.
//! - `GET /readyz`: every registered check passes (Postgres, Redis, feeds…) and the process is not
//!   draining; 503 naming the failing checks otherwise.
//! - `GET /metrics`: Prometheus text exposition.
//!
//! Readiness is kept up to date in the background: one prober task runs every check every
//! [`PROBE_EVERY`] (each bounded by [`CHECK_TIMEOUT`]) and stores the outcomes, and `/readyz`
//! only reads them. A probe therefore answers at once even while a dependency hangs, and says
//! which one: a check with no outcome yet is `pending`, and an outcome older than
//! [`STALE_AFTER`] (the prober itself stuck) counts as failed.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::sync::Notify;

use crate::shutdown::Shutdown;

/// Every check runs this often.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// A check that has not answered within this counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(1_000);
/// An outcome older than this is not trusted.
pub const STALE_AFTER: Duration = Duration::from_millis(3_000);

/// A check answers `Ok(detail)` (shown as the check's value, usually "ok") or `Err(reason)`.
type CheckFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>;

/// Outcome of a check and when it was taken.
type Outcome = (Result<String, String>, Instant);

/// The set of readiness checks of one process and their latest outcomes.
#[derive(Clone)]
pub struct Readiness {
    checks: Arc<RwLock<Vec<(String, CheckFn)>>>,
    outcomes: Arc<RwLock<BTreeMap<String, Outcome>>>,
    /// Wakes the prober early (a check was added).
    wake: Arc<Notify>,
    shutdown: Shutdown,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .checks
            .read()
            .map(|c| c.iter().map(|(n, _)| n.clone()).collect())
            .unwrap_or_default();
        f.debug_struct("Readiness").field("checks", &names).finish()
    }
}

/// Body of `/readyz`.
#[derive(Debug, Serialize)]
pub struct ReadyReport {
    pub status: &'static str,
    pub checks: BTreeMap<String, String>,
}

impl Readiness {
    /// A registry with no checks, and its prober running as a task of `shutdown` (so it must be
    /// called inside a Tokio runtime).
    pub fn new(shutdown: Shutdown) -> Self {
        let r = Self {
            checks: Arc::default(),
            outcomes: Arc::default(),
            wake: Arc::new(Notify::new()),
            shutdown,
        };
        let prober = r.clone();
        let token = r.shutdown.token();
        r.shutdown.tracker().spawn(async move {
            loop {
                prober.probe().await;
                tokio::select! {
                    () = token.cancelled() => break,
                    () = prober.wake.notified() => {}
                    () = tokio::time::sleep(PROBE_EVERY) => {}
                }
            }
        });
        r
    }

    /// Registers a named check (probed within [`CHECK_TIMEOUT`]).
    pub fn add<F, Fut>(&self, name: &str, f: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add_status(name, move || {
            let fut = f();
            async move { fut.await.map(|()| "ok".to_string()) }
        });
    }

    /// Registers a check that reports a status while passing (e.g. "leader term=7" or "standby"),
    /// for facts an operator wants on `/readyz` that do not make the process unready.
    pub fn add_status<F, Fut>(&self, name: &str, f: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        let f: CheckFn = Arc::new(move || Box::pin(f()));
        self.checks
            .write()
            .expect("readiness lock")
            .push((name.to_string(), f));
        self.wake.notify_one();
    }

    /// Runs every check once, concurrently, and stores the outcomes.
    async fn probe(&self) {
        let checks: Vec<(String, CheckFn)> = self.checks.read().expect("readiness lock").clone();
        let futs = checks.into_iter().map(|(name, f)| async move {
            let r = match tokio::time::timeout(CHECK_TIMEOUT, f()).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {} ms", CHECK_TIMEOUT.as_millis())),
            };
            (name, r)
        });
        let results = futures_util::future::join_all(futs).await;
        let at = Instant::now();
        let mut out = self.outcomes.write().expect("readiness lock");
        for (name, r) in results {
            out.insert(name, (r, at));
        }
    }

    /// The current verdict from the stored outcomes; never waits on a dependency.
    pub fn report(&self) -> (bool, ReadyReport) {
        let names: Vec<String> = self
            .checks
            .read()
            .expect("readiness lock")
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        let outcomes = self.outcomes.read().expect("readiness lock");
        let draining = self.shutdown.is_draining();
        let mut ok = !draining;
        let mut map = BTreeMap::new();
        if draining {
            map.insert("draining".to_string(), "shutting down".to_string());
        }
        for name in names {
            let r = match outcomes.get(&name) {
                None => Err("pending: not checked yet".to_string()),
                Some((_, at)) if at.elapsed() > STALE_AFTER => {
                    Err(format!("no outcome for {} ms", at.elapsed().as_millis()))
                }
                Some((r, _)) => r.clone(),
            };
            match r {
                Ok(detail) => {
                    map.insert(name, detail);
                }
                Err(e) => {
                    ok = false;
                    map.insert(name, e);
                }
            }
        }
        (
            ok,
            ReadyReport {
                status: if ok { "ready" } else { "not_ready" },
                checks: map,
            },
        )
    }
}

/// The three ops routes; merge into the binary's router.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(readiness)
}

async fn livez() -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(serde_json::json!({"status": "alive"})),
    )
}

async fn readyz(State(r): State<Readiness>) -> Response {
    let (ok, report) = r.report();
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(report),
    )
        .into_response()
}

async fn metrics() -> impl IntoResponse {
    crate::process::record();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::metrics_handle().render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get_status(app: &Router, path: &str) -> (StatusCode, String) {
        let res = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Polls `/readyz` until it answers `want` (the prober runs in the background).
    async fn until_status(app: &Router, want: StatusCode) -> String {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let (code, body) = get_status(app, "/readyz").await;
            if code == want {
                return body;
            }
            assert!(Instant::now() < until, "still {code}: {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn readyz_reflects_checks_and_draining() {
        let s = Shutdown::new();
        let r = Readiness::new(s.clone());
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let f2 = flag.clone();
        r.add("db", move || {
            let ok = f2.load(std::sync::atomic::Ordering::SeqCst);
            async move { if ok { Ok(()) } else { Err("down".into()) } }
        });
        let app = router(r);
        until_status(&app, StatusCode::OK).await;
        flag.store(false, std::sync::atomic::Ordering::SeqCst);
        let body = until_status(&app, StatusCode::SERVICE_UNAVAILABLE).await;
        assert!(body.contains("\"db\":\"down\""), "{body}");
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        until_status(&app, StatusCode::OK).await;
        s.trigger();
        let body = until_status(&app, StatusCode::SERVICE_UNAVAILABLE).await;
        assert!(body.contains("draining"), "{body}");
        // liveness never depends on checks
        assert_eq!(get_status(&app, "/livez").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_hung_dependency_is_named_without_holding_the_probe() {
        let r = Readiness::new(Shutdown::new());
        r.add("fast", || async { Ok(()) });
        r.add("hung", std::future::pending::<Result<(), String>>);
        let app = router(r);
        // Before the first probe has finished, the checks are pending, not waited for.
        let (code, body) = get_status(&app, "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        // Once probed, the hung check is named; `fast` is fine. Every probe returns at once.
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let (code, body) = get_status(&app, "/readyz").await;
            assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            if body.contains("no answer within") {
                assert!(body.contains("\"fast\":\"ok\""), "{body}");
                break;
            }
            assert!(Instant::now() < until, "{body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn metrics_render_prometheus_text() {
        let app = router(Readiness::new(Shutdown::new()));
        crate::telemetry::metrics_handle();
        metrics::counter!("pricefeed_test_total").increment(1);
        let (code, body) = get_status(&app, "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("pricefeed_test_total"), "{body}");
    }
}

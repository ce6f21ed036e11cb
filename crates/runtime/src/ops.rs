//! Operational endpoints present on every HTTP binary.
//!
//! - `GET /livez`: the process answers; never checks dependencies, so a database outage does not
//!   turn into a restart storm.
//! - `GET /readyz`: every registered check passes (Postgres, Redis, feeds…) and the process is not
//!   draining; 503 with the failing checks otherwise.
//! - `GET /metrics`: Prometheus text exposition.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::shutdown::Shutdown;

/// A check answers `Ok(detail)` (shown as the check's value, usually "ok") or `Err(reason)`.
type CheckFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>;

/// The set of readiness checks of one process.
#[derive(Clone)]
pub struct Readiness {
    checks: Arc<RwLock<Vec<(String, CheckFn)>>>,
    shutdown: Shutdown,
    timeout: Duration,
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
    pub fn new(shutdown: Shutdown) -> Self {
        Self {
            checks: Arc::default(),
            shutdown,
            timeout: Duration::from_secs(2),
        }
    }

    /// Registers a named check; it must answer within two seconds or counts as failed.
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
    }

    pub async fn report(&self) -> (bool, ReadyReport) {
        let checks: Vec<(String, CheckFn)> = self.checks.read().expect("readiness lock").clone();
        let futs = checks.into_iter().map(|(name, f)| {
            let t = self.timeout;
            async move {
                let r = match tokio::time::timeout(t, f()).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("timed out after {} ms", t.as_millis())),
                };
                (name, r)
            }
        });
        let results = futures_util::future::join_all(futs).await;
        let mut ok = !self.shutdown.is_draining();
        let mut map = BTreeMap::new();
        if self.shutdown.is_draining() {
            map.insert("draining".to_string(), "shutting down".to_string());
        }
        for (name, r) in results {
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
    let (ok, report) = r.report().await;
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
        assert_eq!(get_status(&app, "/readyz").await.0, StatusCode::OK);
        flag.store(false, std::sync::atomic::Ordering::SeqCst);
        let (code, body) = get_status(&app, "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("\"db\":\"down\""), "{body}");
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        s.trigger();
        let (code, body) = get_status(&app, "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("draining"), "{body}");
        // liveness never depends on checks
        assert_eq!(get_status(&app, "/livez").await.0, StatusCode::OK);
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

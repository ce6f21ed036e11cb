//! Logging and metrics setup.
//!
//! Logs go to stdout, human-readable by default or one JSON object per line when
//! `telemetry.log_format = "json"`; `RUST_LOG` overrides the configured level. Metrics use the
//! `metrics` facade with a Prometheus recorder rendered by our own `/metrics` route.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the global tracing subscriber. Safe to call more than once (later calls are no-ops),
/// which keeps tests that build several apps in one process simple.
pub fn init_tracing(cfg: &TelemetryConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log_level));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match cfg.log_format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Human => registry.with(fmt::layer().with_target(true)).try_init(),
    };
}

static PROM: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder once per process and returns its handle.
///
/// No background upkeep task is spawned by the exporter in this mode, so [`spawn_upkeep`]
/// must run for histograms to be drained.
pub fn metrics_handle() -> PrometheusHandle {
    PROM.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("install prometheus recorder")
    })
    .clone()
}

/// Periodic recorder upkeep, stopped by the shutdown token.
pub fn spawn_upkeep(shutdown: &crate::shutdown::Shutdown) {
    let handle = metrics_handle();
    let token = shutdown.token();
    shutdown.tracker().spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => handle.run_upkeep(),
                () = token.cancelled() => break,
            }
        }
    });
}

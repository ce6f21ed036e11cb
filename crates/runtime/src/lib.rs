//! Process plumbing shared by every pricefeed binary.
//!
//! - [`cli`]: the command-line flags and `main` lifecycle every binary shares.
//! - [`config`]: typed configuration from `config/default.toml`, an optional env file and
//!   `PRICEFEED__SECTION__KEY` overrides, validated with errors that name the key.
//! - [`config_reference`]: `docs/configuration.md`, rendered from the config types' schemas.
//! - [`telemetry`]: tracing subscriber (human or JSON) and the Prometheus recorder.
//! - [`metric_catalogue`]: every exported metric (name, type, labels, meaning); `docs/metrics.md`.
//! - [`ops`]: `/livez`, `/readyz`, `/metrics` and the readiness registry behind them.
//! - [`process`]: the process gauges (memory, descriptors, threads, CPU, tokio tasks) `/metrics`
//!   reports.
//! - [`shutdown`]: signal handling, cancellation and task tracking with a drain deadline.
//! - [`http`]: the common middleware stack (request ids, spans, metrics) and the server task.
//! - [`serve`]: the HTTP/1 accept loop (header-read timeout against slowloris, graceful drain).
//! - [`problem`]: RFC 9457 `application/problem+json` errors.
//! - [`tls`]: the process-wide rustls crypto provider for `https://`/`wss://` broker URLs.

pub mod cli;
pub mod config;
pub mod config_reference;
pub mod http;
pub mod metric_catalogue;
pub mod ops;
pub mod problem;
pub mod process;
pub mod secret;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

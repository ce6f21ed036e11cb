//! `http-stack`: what each layer of the shared HTTP stack (`pricefeed_runtime::http`) costs,
//! by elimination. One process serves the same handler as `bare-price-server` (a price document
//! from an in-process map) on one port per variant — no layers, each layer alone, all of them —
//! with the node's telemetry installed (tracing subscriber at `info`, the Prometheus recorder),
//! and `wrk` loads each variant in turn. Ratios are against the bare variant of the same run.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use pricefeed_runtime::config::TelemetryConfig;
use pricefeed_runtime::http::{Layers, with_layers};

use crate::prices::{ensure_wrk, wrk};
use crate::report::Table;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Seconds of wrk per variant.
    #[arg(long, default_value_t = 8)]
    pub seconds: u64,
    #[arg(long, default_value_t = 64)]
    pub connections: u32,
}

type Prices = Arc<RwLock<HashMap<String, String>>>;

async fn price(State(p): State<Prices>, Path(symbol): Path<String>) -> impl IntoResponse {
    match p.read().expect("lock").get(&symbol.to_ascii_uppercase()) {
        Some(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body.clone(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

const BODY: &str = r#"{"market":"spot","symbol":"BTCUSDT","price":"90012.50000000","qty":"0.01200000","trade_id":4711,"ts":1764590000123,"age_ms":12}"#;

pub async fn run(a: &Args) -> anyhow::Result<Table> {
    ensure_wrk()?;
    pricefeed_runtime::telemetry::init_tracing(&TelemetryConfig::default());
    pricefeed_runtime::telemetry::metrics_handle();
    let prices: Prices = Arc::new(RwLock::new(HashMap::from([(
        "BTCUSDT".to_string(),
        BODY.to_string(),
    )])));
    let variants: Vec<(&str, Layers)> = vec![
        ("bare", Layers::NONE),
        (
            "request id only",
            Layers {
                request_id: true,
                ..Layers::NONE
            },
        ),
        (
            "span only",
            Layers {
                trace: true,
                ..Layers::NONE
            },
        ),
        (
            "timeout only",
            Layers {
                timeout: true,
                ..Layers::NONE
            },
        ),
        (
            "metrics only",
            Layers {
                metrics: true,
                ..Layers::NONE
            },
        ),
        ("all (as served)", Layers::ALL),
    ];
    let mut urls = Vec::new();
    for (_, l) in &variants {
        let app = axum::Router::new()
            .route("/api/v1/prices/{symbol}", get(price))
            .with_state(prices.clone());
        let app = with_layers(app, Duration::from_secs(10), *l);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        urls.push(format!(
            "http://{}/api/v1/prices/BTCUSDT",
            listener.local_addr()?
        ));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
    }
    let mut t = Table::new(
        "http-stack",
        &format!(
            "wrk -t2 -c{} -d{}s per variant, one process, telemetry as in the node",
            a.connections, a.seconds
        ),
    );
    let mut base = 0.0;
    for ((name, _), url) in variants.iter().zip(&urls) {
        let url = url.clone();
        let (s, c) = (a.seconds, a.connections);
        let w = tokio::task::spawn_blocking(move || wrk(&url, s, c)).await??;
        if base == 0.0 {
            base = w.rps;
        }
        t.row(
            name,
            format!(
                "{:.0} req/s (p50 {:.2} / p99 {:.2} ms), ratio {:.2}",
                w.rps,
                w.p50_ms,
                w.p99_ms,
                w.rps / base
            ),
        );
    }
    Ok(t)
}

//! Baseline for the latest-price benchmark: a bare axum handler that returns a price document
//! from an in-process map, with none of the node's middleware, Redis or routing. The node's
//! `GET /api/v1/prices/{symbol}` is measured against it in the same run
//! (`pricefeed-bench prices`), so the ratio says what the real stack costs.
//!
//! Usage: `bare-price-server ADDR BODY_JSON` — serves BODY_JSON at `/api/v1/prices/{symbol}` for
//! the symbol found in it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: bare-price-server ADDR BODY_JSON"))?;
    let body = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: bare-price-server ADDR BODY_JSON"))?;
    let doc: serde_json::Value = serde_json::from_str(&body)?;
    let symbol = doc["symbol"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("BODY_JSON has no symbol"))?
        .to_string();
    let prices: Prices = Arc::new(RwLock::new(HashMap::from([(symbol, body)])));
    let app = axum::Router::new()
        .route("/api/v1/prices/{symbol}", get(price))
        .with_state(prices);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("bare-price-server listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

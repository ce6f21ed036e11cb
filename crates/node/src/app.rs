//! Wiring of one node process, shared by `main` and the tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use pricefeed_runtime::{http, ops, problem, shutdown::Shutdown, telemetry};

use crate::config::NodeConfig;
use crate::membership::Membership;
use crate::state::AppState;
use pricefeed_store::registry::NodeRecord;

/// A started node.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub node_id: String,
}

/// Connects to its dependencies, migrates when configured, and serves HTTP as a tracked task.
pub async fn start(cfg: &NodeConfig, shutdown: &Shutdown) -> anyhow::Result<Running> {
    // Before anything resolves a metric handle (the history writer, the connector and the price
    // cache keep theirs): a handle taken before the recorder exists is a silent no-op.
    telemetry::metrics_handle();
    let node_id = cfg.node_id();
    let readiness = ops::Readiness::new(shutdown.clone());
    let pricefeed_store::Deps { db, redis } =
        pricefeed_store::connect_deps(&cfg.database, &cfg.redis, &readiness).await?;

    // Bind first: the registry record carries the address actually bound (port 0 in tests).
    let (listener, addr) = http::bind(cfg.node.http.bind).await?;
    let started_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let slices = Membership {
        redis: redis.clone(),
        redis_url: cfg.redis.url.clone(),
        prefix: cfg.redis.key_prefix.clone(),
        record: NodeRecord {
            node_id: node_id.clone(),
            addr: addr.to_string(),
            started_at_ms,
            version: env!("CARGO_PKG_VERSION").to_string(),
        },
        heartbeat: Duration::from_millis(cfg.node.heartbeat_ms),
        registration_ttl_ms: cfg.node.registration_ttl_ms,
        poll: Duration::from_millis(cfg.node.assignment_poll_ms),
    }
    .start(shutdown)
    .await?;

    let rest = pricefeed_broker::rest_client::RestClient::from_config(&cfg.broker)
        .map_err(|e| anyhow::anyhow!("broker REST client: {e}"))?;
    let ingest = crate::ingest::start(
        crate::ingest::IngestDeps {
            node_id: node_id.clone(),
            feed: cfg.node.feed.clone(),
            broker: cfg.broker.clone(),
            redis: redis.clone(),
            redis_url: cfg.redis.url.clone(),
            prefix: cfg.redis.key_prefix.clone(),
        },
        slices.clone(),
        Arc::new(rest),
        shutdown,
    );
    // Accepted trades go to history too; the writer drains on shutdown.
    let writer =
        pricefeed_store::trades::TradeWriter::spawn(db.clone(), cfg.trades.clone(), shutdown);
    ingest.core.lock().unwrap().set_writer(writer);
    let prices = Arc::new(crate::price_cache::PriceCache::new());
    shutdown.tracker().spawn(crate::price_cache::run(
        prices.clone(),
        cfg.redis.url.clone(),
        cfg.redis.key_prefix.clone(),
        shutdown.token(),
    ));
    let state = AppState {
        db,
        node_id: Arc::from(node_id.as_str()),
        redis,
        key_prefix: Arc::from(cfg.redis.key_prefix.as_str()),
        slices,
        ingest,
        prices,
    };
    let router = build_router(state, readiness, cfg);
    telemetry::spawn_upkeep(shutdown);
    http::spawn_server(listener, router, shutdown);
    tracing::info!(%addr, node_id, "node listening");
    Ok(Running { addr, node_id })
}

fn build_router(state: AppState, readiness: ops::Readiness, cfg: &NodeConfig) -> Router {
    let app = crate::api::router(state)
        .merge(ops::router(readiness))
        .fallback(problem::not_found_fallback);
    http::with_common_layers(app, Duration::from_millis(cfg.node.http.request_timeout_ms))
}

//! Wiring of one node process, shared by `main` and the tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use pricefeed_runtime::{http, ops, problem, shutdown::Shutdown, telemetry};

use crate::config::NodeConfig;
use crate::live_cache::{PriceCache, VwapCache};
use crate::membership::Membership;
use crate::state::{AppState, Shared};
use pricefeed_store::history::InstrumentIds;
use pricefeed_store::history::writer::TradeWriter;
use pricefeed_store::protocol::Keys;
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
        redis_endpoint: redis.endpoint().clone(),
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
        .map_err(|e| anyhow::anyhow!("broker REST client: {e}"))?
        .with_hold_board(Arc::new(pricefeed_store::rest_hold::RedisHoldBoard::new(
            redis.clone(),
            Keys::new(&cfg.redis.key_prefix),
        )));
    let ingest = crate::ingest::start(
        crate::ingest::IngestDeps {
            node_id: node_id.clone(),
            feed: cfg.node.feed.clone(),
            broker: cfg.broker.clone(),
            redis: redis.clone(),
            redis_endpoint: redis.endpoint().clone(),
            prefix: cfg.redis.key_prefix.clone(),
        },
        slices.clone(),
        Arc::new(rest),
        shutdown,
    );
    let keys = Keys::new(&cfg.redis.key_prefix);
    let ids = InstrumentIds::new();
    // Consumers of accepted trades (one line each; see ingest::handoff).
    let owner = pricefeed_store::history::writer::spill_owner(
        &cfg.database.url.redacted(),
        &cfg.redis.key_prefix,
    );
    let writer = TradeWriter::spawn(
        db.clone(),
        cfg.trades.clone(),
        cfg.trades.spill_path(&node_id, &owner),
        &owner,
        shutdown,
    )?;
    let flush_every = Duration::from_millis(cfg.node.feed.tick_flush_ms);
    crate::ingest::history::attach(&ingest.core, writer, flush_every, shutdown);
    crate::alerts::attach(
        &ingest.core,
        crate::alerts::AlertDeps {
            node_id: node_id.clone(),
            db: db.clone(),
            redis: redis.clone(),
            redis_endpoint: redis.endpoint().clone(),
            keys: keys.clone(),
            ids: ids.clone(),
            cfg: cfg.alerts.clone(),
        },
        shutdown,
    );
    crate::live::attach(
        &ingest.core,
        crate::live::LiveDeps {
            db: db.clone(),
            redis: redis.clone(),
            redis_endpoint: redis.endpoint().clone(),
            keys: keys.clone(),
            ids: ids.clone(),
            vwap: cfg.vwap.clone(),
            cfg: cfg.node.live.clone(),
        },
        shutdown,
    );

    // Live values of every instrument, fed by the owners' channels.
    let prices = Arc::new(PriceCache::new("price"));
    let vwaps = Arc::new(VwapCache::new("vwap"));
    let tracker = shutdown.tracker();
    tracker.spawn(crate::live_cache::run(
        prices.clone(),
        redis.endpoint().clone(),
        keys.price_ticks(),
        "price ticks",
        shutdown.token(),
    ));
    tracker.spawn(crate::live_cache::run(
        vwaps.clone(),
        redis.endpoint().clone(),
        keys.vwap_ticks(),
        "vwap ticks",
        shutdown.token(),
    ));
    // Client WebSocket hub, fed by the caches above (one Redis subscription per node).
    let stream = crate::stream::start(
        cfg.node.stream.clone(),
        &prices,
        &vwaps,
        redis.endpoint().clone(),
        keys.alert_events(),
        shutdown,
    );
    let state = AppState::new(Shared {
        db,
        node_id: Arc::from(node_id.as_str()),
        redis,
        key_prefix: Arc::from(cfg.redis.key_prefix.as_str()),
        keys,
        slices,
        ingest,
        prices,
        vwaps,
        stream,
        ids,
        vwap: Arc::new(cfg.vwap.clone()),
        retention: Arc::new(cfg.retention.clone()),
        tokens: crate::auth::jwt::Tokens::new(&cfg.auth),
        auth: Arc::new(cfg.auth.clone()),
        alerts: Arc::new(cfg.alerts.clone()),
        local_limits: Arc::default(),
        dummy_hash: Arc::from(
            crate::auth::api::hash_password(uuid_like_secret())
                .await
                .map_err(|e| anyhow::anyhow!("password hashing unusable: {e}"))?
                .as_str(),
        ),
    });
    let router = build_router(state, readiness, cfg);
    telemetry::spawn_upkeep(shutdown);
    http::spawn_server_with(listener, router, cfg.node.http.server_limits(), shutdown);
    tracing::info!(%addr, node_id, "node listening");
    Ok(Running { addr, node_id })
}

/// A random string (the dummy password of [`AppState::dummy_hash`]).
fn uuid_like_secret() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn build_router(state: AppState, readiness: ops::Readiness, cfg: &NodeConfig) -> Router {
    let limiter = crate::api::limits::RateLimiter::new(&cfg.node.limits, state.tokens.clone());
    let app = crate::api::router(state)
        .merge(ops::router(readiness))
        .fallback(problem::not_found_fallback)
        .layer(axum::extract::DefaultBodyLimit::max(
            cfg.node.limits.max_body_bytes,
        ));
    // The rate limits run inside the common stack on every route and the fallback; the limiter
    // itself lets probes and /metrics pass.
    http::with_common_layers_admitting(
        app,
        Duration::from_millis(cfg.node.http.request_timeout_ms),
        limiter,
    )
}

//! The client WebSocket `GET /api/v1/stream`: live prices, VWAPs, the user's alert triggers and
//! seed 004's threshold watches, on any node for any instrument.
//!
//! - [`protocol`]: frames and channel names, pure (never panics on any input).
//! - [`hub`]: who listens to what; one dispatcher fed by the node's single Redis subscriptions
//!   (through the live caches' notification hook and the alert-events channel).
//! - [`conn`]: one task per connection: ops, writes, pings, limits, close codes.
//! - [`limits`]: the conflating outbox and the message-rate bucket.
//! - [`config`]: the `node.stream` section.
//!
//! Why one subscription per node rather than one per client: Redis would otherwise carry every
//! update once per client and hold one connection per client; here it carries each update once
//! per node, and the frame is serialized once per update (see
//! `docs/decisions/0009-client-websocket.md`).

pub mod config;
pub mod conn;
pub mod hub;
pub mod limits;
pub mod protocol;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use pricefeed_domain::bucket::Span;
use pricefeed_domain::instrument::InstrumentKey;
use pricefeed_runtime::shutdown::Shutdown;
use pricefeed_store::protocol::{AlertEvent, PriceDoc, VwapDoc, vwap_field};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use config::StreamConfig;
pub use hub::Hub;

use crate::api::error::ApiError;
use crate::state::AppState;

/// Starts the hub and the alert-events subscription, and hooks the live caches to it.
pub fn start(
    cfg: StreamConfig,
    prices: &crate::live_cache::PriceCache,
    vwaps: &crate::live_cache::VwapCache,
    redis_endpoint: pricefeed_store::redis_conn::RedisEndpoint,
    alert_events: String,
    shutdown: &Shutdown,
) -> Arc<Hub> {
    let hub = Hub::start(cfg, shutdown);
    let h = hub.clone();
    prices.set_hook(move |docs| h.offer_prices(docs));
    let h = hub.clone();
    vwaps.set_hook(move |docs| h.offer_vwaps(docs));
    let h = hub.clone();
    let token = shutdown.token();
    shutdown.tracker().spawn(async move {
        crate::pubsub::listen(
            &redis_endpoint,
            &alert_events,
            "alert events",
            Duration::from_secs(1),
            crate::pubsub::Keepalive::default(),
            &token,
            &mut AlertFeed(h),
        )
        .await;
    });
    hub
}

/// Feeds committed alert triggers to the hub.
struct AlertFeed(Arc<Hub>);

impl crate::pubsub::Listener for AlertFeed {
    fn message(&mut self, payload: &[u8]) {
        match serde_json::from_slice::<AlertEvent>(payload) {
            Ok(ev) => self.0.offer_alert(ev),
            Err(e) => tracing::warn!(error = %e, "malformed alert event ignored"),
        }
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(crate::api::v1(routes!(stream)))
}

/// Read buffer of a connection: client messages are small (`max_frame_bytes` bounds them), and
/// at 20 000 connections tungstenite's 128 KiB default would hold 2.5 GiB.
const READ_BUFFER: usize = 4 * 1024;
/// Frames are written out once this much is buffered (and on every flush).
const WRITE_BUFFER: usize = 8 * 1024;
/// Most bytes buffered for a socket before writes fail (the send timeout normally acts first).
const MAX_WRITE_BUFFER: usize = 1024 * 1024;

/// Live prices, VWAPs, alert triggers and threshold watches over a WebSocket.
#[utoipa::path(get, path = "/stream", tag = "stream",
    description = include_str!("protocol.md"),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket is open; frames as described above"),
        (status = 400, description = "Not a WebSocket upgrade request", content_type = "application/problem+json"),
        (status = 503, description = "The node is at `node.stream.max_connections` or shutting down", content_type = "application/problem+json"),
    ))]
async fn stream(
    State(st): State<AppState>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return ApiError::param(
                "upgrade",
                format!(
                    "GET /api/v1/stream must be a WebSocket upgrade: {}",
                    e.body_text()
                ),
            )
            .into_response();
        }
    };
    let hub = st.stream.clone();
    let Some(guard) = hub.connect() else {
        return ApiError::Unavailable {
            what: "client WebSocket capacity",
            source: anyhow::anyhow!("at max_connections or shutting down"),
        }
        .into_response();
    };
    // Upgraded sockets leave the HTTP server's drain; the tracker token keeps shutdown
    // waiting until this connection has sent its 1001 and ended.
    let tracked = hub.shutdown.tracker().token();
    let max = hub.cfg.max_frame_bytes;
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        // Above our own limit, so a moderately large message is read whole and refused with
        // 1009 by the connection; far larger ones are refused by tungstenite (also 1009).
        .max_message_size(max * 4)
        .max_frame_size(max * 4)
        .on_upgrade(move |socket| async move {
            let _tracked = tracked;
            let (sink, stream) = socket.split();
            conn::run(&st, &hub, guard, sink, stream).await;
        })
}

impl conn::Source for AppState {
    fn intervals(&self) -> &[Span] {
        &self.vwap.intervals
    }

    async fn latest_price(&self, key: &InstrumentKey) -> anyhow::Result<Option<PriceDoc>> {
        let dto = crate::api::prices::lookup_one(self, key)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(dto.map(|p| PriceDoc {
            market: p.market,
            symbol: p.symbol,
            price: p.price,
            qty: p.qty,
            trade_id: p.trade_id,
            ts: p.ts,
        }))
    }

    async fn latest_vwap(
        &self,
        key: &InstrumentKey,
        interval: Span,
    ) -> anyhow::Result<Option<VwapDoc>> {
        crate::api::vwap::latest_doc(self, key, interval)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    async fn listed(&self, key: &InstrumentKey) -> anyhow::Result<bool> {
        Ok(pricefeed_store::instruments::instrument_exists(&self.db, key).await?)
    }

    fn price_now(&self, key: &InstrumentKey) -> Option<PriceDoc> {
        let local = self.ingest.core.lock().unwrap().latest(key);
        match local {
            Some(l) => Some(crate::ingest::publish::price_doc(key, &l)),
            None => self.prices.get(key.as_str()),
        }
    }

    fn vwap_now(&self, key: &InstrumentKey, interval: Span) -> Option<VwapDoc> {
        self.vwaps.get(&vwap_field(key, &interval.to_string()))
    }

    fn verify(&self, token: &str) -> Option<(i64, i64)> {
        let c = self.tokens.verify(token).ok()?;
        Some((c.user_id()?, c.exp))
    }
}

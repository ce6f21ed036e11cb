//! Shared state handed to every request handler.

use std::sync::Arc;

use pricefeed_store::redis_conn::RedisConn;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::membership::SliceView;

/// Cheap to clone: every field is a handle.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub node_id: std::sync::Arc<str>,
    pub redis: RedisConn,
    /// `redis.key_prefix`, for the registry and assignment keys.
    pub key_prefix: std::sync::Arc<str>,
    /// This node's view of the published assignment, kept current by [`crate::membership`].
    pub slices: watch::Receiver<SliceView>,
    /// Ingest state (latest prices of the own slice, statistics, feed health).
    pub ingest: crate::ingest::Ingest,
    /// Redis key names under `key_prefix`.
    pub keys: pricefeed_store::protocol::Keys,
    /// Latest prices of every instrument, fed by the tick channel ([`crate::live_cache`]).
    pub prices: Arc<crate::live_cache::PriceCache>,
    /// Latest VWAPs of every instrument, fed by the VWAP channel.
    pub vwaps: Arc<crate::live_cache::VwapCache>,
    /// The client WebSocket hub (`/api/v1/stream`).
    pub stream: Arc<crate::stream::Hub>,
    /// Instrument key ↔ history id.
    pub ids: pricefeed_store::history::InstrumentIds,
    /// `[vwap]` and `[retention]`, for the history routes.
    pub vwap: Arc<pricefeed_store::history::VwapConfig>,
    pub retention: Arc<pricefeed_store::history::RetentionConfig>,
    /// Access tokens, `[auth]` and `[alerts]`.
    pub tokens: crate::auth::jwt::Tokens,
    pub auth: Arc<crate::auth::AuthConfig>,
    pub alerts: Arc<crate::alerts::AlertsConfig>,
    /// Login counters of this node, used while Redis is down.
    pub local_limits: Arc<crate::auth::extract::LocalLimits>,
    /// Hash of a random password: unknown emails are verified against it, so a login takes the
    /// same time whether or not the account exists.
    pub dummy_hash: Arc<str>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("node_id", &self.node_id)
            .field("key_prefix", &self.key_prefix)
            .field("epoch", &self.slices.borrow().epoch())
            .finish()
    }
}

//! Shared state handed to every request handler.

use std::sync::Arc;

use pricefeed_store::redis_conn::RedisConn;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::membership::SliceView;

/// What every handler shares, behind one `Arc`: axum clones the state for each request (once
/// into the handler, once more for the `State` extractor), and cloning one `Arc` is one atomic
/// increment where cloning the fields was ~20 of them plus allocations for the key names and
/// the token keys (`pricefeed-bench prices`, docs/benchmarks.md). Fields are reached through
/// `Deref`, so handlers read `st.db` as before.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
pub struct Shared {
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

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("node_id", &self.node_id)
            .field("key_prefix", &self.key_prefix)
            .field("epoch", &self.slices.borrow().epoch())
            .finish()
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

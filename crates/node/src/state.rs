//! Shared state handed to every request handler.

use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::membership::SliceView;

/// Cheap to clone: every field is a handle.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub node_id: std::sync::Arc<str>,
    pub redis: ConnectionManager,
    /// `redis.key_prefix`, for the registry and assignment keys.
    pub key_prefix: std::sync::Arc<str>,
    /// This node's view of the published assignment, kept current by [`crate::membership`].
    pub slices: watch::Receiver<SliceView>,
    /// Ingest state (latest prices of the own slice, statistics, feed health).
    pub ingest: crate::ingest::Ingest,
    /// Latest prices of every instrument, fed by the tick channel ([`crate::price_cache`]).
    pub prices: std::sync::Arc<crate::price_cache::PriceCache>,
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

//! Shared state handed to every request handler.

use sqlx::PgPool;

/// Cheap to clone: every field is a handle.
#[derive(Debug, Clone)]
pub struct AppState {
    pub db: PgPool,
    pub node_id: std::sync::Arc<str>,
}

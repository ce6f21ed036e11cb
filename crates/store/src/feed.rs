//! Feed-health keys shared by nodes (writers, order receivers) and the scheduler (reader, order
//! sender).
//!
//! - `{prefix}:feed:{node_id}` hash: field `market:conn` (e.g. `spot:1`) =
//!   `last_frame_ms,mean_gap_ms` (wall-clock ms of that connection's last frame, and the mean ms
//!   between its trades this session), or `0` while it is not connected; rewritten by the node
//!   every second, expiring when it stops.
//! - `{prefix}:orders:{node_id}` channel: orders addressed to that node only (the seed broadcast
//!   one `WS_RECONNECT` topic to every node and let each filter; a per-node channel means the
//!   others never even see it). Payload: [`ReconnectOrder`] JSON.

use serde::{Deserialize, Serialize};

/// The node's feed-health hash.
pub fn feed_key(prefix: &str, node_id: &str) -> String {
    format!("{prefix}:feed:{node_id}")
}

/// The node's order channel.
pub fn orders_channel(prefix: &str, node_id: &str) -> String {
    format!("{prefix}:orders:{node_id}")
}

/// The `order` value of a reconnect order.
pub const RECONNECT: &str = "reconnect";

/// A reconnect order: `{order:"reconnect", node_id, conn_id, term, issued_at_ms, reason}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconnectOrder {
    /// Always [`RECONNECT`].
    pub order: String,
    pub node_id: String,
    /// The hash field naming the connection: `market:conn`.
    pub conn_id: String,
    /// The issuing leader's fencing term.
    pub term: u64,
    /// Redis clock, ms.
    pub issued_at_ms: i64,
    pub reason: String,
}

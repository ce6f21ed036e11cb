//! Feed-health keys shared by nodes (writers, order receivers) and the scheduler (reader, order
//! sender); the names and the order payload live in [`crate::protocol`].
//!
//! - `{prefix}:feed:{node_id}` hash: field `market:conn` (e.g. `spot:1`) =
//!   `last_frame_ms,mean_gap_ms` (wall-clock ms of that connection's last frame, and the mean ms
//!   between its trades this session), or `0` while it is not connected; rewritten by the node
//!   every second, expiring when it stops.
//! - `{prefix}:orders:{node_id}` channel: orders addressed to that node only (the seed broadcast
//!   one `WS_RECONNECT` topic to every node and let each filter; a per-node channel means the
//!   others never even see it). Payload: [`ReconnectOrder`] JSON.

use crate::protocol::Keys;
pub use crate::protocol::{RECONNECT, ReconnectOrder};

/// The node's feed-health hash.
pub fn feed_key(prefix: &str, node_id: &str) -> String {
    Keys::new(prefix).feed(node_id)
}

/// The node's order channel.
pub fn orders_channel(prefix: &str, node_id: &str) -> String {
    Keys::new(prefix).orders(node_id)
}

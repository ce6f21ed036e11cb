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

use std::collections::BTreeMap;

use crate::redis_conn::RedisConn;

use crate::protocol::Keys;
pub use crate::protocol::{FeedField, RECONNECT, ReconnectOrder};

/// The node's feed-health hash.
pub fn feed_key(prefix: &str, node_id: &str) -> String {
    Keys::new(prefix).feed(node_id)
}

/// The node's order channel.
pub fn orders_channel(prefix: &str, node_id: &str) -> String {
    Keys::new(prefix).orders(node_id)
}

/// The Redis clock (ms) and the feed-health hash of each of `nodes` (`market:conn` → decoded
/// field; empty when the node wrote none or it expired), in one round trip. Undecodable fields
/// are left out.
pub async fn read_feeds(
    conn: &mut RedisConn,
    prefix: &str,
    nodes: &[&str],
) -> redis::RedisResult<(i64, Vec<BTreeMap<String, FeedField>>)> {
    let mut pipe = redis::pipe();
    pipe.cmd("TIME");
    for n in nodes {
        pipe.cmd("HGETALL").arg(feed_key(prefix, n));
    }
    let mut replies: Vec<redis::Value> = pipe.query_async(conn).await?;
    let hashes = replies.split_off(1.min(replies.len()));
    let (secs, micros): (i64, i64) = redis::from_redis_value(
        replies
            .pop()
            .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Parse, "no TIME reply")))?,
    )?;
    let feeds = hashes
        .into_iter()
        .map(|h| {
            let raw: BTreeMap<String, String> = redis::from_redis_value(h)?;
            Ok(raw
                .into_iter()
                .filter_map(|(k, v)| FeedField::decode(&v).map(|f| (k, f)))
                .collect())
        })
        .collect::<redis::RedisResult<Vec<_>>>()?;
    Ok((secs * 1000 + micros / 1000, feeds))
}
